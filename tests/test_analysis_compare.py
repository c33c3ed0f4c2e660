"""analysis.compare: planted differences are found, samples of one distribution are not."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from analysis import compare
from fake_runs import fake_config, write_group


def test_finds_a_planted_difference():
    rng = np.random.default_rng(0)
    a = 90.0 + 0.3 * rng.standard_normal(20)
    b = 90.5 + 0.3 * rng.standard_normal(20)
    c = compare.compare_samples(a, b, n_boot=2000, n_perm=2000, seed=0)
    assert c.verdict.startswith("Yes")
    assert c.p_t < 0.01 and c.p_perm < 0.01 and c.ci[0] > 0
    assert c.p_t == pytest.approx(stats.ttest_ind(b, a, equal_var=False).pvalue)
    assert c.effect > 1 and 0 < c.hedges_g < c.effect


def test_finds_nothing_between_samples_of_one_distribution():
    rng = np.random.default_rng(1)
    a = 90.0 + 0.3 * rng.standard_normal(15)
    b = 90.0 + 0.3 * rng.standard_normal(15)
    c = compare.compare_samples(a, b, n_boot=2000, n_perm=2000, seed=0)
    assert c.verdict.startswith("No"), c.verdict
    assert c.p_t > 0.05 and c.p_perm > 0.05 and c.ci[0] < 0 < c.ci[1]
    assert c.n_needed is not None and c.n_needed > 15


def test_is_repeatable_with_a_seed():
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal(30), rng.standard_normal(30) + 0.2
    one = compare.compare_samples(a, b, n_boot=500, n_perm=500, seed=3)
    two = compare.compare_samples(a, b, n_boot=500, n_perm=500, seed=3)
    assert (one.ci, one.p_perm) == (two.ci, two.p_perm)


def test_exact_permutation_test_on_small_arms():
    a, b = np.array([1.0, 2.0, 3.0]), np.array([4.0, 5.0, 6.0])
    c = compare.compare_samples(a, b, n_perm=10000)
    # Of the 20 splits of six values into 3 + 3, only the observed one and its mirror are as extreme.
    assert c.perm_exact and c.p_perm == pytest.approx(2 / 20)


def test_paired_design_sees_a_shift_hidden_by_between_seed_variation():
    rng = np.random.default_rng(4)
    seed_effect = 2.0 * rng.standard_normal(12)  # large: each seed's runs are much alike
    a = 90.0 + seed_effect + 0.05 * rng.standard_normal(12)
    b = 90.2 + seed_effect + 0.05 * rng.standard_normal(12)
    assert compare.compare_samples(a, b, n_boot=1000, n_perm=1000).verdict.startswith("No")
    paired = compare.compare_samples(a, b, paired=True, n_boot=1000, n_perm=1000)
    assert paired.verdict.startswith("Yes")
    assert paired.p_t == pytest.approx(stats.ttest_rel(b, a).pvalue)


def test_power_matches_textbook_sample_sizes():
    # Cohen's d = 0.5 at alpha 0.05, power 0.8: 64 per arm (two-sample), 34 pairs (paired).
    assert compare.runs_for_power(0.5, paired=False) == 64
    assert compare.runs_for_power(0.5, paired=True) == 34
    assert compare.runs_for_power(0.0, paired=False) is None
    assert compare.t_test_power(0.5, 64, paired=False) >= 0.8 > compare.t_test_power(0.5, 63, paired=False)


def test_hedges_correction():
    # Exact: J(4) = Gamma(2) / (sqrt(2) Gamma(3/2)) = sqrt(2 / pi); Hedges' approximation for larger df.
    assert compare.hedges_correction(4) == pytest.approx(math.sqrt(2 / math.pi), rel=1e-12)
    for df in (10, 38):
        assert compare.hedges_correction(df) == pytest.approx(1 - 3 / (4 * df - 1), abs=1e-3)


def test_no_variance_is_handled_in_words():
    same = compare.compare_samples([1.0, 1.0, 1.0], [1.0, 1.0, 1.0])
    assert same.verdict.startswith("No") and math.isnan(same.p_t)
    shifted = compare.compare_samples([1.0, 1.0, 1.0], [2.0, 2.0, 2.0])
    assert shifted.verdict.startswith("Yes") and "deterministic" in shifted.verdict


def _sweep_with_accuracies(root, source, accuracies, n=200, classes=4):
    """Runs whose test accuracy is exactly the given percentages (multiples of 100 / n)."""
    labels = np.arange(n) % classes
    logits = np.zeros((len(accuracies), n, classes), dtype=np.float32)
    for r, acc in enumerate(accuracies):
        correct = round(acc * n / 100)
        predicted = np.where(np.arange(n) < correct, labels, (labels + 1) % classes)
        logits[r, np.arange(n), predicted] = 5.0
    config = fake_config(**{"source.name": source, "source.vary": [source]}, output_root=str(root), sweep_name="s")
    write_group(config, logits, labels)
    return root / "s"


def test_cli_between_sweeps_and_group_filters(tmp_path, capsys):
    rng = np.random.default_rng(5)
    a = _sweep_with_accuracies(tmp_path / "a", "init", 70 + rng.integers(-2, 3, 8))
    b = _sweep_with_accuracies(tmp_path / "b", "init", 80 + rng.integers(-2, 3, 8))
    assert compare.main([str(a), str(b), "--permutations", "1000", "--bootstrap", "1000"]) == 0
    out = capsys.readouterr().out
    assert out.strip().splitlines()[-1].startswith("Yes")

    # Two groups in one sweep: asking without a filter lists them and how to pick.
    _sweep_with_accuracies(tmp_path / "a", "shuffle", 70 + rng.integers(-2, 3, 8))
    assert compare.main([str(a), str(b)]) == 2
    err = capsys.readouterr().err
    assert "--group-a source.name=init" in err and "--group-a source.name=shuffle" in err
    code = compare.main([str(a), str(a), "--group-a", "source=init", "--group-b", "source.name=shuffle", "--paired"])
    assert code == 0
    assert "paired by replicate" in capsys.readouterr().out
