"""analysis.compare: planted differences are found, samples of one distribution are not."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from analysis import compare
from nondet import records
from conftest import read_only
from fake_runs import fake_config, random_logits, write_group


def test_finds_a_planted_difference():
    rng = np.random.default_rng(0)
    a = 90.0 + 0.3 * rng.standard_normal(20)
    b = 90.5 + 0.3 * rng.standard_normal(20)
    c = compare.compare_samples(a, b, n_boot=2000, n_perm=2000, seed=0)
    # Samples alone: beyond run-to-run noise, with no per-example values for the test set's noise.
    assert compare.run_level_state(c) == "distinguishable" and c.state == "test-set-unassessed"
    assert c.verdict.startswith("Beyond run-to-run noise only") and "test-set noise is not assessed" in c.verdict
    c.question = compare.THIS_TEST_SET
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
    assert compare.run_level_state(paired) == "distinguishable"
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


def test_no_variance_is_unassessed_in_words():
    # Runs that all give one value measure no run-to-run noise: nothing to test a difference against.
    same = compare.compare_samples([1.0, 1.0, 1.0], [1.0, 1.0, 1.0])
    assert same.state == "unassessed" and same.verdict.startswith("Unassessed") and math.isnan(same.p_t)
    shifted = compare.compare_samples([1.0, 1.0, 1.0], [2.0, 2.0, 2.0])
    assert shifted.state == "unassessed" and shifted.verdict.startswith("Unassessed: the difference")
    assert "source=init, or source=all" in shifted.verdict and "not noise" not in shifted.verdict
    text = compare.format_comparison(shifted)
    assert "run-level tests not computed" in text and "p = " not in text and "Cohen" not in text


def _sweep_with_accuracies(root, source, accuracies, n=200, classes=4):
    """Runs whose test accuracy is exactly the given percentages (multiples of 100 / n)."""
    return _sweep_from_correct(root, source, np.arange(n) < np.round(np.asarray(accuracies) * n / 100)[:, None], classes)


def _sweep_from_correct(root, source, correct, classes=4, env=None, first_label=0, **overrides):
    """Runs that get exactly the test examples ``correct[r, i]`` right, (R, N) bool; env.json
    holds ``env`` (by default a test_sha256 of the labels); ``overrides``: config keys."""
    runs, n = correct.shape
    labels = (first_label + np.arange(n)) % classes
    predicted = np.where(correct, labels, (labels + 1) % classes)
    logits = np.zeros((runs, n, classes), dtype=np.float32)
    logits[np.arange(runs)[:, None], np.arange(n), predicted] = 5.0
    keys = {"source.name": source, "source.vary": [source], **overrides}
    config = fake_config(**keys, output_root=str(root), sweep_name="s")
    write_group(config, logits, labels, env=env)
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


# --- the verdict's question: this test set, or the data distribution -----------------------

FAST = ["--bootstrap", "1000", "--permutations", "1000", "--multibootstrap", "500"]


def _arms(n, base, extra_a, extra_b, jitter_b=(1, 3, 5, 7), runs=8):
    """(R, N) correctness of two arms: every run gets examples 0..base-1 right; the odd runs of A
    (the ``jitter_b`` runs of B) also example ``base``, the run-to-run noise; A's runs also get the
    examples ``extra_a`` right, B's ``extra_b``."""
    a, b = np.zeros((runs, n), dtype=bool), np.zeros((runs, n), dtype=bool)
    a[:, :base] = b[:, :base] = True
    a[1::2, base] = True
    b[list(jitter_b), base] = True
    a[:, list(extra_a)] = True
    b[:, list(extra_b)] = True
    return a, b


def _compare(tmp_path, capsys, arms, *flags):
    a = _sweep_from_correct(tmp_path / "a", "init", arms[0])
    b = _sweep_from_correct(tmp_path / "b", "init", arms[1])
    out_json = tmp_path / "c.json"
    assert compare.main([str(a), str(b), *FAST, "--json", str(out_json), *flags]) == 0
    verdict = capsys.readouterr().out.strip().splitlines()[-1]
    return verdict, json.loads(out_json.read_text())


def test_both_tests_reject_a_difference_spread_over_a_large_test_set(tmp_path, capsys):
    # B gets 100 more of 400 examples right in every run: beyond run-to-run and test-set noise.
    verdict, record = _compare(tmp_path, capsys, _arms(400, 200, (), range(300, 400)))
    assert verdict.startswith("Yes: the difference in test_accuracy (B - A = +25")
    assert "and from test-set noise (multibootstrap 95% CI [+" in verdict
    assert (record["state"], record["run_level"], record["beyond_test_set_noise"]) == ("distinguishable", "distinguishable", True)
    assert record["question"] == "population" and record["verdict"] == verdict
    assert record["multibootstrap"]["ci"][0] > 0 and record["p_t"] < 0.05


def test_a_difference_of_one_test_example_is_not_called_real_for_the_population(tmp_path, capsys):
    # Every run of B gets example 19 of 20 right and is 5 points above its A twin: the run-level
    # tests reject, but a test set drawn without example 19 (36% of draws) shows no difference.
    arms = _arms(20, 10, (), (19,))
    verdict, record = _compare(tmp_path, capsys, arms)
    assert verdict.startswith("On this test set only: the difference in test_accuracy (B - A = +5")
    assert "is distinguishable from run-to-run noise on this test set with 8 and 8 runs" in verdict
    assert "but not beyond test-set noise (multibootstrap 95% CI [" in verdict
    assert "a larger test set or more runs could decide it (test-set noise dominates" in verdict
    assert not verdict.startswith("Yes")
    assert (record["state"], record["run_level"], record["beyond_test_set_noise"]) == (
        "this-test-set-only", "distinguishable", False
    )
    low, high = record["multibootstrap"]["ci"]
    assert low <= 0 <= high and record["p_t"] < 0.05 and record["p_perm"] < 0.05 and record["ci"][0] > 0

    # Asked about this test set, the answer is yes, and says what a new test set might do.
    verdict, record = _compare(tmp_path / "again", capsys, arms, "--this-test-set")
    assert verdict.startswith("Yes: the difference in test_accuracy (B - A = +5")
    assert "but not beyond test-set noise (multibootstrap 95% CI" in verdict
    assert "a new test set from the same distribution might not show it" in verdict
    assert (record["question"], record["state"]) == ("this-test-set", "distinguishable")


def test_neither_test_rejects(tmp_path, capsys, monkeypatch):
    # Five of B's runs and four of A's get example 10 right: noise on both counts.
    verdict, record = _compare(tmp_path, capsys, _arms(20, 10, (), (), jitter_b=(0, 1, 3, 5, 7)))
    assert verdict.startswith("No: the difference in test_accuracy (B - A = +0.625")
    assert "would detect a difference this size on this test set" in verdict
    assert (record["state"], record["run_level"], record["beyond_test_set_noise"]) == (
        "not-distinguishable", "not-distinguishable", False
    )

    # A --json path that cannot be written: one line naming it, exit status 2.
    a, b = tmp_path / "a" / "s", tmp_path / "b" / "s"
    assert compare.main([str(a), str(b), *FAST, "--json", str(tmp_path / "c.json" / "x.json")]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: --json {tmp_path / 'c.json' / 'x.json'}: cannot write it (")
    assert line.endswith("write it elsewhere: --json a path on a writable file system")

    read_only(monkeypatch, tmp_path / "ro")  # a read-only file system (EROFS), where os.access says writable
    assert compare.main([str(a), str(b), *FAST, "--json", str(tmp_path / "ro" / "c.json")]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: --json {tmp_path / 'ro' / 'c.json'}: cannot write it (Read-only file system)")


def test_deterministic_runs_one_test_example_apart_are_not_called_real(tmp_path, capsys):
    # Identical runs in each arm: copies of one run, one sample each; the run-level question
    # cannot be asked, whatever the question of the verdict.
    a, b = np.zeros((4, 20), dtype=bool), np.zeros((4, 20), dtype=bool)
    a[:, :10] = b[:, :11] = True
    for flags in ((), ("--this-test-set",)):
        verdict, record = _compare(tmp_path / "-".join(flags), capsys, (a, b), *flags)
        assert verdict.startswith("Unassessed: the difference in test_accuracy (B - A = +5)")
        assert "A's 4 runs are bitwise copies of one run" in verdict and "replicates>=4" in verdict
        assert (record["state"], record["run_level"]) == ("unassessed", "unassessed")
        assert record["t"] is None and record["p_perm"] is None and record["prob_better"] is None


def test_a_multibootstrap_that_rejects_alone_is_borderline():
    # The run-level tests see nothing; a multibootstrap CI that excludes 0 (too few runs for its
    # percentile interval) cannot make that a yes.
    c = compare.compare_samples([1.0, 2.0, 3.0, 4.0], [1.5, 2.5, 3.5, 4.5], n_boot=500, n_perm=500)
    assert c.state == "not-distinguishable" and c.verdict.startswith("No")
    c.multibootstrap = {"ci": (0.1, 0.9), "p": 0.01, "sd_runs": 0.5, "sd_examples": 0.1}
    assert c.state == "borderline"
    assert c.verdict.startswith("Borderline") and "multibootstrap 95% CI [+0.1, +0.9]" in c.verdict
    c.question = compare.THIS_TEST_SET
    assert c.state == "not-distinguishable" and c.verdict.startswith("No")


def test_a_metric_of_one_number_per_run_names_what_the_verdict_leaves_out(tmp_path, capsys):
    arms = _arms(400, 200, (), range(300, 400))
    for name, correct in zip("ab", arms):
        for run in sorted((_sweep_from_correct(tmp_path / name, "init", correct)).glob("*/r*")):
            result = json.loads((run / records.RESULT_FILE).read_text())
            records.write_json(run / records.RESULT_FILE, {**result, "val_loss": 1 - result["test_accuracy"] / 100})
    args = [str(tmp_path / "a" / "s"), str(tmp_path / "b" / "s"), *FAST, "--metric", "val_loss", "--json", str(tmp_path / "c.json")]
    assert compare.main(args) == 0
    verdict = capsys.readouterr().out.strip().splitlines()[-1]
    assert verdict.startswith("Beyond run-to-run noise only: the difference in val_loss (B - A = -0.25")
    assert verdict.endswith("; test-set noise is not assessed (val_loss is one number per run, not a mean over test examples).")
    record = json.loads((tmp_path / "c.json").read_text())
    assert record["state"] == "test-set-unassessed" and record["run_level"] == "distinguishable"
    assert record["multibootstrap"] is None
    assert record["beyond_test_set_noise"] is None and record["multibootstrap_skipped"].startswith("val_loss is one number")


@pytest.mark.parametrize("env_a, env_b, first_label_b, why", [
    # data_seed=0 against data_seed=1: test sets of the same size (and here the same labels)
    ({"test_sha256": "a" * 64}, {"test_sha256": "b" * 64}, 0, "different test sets with the same labels"),
    (None, None, 1, "their test labels differ"),
    ({"data_sha256": "a" * 64}, {"data_sha256": "b" * 64}, 0, "does not show that they share the test data"),
    ({}, {}, 0, "does not show that they share the test data"),
])
def test_arms_on_different_test_sets_are_not_paired_example_by_example(tmp_path, capsys, env_a, env_b, first_label_b, why):
    arms = _arms(400, 200, (), range(300, 400))
    a = _sweep_from_correct(tmp_path / "a", "init", arms[0], env=env_a)
    b = _sweep_from_correct(tmp_path / "b", "init", arms[1], env=env_b, first_label=first_label_b)
    assert compare.main([str(a), str(b), *FAST, "--json", str(tmp_path / "c.json")]) == 0
    out = capsys.readouterr().out
    (skipped,) = [line for line in out.splitlines() if line.startswith("- multibootstrap skipped: ")]
    assert why in skipped and "examples paired" not in out and "on this test set" not in out.splitlines()[-1]
    # The run-level tests stay; with the test set's noise unassessed that is no population "Yes".
    assert out.splitlines()[-1].startswith("Beyond run-to-run noise only: the difference in test_accuracy")
    assert "test-set noise is not assessed (" in out.splitlines()[-1]
    record = json.loads((tmp_path / "c.json").read_text())
    assert record["multibootstrap"] is None and why in record["multibootstrap_skipped"]
    assert (record["state"], record["run_level"]) == ("test-set-unassessed", "distinguishable")


def test_arms_that_record_the_same_data_are_paired_example_by_example(tmp_path, capsys):
    arms = _arms(400, 200, (), range(300, 400))
    same = {"data_sha256": "c" * 64}  # runs that predate test_sha256: the same data, so one test set
    a = _sweep_from_correct(tmp_path / "a", "init", arms[0], env=same)
    b = _sweep_from_correct(tmp_path / "b", "init", arms[1], env=same)
    assert compare.main([str(a), str(b), *FAST]) == 0
    assert "examples paired" in capsys.readouterr().out


@pytest.mark.parametrize("paired, floor", [(False, 4), (True, 6)])
def test_the_runs_it_asks_for_can_pass_the_permutation_test_too(paired, floor):
    """A large difference measured on 3 runs per arm: the t-test's power alone would ask for 2 or
    3 runs, but the verdict also needs the exact permutation test, whose smallest p with n runs
    per arm is 2 / C(2n, n) (2 / 2**n for pairs): it asks for no fewer than 4 runs (6 pairs)."""
    a = np.array([90.0, 90.1, 89.9])
    b = a + np.array([1.0, 1.2, 0.8])
    c = compare.compare_samples(a, b, paired=paired, n_boot=500, n_perm=500, seed=0)
    assert c.n_needed == floor
    assert f"about {floor} " in c.verdict or c.verdict.startswith("Yes")


def test_each_arm_is_labelled_by_what_sets_it_apart(tmp_path, capsys):
    """Two sweeps of one source that differ in a key: each arm names its value of that key."""
    labels = np.arange(60) % 4
    for epochs, root in ((1, tmp_path / "a"), (2, tmp_path / "b")):
        config = fake_config(**{"source.name": "init", "source.vary": ["init"]}, output_root=str(root),
                             sweep_name="s", epochs=epochs)
        write_group(config, random_logits(np.random.default_rng(epochs), 4, 60, 4), labels)
    assert compare.main([str(tmp_path / "a" / "s"), str(tmp_path / "b" / "s"), *FAST]) == 0
    out = capsys.readouterr().out
    assert "- A: " + str(tmp_path / "a" / "s") + " [init, epochs=1]: 4 runs" in out
    assert "- B: " + str(tmp_path / "b" / "s") + " [init, epochs=2]: 4 runs" in out



# --- arms that measure no run-to-run noise; seeds; what the report may print ----------------


def _copies(n=400, right=200):
    """(4, n) correctness of four copies of one run."""
    return np.broadcast_to(np.arange(n) < right, (4, n)).copy()


@pytest.mark.parametrize("flags", [(), ("--this-test-set",)])
def test_copies_of_one_run_are_unassessed_whatever_their_count(tmp_path, capsys, flags):
    """source=none at base_seed 0 and 2: each arm is four copies of one run, one sample; the
    3-point difference cannot be weighed against run-to-run noise, and nothing computed on the
    copies as if they were independent runs is printed or written."""
    none = {"source.vary": []}
    a = _sweep_from_correct(tmp_path / "a", "none", _copies(right=200), base_seed=0, **none)
    b = _sweep_from_correct(tmp_path / "b", "none", _copies(right=212), base_seed=2, **none)
    assert compare.main([str(a), str(b), *FAST, "--json", str(tmp_path / "c.json"), *flags]) == 0
    out = capsys.readouterr().out
    verdict = out.strip().splitlines()[-1]
    assert verdict.startswith("Unassessed: the difference in test_accuracy (B - A = +3)")
    assert "A varies no source (source=none): its 4 runs are copies of one run" in verdict
    assert "Vary a source (source=init, or source=all) with replicates>=4" in verdict
    assert "not noise" not in out and "distinguishable" not in out
    for number in ("t-test", "permutation", "Cohen", "Mann-Whitney", "P(B > A)", "CI over runs", "noise in B - A"):
        assert number not in out, number
    record = json.loads((tmp_path / "c.json").read_text())
    assert (record["state"], record["run_level"]) == ("unassessed", "unassessed")
    assert all(record[k] is None for k in ("ci", "t", "p_t", "p_perm", "effect", "hedges_g", "prob_better"))

    # One arm of copies against an arm that varies a source: still one run against many.
    varied = _copies(right=212)
    varied[1::2, 300] = True
    b = _sweep_from_correct(tmp_path / "v", "init", varied)
    assert compare.main([str(a), str(b), *FAST, *flags]) == 0
    verdict = capsys.readouterr().out.strip().splitlines()[-1]
    assert verdict.startswith("Unassessed") and "A varies no source" in verdict
    assert "B varies" not in verdict and "B's" not in verdict


@pytest.mark.parametrize("overrides_b, state, named", [
    ({"base_seed": 2}, "seed-confounded", "base_seed (0 and 2), which seeds every source they do not both vary (shuffle, augment, dropout, reduction)"),
    ({"dataset.data_seed": 43}, "seed-confounded", "dataset.data_seed (0 and 43)"),
])
def test_a_seed_difference_is_never_called_a_difference_of_recipes(tmp_path, capsys, overrides_b, state, named):
    """Arms of source=init that differ in a seed: a run-level difference can be the noise of
    what that seed fixes (the shuffle, the data draw), so the verdict is no "Yes"."""
    arms = _arms(400, 200, (), range(300, 400))
    a = _sweep_from_correct(tmp_path / "a", "init", arms[0])
    b = _sweep_from_correct(tmp_path / "b", "init", arms[1], **overrides_b)
    assert compare.main([str(a), str(b), *FAST, "--json", str(tmp_path / "c.json")]) == 0
    verdict = capsys.readouterr().out.strip().splitlines()[-1]
    assert verdict.startswith("Confounded by a seed: the difference in test_accuracy (B - A = +25")
    assert named in verdict and verdict.endswith(", not a difference of recipes.")
    record = json.loads((tmp_path / "c.json").read_text())
    assert (record["state"], record["run_level"]) == (state, "distinguishable") and named in record["seed_confound"]


def test_base_seed_is_no_confound_where_both_arms_vary_every_seeded_source(tmp_path, capsys):
    every = ["init", "shuffle", "augment", "dropout", "reduction", "bitflip", "lowlevel"]
    arms = _arms(400, 200, (), range(300, 400))
    a = _sweep_from_correct(tmp_path / "a", "all", arms[0], **{"source.vary": every})
    b = _sweep_from_correct(tmp_path / "b", "all", arms[1], base_seed=2, **{"source.vary": every})
    assert compare.main([str(a), str(b), *FAST]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("Yes: the difference")


@pytest.mark.parametrize("n, paired, sd_b", [(4, False, 1.0), (8, False, 1.0), (4, False, 3.0), (5, True, 1.0)])
def test_the_ci_over_runs_holds_its_level_with_few_runs(n, paired, sd_b):
    """Null arms (no true difference), 4000 seeded simulations: the 95% CI over runs covers 0 in
    95% of them (a percentile bootstrap of the runs covered 82-93% here)."""
    rng = np.random.default_rng(n)
    a = rng.standard_normal((4000, n))
    b = sd_b * rng.standard_normal((4000, n)) + (0.8 * a if paired else 0)
    low, high = compare.difference_ci(a, b, paired)
    assert abs(np.mean((low <= 0) & (0 <= high)) - 0.95) < 0.012
    c = compare.compare_samples(a[0], b[0], paired=paired, n_perm=200)
    assert c.ci == pytest.approx(compare.difference_ci(a[0], b[0], paired), rel=1e-12)


def test_a_timing_is_refused_in_one_line(capsys):
    with pytest.raises(SystemExit) as stop:
        compare.main(["a", "b", "--metric", "train_seconds"])
    assert stop.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "--metric" in line and "train_seconds is a timing" in line and "a pack's replicas share one" in line


@pytest.mark.parametrize("option, value, where", [
    ("--alpha", "0", "(0, 0.5)"), ("--alpha", "1.5", "(0, 0.5)"), ("--alpha", "nan", "(0, 0.5)"),
    ("--power", "1", "(0, 1)"), ("--power", "0", "(0, 1)"),
    ("--bootstrap", "0", ">= 100"), ("--bootstrap", "1", ">= 100"), ("--multibootstrap", "1", ">= 100"),
    ("--permutations", "0", ">= 100"), ("--bootstrap", "x", ">= 100"), ("--seed", "-1", ">= 0"),
])
def test_out_of_range_options_are_refused_in_one_line(capsys, option, value, where):
    with pytest.raises(SystemExit) as stop:
        compare.parser().parse_args(["a", "b", option, value])
    assert stop.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert f"argument {option}:" in line and where in line


def test_the_library_refuses_an_alpha_that_would_never_end_the_search():
    with pytest.raises(ValueError, match="alpha"):
        compare.compare_samples([1.0, 2.0], [2.0, 3.0], alpha=0.0)
    with pytest.raises(ValueError, match="alpha"):
        compare.exact_test_runs_needed(0.0)


def test_two_runs_per_arm_get_no_rule_verdict_and_an_exact_rank_p(tmp_path, capsys):
    """2 against 2 runs, B's two tied: the Mann-Whitney p is exact (1/3, never below the
    smallest p the warning names) and Bouthillier's rule is not applied."""
    n = 200
    a = np.stack([np.arange(n) < 140, np.arange(n) < 141])
    b = np.stack([np.arange(n) < 142, np.roll(np.arange(n) < 142, 1)])  # 71% both, other examples
    a_dir, b_dir = _sweep_from_correct(tmp_path / "a", "init", a), _sweep_from_correct(tmp_path / "b", "init", b)
    assert compare.main([str(a_dir), str(b_dir), *FAST]) == 0
    (line,) = [x for x in capsys.readouterr().out.splitlines() if x.startswith("- P(B > A)")]
    assert "exact p = 0.333" in line and line.endswith("not applied: too few runs (below)")


def test_arms_that_hold_the_same_runs_are_refused(tmp_path, capsys):
    import shutil

    a = _sweep_from_correct(tmp_path / "a", "init", _arms(40, 20, (), ())[0])
    shutil.copytree(tmp_path / "a", tmp_path / "b")  # another sweep name, the same configuration and runs
    assert compare.main([str(a), str(tmp_path / "b" / "s"), *FAST]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "A and B are the same configuration and hold the same runs (r0000" in line


def test_a_multibootstrap_with_no_resample_across_0_gives_a_bound(tmp_path, capsys):
    arms = _arms(400, 200, (), range(300, 400))
    a, b = (_sweep_from_correct(tmp_path / x, "init", arm) for x, arm in zip("ab", arms))
    assert compare.main([str(a), str(b), *FAST]) == 0
    (line,) = [x for x in capsys.readouterr().out.splitlines() if x.startswith("- multibootstrap over")]
    assert line.endswith("p < 0.002 (no resample crossed 0)")


@pytest.mark.parametrize("shared", [False, True])
def test_paired_arms_that_share_no_seed_get_a_note(tmp_path, capsys, shared):
    arms = _arms(40, 20, (), (30,))
    dirs = [_sweep_from_correct(tmp_path / x, "init", arm) for x, arm in zip("ab", arms)]
    for arm, d in enumerate(dirs):
        for r, run in enumerate(sorted(d.glob("*/r*"))):
            init = 1000 + r if shared else 1000 * arm + r
            records.write_json(run / records.SEEDS_FILE, {"base_seed": arm, "seeds": {"init": init}, "vary": ["init"]})
    assert compare.main([*map(str, dirs), *FAST, "--paired"]) == 0
    noted = "no pair of runs shares the seed of a source either arm varies" in capsys.readouterr().out
    assert noted != shared


def test_a_label_leaves_out_a_key_the_group_does_not_have():
    from analysis.load import Group

    group = Group(key=(("source.name", "init"),), runs=[])
    assert group.label(["source.name", "data_order"]) == "init"


def test_the_rank_p_of_tied_runs_is_the_exact_permutation_p(tmp_path, capsys):
    """Accuracies tie on a small test set; scipy's "exact" Mann-Whitney assumes no ties, so the
    p printed is the enumeration of every arrangement, computed here by hand with midranks."""
    import itertools

    from scipy.stats import rankdata

    n, accuracy_a, accuracy_b = 100, (70, 70, 70, 71), (70, 70, 72, 72)
    arm = lambda ks: np.stack([np.arange(n) < k for k in ks])  # noqa: E731
    a_dir, b_dir = (_sweep_from_correct(tmp_path / x, "init", arm(ks)) for x, ks in zip("ab", (accuracy_a, accuracy_b)))
    assert compare.main([str(a_dir), str(b_dir), *FAST]) == 0
    (line,) = [x for x in capsys.readouterr().out.splitlines() if x.startswith("- P(B > A)")]
    values = np.array(accuracy_a + accuracy_b, float)
    ranks, mean_u = rankdata(values), len(accuracy_a) * len(accuracy_b) / 2

    def u_of(b_idx):
        return ranks[list(b_idx)].sum() - len(b_idx) * (len(b_idx) + 1) / 2

    observed = abs(u_of(range(4, 8)) - mean_u)
    splits = list(itertools.combinations(range(8), 4))
    p = sum(abs(u_of(s) - mean_u) >= observed - 1e-12 for s in splits) / len(splits)
    assert f"exact p = {p:.3g})" in line, (line, p)  # scipy's no-ties "exact": 0.486
