"""``python -m analysis.compare DIR_A DIR_B``: is the difference between two configurations real?

    python -m analysis.compare outputs/baseline outputs/new_lr
    python -m analysis.compare outputs/table1 outputs/table1 --group-a source.name=init --group-b source.name=bitflip
    python -m analysis.compare outputs/a outputs/b --metric test_cross_entropy --paired
    python -m analysis.compare outputs/a outputs/b --this-test-set --json compare.json

Each DIR is a sweep or group directory; when it holds several configurations, pick one with
``--group-a KEY=VALUE`` / ``--group-b KEY=VALUE`` (repeatable; ``source=init`` is short for
``source.name=init``). The metric is computed per run: ``test_accuracy`` (percent) and
``test_cross_entropy`` (nats) from logits.npy and labels.npy, any other name from result.json.

Reported for B - A: the difference of means with Welch's t CI over runs (a percentile bootstrap
of the runs covered 82-93% for a 95% interval at 4-8 runs per arm in simulations; the t interval
holds its level: docs/statistics.md);
Welch's t-test; a permutation test (exact over all splits when there are at
most ``--permutations`` of them, else that many random ones; p = (1 + hits) / (1 + draws));
Cohen's d and Hedges' g; and the runs per arm a two-sided two-sample t-test (alpha 0.05) needs
for 80% power at the observed difference and the measured SDs (noncentral t, equal arms, the
two SDs pooled), and never fewer than the exact permutation test needs to reach p < alpha at all
(4 per arm, 6 pairs, at alpha 0.05: the verdict needs both tests). ``--paired`` pairs runs by replicate index (for runs that share seeds): paired
t-test and CI, sign-flip permutation test, d_z, and pairs needed for 80% power; a note says when
no pair shares a seed (seeds.json), so the pairing gains nothing.
analysis/stats.py adds the multibootstrap over runs x test examples (``--multibootstrap``
resamples; Sellam et al. 2022; only when both arms were evaluated on one test set: the same labels
and env.json ``test_sha256``, else skipped with why), P(B > A) with its CI over ``--bootstrap``
resamples of the runs, an exact Mann-Whitney p (ties included) and Bouthillier et al.'s rule
(not applied when too few runs for the rank test), which noise dominates (test set or
training), and a warning when an arm has too few runs for any rank test.

Copies of one run are one sample: an arm that varies no source (``source=none``) or whose runs'
test outputs are bitwise identical measures no run-to-run noise, so the run-level question is
"unassessed": no test over runs is computed or printed, and the verdict says to vary a source.
Arms that differ in a seed (``base_seed`` where a source is not varied in both, ``data_seed``)
get "Confounded by a seed" instead of a yes: the difference can be that seed's noise. Arms that
hold the same runs (one configuration, identical outputs) are refused; a timing metric
(``train_seconds``: shared by a pack's replicas) and options out of range are refused in one line.

One sentence, the verdict, ends the report. The run-level tests (the t-test, the permutation
test and the CI over runs) ask whether B differs from A on this test set; the multibootstrap asks
whether it would on a new test set from the same distribution. By default (``--population``) the
verdict answers the second question: "Yes" when the run-level tests all reject at alpha and the
multibootstrap's CI excludes 0; "On this test set only" when the run-level tests reject but the
multibootstrap's CI spans 0 (it names both and what could decide it); "No" when neither does;
"Borderline" otherwise. ``--this-test-set`` answers the first question from the run-level tests
alone (a yes there still names a multibootstrap CI that spans 0). A metric that is one number
per run, or arms on different test sets, have no multibootstrap: a run-level yes is then
"Beyond run-to-run noise only" (``test-set-unassessed``), never a population "Yes".
``--json FILE`` writes the verdict's ``state`` (``distinguishable``, ``this-test-set-only``,
``test-set-unassessed``, ``not-distinguishable``, ``borderline``, ``seed-confounded``,
``unassessed``), the question, the sentence and every number (those of the run-level tests null
when unassessed); the exit status is 0 whatever the verdict, 2 when the comparison is refused.

No verdict comes from a non-finite value: runs whose metric is NaN or infinite (diverged runs,
with ``--metric test_cross_entropy``) are left out and named, and with fewer than two finite
runs in an arm the comparison is refused. The notes the sweep's table gives on either
configuration (diverged runs, missing replicates, runs left out as corrupt or unreadable, runs
that saw different data) are printed too.
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from scipy import stats
from scipy.special import gammaln

from analysis.load import Group, MixedTestSetError, Run, display_keys, format_value, hashable, load_sweep
from analysis.metrics import cross_entropy, percent_correct
from analysis.render import OutputError, writing
from analysis.stats import compare_lines, exact_test_runs_needed, paired_order
from nondet import records
from nondet.seeds import SEEDABLE

# Metrics computed from a group's test arrays (the argmax once, ``Group.correct``), not result.json.
def _accuracy(group: Group) -> np.ndarray:
    return percent_correct(group.correct)


def _cross_entropy(group: Group) -> np.ndarray:
    return cross_entropy(group.logits, group.labels)


LOGIT_METRICS = {"test_accuracy": _accuracy, "accuracy": _accuracy,
                 "test_cross_entropy": _cross_entropy, "cross_entropy": _cross_entropy}


# The two questions a verdict can answer. POPULATION (the default): is B better than A on the data
# distribution, so that the difference would hold on a new test set? Both the run-level tests and
# the multibootstrap over runs x test examples must say so. THIS_TEST_SET: is B better than A on
# this particular test set? The run-level tests alone decide.
POPULATION, THIS_TEST_SET = "population", "this-test-set"
# The verdict's states (``--json``'s ``state``) and the first words of its sentence.
HEADLINES = {
    "distinguishable": "Yes",
    "this-test-set-only": "On this test set only",
    "not-distinguishable": "No",
    "borderline": "Borderline",
    # The run-level tests reject, but nothing weighed the difference against test-set noise
    # (a metric of one number per run, or arms on different test sets): not a population "Yes".
    "test-set-unassessed": "Beyond run-to-run noise only",
    # The run-level tests reject, but the arms differ in a seed: the difference can be the noise
    # of what that seed fixes, not a difference of recipes.
    "seed-confounded": "Confounded by a seed",
    # An arm cannot measure run-to-run noise (its runs are copies of one run): no run-level test.
    "unassessed": "Unassessed",
}
# Timings: one per job, shared by every replica of a pack, and a cost rather than a quality.
TIMING_SUFFIXES = ("_seconds", "_time", "_hours", "_minutes")


class SelectionError(ValueError):
    """A directory does not hold exactly one configuration matching the filters."""


# --- choosing the runs ---------------------------------------------------------------------


def _matches(params: dict, key: str, text: str) -> bool:
    if key not in params and f"{key}.name" in params:
        key = f"{key}.name"
    if key not in params:
        return False
    actual = params[key]
    if format_value(actual) == text:
        return True
    try:
        return hashable(yaml.safe_load(text)) == actual
    except yaml.YAMLError:
        return False


def select_group(directory: Path, filters: list[str], flag: str) -> Group:
    """The one group below ``directory`` that matches every ``KEY=VALUE`` filter."""
    sweep = load_sweep(directory)
    if not sweep.groups:
        raise SelectionError(sweep.refused[0][1] if sweep.refused else f"no finished runs below {directory}")
    for f in filters:
        if "=" not in f:
            raise SelectionError(f"{flag} takes KEY=VALUE (e.g. source.name=init), got {f!r}")
    parsed = [f.split("=", 1) for f in filters]
    chosen = [g for g in sweep.groups if all(_matches(g.params, k, v) for k, v in parsed)]
    if len(chosen) == 1:
        return chosen[0]
    _refuse_left_out_group(sweep.refused, parsed, chosen)
    candidates = chosen or sweep.groups
    keys = display_keys([g.key for g in candidates])
    listing = "\n".join(
        "  " + " ".join(f"{flag} {k}={format_value(g.params.get(k))}" for k in keys) + f"   ({len(g.runs)} runs)"
        for g in candidates
    )
    if not chosen:
        what = "has no configuration matching " + " ".join(filters)
    else:
        what = f"has {len(chosen)} configurations matching " + " ".join(filters) if filters else f"holds {len(chosen)} configurations"
    raise SelectionError(f"{directory} {what}; pick one with {flag} KEY=VALUE:\n{listing}")


def _refuse_left_out_group(refused: list[tuple[Group, str]], parsed: list[list[str]], chosen: list[Group]) -> None:
    """A filter that matches only a configuration the table leaves out (its runs mix test sets)
    gets the table's reason, not 'no configuration matches'."""
    matching = [reason for g, reason in refused if all(_matches(g.params, k, v) for k, v in parsed)]
    if matching and not chosen:
        raise SelectionError(matching[0])


def finite_arm(group: Group, values: np.ndarray, metric: str, arm: str) -> tuple[list[Run], np.ndarray, list[str]]:
    """The runs of an arm whose metric is finite, their values, and a note naming the others.

    A diverged run's cross-entropy is NaN or infinite: it would turn every statistic into NaN
    (and a NaN difference into a "yes"). It is left out, named; fewer than 2 left is refused.
    """
    finite = np.isfinite(values)
    runs = [r for r, ok in zip(group.runs, finite) if ok]
    if finite.all():
        return runs, values, []
    bad = [r.path.name for r, ok in zip(group.runs, finite) if not ok]
    shown = ", ".join(bad[:8]) + (", ..." if len(bad) > 8 else "")
    if len(runs) < 2:
        raise SelectionError(
            f"{arm}: only {len(runs)} of {len(values)} runs have a finite {metric} (non-finite: "
            f"{shown}; diverged runs): too few to compare. Compare another metric (test_accuracy), "
            f"or lower the learning rate"
        )
    note = (
        f"{arm}: {len(bad)} of {len(values)} runs left out: their {metric} is not finite "
        f"({shown}; diverged runs). The comparison is of the runs that did not diverge; how often "
        f"each configuration diverges is a difference of its own"
    )
    return runs, values[finite], [note]


def arm_notes(group: Group, arm: str, shown: int = 10) -> list[str]:
    """What the sweep's table says about the arm's configuration, and its runs left out (corrupt,
    unreadable, failed, unfinished: a selection the comparison does not see)."""
    notes = [f"{arm}: {n}" for n in group.notes]
    notes += [f"{arm}: {p.status} run left out: {p.path}: {p.reason}" for p in group.problems[:shown]]
    if len(group.problems) > shown:
        notes.append(f"{arm}: and {len(group.problems) - shown} more runs left out (python -m analysis lists them)")
    return notes


def run_values(group: Group, metric: str) -> np.ndarray:
    """The metric of every run of the group, (R,)."""
    if metric in LOGIT_METRICS and not group.is_language_model:  # LM runs: from result.json
        return LOGIT_METRICS[metric](group)
    values = [run.result.get(metric) for run in group.runs]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        numeric = sorted(k for k, v in group.runs[0].result.items() if isinstance(v, (int, float)) and not isinstance(v, bool))
        raise SelectionError(
            f"metric {metric!r} is not a number in every result.json; choose test_accuracy, "
            f"test_cross_entropy or one of {numeric}"
        )
    return np.asarray(values, dtype=float)


def _same_outputs(one: Run, other: Run) -> bool:
    """What the two runs computed on the test set is the same: their logits (a language model's
    target log-probabilities, then its predictions) bitwise equal, by the digest the sweep's notes
    already computed (``Run.outputs_digest``), and free of NaN, which np.array_equal never calls
    equal (two diverged runs are not taken for one)."""
    a, b = one.outputs_digest, other.outputs_digest
    if a.sha256 != b.sha256 or a.nan:
        return False
    return one.lm is None or np.array_equal(one.lm.predictions, other.lm.predictions)


def copies_of_one_run(group: Group, runs: list[Run], arm: str) -> str:
    """Why the arm's runs are copies of one run ("" when they are not): it varies no source, or
    their test outputs are bitwise identical. Copies are one sample: they measure no run-to-run
    noise, and tests that count them as independent runs report a precision they do not have."""
    vary = group.params.get("source.vary")
    if isinstance(vary, (list, tuple)) and not vary:
        return (f"{arm} varies no source (source={group.params.get('source.name')}): its {len(runs)} runs "
                "are copies of one run")
    if all(_same_outputs(runs[0], r) for r in runs[1:]):
        return f"{arm}'s {len(runs)} runs are bitwise copies of one run (identical test outputs)"
    return ""


def same_configuration(group_a: Group, group_b: Group) -> list[str]:
    """Refuses arms that hold the same runs: one configuration (every identity key equal) whose
    runs of each shared replicate index are one directory or have identical test outputs (one
    training, run twice: a sweep of another name that repeats a configuration). A note for one
    configuration whose runs differ (trained elsewhere or at another time)."""
    if group_a.key != group_b.key:
        return []
    by_replicate = {r.replicate: r for r in group_b.runs}
    pairs = [(r, by_replicate[r.replicate]) for r in group_a.runs if r.replicate in by_replicate]
    if pairs and all(x.path.resolve() == y.path.resolve() or _same_outputs(x, y) for x, y in pairs):
        shown = ", ".join(x.path.name for x, _ in pairs[:4]) + (", ..." if len(pairs) > 4 else "")
        raise SelectionError(
            f"A and B are the same configuration and hold the same runs ({shown}: one directory, or identical "
            "test outputs), so B would be compared with itself; pick different ones with --group-a / --group-b"
        )
    return ["A and B are the same configuration (every identity key equal): the comparison is of where or "
            "when their runs were trained, not of two recipes"]


def seed_confound(group_a: Group, group_b: Group) -> str:
    """The seed keys the arms differ in, and what each fixes ("" when none): a difference
    between such arms can be that seed's noise rather than a difference of recipes."""
    pa, pb = group_a.params, group_b.params
    differ = [k for k in sorted(set(pa) | set(pb)) if pa.get(k) != pb.get(k) and k.rsplit(".", 1)[-1].endswith("seed")]
    both = set(pa.get("source.vary") or ()) & set(pb.get("source.vary") or ())
    fixed = [s for s in SEEDABLE if s != "bitflip" and s not in both]  # a bit flip needs bitflip varied
    parts = []
    for k in differ:
        values = f"{format_value(pa.get(k))} and {format_value(pb.get(k))}"
        if k == "base_seed":
            if fixed:
                parts.append(f"the arms differ in base_seed ({values}), which seeds every source they do not both "
                             f"vary ({', '.join(fixed)}): the difference can be training noise of those sources "
                             "(compare arms of one base_seed, or vary them in both: source=all)")
        else:
            parts.append(f"the arms differ in {k} ({values}): the difference can be the noise of what that seed "
                         f"draws (compare arms of one {k})")
    return "; ".join(parts) + ", not a difference of recipes" if parts else ""


def unshared_seeds_note(runs_a: list[Run], runs_b: list[Run]) -> list[str]:
    """``--paired`` gains only where a pair shares seeds: a note when no pair shares the seed of
    any source either arm varies (seeds.json), so the pairing removes no shared noise."""
    def seeds(run: Run) -> dict:
        return (run.seeds or {}).get("seeds") or {}

    def varied(run: Run) -> set:
        return set((run.seeds or {}).get("vary") or ())

    pairs = [(seeds(x), seeds(y), varied(x) | varied(y)) for x, y in zip(runs_a, runs_b)]
    if not pairs or not all(sx and sy and v for sx, sy, v in pairs):
        return []  # seeds not recorded: nothing to say
    if any(sx.get(s) is not None and sx.get(s) == sy.get(s) for sx, sy, v in pairs for s in v):
        return []
    return ["--paired: no pair of runs shares the seed of a source either arm varies (seeds.json), so pairing "
            "by replicate index removes no shared noise; compare without --paired"]


# --- statistics ----------------------------------------------------------------------------


def hedges_correction(df: float) -> float:
    """J(df) = Gamma(df/2) / (sqrt(df/2) Gamma((df-1)/2)), the small-sample bias correction of d."""
    if df <= 1:
        return math.nan
    return math.exp(gammaln(df / 2) - 0.5 * math.log(df / 2) - gammaln((df - 1) / 2))


def t_test_power(effect: float, n: int, paired: bool, alpha: float = 0.05) -> float:
    """Power of the two-sided t-test at standardized effect ``effect``: two arms of n runs each
    (df = 2n - 2, ncp = effect sqrt(n/2)) or n pairs (df = n - 1, ncp = effect sqrt(n))."""
    df = n - 1 if paired else 2 * n - 2
    ncp = effect * math.sqrt(n if paired else n / 2)
    crit = stats.t.ppf(1 - alpha / 2, df)
    return float(stats.nct.sf(crit, df, ncp) + stats.nct.cdf(-crit, df, ncp))


def runs_for_power(effect: float, paired: bool, alpha: float = 0.05, power: float = 0.8, limit: int = 10**9) -> int | None:
    """Smallest n >= 2 (per arm, or pairs) reaching ``power``; None if no n up to ``limit`` does."""
    effect = abs(effect)
    if not effect > 0:
        return None
    if math.isinf(effect):
        return 2
    low, high = 1, 2
    while t_test_power(effect, high, paired, alpha) < power:
        low, high = high, high * 2
        if high > limit:
            return None
    while high - low > 1:  # power grows with n: bisect between a failing and a passing n
        mid = (low + high) // 2
        low, high = (low, mid) if t_test_power(effect, mid, paired, alpha) >= power else (mid, high)
    return high


def _permutation_p(observed: float, statistics: np.ndarray, exact: bool) -> float:
    # Relative tolerance: the same split computed in another order must count as a tie.
    hits = int(np.count_nonzero(np.abs(statistics) >= abs(observed) * (1 - 1e-9) - 1e-300))
    return hits / len(statistics) if exact else (1 + hits) / (1 + len(statistics))


def permutation_test(a: np.ndarray, b: np.ndarray, n_perm: int, rng: np.random.Generator) -> tuple[float, bool]:
    """Two-sided p of mean(b) - mean(a) under exchangeable labels; (p, exact?)."""
    pooled = np.concatenate([a, b])
    n, na = len(pooled), len(a)
    exact = math.comb(n, na) <= n_perm
    if exact:
        in_a = np.zeros((math.comb(n, na), n), dtype=bool)
        for row, chosen in enumerate(itertools.combinations(range(n), na)):
            in_a[row, list(chosen)] = True
    else:
        order = rng.permuted(np.tile(np.arange(n), (n_perm, 1)), axis=1)
        in_a = np.zeros((n_perm, n), dtype=bool)
        np.put_along_axis(in_a, order[:, :na], True, axis=1)
    sum_a = in_a @ pooled
    diffs = (pooled.sum() - sum_a) / (n - na) - sum_a / na
    return _permutation_p(b.mean() - a.mean(), diffs, exact), exact


def sign_flip_test(d: np.ndarray, n_perm: int, rng: np.random.Generator) -> tuple[float, bool]:
    """Two-sided p of mean(d) under symmetric paired differences; (p, exact?)."""
    exact = 2 ** len(d) <= n_perm
    if exact:
        signs = 1 - 2 * ((np.arange(2 ** len(d))[:, None] >> np.arange(len(d))) & 1)
    else:
        signs = rng.choice([-1.0, 1.0], size=(n_perm, len(d)))
    return _permutation_p(d.mean(), signs @ d / len(d), exact), exact


@dataclass
class Comparison:
    metric: str
    label_a: str
    label_b: str
    a: np.ndarray
    b: np.ndarray
    paired: bool
    alpha: float
    power: float
    difference: float
    ci: tuple[float, float]
    t: float
    df: float
    p_t: float
    p_perm: float
    perm_exact: bool
    effect: float  # Cohen's d, or d_z when paired
    hedges_g: float
    n_needed: int | None
    n_boot: int
    n_perm: int
    seed: int
    notes: list[str] = field(default_factory=list)
    question: str = POPULATION  # the question the verdict answers: POPULATION or THIS_TEST_SET
    multibootstrap: dict | None = None  # analysis.stats.multibootstrap's dict, when the metric has one
    test_set_unassessed: str = ""  # why there is no multibootstrap (the verdict names it)
    # Why the run-level question cannot be assessed: an arm whose runs are copies of one run (or
    # runs that all give one value) measures no run-to-run noise. Non-empty: state "unassessed".
    copies: list[str] = field(default_factory=list)
    # A seed key the arms differ in (base_seed, dataset.data_seed) and what it fixes: a run-level
    # difference can be that seed's noise, never called a difference of recipes.
    seed_confound: str = ""

    @property
    def verdict(self) -> str:
        return verdict(self)

    @property
    def state(self) -> str:
        return verdict_state(self)


def compare_samples(
    a: np.ndarray,
    b: np.ndarray,
    metric: str = "test_accuracy",
    paired: bool = False,
    alpha: float = 0.05,
    power: float = 0.8,
    n_boot: int = 10000,
    n_perm: int = 10000,
    seed: int = 0,
    label_a: str = "A",
    label_b: str = "B",
) -> Comparison:
    """Every statistic of the module docstring for samples ``a`` and ``b`` (B - A)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("the samples hold NaN or infinite values (diverged runs?): leave them out first")
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"need at least 2 runs per arm (an SD needs two), got {len(a)} and {len(b)}")
    if paired and len(a) != len(b):
        raise ValueError("paired samples must have the same length")
    if not (0 < alpha < 0.5 and 0 < power < 1):
        raise ValueError(f"alpha must lie in (0, 0.5) and power in (0, 1), got {alpha} and {power}")
    rng = np.random.default_rng(seed)
    difference = float(b.mean() - a.mean())
    if paired:
        d = b - a
        sd_d = float(d.std(ddof=1))
        t, p_t = _t_test(lambda: stats.ttest_rel(b, a), sd_d > 0)
        df = float(len(d) - 1)
        p_perm, exact = sign_flip_test(d, n_perm, rng)
        effect = difference / sd_d if sd_d > 0 else math.copysign(math.inf, difference) if difference else math.nan
        g = effect * hedges_correction(df) if math.isfinite(effect) else effect
    else:
        sa, sb = float(a.std(ddof=1)), float(b.std(ddof=1))
        t, p_t = _t_test(lambda: stats.ttest_ind(b, a, equal_var=False), sa > 0 or sb > 0)
        va, vb = sa**2 / len(a), sb**2 / len(b)  # Welch-Satterthwaite degrees of freedom
        df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1)) if va + vb > 0 else math.nan
        p_perm, exact = permutation_test(a, b, n_perm, rng)
        pooled = math.sqrt(((len(a) - 1) * sa**2 + (len(b) - 1) * sb**2) / (len(a) + len(b) - 2))
        effect = difference / pooled if pooled > 0 else math.copysign(math.inf, difference) if difference else math.nan
        g = effect * hedges_correction(len(a) + len(b) - 2) if math.isfinite(effect) else effect
    # The power calculation pools the two measured SDs with equal weight: the arms it plans are equal.
    if paired:
        planning_effect = effect
    else:
        planning_sd = math.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2)
        planning_effect = difference / planning_sd if planning_sd > 0 else (math.inf if difference else math.nan)
    n_needed = runs_for_power(planning_effect, paired, alpha, power) if not math.isnan(planning_effect) else None
    if n_needed is not None:  # the verdict also needs the permutation test, which few runs cannot pass
        n_needed = max(n_needed, exact_test_runs_needed(alpha, paired))
    low, high = difference_ci(a, b, paired, alpha)
    notes = []
    if exact:
        # The observed arrangement and its mirror image are always among the most extreme.
        arrangements = 2 ** len(a) if paired else math.comb(len(a) + len(b), len(a))
        smallest = (2 if paired or len(a) == len(b) else 1) / arrangements
        if smallest >= alpha:
            notes.append(
                f"with this few runs the permutation test cannot reach p < {alpha} "
                f"(its smallest possible p is {smallest:.3g}): add runs"
            )
    copies = []
    if not (np.any(a != a[0]) or np.any(b != b[0])):
        copies.append(f"every run of each arm gives the same {metric}, so the runs show no run-to-run noise to test against")
    return Comparison(
        metric, label_a, label_b, a, b, paired, alpha, power, difference, (float(low), float(high)),
        t, df, p_t, p_perm, exact, effect, g, n_needed, n_boot, n_perm, seed, notes, copies=copies,
    )


def difference_ci(a: np.ndarray, b: np.ndarray, paired: bool, alpha: float = 0.05) -> tuple:
    """The (1 - alpha) CI of mean(b) - mean(a) over runs: Welch's t interval, or the paired t
    interval of b - a. Unlike a percentile bootstrap of the runs (which covered 82-93% for a 95%
    interval at 4-8 runs per arm), it holds its level at small n for normal run-to-run noise.
    ``a``, ``b`` may be (..., R) stacks: one interval per leading index. A difference with no
    spread at all (every run alike) has the point interval [d, d]."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # scipy's "nearly identical data"
        test = stats.ttest_rel(b, a, axis=-1) if paired else stats.ttest_ind(b, a, equal_var=False, axis=-1)
        low, high = test.confidence_interval(1 - alpha)
    d = b.mean(axis=-1) - a.mean(axis=-1)
    spread = (b - a).std(axis=-1) if paired else np.hypot(a.std(axis=-1), b.std(axis=-1))
    low, high = np.where(spread == 0, d, low), np.where(spread == 0, d, high)
    return (float(low), float(high)) if np.ndim(low) == 0 else (low, high)


def _t_test(run, has_variance: bool) -> tuple[float, float]:
    if not has_variance:
        return math.nan, math.nan
    with warnings.catch_warnings():
        # scipy warns when one arm has no variance (a deterministic source); the test is valid.
        warnings.simplefilter("ignore", RuntimeWarning)
        result = run()
    return float(result.statistic), float(result.pvalue)


def run_level_state(c: Comparison) -> str:
    """What the tests over runs say (t-test, permutation test, CI over runs): whether the
    difference stands out of run-to-run noise on this test set; "unassessed" when an arm's runs
    are copies of one run (they measure no run-to-run noise, and copies are not independent)."""
    if c.copies:
        return "unassessed"
    votes = _votes(c)
    if all(votes):
        return "distinguishable"
    return "not-distinguishable" if not any(votes) else "borderline"


def _votes(c: Comparison) -> list[bool]:
    votes = [c.p_perm < c.alpha, not (c.ci[0] <= 0 <= c.ci[1])]
    if math.isfinite(c.p_t):
        votes.append(c.p_t < c.alpha)
    return votes


def beyond_test_set_noise(c: Comparison) -> bool | None:
    """Whether the multibootstrap's CI (runs and test examples resampled) excludes 0; None
    without a multibootstrap."""
    if c.multibootstrap is None:
        return None
    low, high = c.multibootstrap["ci"]
    return not (low <= 0 <= high)


def verdict_state(c: Comparison) -> str:
    """The verdict's state, a key of ``HEADLINES``.

    "unassessed" when the run-level question cannot be asked (copies), "seed-confounded" when
    the run-level tests reject between arms that differ in a seed. For the population question
    "distinguishable" needs the run-level tests and the multibootstrap to agree; run-level tests
    that reject while the multibootstrap's CI spans 0 give "this-test-set-only", with no
    multibootstrap at all "test-set-unassessed", and a multibootstrap that rejects while the
    run-level tests do not gives "borderline". For the this-test-set question the run-level
    tests alone decide.
    """
    run, beyond = run_level_state(c), beyond_test_set_noise(c)
    if run == "distinguishable" and c.seed_confound:
        return "seed-confounded"
    if c.question == THIS_TEST_SET or run == "unassessed":
        return run
    if beyond is None:
        return "test-set-unassessed" if run == "distinguishable" else run
    if run == "distinguishable":
        return "distinguishable" if beyond else "this-test-set-only"
    return "borderline" if run == "not-distinguishable" and beyond else run


def _p_text(p: float, resamples: int) -> str:
    """A resampling p: "p < 1/resamples" when no resample crossed (below its resolution)."""
    return f"p = {p:.3g}" if p > 0 else f"p < {1 / resamples:.2g}"


def verdict(c: Comparison) -> str:
    """One plain sentence answering ``c.question``: is the difference distinguishable from
    run-to-run noise, and (the population question) from the finite test set's noise?"""
    arms = f"{len(c.a)} pairs of runs" if c.paired else f"{len(c.a)} and {len(c.b)} runs"
    change = f"B - A = {c.difference:+.4g}"
    level = f"{100 * (1 - c.alpha):.0f}%"
    state, run, mb = verdict_state(c), run_level_state(c), c.multibootstrap
    if mb is not None:
        multi = f"multibootstrap {level} CI [{mb['ci'][0]:+.4g}, {mb['ci'][1]:+.4g}], {_p_text(mb['p'], mb.get('n_boot', 1))}"
    if state == "unassessed":
        need = exact_test_runs_needed(c.alpha, c.paired)
        test_set = f"; against test-set noise alone: {multi}" if mb is not None else ""
        return (
            f"Unassessed: the difference in {c.metric} ({change}) cannot be weighed against run-to-run "
            f"noise ({'; '.join(c.copies)}): copies of one run are one sample however many there are. "
            f"Vary a source (source=init, or source=all) with replicates>={need} in each arm and "
            f"compare again{test_set}."
        )
    # What a run-level "yes" means beyond this test set, or that nothing here says.
    if state == "seed-confounded":
        caveat = f", but {c.seed_confound}"
        if c.test_set_unassessed:
            caveat += f"; test-set noise is not assessed ({c.test_set_unassessed})"
    elif state == "this-test-set-only":
        if mb["sd_examples"] > mb["sd_runs"]:
            remedy = "a larger test set or more runs could decide it (test-set noise dominates, so a larger test set would help most)"
        else:
            remedy = "a larger test set or more runs could decide it (training noise dominates, so more runs would help most)"
        caveat = f", but not beyond test-set noise ({multi}); {remedy}"
    elif run == "distinguishable" and mb is not None:
        caveat = (
            f" and from test-set noise ({multi})"
            if beyond_test_set_noise(c)
            else f", but not beyond test-set noise ({multi}): a new test set from the same distribution might not show it"
        )
    elif c.test_set_unassessed or state == "test-set-unassessed":
        why = c.test_set_unassessed or "no per-example values to resample"
        caveat = f"; test-set noise is not assessed ({why})"
    else:
        caveat = ""
    on_test_set = " on this test set" if mb is not None else ""
    what = f"the difference in {c.metric} ({change}; {level} CI over runs {c.ci[0]:+.4g} to {c.ci[1]:+.4g})"
    tests = f"t-test p = {c.p_t:.3g}, permutation p = {c.p_perm:.3g}"
    unit = "pairs" if c.paired else "runs per arm"
    need = (
        f"about {c.n_needed} {unit} would detect a difference this size{on_test_set} with {100 * c.power:.0f}% power"
        if c.n_needed
        else "no number of runs would detect a zero difference"
    )
    if run == "distinguishable":
        return f"{HEADLINES[state]}: {what} is distinguishable from run-to-run noise{on_test_set} with {arms} ({tests}){caveat}."
    seed = f"; note that {c.seed_confound}" if c.seed_confound else ""
    if state == "not-distinguishable":
        return f"No: {what} is not distinguishable from run-to-run noise with {arms} ({tests}); {need}{seed}."
    if mb is not None and c.question == POPULATION:
        tests += f"; {multi}"
    return f"Borderline: the tests disagree about {what} at alpha = {c.alpha} ({tests}); {need}{seed}."


def format_comparison(c: Comparison, extra: list[str] = ()) -> str:
    """The report printed by ``python -m analysis.compare``; ``extra`` lines (analysis/stats.py's
    multibootstrap and P(B > A)) go before the verdict."""

    def arm(name: str, label: str, values: np.ndarray) -> str:
        return f"- {name}: {label}: {len(values)} runs, mean {values.mean():.6g}, SD {values.std(ddof=1):.4g}"

    effect_name = "d_z (mean difference / SD of differences)" if c.paired else "Cohen's d"
    test_name = "paired t-test" if c.paired else "Welch's t-test"
    perm_name = "sign-flip permutation test" if c.paired else "permutation test"
    perm_how = "exact, all arrangements" if c.perm_exact else f"{c.n_perm} random arrangements, seed {c.seed}"
    needed = str(c.n_needed) if c.n_needed else "none (the observed difference is 0)"
    if c.copies:  # tests of copies as if they were independent runs would be numbers of nothing
        run_level = [f"- run-level tests not computed: {reason}" for reason in c.copies]
    else:
        ci_name = "paired t" if c.paired else "Welch's t"
        run_level = [
            f"- difference of means B - A: {c.difference:+.6g}, {100 * (1 - c.alpha):.0f}% CI over runs "
            f"[{c.ci[0]:+.6g}, {c.ci[1]:+.6g}] ({ci_name})",
            f"- {test_name}: t = {c.t:.4g}, df = {c.df:.4g}, p = {c.p_t:.4g}",
            f"- {perm_name} ({perm_how}): p = {c.p_perm:.4g}",
            f"- effect size: {effect_name} = {c.effect:.4g}, Hedges' g = {c.hedges_g:.4g}",
            f"- {'pairs' if c.paired else 'runs per arm'} for {100 * c.power:.0f}% power at alpha {c.alpha}: {needed}",
        ]
    lines = [
        f"Comparing {c.metric} ({'paired by replicate' if c.paired else 'independent runs'}):",
        arm("A", c.label_a, c.a),
        arm("B", c.label_b, c.b),
        *run_level,
        *[f"- note: {n}" for n in c.notes],
        *extra,
        "",
        c.verdict,
    ]
    return "\n".join(lines) + "\n"


# --- command line --------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """Refusals in one line (``error: argument --alpha: ...``), without the usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _bounded(kind: type, low: float, high: float | None = None, closed: bool = True):
    """An argparse type: a ``kind`` number at least ``low`` (or strictly between ``low`` and
    ``high`` when ``high`` is given), refused in one line naming the range."""
    where = f"in ({low:g}, {high:g})" if high is not None else f">= {low:g}"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}; give one {where}")
        ok = low < value < high if high is not None else value >= low
        if not (ok and math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"{text} is out of range; give one {where}")
        return value

    return parse


def _quality_metric(name: str) -> str:
    """A metric that measures each run's model: a timing is refused (a pack writes one, shared
    by its replicas, and lower would be better)."""
    if name.endswith(TIMING_SUFFIXES):
        raise argparse.ArgumentTypeError(
            f"{name} is a timing, not a per-run quality measure (a pack's replicas share one); "
            "compare test_accuracy, test_cross_entropy or another result.json measure of the model"
        )
    return name


# Fewer resamples than this give intervals and p-values too coarse to vote (one resample is a point).
MIN_RESAMPLES = 100


def parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m analysis.compare",
        description="Is the difference between the runs of two configurations real, or run-to-run noise?",
    )
    p.add_argument("dir_a", metavar="DIR_A", type=Path)
    p.add_argument("dir_b", metavar="DIR_B", type=Path)
    p.add_argument("--metric", type=_quality_metric, default="test_accuracy",
                   help="test_accuracy (default), test_cross_entropy, or a result.json key (not a timing)")
    p.add_argument("--group-a", action="append", default=[], metavar="KEY=VALUE", help="pick A's configuration (repeatable)")
    p.add_argument("--group-b", action="append", default=[], metavar="KEY=VALUE", help="pick B's configuration (repeatable)")
    p.add_argument("--paired", action="store_true", help="pair runs by replicate index (runs that share seeds)")
    p.add_argument("--alpha", type=_bounded(float, 0, 0.5), default=0.05, help="the tests' level, in (0, 0.5) (0.05)")
    p.add_argument("--power", type=_bounded(float, 0, 1), default=0.8, help="power the runs needed are planned for, in (0, 1) (0.8)")
    p.add_argument("--bootstrap", type=_bounded(int, MIN_RESAMPLES), default=10000, metavar="B",
                   help=f"resamples of the runs for the CI of P(B > A), >= {MIN_RESAMPLES} (10000)")
    p.add_argument("--permutations", type=_bounded(int, MIN_RESAMPLES), default=10000, metavar="P",
                   help=f"random arrangements of the permutation test when not exact, >= {MIN_RESAMPLES} (10000)")
    p.add_argument("--multibootstrap", type=_bounded(int, MIN_RESAMPLES), default=1000, metavar="B",
                   help=f"resamples of runs x examples, >= {MIN_RESAMPLES} (1000)")
    p.add_argument("--seed", type=_bounded(int, 0), default=0, help="seed of the resampling, >= 0 (0)")
    question = p.add_mutually_exclusive_group()
    question.add_argument(
        "--population", dest="question", action="store_const", const=POPULATION,
        help="the verdict asks whether B differs from A on the data distribution: the run-level tests "
        "and the multibootstrap over runs x test examples must agree (the default)",
    )
    question.add_argument(
        "--this-test-set", dest="question", action="store_const", const=THIS_TEST_SET,
        help="the verdict asks whether B differs from A on this test set: the run-level tests decide",
    )
    p.set_defaults(question=POPULATION)
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the numbers and the verdict's state as JSON")
    return p


def _plain(value):
    """JSON-ready: numpy scalars as numbers, tuples as lists, NaN and infinity as null."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.generic, float)):
        value = value.item() if isinstance(value, np.generic) else value
        return value if not isinstance(value, float) or math.isfinite(value) else None
    return value


def comparison_json(c: Comparison, results: dict) -> dict:
    """What ``--json FILE`` writes: the verdict's state and sentence and the numbers behind them."""

    def arm(label: str, values: np.ndarray) -> dict:
        return {"label": label, "runs": len(values), "mean": values.mean(), "sd": values.std(ddof=1)}

    run_level = {
        "ci": c.ci, "t": c.t, "df": c.df, "p_t": c.p_t, "p_perm": c.p_perm, "effect": c.effect,
        "hedges_g": c.hedges_g, "n_needed": c.n_needed, "prob_better": results.get("prob_better"),
    }
    if c.copies:  # numbers computed on copies as if independent: none are written
        run_level = dict.fromkeys(run_level)
    return _plain({
        "metric": c.metric, "question": c.question, "state": c.state, "verdict": c.verdict,
        "run_level": run_level_state(c), "run_level_unassessed": c.copies or None,
        "seed_confound": c.seed_confound or None, "beyond_test_set_noise": beyond_test_set_noise(c),
        "a": arm(c.label_a, c.a), "b": arm(c.label_b, c.b), "paired": c.paired, "alpha": c.alpha,
        "difference": c.difference, **run_level,
        "multibootstrap": c.multibootstrap, "multibootstrap_skipped": c.test_set_unassessed or None,
        "notes": c.notes,
    })


def _labels(dir_a: Path, group_a: Group, dir_b: Path, group_b: Group) -> tuple[str, str]:
    """Each arm as its folder and what sets it apart: its source and every key whose value
    differs between the two (``init, epochs=1``), whatever selected it."""
    keys = display_keys([group_a.key, group_b.key])
    return f"{dir_a} [{group_a.label(keys)}]", f"{dir_b} [{group_b.label(keys)}]"


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        group_a = select_group(args.dir_a, args.group_a, "--group-a")
        group_b = select_group(args.dir_b, args.group_b, "--group-b")
        notes = same_configuration(group_a, group_b) + arm_notes(group_a, "A") + arm_notes(group_b, "B")
        runs_a, a, dropped_a = finite_arm(group_a, run_values(group_a, args.metric), args.metric, "A")
        runs_b, b, dropped_b = finite_arm(group_b, run_values(group_b, args.metric), args.metric, "B")
        notes += dropped_a + dropped_b
        if args.paired:
            ia, ib = paired_order(runs_a, runs_b)
            dropped = len(a) + len(b) - 2 * len(ia)
            if dropped:
                notes.append(f"{dropped} runs without a partner of the same replicate index were left out")
            a, b = a[ia], b[ib]
            runs_a, runs_b = [runs_a[i] for i in ia], [runs_b[i] for i in ib]
            notes += unshared_seeds_note(runs_a, runs_b)
        result = compare_samples(
            a, b, args.metric, args.paired, args.alpha, args.power, args.bootstrap, args.permutations, args.seed,
            *_labels(args.dir_a, group_a, args.dir_b, group_b),
        )
        copies = [why for why in (copies_of_one_run(group_a, runs_a, "A"), copies_of_one_run(group_b, runs_b, "B")) if why]
        result.copies = copies or result.copies
        result.seed_confound = seed_confound(group_a, group_b)
    except (SelectionError, MixedTestSetError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    result.notes += notes
    # The per-example statistics see the same runs as the verdict: finite ones (and, paired, partnered).
    results: dict = {}
    extra = compare_lines(
        group_a.with_runs(runs_a), group_b.with_runs(runs_b), args.metric, result.a, result.b, args.paired, args.alpha, args.multibootstrap, args.seed,
        results=results, n_boot_runs=args.bootstrap, run_level=not result.copies,
    )
    result.question = args.question
    result.multibootstrap = results.get("multibootstrap")
    result.test_set_unassessed = results.get("multibootstrap_skipped", "")
    print(format_comparison(result, extra), end="")
    if args.json:
        try:
            with writing("json", args.json):
                args.json.parent.mkdir(parents=True, exist_ok=True)
                records.write_json(args.json, comparison_json(result, results))
        except OutputError as e:
            print(e, file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
