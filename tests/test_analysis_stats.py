"""analysis/stats.py against independent references: simulations with known variances, scipy,
and direct loops on small inputs."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from analysis import __main__ as cli
from analysis import compare, stats
from fake_runs import fake_config, write_group


def _simulate(rng, sims, runs, n, shift_sd, low=0.2, high=0.8):
    """(sims, runs, n) 0/1 errors: example difficulty q_i ~ U(low, high) drawn afresh per
    simulation (a new test set from the distribution), run r's error probability q_i + s_r with
    s_r = +-shift_sd (so the distribution-wise variance of the error rate is shift_sd^2)."""
    q = rng.uniform(low, high, size=(sims, 1, n))
    s = shift_sd * rng.choice([-1.0, 1.0], size=(sims, runs, 1))
    return rng.random((sims, runs, n)) < q + s


@pytest.mark.parametrize("shift_sd", [0.0, 0.03])
def test_distribution_variance_estimator_is_unbiased(shift_sd):
    rng = np.random.default_rng(0)
    errors = _simulate(rng, sims=3000, runs=8, n=150, shift_sd=shift_sd)
    estimates = np.array([stats.variance_components(e)["distribution"] for e in errors])
    naive = np.array([stats.variance_components(e)["observed"] for e in errors])
    se = estimates.std(ddof=1) / math.sqrt(len(estimates))
    assert abs(estimates.mean() - shift_sd**2) < 3 * se
    # The test can tell: the raw variance of test accuracy is far off the distribution-wise one.
    assert naive.mean() - shift_sd**2 > 10 * se


def test_independent_errors_prediction_matches_observed_sd():
    rng = np.random.default_rng(1)
    q = rng.uniform(0.02, 0.6, size=400)
    errors = rng.random((4000, 400)) < q  # every run errs independently: no training effect
    correct = ~errors
    row, _ = stats.stats_columns(correct, np.zeros(400, dtype=int), None)
    observed = 100 * correct.mean(axis=1).std(ddof=1)
    assert row["accuracy_sd_test_set"] == pytest.approx(observed, rel=0.05)
    assert row["accuracy_sd_test_set"] == pytest.approx(100 * math.sqrt((q * (1 - q)).sum()) / 400, rel=0.02)
    assert row["accuracy_sd_distribution"] < 0.2 * observed


def test_negative_distribution_variance_is_zero_with_a_note():
    correct = np.array([[1, 0, 1, 0], [0, 1, 0, 1], [1, 0, 1, 0], [0, 1, 0, 1]], dtype=bool)
    row, notes = stats.stats_columns(correct, np.zeros(4, dtype=int), None)
    assert row["accuracy_sd_distribution"] == 0.0 and "negative" in notes[0]


def test_seed_selection_gain_is_zero_without_lucky_seeds_and_finds_real_ones():
    rng = np.random.default_rng(2)
    errors = _simulate(rng, sims=30, runs=16, n=400, shift_sd=0.0)
    gains = np.array([stats.seed_selection_gain(~e, splits=20) for e in errors])
    assert abs(gains.mean()) < 3 * gains.std(ddof=1) / math.sqrt(len(gains))
    # Runs that are truly better everywhere: run r is right exactly where u_i < level_r.
    levels = np.linspace(0.5, 0.9, 16)
    u = rng.random(4000)
    correct = u[None, :] < levels[:, None]
    accuracy = 100 * correct.mean(axis=1)  # in increasing order: the ranking never errs
    expected = accuracy[-4:].mean() - accuracy.mean()
    assert stats.seed_selection_gain(correct) == pytest.approx(expected, abs=0.5)
    # Runs that all get the same examples right (a stable model's bit flips): exactly 0, not a
    # rounding residue such as -3e-08.
    same = np.tile(rng.random(1000) < 0.7, (8, 1))
    assert stats.seed_selection_gain(same) == 0.0


def test_class_spread_by_direct_computation():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 3, 50)
    correct = rng.random((6, 50)) < 0.7
    per_class = np.array([[100 * correct[r, labels == c].mean() for c in range(3)] for r in range(6)])
    mean, spread = stats.class_spread(correct, labels, 4)
    np.testing.assert_allclose(mean[:3], per_class[:, :3].mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(spread[:3], per_class[:, :3].std(axis=0, ddof=1), rtol=1e-5)
    assert np.isnan(mean[3])  # class 3 has no test example
    row, _ = stats.stats_columns(correct, labels, 4)
    assert row["class_accuracy_sd_max"] == pytest.approx(per_class[:, :3].std(axis=0, ddof=1).max(), rel=1e-5)
    assert row["class_accuracy_sd_mean"] == pytest.approx(per_class[:, :3].std(axis=0, ddof=1).mean(), rel=1e-5)


def test_best_of_k_by_enumeration():
    values = np.array([3.0, 1.0, 4.0, 1.0, 5.0])
    curve = stats.best_of_k(values)
    for k in range(1, 4):
        maxima = np.array([max(t) for t in itertools.product(values, repeat=k)])
        row = curve.iloc[k - 1]
        assert row["expected_best"] == pytest.approx(maxima.mean(), rel=1e-12)
        assert row["expected_best_sd"] == pytest.approx(maxima.std(), rel=1e-9)
    assert curve["inflation"].iloc[0] == pytest.approx(0.0, abs=1e-12)


def test_multibootstrap_matches_a_direct_loop():
    rng = np.random.default_rng(4)
    xa, xb = rng.random((5, 30)), rng.random((4, 30)) + 0.1
    n_boot = 40
    jj = rng.integers(0, 30, (n_boot, 30))
    ia, ib = rng.integers(0, 5, (n_boot, 5)), rng.integers(0, 4, (n_boot, 4))
    direct = np.array([xb[ib[t]][:, jj[t]].mean() - xa[ia[t]][:, jj[t]].mean() for t in range(n_boot)])

    def counts(idx, n):
        return np.stack([np.bincount(row, minlength=n) for row in idx])

    got = stats.multibootstrap_differences(xa, xb, counts(jj, 30), counts(ia, 5), counts(ib, 4), block=16)
    np.testing.assert_allclose(got, direct, rtol=1e-12)
    result = stats.multibootstrap(xa, xb, paired=False, n_boot=500)
    assert result["difference"] == pytest.approx(xb.mean() - xa.mean())
    assert result["ci"][0] < result["difference"] < result["ci"][1]
    # Paired: both arms get the same runs and examples, so a constant shift is all that is left.
    shifted = stats.multibootstrap(xa, xa + 1.0, paired=True, n_boot=200)
    assert shifted["ci"] == pytest.approx((1.0, 1.0), abs=1e-12) and shifted["p"] == 0.0
    assert stats.multibootstrap(xa, xa + 1.0, paired=False, n_boot=200)["ci"][0] < 1.0 - 1e-3


def test_prob_better_matches_mann_whitney_and_a_direct_bootstrap():
    rng = np.random.default_rng(5)
    a = np.round(rng.normal(0, 1, 17), 1)  # rounded: ties
    b = np.round(rng.normal(0.5, 1, 11), 1)
    result = stats.prob_better(a, b, n_boot=200, seed=0)
    u = sps.mannwhitneyu(b, a).statistic
    assert result["p"] == pytest.approx(u / (len(a) * len(b)), rel=1e-12)
    wa, wb = stats.resample_counts(rng, 30, len(a)), stats.resample_counts(rng, 30, len(b))
    direct = [
        np.mean([(y > x) + 0.5 * (y == x) for x in np.repeat(a, wa[t]) for y in np.repeat(b, wb[t])])
        for t in range(30)
    ]
    np.testing.assert_allclose(stats.prob_better_resampled(a, b, wa, wb), direct, rtol=1e-12)


def test_bouthillier_rule():
    rng = np.random.default_rng(6)
    a, b = rng.normal(0, 1, 30), rng.normal(2, 1, 30)
    assert stats.prob_better(a, b)["better"] == "B"
    assert stats.prob_better(b, a)["better"] == "A"
    assert stats.prob_better(a, rng.normal(0, 1, 30))["better"] is None
    assert stats.exact_test_runs_needed(0.05) == 4  # 2 / C(8, 4) = 0.029; 2 / C(6, 3) = 0.1
    assert stats.exact_test_runs_needed(0.05, paired=True) == 6  # 2 / 2**6 = 0.031; 2 / 2**5 = 0.063


def _sweep(root, source, runs, shift, n=300, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    logits = rng.standard_normal((runs, n, classes)).astype(np.float32)
    logits[:, np.arange(n), labels] += shift
    config = fake_config(**{"source.name": source, "source.vary": [source]}, output_root=str(root), sweep_name="s")
    write_group(config, logits, labels)
    return root / "s"


def test_the_table_csvs_and_compare_take_each_runs_argmax_once(tmp_path, monkeypatch, capsys):
    """``Group.predictions`` is the one argmax of a run's logits: the metrics, the statistics,
    their CSVs and ``python -m analysis.compare`` all read it."""
    from analysis.load import load_sweep
    from analysis.tables import summary_frame

    a, b = _sweep(tmp_path / "a", "init", 4, 1.0, n=40, seed=1), _sweep(tmp_path / "b", "init", 4, 2.0, n=40, seed=2)
    sweep = load_sweep(a)  # reading checks each run's argmax against result.json: not counted
    argmax, calls = np.argmax, []

    def counted(x, *args, **kwargs):
        calls.append(np.shape(x))
        return argmax(x, *args, **kwargs)

    monkeypatch.setattr(np, "argmax", counted)
    summary_frame(sweep, n_boot=5)
    stats.class_table(sweep), stats.best_of_k_table(sweep)
    assert calls == [(40, 3)] * 4  # one per run
    monkeypatch.setattr(np, "argmax", argmax)
    arms = [load_sweep(a).groups[0], load_sweep(b).groups[0]]  # read before counting, as above
    monkeypatch.setattr(compare, "select_group", lambda directory, filters, flag: arms.pop(0))
    monkeypatch.setattr(np, "argmax", counted)
    calls.clear()
    assert compare.main([str(a), str(b), "--paired", "--bootstrap", "100", "--permutations", "100",
                         "--multibootstrap", "100"]) == 0
    assert "multibootstrap" in capsys.readouterr().out
    assert calls == [(40, 3)] * 8  # one per run of each arm


def test_compare_cli_adds_multibootstrap_and_prob_better(tmp_path, capsys):
    a = _sweep(tmp_path / "a", "init", 6, 1.0, seed=1)
    b = _sweep(tmp_path / "b", "init", 6, 3.0, seed=2)
    assert compare.main([str(a), str(b), "--bootstrap", "500", "--permutations", "500", "--multibootstrap", "300"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert any(x.startswith("- multibootstrap over runs x test examples") for x in lines)
    assert any("noise dominates" in x for x in lines)
    assert any(x.startswith("- P(B > A)") and x.endswith("B is better") for x in lines)
    assert lines[-1].startswith("Yes")
    # 2 and 6 runs: the exact two-sided Mann-Whitney p is at least 2 / C(8, 2) = 0.071.
    a2 = _sweep(tmp_path / "a2", "init", 2, 1.0, seed=3)
    assert compare.main([str(a2), str(b), "--bootstrap", "200", "--permutations", "200", "--multibootstrap", "100"]) == 0
    assert "train at least 4 runs per arm" in capsys.readouterr().out


def test_analysis_cli_writes_the_new_columns_and_csvs(tmp_path, capsys):
    sweep = _sweep(tmp_path, "init", 8, 1.0)
    assert cli.main([str(sweep), "--csv", str(tmp_path / "t.csv")]) == 0
    out = capsys.readouterr().out
    assert "Test-set SD (%)" in out and "finite-test-set noise" in out
    table = pd.read_csv(tmp_path / "t.csv")
    assert set(stats.STATS_COLUMNS) <= set(table.columns)
    classes = pd.read_csv(tmp_path / "t_classes.csv")
    assert list(classes["class"]) == [0, 1, 2] and (classes["examples"] == 100).all()
    best = pd.read_csv(tmp_path / "t_best_of_k.csv")
    assert list(best["k"]) == list(range(1, 9)) and best["expected_best"].is_monotonic_increasing


def test_many_run_identities_and_sampled_pairs_match_all_pairs(monkeypatch):
    from analysis import metrics, pairs
    from fake_runs import random_logits

    rng = np.random.default_rng(7)
    for classes, ties in ((5, True), (2, False)):
        logits = random_logits(rng, 9, 40, classes, ties=ties)
        labels = rng.integers(0, classes, 40)
        exact = metrics.ensemble_metrics(logits, labels)
        assert pairs.spearman_mean(logits) == pytest.approx(metrics.spearman(logits), rel=1e-10)
        assert pairs.prediction_difference_mean(logits, labels) == pytest.approx(exact["prediction_difference"], rel=1e-10)
        i, j = np.triu_indices(9, k=1)  # every pair once: the sampled estimator's all-pairs mean
        every = pairs.pair_values(logits, labels, i, j)
        for column in pairs.SAMPLED_COLUMNS:
            assert every[column].mean() == pytest.approx(exact[column], rel=1e-9, abs=1e-12)
    # Above the threshold group_metrics switches paths and says so; sampled means within 4 SE.
    monkeypatch.setattr(pairs, "EXACT_MAX_RUNS", 5)
    logits = random_logits(rng, 12, 60, 4)
    labels = rng.integers(0, 4, 60)
    many = metrics.group_metrics(logits, labels, n_boot=10)
    assert "2000 random pairs" in many.pop("pairs_note")
    monkeypatch.setattr(pairs, "EXACT_MAX_RUNS", 100)
    exact = metrics.group_metrics(logits, labels, n_boot=10)
    assert many["spearman"] == pytest.approx(exact["spearman"], rel=1e-10)
    i, j = pairs.sample_pairs(12, pairs.SAMPLED_PAIRS)
    values = pairs.pair_values(logits, labels, i, j)
    for column in pairs.SAMPLED_COLUMNS:
        assert abs(many[column] - exact[column]) < 4 * values[column].std(ddof=1) / math.sqrt(len(i)) + 1e-12


def test_figure_functions_return_a_figure_and_a_one_line_caption(tmp_path):
    from matplotlib.figure import Figure

    from analysis import stats_figures
    from analysis.load import load_sweep
    from analysis.tables import summary_frame

    sweep = load_sweep(_sweep(tmp_path, "init", 5, 1.0, n=60))
    frame = summary_frame(sweep, n_boot=10)
    rates = [1.0 - g.correct.mean(axis=0) for g in sweep.groups]
    drawn = [
        stats_figures.test_set_noise_figure(["init"], rates, frame),
        stats_figures.best_of_k_figure(stats.best_of_k_table(sweep), sweep.display_keys),
    ]
    for fig, caption in drawn:
        assert isinstance(fig, Figure) and caption and "\n" not in caption


@pytest.mark.parametrize("runs", [4, 8])
def test_the_bootstrap_sd_of_the_sd_runs_short_with_few_runs_as_the_caption_says(runs):
    """2000 seeded groups of normal runs: the table's "SD of the SD" (bootstrap over runs) is
    about a fifth below the true sampling SD of the SD, so overlapping bars are no test."""
    from analysis.metrics import bootstrap_sd_sd
    from analysis.report import CAPTIONS

    values = np.random.default_rng(runs).standard_normal((2000, runs))
    ratio = bootstrap_sd_sd(values, n_boot=500).mean() / values.std(axis=1, ddof=1).std(ddof=1)
    assert 0.7 < ratio < 0.9
    caption = CAPTIONS["variability"]
    assert "about a fifth too small at 4-8 runs" in caption and "is not a test" in caption


def test_the_test_set_share_says_when_it_is_capped():
    """Runs that spread less than test-set noise alone would give a share above 100%: printed as
    100% with the value the SDs give, not as a bare 100% a reader takes for exact."""
    frame = pd.DataFrame({"accuracy_sd": [1.0, 1.0], "accuracy_sd_test_set": [0.5, 1.2]})
    sentence = stats.test_set_sentence(frame, ["init", "shuffle"])
    assert sentence.endswith(": init 25%, shuffle 100% (capped: the SDs give 144%, a spread no wider than "
                             "test-set noise).")
