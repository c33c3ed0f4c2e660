"""How much of the spread is the test set's, what a lucky seed buys, and which of two recipes wins.

    python -m analysis SWEEP_DIR [--csv FILE --figures DIR]     # the columns below, per group
    python -m analysis.compare DIR_A DIR_B [--paired]           # multibootstrap and P(B > A)

Every statistic here starts from the (R, N) matrix of per-run, per-example correctness
(``Group.correct`` of analysis/load.py, ``correct[r, i]``: run r's argmax is example i's label;
next-token predictions for language models) or from per-run values. Formulas, sources and a
worked example: docs/statistics.md.

Columns of ``python -m analysis`` (percent; NaN with fewer than two runs):

- ``accuracy_sd_test_set``: the SD of test accuracy that finite-test-set noise alone gives if
  examples err independently (Jordan 2024, eq. for the independent-errors model):
  sqrt(sum_i v_i) / n, with v_i = Var_r(e_ri) the ddof=1 variance over runs of example i's 0/1
  error (R/(R-1) eps_i (1 - eps_i), eps_i the fraction of runs that err on i; Jordan writes the
  plug-in eps_i (1 - eps_i), the same for large R).
- ``accuracy_sd_distribution``: the SD over training runs of the accuracy on the whole data
  distribution, from Jordan's unbiased estimator of its variance,
  n/(n-1) (Var_r(E_r) - (1/n^2) sum_i v_i) (E_r: run r's test error, ddof=1). A negative
  estimate (sampling noise around a true value near 0) is reported as 0 with a note.
  Var_r(E_r) = accuracy_sd_test_set^2 + (n-1)/n accuracy_sd_distribution^2 (before clipping), so
  accuracy_sd_test_set^2 / accuracy_sd^2 is the share of the variance a larger test set removes.
- ``seed_selection_gain``: split the test set into random halves; rank the runs on one half; the
  mean accuracy of the top quarter (R // 4 runs) on the other half minus the mean of all runs
  there; averaged over both directions of ``SPLITS`` random halves. Near 0: lucky seeds do not
  generalise (Jordan 2024, Sec. 3). NaN below 4 runs.
- ``class_accuracy_sd_max`` / ``class_accuracy_sd_mean``: per class, the SD over runs (ddof=1) of
  the accuracy on that class's test examples; the largest and the mean over classes
  (Pham et al. 2020; Zhuang et al. 2022). Not for language models (one class per token).

``best_of_k``: the expected maximum of k runs drawn with replacement from the R measured runs,
k = 1..R, with its SD (Dodge et al. 2020): what reporting "the best of k seeds" inflates a
result by.

``multibootstrap`` (Sellam et al. 2022, MultiBERTs): resample the test examples (the same draw for
both arms, since they share the test set) and the runs of each arm (the same draw for both arms
with ``paired``), B times; the difference of mean metric B - A over the resampled runs and
examples gives a percentile CI and a two-sided p = min(1, 2 min(P*(d <= 0), P*(d >= 0))) (the
reference code reports the one-sided P*(d <= 0)). ``prob_better``: P(B > A), the probability
that a run of B beats a run of A (ties count a half; = U / (n_a n_b), Mann-Whitney's U), with a
percentile CI over bootstrap resamples of the runs of each arm (Bouthillier et al. 2021, who call
B better only when P(B > A) > 0.75 and the CI excludes 0.5).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

STATS_COLUMNS = (
    "accuracy_sd_test_set",
    "accuracy_sd_distribution",
    "seed_selection_gain",
    "class_accuracy_sd_max",
    "class_accuracy_sd_mean",
)

# Random halves averaged by seed_selection_gain: its SD over splits is a few hundredths of a
# percent at CIFAR-10 scale, so 100 splits pin the mean to a few thousandths.
SPLITS = 100
# Bouthillier et al.'s threshold on P(B > A) for calling B better.
BOUTHILLIER_GAMMA = 0.75
# Up to this many arrangements of two arms the Mann-Whitney p is exact (ties included: enumerated).
EXACT_RANK_ARRANGEMENTS = 20000


# --- per-group columns ---------------------------------------------------------------------


def variance_components(correct: np.ndarray) -> dict[str, float]:
    """Jordan's decomposition of the accuracy variance, as variances of the accuracy fraction.

    Returns ``observed`` (Var_r(E_r), ddof=1), ``test_set`` ((1/n^2) sum_i Var_r(e_ri)) and
    ``distribution`` (n/(n-1) (observed - test_set), unclipped: may be negative).
    """
    runs, n = correct.shape
    if runs < 2 or n < 2:
        return dict.fromkeys(("observed", "test_set", "distribution"), math.nan)
    hits = correct.sum(axis=0, dtype=np.int64)  # per example, runs that are right
    # ddof=1 variance of a 0/1 column with k ones: (k - k^2 / R) / (R - 1), exact in integers.
    per_example = (hits * (runs - hits)).sum() / (runs * (runs - 1))
    per_run = correct.sum(axis=1, dtype=np.int64)
    observed = float(((per_run - per_run[0]) / n).var(ddof=1))  # shifted: exactly 0 when equal
    test_set = float(per_example / n**2)
    return {"observed": observed, "test_set": test_set, "distribution": n / (n - 1) * (observed - test_set)}


def seed_selection_gain(correct: np.ndarray, splits: int = SPLITS, seed: int = 0) -> float:
    """Mean held-out accuracy (percent) of the top quarter of runs ranked on the other half of the
    test set, minus the mean of all runs, averaged over both directions of ``splits`` halves."""
    runs, n = correct.shape
    if runs < 4 or n < 2:
        return math.nan
    top = runs // 4
    rng = np.random.default_rng(seed)
    halves = np.argsort(rng.random((splits, n)), axis=1) < n // 2  # (S, N): a random half each
    first = halves.astype(np.float32)
    x = correct.astype(np.float32)
    hits_first = (x @ first.T).astype(np.float64)  # (R, S): exact small integers
    hits_second = x.sum(axis=1, keepdims=True) - hits_first
    gains = []
    for ranked, held, size in ((hits_first, hits_second, n - n // 2), (hits_second, hits_first, n // 2)):
        best = np.argsort(-ranked, axis=0, kind="stable")[:top]  # (top, S): one denominator, same order
        # sums of integer counts are exact, so runs that all score alike give exactly 0
        top_hits = np.take_along_axis(held, best, axis=0).sum(axis=0) / top
        gains.append((top_hits - held.sum(axis=0) / runs) / size)
    return float(100.0 * np.mean(gains))


def class_accuracy(correct: np.ndarray, labels: np.ndarray, classes: int) -> np.ndarray:
    """(R, C) percent of each class's test examples each run gets right; NaN for absent classes."""
    onehot = np.zeros((len(labels), classes), dtype=np.float32)
    onehot[np.arange(len(labels)), labels] = 1.0
    counts = onehot.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return 100.0 * (correct.astype(np.float32) @ onehot).astype(np.float64) / counts


def class_spread(correct: np.ndarray, labels: np.ndarray, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Per class: mean and SD (ddof=1) over runs of the class accuracy, (C,) each, percent."""
    per_class = class_accuracy(correct, labels, classes)
    if len(per_class) < 2:
        return per_class.mean(axis=0), np.full(classes, np.nan)
    return per_class.mean(axis=0), (per_class - per_class[:1]).std(axis=0, ddof=1)


def stats_columns(correct: np.ndarray, labels: np.ndarray, classes: int | None, seed: int = 0) -> tuple[dict, list[str]]:
    """``STATS_COLUMNS`` of one group and its notes; ``classes=None`` leaves the class columns NaN."""
    parts = variance_components(correct)
    notes = []
    dist = parts["distribution"]
    if dist < 0:
        notes.append(
            f"the distribution-wise variance estimate is negative ({100**2 * dist:.3g} %^2): "
            "indistinguishable from 0, reported as 0"
        )
    row = {
        "accuracy_sd_test_set": 100.0 * math.sqrt(parts["test_set"]) if parts["test_set"] >= 0 else math.nan,
        "accuracy_sd_distribution": 100.0 * math.sqrt(max(dist, 0.0)) if not math.isnan(dist) else math.nan,
        "seed_selection_gain": seed_selection_gain(correct, seed=seed),
        "class_accuracy_sd_max": math.nan,
        "class_accuracy_sd_mean": math.nan,
    }
    if classes is not None and len(correct) >= 2:
        sds = class_spread(correct, labels, classes)[1]
        if np.isfinite(sds).any():
            row["class_accuracy_sd_max"] = float(np.nanmax(sds))
            row["class_accuracy_sd_mean"] = float(np.nanmean(sds))
    return row, notes


def group_stats(group, seed: int = 0) -> tuple[dict, list[str]]:
    """``stats_columns`` of an ``analysis.load.Group``."""
    classes = None if group.is_language_model else group.runs[0].logits.shape[1]
    return stats_columns(group.correct, group.labels, classes, seed)


def test_set_sentence(frame: pd.DataFrame, labels: list[str]) -> str:
    """One sentence: the share of each group's accuracy variance a larger test set would remove."""
    shares = []
    for label, (_, row) in zip(labels, frame.iterrows()):
        total, test = row.get("accuracy_sd"), row.get("accuracy_sd_test_set")
        if total is None or test is None or not (total > 0) or math.isnan(test):
            continue
        share = 100.0 * test**2 / total**2
        shares.append(f"{label} {share:.0f}%" if share <= 100.0 else
                      f"{label} 100% (capped: the SDs give {share:.0f}%, a spread no wider than test-set noise)")
    if not shares:
        return ""
    return (
        "Share of the accuracy variance that is finite-test-set noise, which a larger test set "
        f"would remove (test-set SD^2 / accuracy SD^2, Jordan 2024): {', '.join(shares)}."
    )


# --- best of k -----------------------------------------------------------------------------


def best_of_k(values: np.ndarray) -> pd.DataFrame:
    """Expected maximum of k runs and its SD, k = 1..R, drawn with replacement (Dodge et al. 2020).

    With v_(1) <= ... <= v_(R) sorted, P(max = v_(i)) = (i/R)^k - ((i-1)/R)^k, so
    E[max] = sum_i v_(i) ((i/R)^k - ((i-1)/R)^k). Columns: k, expected_best, expected_best_sd,
    inflation (expected_best - mean).
    """
    v = np.sort(np.asarray(values, dtype=np.float64))
    runs = len(v)
    if runs == 0:
        return pd.DataFrame(columns=["k", "expected_best", "expected_best_sd", "inflation"])
    k = np.arange(1, runs + 1)[:, None]
    # (K, R+1): P(max <= v_(i)) = (i/R)^k, as running products over k (no R^2 powers)
    cdf = np.cumprod(np.broadcast_to(np.arange(runs + 1) / runs, (runs, runs + 1)), axis=0)
    weights = np.diff(cdf, axis=1)  # (K, R)
    mean = weights @ v
    var = np.maximum(weights @ (v - v[0]) ** 2 - (mean - v[0]) ** 2, 0.0)  # shifted for accuracy
    return pd.DataFrame(
        {"k": k[:, 0], "expected_best": mean, "expected_best_sd": np.sqrt(var), "inflation": mean - v.mean()}
    )


# --- two arms ------------------------------------------------------------------------------


def resample_counts(rng: np.random.Generator, n_boot: int, n: int) -> np.ndarray:
    """(n_boot, n) counts: how often each of n items is drawn in each of n_boot resamples of size n."""
    draws = rng.integers(0, n, size=(n_boot, n)) + n * np.arange(n_boot)[:, None]
    return np.bincount(draws.ravel(), minlength=n_boot * n).reshape(n_boot, n)


def multibootstrap_differences(
    xa: np.ndarray, xb: np.ndarray, examples: np.ndarray, runs_a: np.ndarray, runs_b: np.ndarray, block: int = 128
) -> np.ndarray:
    """(B,) mean of xb minus mean of xa over resampled runs and examples.

    ``xa`` (Ra, N), ``xb`` (Rb, N) per-run, per-example values; ``examples`` (B, N),
    ``runs_a`` (B, Ra), ``runs_b`` (B, Rb) the counts of each example / run in each resample.
    The mean over a resample is w^T X u / (R N) with w, u the counts: one matrix product per block
    of resamples, no loop over examples.
    """
    n_boot, n = examples.shape
    out = np.empty(n_boot)
    for start in range(0, n_boot, block):
        u = examples[start : start + block].astype(np.float64).T  # (N, b)
        mean_a = np.einsum("br,rb->b", runs_a[start : start + block], xa @ u) / (xa.shape[0] * n)
        mean_b = np.einsum("br,rb->b", runs_b[start : start + block], xb @ u) / (xb.shape[0] * n)
        out[start : start + block] = mean_b - mean_a
    return out


def multibootstrap(
    xa: np.ndarray, xb: np.ndarray, paired: bool, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05
) -> dict:
    """Multibootstrap of mean(B) - mean(A) over runs x test examples (see the module docstring).

    Returns difference, ci (low, high), p (two-sided), sd_runs and sd_examples: the SD of the
    difference when only runs, or only examples, are resampled (analytic: s^2/R summed over arms,
    or of paired differences; the SD over examples of the per-example mean difference / sqrt(N)).
    """
    xa, xb = np.asarray(xa, dtype=np.float64), np.asarray(xb, dtype=np.float64)
    if xa.shape[1] != xb.shape[1]:
        raise ValueError(f"the arms were evaluated on different test sets ({xa.shape[1]} and {xb.shape[1]} examples)")
    if paired and len(xa) != len(xb):
        raise ValueError("paired arms need the same number of runs")
    rng = np.random.default_rng(seed)
    n = xa.shape[1]
    examples = resample_counts(rng, n_boot, n)
    runs_a = resample_counts(rng, n_boot, len(xa))
    runs_b = runs_a if paired else resample_counts(rng, n_boot, len(xb))
    d = multibootstrap_differences(xa, xb, examples, runs_a, runs_b)
    low, high = np.percentile(d, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    p = min(1.0, 2.0 * min(np.mean(d <= 0), np.mean(d >= 0)))
    run_a, run_b = xa.mean(axis=1), xb.mean(axis=1)
    if paired:
        var_runs = (run_b - run_a).var(ddof=1) / len(xa) if len(xa) > 1 else math.nan
    else:
        var_runs = run_a.var(ddof=1) / len(xa) + run_b.var(ddof=1) / len(xb)
    per_example = xb.mean(axis=0) - xa.mean(axis=0)
    return {
        "difference": float(run_b.mean() - run_a.mean()),
        "ci": (float(low), float(high)),
        "p": float(p),
        "n_boot": n_boot,
        "sd_runs": float(math.sqrt(var_runs)),
        "sd_examples": float(per_example.std(ddof=1) / math.sqrt(n)),
    }


def prob_better_resampled(a: np.ndarray, b: np.ndarray, weights_a: np.ndarray, weights_b: np.ndarray) -> np.ndarray:
    """(B,) P(B > A) (ties a half) of each resample, given (B, na) / (B, nb) draw counts.

    Each b_j beats the a's below it and ties those equal to it: with a sorted, cumulative counts
    of a's resample at b_j's two insertion points give both, O(B (na + nb)) in all.
    """
    order = np.argsort(a)
    ordered = a[order]
    cum = np.zeros((len(weights_a), len(a) + 1))
    np.cumsum(weights_a[:, order], axis=1, out=cum[:, 1:])
    below = cum[:, np.searchsorted(ordered, b, side="left")]
    upto = cum[:, np.searchsorted(ordered, b, side="right")]
    return (weights_b * (below + upto) / 2).sum(axis=1) / (len(a) * len(b))


def prob_better(a: np.ndarray, b: np.ndarray, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> dict:
    """P(B > A) with a percentile bootstrap CI (runs of each arm resampled independently) and
    Bouthillier et al.'s verdict: ``better`` B, A, or ``None`` when neither is."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    one = np.ones((1, len(a))), np.ones((1, len(b)))
    p = float(prob_better_resampled(a, b, *one)[0])
    rng = np.random.default_rng(seed)
    boot = prob_better_resampled(a, b, resample_counts(rng, n_boot, len(a)), resample_counts(rng, n_boot, len(b)))
    low, high = (float(x) for x in np.percentile(boot, [100 * alpha / 2, 100 * (1 - alpha / 2)]))
    better = None
    if p > BOUTHILLIER_GAMMA and low > 0.5:
        better = "B"
    elif p < 1 - BOUTHILLIER_GAMMA and high < 0.5:
        better = "A"
    return {"p": p, "ci": (low, high), "better": better}


def exact_test_runs_needed(alpha: float, paired: bool = False) -> int:
    """Smallest n (runs per arm, or pairs) with which an exact two-sided rank or permutation test
    can reach p < ``alpha`` at all: its smallest p is 2 / C(2n, n) for two arms of n runs without
    ties (Mann-Whitney, or the permutation test of means), 2 / 2**n for n pairs (sign flips).
    At alpha 0.05: 4 runs per arm, 6 pairs."""
    if not 0 < alpha < 1:  # at alpha 0 no n would do: the search would never end
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    n = 1
    while 2 / (2**n if paired else math.comb(2 * n, n)) >= alpha:
        n += 1
    return n


# --- python -m analysis.compare ------------------------------------------------------------

LOWER_IS_BETTER = ("cross_entropy", "loss", "ppl", "perplexity", "error")


def higher_is_better(metric: str) -> bool:
    return not any(word in metric for word in LOWER_IS_BETTER)


def per_example_values(group, metric: str) -> np.ndarray | None:
    """(R, N) the metric of each run on each test example when it is a mean over examples
    (accuracy in percent, cross-entropy in nats), else None (a result.json number)."""
    if metric in ("test_accuracy", "accuracy"):
        return 100.0 * group.correct
    if metric in ("test_cross_entropy", "cross_entropy"):
        if group.is_language_model:
            return -np.stack([np.asarray(r.lm.target_logprobs, dtype=np.float64) for r in group.runs])
        from analysis.metrics import probabilities

        return -np.stack([probabilities(np.asarray(r.logits)[None], group.labels)[1][0] for r in group.runs])
    return None


def paired_order(runs_a: list, runs_b: list) -> tuple[list[int], list[int]]:
    """Indices of A's and B's runs that share a replicate index, in replicate order (runs without
    one, or without a partner, are left out): ``--paired`` of ``python -m analysis.compare``."""
    index_a = {r.replicate: i for i, r in enumerate(runs_a)}
    index_b = {r.replicate: i for i, r in enumerate(runs_b)}
    shared = sorted(set(index_a) & set(index_b) - {None})
    return [index_a[r] for r in shared], [index_b[r] for r in shared]


def test_set_difference(group_a, group_b) -> str | None:
    """Why the two arms cannot be paired example by example (None: one test set). The same
    labels are not enough: two test sets may share them (a synthetic set of another
    ``dataset.data_seed``), so the runs' env.json must also name the same test data:
    ``test_sha256``, or for runs that predate it the same ``data_sha256``."""
    if len(group_a.labels) != len(group_b.labels) or not np.array_equal(group_a.labels, group_b.labels):
        return "the arms were evaluated on different test sets (their test labels differ)"

    def recorded(name: str) -> tuple[set, set]:
        return tuple({getattr(r, name) for r in g.runs} for g in (group_a, group_b))

    def one(values: set) -> bool:
        return len(values) == 1 and None not in values

    test_a, test_b = recorded("test_sha256")
    if one(test_a) and one(test_b):
        if test_a == test_b:
            return None
        return (f"the arms were evaluated on different test sets with the same labels (env.json test_sha256 "
                f"{next(iter(test_a))[:12]} and {next(iter(test_b))[:12]})")
    data_a, data_b = recorded("data_sha256")
    if one(data_a) and data_a == data_b:
        return None
    return ("their test labels agree, but the runs' env.json does not show that they share the test data "
            "(no test_sha256, and data_sha256 differs or is not recorded)")


def compare_lines(
    group_a, group_b, metric: str, a: np.ndarray, b: np.ndarray, paired: bool,
    alpha: float = 0.05, n_boot: int = 1000, seed: int = 0, results: dict | None = None,
    n_boot_runs: int | None = None, run_level: bool = True,
) -> list[str]:
    """The lines ``python -m analysis.compare`` adds: multibootstrap over runs x test examples
    (``n_boot`` resamples), P(B > A) with Bouthillier's rule (its CI from ``n_boot_runs``
    resamples of the runs, default ``n_boot``), which noise dominates, and runs too few for any test.
    ``run_level=False`` (arms of copies of one run: no run-to-run noise measured) leaves out
    everything that treats the runs as independent: P(B > A) and the noise comparison.

    ``results``, when given, receives the numbers behind them for the verdict: ``multibootstrap``
    (``multibootstrap``'s dict) or ``multibootstrap_skipped`` (why not), and ``prob_better``."""
    results = {} if results is None else results
    from scipy import stats as sps

    lines = []
    xa, xb = per_example_values(group_a, metric), per_example_values(group_b, metric)
    level = f"{100 * (1 - alpha):.0f}%"
    different = None if xa is None or xb is None else test_set_difference(group_a, group_b)
    if xa is not None and xb is not None and different is None:
        if paired:  # the identity where the caller paired the runs already (analysis.compare)
            ia, ib = paired_order(group_a.runs, group_b.runs)
            xa, xb = xa[ia], xb[ib]
        mb = results["multibootstrap"] = multibootstrap(xa, xb, paired, n_boot, seed, alpha)
        how = "runs paired by replicate" if paired else "runs of each arm resampled independently"
        if not run_level:
            how += "; an arm of copies of one run adds no run-to-run noise"
        lines.append(
            f"- multibootstrap over runs x test examples ({mb['n_boot']} resamples, examples paired, {how}): "
            f"B - A = {mb['difference']:+.4g}, {level} CI [{mb['ci'][0]:+.4g}, {mb['ci'][1]:+.4g}], "
            + (f"p = {mb['p']:.3g}" if mb["p"] > 0 else f"p < {1 / mb['n_boot']:.2g} (no resample crossed 0)")
        )
        dominant = "test-set" if mb["sd_examples"] > mb["sd_runs"] else "training"
        remedy = "a larger test set" if dominant == "test-set" else "more runs"
        shares = ""
        if metric in ("test_accuracy", "accuracy"):  # each arm's own decomposition (the table's)
            parts = [variance_components(g.correct) for g in (group_a, group_b)]
            shown = [f"{arm} {min(100.0, 100.0 * p['test_set'] / p['observed']):.0f}%"
                     for arm, p in zip("AB", parts) if p["observed"] > 0]
            if shown:  # an arm without spread has no share to give
                shares = "; finite-test-set share of each arm's accuracy variance: " + ", ".join(shown)
        if run_level:
            lines.append(
                f"- noise in B - A: SD {mb['sd_examples']:.3g} from the finite test set, {mb['sd_runs']:.3g} "
                f"from training runs: {dominant} noise dominates; {remedy} would tighten the comparison most{shares}"
            )
    elif xa is not None and xb is not None:
        results["multibootstrap_skipped"] = different
        lines.append(f"- multibootstrap skipped: {results['multibootstrap_skipped']}")
    else:
        results["multibootstrap_skipped"] = f"{metric} is one number per run, not a mean over test examples"
        lines.append(f"- multibootstrap skipped: {results['multibootstrap_skipped']}")
    if not run_level:
        return lines
    sign = 1.0 if higher_is_better(metric) else -1.0
    pb = results["prob_better"] = prob_better(sign * a, sign * b, n_boot_runs or n_boot, seed, alpha)
    # Exact while the arrangements are few: scipy's "exact" assumes no ties, so tied values
    # (accuracies on a small test set) enumerate the arrangements as a permutation test instead.
    exact = math.comb(len(a) + len(b), len(a)) <= EXACT_RANK_ARRANGEMENTS
    ties = np.unique(np.r_[a, b]).size < len(a) + len(b)
    method = (sps.PermutationMethod(n_resamples=np.inf) if ties else "exact") if exact else "asymptotic"
    u = sps.mannwhitneyu(sign * b, sign * a, alternative="two-sided", method=method)
    how = "exact" if exact else "normal approximation"
    word = "higher" if sign > 0 else "lower"
    smallest = 2 / math.comb(len(a) + len(b), len(a))
    if smallest >= alpha:  # no rule verdict that the test behind it cannot support
        rule = "not applied: too few runs (below)"
        pb["better"] = None
    else:
        rule = {"B": "B is better", "A": "A is better", None: "neither is better"}[pb["better"]]
    lines.append(
        f"- P(B > A), a run of B {word} than a run of A: {pb['p']:.3f}, {level} bootstrap CI "
        f"[{pb['ci'][0]:.3f}, {pb['ci'][1]:.3f}] (Mann-Whitney U = {u.statistic:.6g}, {how} p = {u.pvalue:.3g}); "
        f"Bouthillier et al.'s rule (P > {BOUTHILLIER_GAMMA} and CI above 0.5): {rule}"
    )
    if smallest >= alpha:
        need = exact_test_runs_needed(alpha)
        lines.append(
            f"- warning: with {len(a)} and {len(b)} runs the Mann-Whitney test of P(B > A) cannot reach "
            f"p < {alpha} (its smallest possible p is {smallest:.3g}): train at least {need} runs per arm"
        )
    return lines


# --- sweep-level tables (``python -m analysis --csv FILE``) ---------------------------------


def _key_cells(group, keys: list[str]) -> dict:
    return group.cells(keys)


def class_table(sweep) -> pd.DataFrame:
    """``<stem>_classes.csv``: one row per group x class: test examples, accuracy mean and SD (%)."""
    keys = sweep.display_keys
    rows = []
    for group in sweep.groups:
        if group.is_language_model:
            continue
        classes = group.runs[0].logits.shape[1]
        mean, spread = class_spread(group.correct, group.labels, classes)
        examples = np.bincount(group.labels, minlength=classes)
        for c in range(classes):
            rows.append({**_key_cells(group, keys), "class": c, "examples": int(examples[c]),
                         "accuracy_mean": float(mean[c]), "accuracy_sd": float(spread[c])})
    from analysis.load import key_frame

    return key_frame(rows, keys + ["class", "examples", "accuracy_mean", "accuracy_sd"], keys)


def best_of_k_table(sweep) -> pd.DataFrame:
    """``<stem>_best_of_k.csv``: per group and k = 1..R, the expected best test accuracy (%) of k
    runs, its SD and its inflation over the mean run (``best_of_k``)."""
    keys = sweep.display_keys
    parts = []
    for group in sweep.groups:
        curve = best_of_k(100.0 * group.correct.mean(axis=1))
        parts.append(pd.concat([pd.DataFrame([_key_cells(group, keys)] * len(curve), dtype=object), curve], axis=1))
    columns = keys + ["k", "expected_best", "expected_best_sd", "inflation"]
    return pd.concat(parts, ignore_index=True)[columns] if parts else pd.DataFrame(columns=columns)
