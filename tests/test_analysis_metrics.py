"""analysis.metrics against slow, obviously-correct references (explicit loops over pairs)."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
from scipy.special import softmax
from scipy.stats import rankdata, spearmanr

from analysis import metrics
from fake_runs import random_logits

TOL = 1e-6


def reference(logits: np.ndarray, labels: np.ndarray) -> dict:
    """Every pairwise metric by a loop over pairs; per-run metrics by a loop over runs."""
    runs, n, _ = logits.shape
    probs = [softmax(l.astype(np.float64), axis=1) for l in logits]
    acc = [100.0 * np.mean(np.argmax(l, axis=1) == labels) for l in logits]
    ce = [-np.mean(np.log(p[np.arange(n), labels])) for p in probs]
    pairs = list(itertools.combinations(range(runs), 2))
    dis, rho, d_acc, d_ce, pd, rel = [], [], [], [], [], []
    for i, j in pairs:
        dis.append(100.0 * np.mean(np.argmax(logits[i], 1) != np.argmax(logits[j], 1)))
        with warnings.catch_warnings():  # constant logits: scipy warns and returns NaN
            warnings.simplefilter("ignore")
            rho.append(spearmanr(logits[i].ravel(), logits[j].ravel())[0])
        ens = (probs[i] + probs[j]) / 2
        d_acc.append(100.0 * np.mean(np.argmax(ens, 1) == labels) - (acc[i] + acc[j]) / 2)
        d_ce.append(-np.mean(np.log(ens[np.arange(n), labels])) - (ce[i] + ce[j]) / 2)
        pd.append(np.mean(np.abs(probs[i] - probs[j])))
        ratio = np.abs(probs[i] - probs[j]) / ((probs[i] + probs[j]) / 2)
        rel.append(np.mean(ratio[:, 1] if ratio.shape[1] == 2 else ratio))  # binary: positive class
    return {
        "n_runs": runs,
        "accuracy_mean": np.mean(acc),
        "accuracy_sd": np.std(acc, ddof=1),
        "cross_entropy_mean": np.mean(ce),
        "cross_entropy_sd": np.std(ce, ddof=1),
        "disagreement": np.mean(dis),
        "spearman": np.mean(rho),
        "ensemble_delta_accuracy": np.mean(d_acc),
        "ensemble_delta_cross_entropy": np.mean(d_ce),
        "prediction_difference": np.mean(pd),
        "relative_prediction_difference": np.mean(rel),
    }


@pytest.mark.parametrize("ties", [False, True])
def test_group_metrics_match_pairwise_loops(ties):
    rng = np.random.default_rng(3)
    logits = random_logits(rng, runs=7, n=300, classes=5, ties=ties)
    labels = rng.integers(0, 5, 300)
    got = metrics.group_metrics(logits, labels)
    want = reference(logits, labels)
    assert tuple(got) == metrics.COLUMNS
    for k, v in want.items():
        assert got[k] == pytest.approx(v, rel=TOL, abs=TOL), k


@pytest.mark.parametrize("runs", [2, 5])
def test_binary_metrics_match_pairwise_loops(runs):
    rng = np.random.default_rng(5)
    logits = random_logits(rng, runs=runs, n=257, classes=2, ties=False)
    labels = rng.integers(0, 2, 257)
    got, want = metrics.group_metrics(logits, labels), reference(logits, labels)
    for k, v in want.items():
        assert got[k] == pytest.approx(v, rel=TOL, abs=TOL), k


def test_binary_relative_pd_is_shamirs_on_the_positive_class():
    # p(positive) 0.9 vs 0.8: PD 0.1, relative PD 0.1 / 0.85.
    logits = np.log(np.array([[[0.1, 0.9]], [[0.2, 0.8]]]))
    got = metrics.ensemble_metrics(logits, np.array([1]))
    assert got["prediction_difference"] == pytest.approx(0.1, rel=1e-12)
    assert got["relative_prediction_difference"] == pytest.approx(0.1 / 0.85, rel=1e-12)


def test_pair_tiles_do_not_change_results(monkeypatch):
    rng = np.random.default_rng(4)
    logits = random_logits(rng, runs=6, n=101, classes=4, ties=True)
    labels = rng.integers(0, 4, 101)
    whole = metrics.ensemble_metrics(logits, labels)
    monkeypatch.setattr(metrics, "PAIR_TILE_BYTES", 8 * 5 * 4 * 7)  # tiles of 7 examples
    tiled = metrics.ensemble_metrics(logits, labels)
    for k in whole:
        assert tiled[k] == pytest.approx(whole[k], rel=1e-12, abs=1e-12)


def test_ensemble_ties_follow_argmax_first_index():
    # Every class has the same logit: argmax says class 0, for the runs and their ensembles.
    logits = np.zeros((3, 4, 3), dtype=np.float32)
    labels = np.array([0, 1, 2, 0])
    got = metrics.group_metrics(logits, labels)
    want = reference(logits, labels)
    assert got["ensemble_delta_accuracy"] == pytest.approx(want["ensemble_delta_accuracy"], abs=TOL)
    assert got["accuracy_mean"] == pytest.approx(50.0)
    assert got["disagreement"] == 0.0
    assert np.isnan(got["spearman"])  # constant logits have no rank correlation, as in scipy


def test_underflowing_probabilities_do_not_make_nan():
    logits = np.array([[[0.0, -800.0, -900.0]], [[0.0, -850.0, 10.0]]], dtype=np.float32)
    labels = np.array([0])
    got = metrics.ensemble_metrics(logits, labels)
    assert all(np.isfinite(v) for v in got.values())
    assert got["ensemble_delta_cross_entropy"] < 0  # a confident wrong model helped by a right one


def test_average_ranks_equal_scipy_with_ties_and_nan():
    rng = np.random.default_rng(5)
    values = np.round(rng.standard_normal((4, 500)), 1).astype(np.float32)
    values[1] = 2.0
    values[2, 7] = np.nan
    np.testing.assert_array_equal(metrics.average_ranks(values), rankdata(values, axis=1))


def test_one_run_gives_nan_not_a_crash():
    rng = np.random.default_rng(6)
    logits = random_logits(rng, runs=1, n=50, classes=3)
    got = metrics.group_metrics(logits, rng.integers(0, 3, 50))
    assert got["n_runs"] == 1 and np.isfinite(got["accuracy_mean"])
    for k in metrics.COLUMNS[2:]:
        if k not in ("cross_entropy_mean",):
            assert np.isnan(got[k]), k


def test_bootstrap_is_seeded_and_repeatable():
    values = np.random.default_rng(7).standard_normal((2, 20))
    a = metrics.bootstrap_sd_sd(values, n_boot=500, seed=0)
    b = metrics.bootstrap_sd_sd(values, n_boot=500, seed=0)
    c = metrics.bootstrap_sd_sd(values, n_boot=500, seed=1)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # The SD of the SD of 20 normal draws is about sigma / sqrt(2 (n - 1)) ~ 0.16.
    assert 0.05 < a[0] < 0.4


def test_bootstrap_matches_a_loop():
    values = np.random.default_rng(8).standard_normal(9)
    got = metrics.bootstrap_sd_sd(values[None], n_boot=200, seed=3)[0]
    rng = np.random.default_rng(3)
    resamples = rng.integers(0, 9, size=(200, 9))
    want = np.std([np.std(values[idx], ddof=1) for idx in resamples], ddof=1)
    assert got == pytest.approx(want, rel=1e-12)
