"""The paper's analyses beyond the run table, on fake run directories: Table 5 (snapshot against
vanilla ensembles), Figure 2 (onset), Figure 3 and the Sec. 4.2 check (instability), and
Snapp & Shamir's prediction difference; and their wiring into ``python -m analysis``."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from analysis import __main__ as cli
from analysis import instability, onset, shamir, snapshot
from analysis.load import load_sweep
from analysis.metrics import group_metrics
from analysis.paper import paper_analyses, paper_figures
from analysis.tables import summary_frame
from fake_runs import fake_config, metrics_rows, random_logits, write_group, write_run
from nondet import records

N, C = 50, 4


@pytest.fixture
def labels():
    return np.random.default_rng(0).integers(0, C, N)


def config(tmp_path, source="all", **overrides):
    return fake_config(
        **{"source.name": source, "source.vary": [source]},
        output_root=str(tmp_path),
        sweep_name="sweep",
        **overrides,
    )


def softmax(x):
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


# --- Table 5 ------------------------------------------------------------------------------


def test_ensemble_log_probabilities_is_the_log_of_the_mean_softmax():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, N, C)) * 5
    members = np.array([[0, 1, 2], [3, 4, 5], [0, 2, 5]])
    got = snapshot.ensemble_log_probabilities(snapshot.log_softmax(logits), members)
    want = np.log(np.stack([softmax(logits[m]).mean(axis=0) for m in members]))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_ensemble_log_probabilities_keeps_tiny_probabilities():
    logits = np.array([[[0.0, -2000.0]], [[0.0, -2100.0]]])  # softmax underflows to 0 in float64
    got = snapshot.ensemble_log_probabilities(snapshot.log_softmax(logits), np.array([[0, 1]]))
    assert np.isfinite(got).all()
    assert got[0, 0, 1] == pytest.approx(-2000.0 - math.log(2.0))


def test_ensemble_draws_are_distinct_subsets_and_seeded():
    rng = np.random.default_rng
    draws = snapshot.ensemble_draws(100, 5, 100, rng(0))
    assert draws.shape == (100, 5)
    assert len({tuple(d) for d in draws}) == 100
    assert all(len(set(d)) == 5 and list(d) == sorted(d) for d in draws)
    np.testing.assert_array_equal(draws, snapshot.ensemble_draws(100, 5, 100, rng(0)))
    assert not np.array_equal(draws, snapshot.ensemble_draws(100, 5, 100, rng(1)))
    # Fewer subsets than asked for: every one of them, the pool itself for one member.
    np.testing.assert_array_equal(snapshot.ensemble_draws(6, 5, 6, rng(0)), list(itertools.combinations(range(6), 5)))
    np.testing.assert_array_equal(snapshot.ensemble_draws(6, 1, 6, rng(0)), np.arange(6)[:, None])
    with pytest.raises(ValueError, match="pool of 3"):
        snapshot.ensemble_draws(3, 4, 3, rng(0))


def write_snapshot_sweep(tmp_path, labels, pool=8, runs=4, cycles=5, stored="ensemble"):
    """A cosine pool of ``pool`` runs and ``runs`` snapshot runs with ``cycles`` snapshots each.

    ``stored``: what the snapshot runs' logits.npy holds: ``ensemble`` (the contract), ``last``
    (raw logits of the last snapshot: an engine without snapshot saving, and no snapshots/),
    ``wrong`` (an ensemble of other numbers)."""
    rng = np.random.default_rng(3)
    write_group(config(tmp_path, **{"schedule.name": "cosine"}), random_logits(rng, pool, N, C), labels)
    snap_config = config(tmp_path, **{"schedule.name": "snapshot", "schedule.cycles": cycles})
    snapshots = random_logits(rng, runs * cycles, N, C, spread=0.5).reshape(runs, cycles, N, C)
    for r in range(runs):
        run_config = dict(snap_config, replicate=r, replicates=runs)
        directory = records.run_dir(run_config)
        ensemble = np.log(softmax(snapshots[r]).mean(axis=0)).astype(np.float32)
        logits = {"ensemble": ensemble, "last": snapshots[r, -1], "wrong": ensemble[::-1].copy()}[stored]
        write_run(directory, run_config, logits, labels)
        if stored != "last":
            for k in range(cycles):
                records.write_npy(directory / "snapshots" / str(k + 1) / "logits.npy", snapshots[r, k])
    return tmp_path / "sweep", snapshots


def test_table5_rows_follow_their_definitions(tmp_path, labels):
    root, snapshots = write_snapshot_sweep(tmp_path, labels)
    sweep = load_sweep(root)
    frame, notes = snapshot.table5_frame(sweep, n_boot=50)
    assert notes == []
    assert list(frame["ensemble"]) == [f"vanilla N={n}" for n in range(1, 6)] + [
        "snapshot M=1 (last 1 of 5)", "snapshot M=2 (last 2 of 5)", "snapshot M=3 (last 3 of 5)",
        "snapshot M=4 (last 4 of 5)", "snapshot M=5",
    ]
    assert list(frame["n_runs"]) == [8, 8, 8, 8, 8, 4, 4, 4, 4, 4]
    assert set(frame["pool"]) == {8, 4}
    (pool,) = [g for g in sweep.groups if not snapshot.is_snapshot(g)]
    # N=1 is the pool itself (as log-probabilities).
    vanilla1 = frame.iloc[0]
    want = group_metrics(snapshot.log_softmax(pool.logits), labels, n_boot=50)
    for column in ("accuracy_sd", "cross_entropy_sd", "disagreement", "spearman", "ensemble_delta_accuracy"):
        assert vanilla1[column] == pytest.approx(want[column], rel=1e-9, abs=1e-12)
    # N=3: the ensembles the seeded draw names, computed the slow way.
    rng = np.random.default_rng(0)
    for n in (1, 2):  # the draws for N=1 and 2 come first from the same generator
        snapshot.ensemble_draws(8, n, 8, rng)
    draws = snapshot.ensemble_draws(8, 3, 8, rng)
    slow = np.log(np.stack([softmax(pool.logits[d]).mean(axis=0) for d in draws]))
    want = group_metrics(slow, labels, n_boot=50)
    assert frame.iloc[2]["cross_entropy_sd"] == pytest.approx(want["cross_entropy_sd"], rel=1e-9)
    assert frame.iloc[2]["disagreement"] == pytest.approx(want["disagreement"])
    # Snapshot M=2: the last two snapshots of every run; M=5 is the runs' logits.npy.
    last2 = np.log(softmax(snapshots[:, 3:]).mean(axis=1))
    assert frame.iloc[6]["cross_entropy_mean"] == pytest.approx(group_metrics(last2, labels, n_boot=2)["cross_entropy_mean"], rel=1e-9)
    stored = np.stack([r.logits for r in sweep.groups[-1].runs])
    assert frame.iloc[9]["accuracy_mean"] == pytest.approx(group_metrics(stored, labels, n_boot=2)["accuracy_mean"])


def test_table5_notes_a_stored_ensemble_that_is_not_the_snapshots_mean(tmp_path, labels):
    root, _ = write_snapshot_sweep(tmp_path, labels, stored="wrong")
    _, notes = snapshot.table5_frame(load_sweep(root), n_boot=10)
    assert any("logits.npy differs from the ensemble of its 5 snapshots" in n for n in notes)


def test_table5_without_snapshots_says_the_row_is_a_single_model(tmp_path, labels):
    root, _ = write_snapshot_sweep(tmp_path, labels, stored="last")
    frame, notes = snapshot.table5_frame(load_sweep(root), n_boot=10)
    assert frame.iloc[-1]["ensemble"] == "snapshot schedule, final model only"
    assert any("predate snapshot saving" in n for n in notes)


def test_table5_with_a_small_pool_and_without_one(tmp_path, labels):
    root, _ = write_snapshot_sweep(tmp_path, labels, pool=3)
    frame, notes = snapshot.table5_frame(load_sweep(root), n_boot=10)
    assert list(frame["ensemble"][:3]) == ["vanilla N=1", "vanilla N=2", "vanilla N=3"]
    assert any("vanilla ensembles stop at N=3" in n for n in notes)
    for path in (tmp_path / "sweep").glob("all-*"):
        if "snapshot" not in (path / "r0000" / "config.yaml").read_text():
            for run in path.iterdir():
                (run / "result.json").unlink()
    frame, notes = snapshot.table5_frame(load_sweep(root), n_boot=10)
    assert all(frame["kind"] == "snapshot")
    assert any("no vanilla pool" in n for n in notes)


def test_table5_pairs_each_snapshot_group_with_its_own_cosine_pool_or_none(tmp_path, labels):
    rng = np.random.default_rng(5)

    def group(**schedule):
        write_group(config(tmp_path, **{f"schedule.{k}": v for k, v in schedule.items()}),
                    random_logits(rng, 3, N, C), labels)

    def table():
        return snapshot.table5_frame(load_sweep(tmp_path / "sweep"), n_boot=5)

    group(name="constant")
    group(name="snapshot", cycles=2)  # no snapshots/: a final-model row, and its note
    frame, notes = table()
    assert set(frame["kind"]) == {"snapshot"}  # constant is not the recipe's cosine: no vanilla rows
    assert any("no vanilla pool" in n and "schedule=constant" in n for n in notes)
    group(name="cosine", warmup_epochs=1.0)
    group(name="cosine", warmup_epochs=2.0)
    group(name="snapshot", cycles=3, warmup_epochs=2.0)
    frame, notes = table()
    first, second = "all, schedule.cycles=2, schedule.warmup_epochs=0.0", "all, schedule.cycles=3, schedule.warmup_epochs=2.0"
    assert list(dict.fromkeys(frame["group"])) == [first, second]
    # Two warmups fit the first equally (neither is its 0): no vanilla rows, rather than a guess.
    assert set(frame[frame["group"] == first]["kind"]) == {"snapshot"}
    assert any(n.startswith(f"{first}: 2 schedule=cosine groups") and "left out rather than guessed" in n for n in notes)
    # The second shares its warmup with one of them: that one is its pool.
    vanilla = frame[(frame["group"] == second) & (frame["kind"] == "vanilla")]
    assert list(vanilla["ensemble"]) == ["vanilla N=1", "vanilla N=2", "vanilla N=3"]
    sweep = load_sweep(tmp_path / "sweep")
    (pool,) = [g for g in sweep.groups if g.params["schedule.name"] == "cosine" and g.params["schedule.warmup_epochs"] == 2]
    want = group_metrics(snapshot.log_softmax(pool.logits), labels, n_boot=5)
    assert vanilla.iloc[0]["accuracy_mean"] == pytest.approx(want["accuracy_mean"])
    assert set(vanilla["vanilla_pool"]) == {pool.label(sweep.display_keys)}
    text = snapshot.table5_markdown(frame, notes)
    assert f"Group: {second} (vanilla pool: {pool.label(sweep.display_keys)})" in text


def test_table5_leaves_out_a_run_with_an_unreadable_snapshot_and_names_it(tmp_path, labels):
    root, snapshots = write_snapshot_sweep(tmp_path, labels, pool=4, runs=4, cycles=3)
    (snap_dir,) = [p for p in root.iterdir() if "snapshot" in (p / "r0000" / "config.yaml").read_text()]
    (snap_dir / "r0001" / "snapshots" / "2" / "logits.npy").unlink()
    truncated = snap_dir / "r0002" / "snapshots" / "3" / "logits.npy"
    truncated.write_bytes(truncated.read_bytes()[:20])
    frame, notes = snapshot.table5_frame(load_sweep(root), n_boot=5)
    rows = frame[frame["kind"] == "snapshot"]
    assert list(rows["n_runs"]) == [2, 2, 2]  # runs 0 and 3
    (note,) = [n for n in notes if "left out" in n]
    assert note.startswith("all: 2 of 4 snapshot runs left out of the snapshot rows")
    assert f"{snap_dir.name}/r0001/snapshots/2/logits.npy (missing)" in note
    assert f"{snap_dir.name}/r0002/snapshots/3/logits.npy (" in note and "\n" not in note
    kept = np.log(softmax(snapshots[[0, 3]]).mean(axis=1))
    assert rows.iloc[-1]["cross_entropy_mean"] == pytest.approx(group_metrics(kept, labels, n_boot=2)["cross_entropy_mean"])


def test_is_log_probability():
    logits = np.random.default_rng(0).normal(size=(2, N, C))
    assert not snapshot.is_log_probability(logits)
    assert snapshot.is_log_probability(snapshot.log_softmax(logits))


# --- Figure 2 -----------------------------------------------------------------------------


@pytest.fixture
def onset_sweep(tmp_path, labels):
    rng = np.random.default_rng(4)
    for source in ("shuffle", "bitflip"):
        for k, spread in ((0, 1.0), (2, 0.5), (4, 0.1)):
            write_group(config(tmp_path, source, onset_epoch=k), random_logits(rng, 4, N, C, spread=spread), labels)
    return load_sweep(tmp_path / "sweep")


def test_onset_table_and_figure(onset_sweep, tmp_path):
    assert onset.has_onsets(onset_sweep)
    frame = summary_frame(onset_sweep, n_boot=20)
    keys = onset_sweep.display_keys
    lines = onset.onset_lines(frame, keys)
    assert list(lines) == ["shuffle", "bitflip"]
    assert list(lines["shuffle"]["onset_epoch"]) == [0, 2, 4]
    text = onset.onset_markdown(frame, keys)
    assert "| Onset epoch | shuffle | bitflip |" in text
    shuffle_2 = frame[(frame["source.name"] == "shuffle") & (frame["onset_epoch"] == 2)].iloc[0]
    assert f"{shuffle_2['accuracy_sd']:.2f} / {shuffle_2['cross_entropy_sd']:.4f}" in text
    paths = onset.onset_figure(frame, keys, tmp_path / "figs")
    assert [p.name for p in paths] == ["onset.png", "onset.pdf"] and all(p.stat().st_size for p in paths)


def test_one_onset_is_no_figure_2(tmp_path, labels):
    write_group(config(tmp_path, "shuffle", onset_epoch=3), random_logits(np.random.default_rng(0), 3, N, C), labels)
    sweep = load_sweep(tmp_path / "sweep")
    assert not onset.has_onsets(sweep)
    assert paper_figures(sweep, summary_frame(sweep, n_boot=5), tmp_path / "figs") == []


# --- Figure 3 and the Sec. 4.2 check ------------------------------------------------------


def write_instability_sweep(tmp_path, labels, linear_changes_prediction=False, epochs=12, runs=4):
    """Bit-flip groups of a linear model (runs within 1e-6 of each other) and an mlp (spread),
    with per-epoch metrics, plus an init group of the mlp."""
    rng = np.random.default_rng(5)
    base = rng.normal(size=(N, C)) * 3
    linear = np.stack([base + 1e-6 * rng.normal(size=(N, C)) for _ in range(runs)]).astype(np.float32)
    if linear_changes_prediction:
        row = linear[1, 0]
        linear[1, 0] = np.roll(row, 1) + 5.0 * (np.arange(C) == (np.argmax(row) + 1) % C)
    mlp = (base + 0.5 * rng.normal(size=(runs, N, C))).astype(np.float32)

    def metrics(scale):
        return [metrics_rows(rng, epochs, scale=scale) for _ in range(runs)]

    write_group(config(tmp_path, "bitflip", **{"model.name": "linear"}), linear, labels, metrics(1e-7))
    write_group(config(tmp_path, "bitflip", **{"model.name": "mlp"}), mlp, labels, metrics(0.05))
    write_group(config(tmp_path, "init", **{"model.name": "mlp"}), mlp[::-1].copy(), labels, metrics(0.05))
    return tmp_path / "sweep"


def test_instability_check_holds_when_no_linear_prediction_changes(tmp_path, labels, capsys):
    sweep = load_sweep(write_instability_sweep(tmp_path, labels))
    (check,) = instability.instability_checks(sweep)
    assert check.changed_examples == 0 and check.accuracy_sd == 0.0
    assert 0 < check.cross_entropy_sd < 1e-5
    assert set(check.deeper) == {"mlp"} and check.ratios["mlp"] > 1e3
    assert check.holds
    assert "HOLDS" in instability.checks_markdown([check])
    assert instability.main([str(tmp_path / "sweep")]) == 0
    assert "0 of 50" in capsys.readouterr().out


def test_instability_check_fails_when_a_linear_prediction_changes(tmp_path, labels):
    sweep = load_sweep(write_instability_sweep(tmp_path, labels, linear_changes_prediction=True))
    (check,) = instability.instability_checks(sweep)
    assert check.changed_examples == 1 and not check.holds
    assert "DOES NOT HOLD" in instability.checks_markdown([check])
    assert instability.main([str(tmp_path / "sweep")]) == 1


def test_instability_check_needs_linear_and_deeper_bitflip_runs(tmp_path, labels, capsys):
    write_group(config(tmp_path, "bitflip", **{"model.name": "mlp"}), random_logits(np.random.default_rng(0), 3, N, C), labels)
    assert instability.instability_checks(load_sweep(tmp_path / "sweep")) == []
    assert instability.main([str(tmp_path / "sweep")]) == 2
    assert "table8" in capsys.readouterr().err


def test_figure3_spread_by_epoch_and_figure(tmp_path, labels):
    sweep = load_sweep(write_instability_sweep(tmp_path, labels))
    groups = instability.figure3_groups(sweep)
    assert [g.params["model.name"] for g in groups] == ["linear", "mlp"]  # bit flips only
    spread = instability.spread_by_epoch(groups[1])
    epochs, values = instability.per_epoch(groups[1])
    assert list(spread["epoch"]) == list(range(1, 13))
    assert spread["cross_entropy_sd"].iloc[4] == pytest.approx(np.std(values[:, 4], ddof=1))
    low, high = np.percentile(values[:, 4], [2.5, 97.5])
    assert spread["cross_entropy_range95"].iloc[4] == pytest.approx(high - low)
    text = instability.instability_markdown(sweep)
    assert "| model.name=linear |" in text and "| 1 | 2 | 3 | 5 | 10 | 12 |" in text
    paths = instability.instability_figure(sweep, tmp_path / "figs")
    assert [p.name for p in paths] == ["instability.png", "instability.pdf"]


# --- Snapp & Shamir -----------------------------------------------------------------------


def test_prediction_difference_findings_count_agreeing_comparisons(tmp_path, labels):
    rng = np.random.default_rng(6)
    # PD grows with the spread of the runs: relu spreads more than smelu, larger windows more.
    spreads = {("relu", 4): 0.4, ("relu", None): 0.8, ("smelu", 4): 0.2, ("smelu", None): 0.3}
    for (activation, window), spread in spreads.items():
        for source in ("init", "shuffle"):
            write_group(
                config(tmp_path, source, shuffle_window=window, **{"model.activation": activation}),
                random_logits(rng, 6, N, C, spread=spread),
                labels,
            )
    sweep = load_sweep(tmp_path / "sweep")
    assert shamir.has_pd_structure(sweep)
    frame = summary_frame(sweep, n_boot=5)
    keys = sweep.display_keys
    text = shamir.pd_markdown(frame, keys)
    assert "| model.activation | window 4 | window full |" in text
    assert "- smooth activations give a lower PD than ReLU: 4 / 4" in text
    assert "- a larger shuffle window gives a higher PD: 4 / 4" in text
    paths = shamir.pd_figure(frame, keys, tmp_path / "figs")
    assert [p.name for p in paths] == ["prediction_difference.png", "prediction_difference.pdf"]


def test_window_order_puts_a_full_shuffle_last():
    assert sorted([None, 64, 1, 4096], key=shamir._window_value) == [1, 64, 4096, None]
    assert shamir._window_label(None) == "full" and shamir._window_label(16.0) == "16"


# --- the command line ---------------------------------------------------------------------


def test_python_m_analysis_adds_the_sections_and_files(tmp_path, labels, capsys):
    root, _ = write_snapshot_sweep(tmp_path, labels)
    assert cli.main([str(root), "--bootstrap", "100", "--csv", str(tmp_path / "t.csv"), "--figures", str(tmp_path / "figs")]) == 0
    out = capsys.readouterr().out
    assert "Table 5: snapshot ensembles" in out and "| vanilla N=5 |" in out and "| snapshot M=5 |" in out
    table5 = (tmp_path / "t_table5.csv").read_text().splitlines()
    assert table5[0].startswith("group,ensemble,kind,members,pool,n_runs,")
    assert len(table5) == 11


def test_paper_analyses_of_a_plain_sweep_add_nothing(tmp_path, labels):
    write_group(config(tmp_path, "init"), random_logits(np.random.default_rng(0), 3, N, C), labels)
    sweep = load_sweep(tmp_path / "sweep")
    frame = summary_frame(sweep, n_boot=5)
    assert paper_analyses(sweep, frame).sections == []
    assert paper_figures(sweep, frame, tmp_path / "figs") == []


def test_figure3_marks_a_spread_within_the_rounding_of_the_float32_record(tmp_path, labels):
    """metrics.jsonl records the test cross-entropy in float32: runs one or two ULPs apart give an
    SD of about one ULP, which is the rounding of the record, not a measured spread."""
    rng = np.random.default_rng(9)
    logits = random_logits(rng, 3, N, C)
    ce = np.float32(0.6929251)
    one_ulp_apart = [ce, np.nextafter(ce, np.float32(1)), ce]
    for name, values in (("linear", one_ulp_apart), ("mlp", [0.69, 0.71, 0.74])):
        metrics = [[{"epoch": e, "test_cross_entropy": float(v), "test_accuracy": 50.0, "train_loss": 1.0}
                    for e in (1, 2)] for v in values]
        write_group(config(tmp_path, "bitflip", **{"model.name": name}), logits, labels, metrics)
    text = instability.instability_markdown(load_sweep(tmp_path / "sweep"))
    linear, mlp = (line for line in text.splitlines() if line.startswith("| model.name="))
    assert linear.count("†") == 2 and "†" not in mlp
    assert "within 2 float32 ULPs of the cross-entropy" in text


def test_prediction_difference_findings_leave_out_rows_whose_pd_is_rounding(tmp_path, labels):
    """A stable configuration's bit flips change no prediction (disagreement 0): their PD is float
    rounding (about 1e-8), and a comparison with such a row is not a vote for or against."""
    rng = np.random.default_rng(7)
    base = rng.normal(size=(N, C)) * 3
    for activation in ("relu", "smelu"):
        for window in (4, None):
            stable = np.stack([base + 1e-7 * rng.normal(size=(N, C)) for _ in range(4)]).astype(np.float32)
            write_group(config(tmp_path, "bitflip", shuffle_window=window, **{"model.activation": activation}),
                        stable, labels)
            write_group(config(tmp_path, "init", shuffle_window=window, **{"model.activation": activation}),
                        random_logits(rng, 4, N, C, spread={"relu": 0.8, "smelu": 0.3}[activation]
                                      * (2 if window is None else 1)), labels)
    sweep = load_sweep(tmp_path / "sweep")
    frame = summary_frame(sweep, n_boot=5)
    assert (frame.loc[frame["source.name"] == "bitflip", "disagreement"] == 0).all()
    text = "\n".join(shamir.findings_lines(frame, sweep.display_keys))
    smooth, window = text.splitlines()[1:3]
    assert smooth.startswith("- smooth activations give a lower PD than ReLU: 2 / 2 (")
    assert smooth.endswith("; 2 comparisons left out, a row's runs making the same predictions "
                           "(disagreement 0: its PD is float rounding)")
    assert window.startswith("- a larger shuffle window gives a higher PD: 2 / 2; 2 comparisons left out")


def test_prediction_difference_findings_count_the_comparisons_against_beyond_those_listed():
    """Three comparisons against a finding are listed; the rest were dropped without a word."""
    import pandas as pd

    rows = [{"source.name": "init", "model.width": width, "model.depth": depth, "disagreement": 0.1,
             "prediction_difference": 1.0 / width}  # wider: lower PD, against the finding every time
            for width in (8, 32, 128) for depth in (1, 2)]
    text = shamir.findings_lines(pd.DataFrame(rows), ["source.name", "model.width", "model.depth"])
    start = text.index("- a larger model.width gives a higher PD: 0 / 6")
    assert [line.startswith("  - against: ") for line in text[start + 1:start + 4]] == [True] * 3
    assert text[start + 4] == "  - and 3 more"
