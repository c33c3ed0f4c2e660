"""Loading a sweep: grouping, missing / failed / corrupt runs, mixed test sets, and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import analysis
from analysis import __main__ as cli
from analysis import compare
from analysis.load import display_keys, hashable, load_sweep, sweep_status
from analysis.metrics import COLUMNS
from analysis.stats import STATS_COLUMNS
from fake_runs import fake_config, metrics_rows, random_logits, write_group, write_run
from nondet import records

N, C, R = 60, 4, 4


def source_config(tmp_path, source, **overrides):
    return fake_config(
        **{"source.name": source, "source.vary": [source]},
        output_root=str(tmp_path),
        sweep_name="sweep",
        **overrides,
    )


@pytest.fixture
def labels():
    return np.random.default_rng(0).integers(0, C, N)


@pytest.fixture
def clean_sweep(tmp_path, labels):
    rng = np.random.default_rng(1)
    for source in ("shuffle", "init"):
        write_group(
            source_config(tmp_path, source),
            random_logits(rng, R, N, C),
            labels,
            metrics=[metrics_rows(rng, 5) for _ in range(R)],
        )
    return tmp_path / "sweep"


@pytest.fixture
def broken_sweep(clean_sweep, tmp_path, labels):
    """The clean sweep plus an unfinished, a failed and two corrupt runs of the init group."""
    base = source_config(tmp_path, "init", replicates=R)
    logits = random_logits(np.random.default_rng(2), 1, N, C)[0]

    def run_dir(replicate):
        return records.run_dir(dict(base, replicate=replicate))

    unfinished = write_run(run_dir(4), dict(base, replicate=4), result=False)
    (unfinished / records.CHECKPOINT_FILE).write_bytes(b"checkpoint")
    write_run(run_dir(5), dict(base, replicate=5), error="Traceback (most recent call last):\nValueError: loss is nan")
    truncated = write_run(run_dir(6), dict(base, replicate=6), logits, labels)
    data = (truncated / records.LOGITS_FILE).read_bytes()
    (truncated / records.LOGITS_FILE).write_bytes(data[: len(data) // 2])
    bad_json = write_run(run_dir(7), dict(base, replicate=7), logits, labels)
    (bad_json / records.RESULT_FILE).write_text('{"test_accuracy": 5')
    return clean_sweep


def test_groups_by_config_not_by_folder(clean_sweep):
    sweep = load_sweep(clean_sweep)
    assert [g.params["source.name"] for g in sweep.groups] == ["init", "shuffle"]  # the paper's order
    assert all(len(g.runs) == R for g in sweep.groups)
    assert [r.replicate for r in sweep.groups[0].runs] == list(range(R))
    # source.vary differs between groups but is implied by the source's name: not a column.
    assert sweep.display_keys == ["source.name"]
    assert not sweep.problems and not sweep.notes


def test_runs_are_found_at_any_depth_and_hidden_dirs_are_skipped(tmp_path, labels):
    logits = random_logits(np.random.default_rng(3), 2, N, C)
    config = source_config(tmp_path, "init")
    write_run(tmp_path / "a" / "b" / "c", dict(config, replicate=0, sweep_name="x"), logits[0], labels)
    write_run(tmp_path / "d", dict(config, replicate=1, sweep_name="y"), logits[1], labels)
    write_run(tmp_path / ".submitit" / "job", dict(config, replicate=2), logits[1], labels)
    (tmp_path / "d" / ".hydra").mkdir()
    (tmp_path / "d" / ".hydra" / "config.yaml").write_text("not: a run\n")
    sweep = load_sweep(tmp_path)
    # sweep_name and output_root are NON_IDENTITY_KEYS: both runs are one group.
    assert len(sweep.groups) == 1 and len(sweep.groups[0].runs) == 2


def test_a_run_with_a_corrupt_config_yaml_is_corrupt_not_missing(tmp_path, labels):
    """Its directory is there (r0001 beside the group's r0000): listed as corrupt, and the group
    is not told that a replicate has no run directory."""
    paths = write_group(source_config(tmp_path, "init"), random_logits(np.random.default_rng(2), 2, N, C), labels)
    (paths[1] / records.CONFIG_FILE).write_text("\x00\x01 not yaml: [")
    sweep = load_sweep(tmp_path / "sweep")
    assert [p.status for p in sweep.problems] == ["corrupt"]
    assert not [n for g in sweep.groups for n in g.notes if "have no run directory" in n]


def test_missing_failed_and_corrupt_runs_are_reported_and_left_out(broken_sweep):
    sweep = load_sweep(broken_sweep)
    assert [len(g.runs) for g in sweep.groups] == [R, R]
    by_status = {}
    for p in sweep.problems:
        by_status.setdefault(p.status, []).append(p)
    assert sorted((s, len(v)) for s, v in by_status.items()) == [("corrupt", 2), ("failed", 1), ("unfinished", 1)]
    assert "loss is nan" in by_status["failed"][0].reason
    assert "checkpoint.pt" in by_status["unfinished"][0].reason
    reasons = " ".join(p.reason for p in by_status["corrupt"])
    assert "logits.npy" in reasons and "result.json" in reasons

    status = sweep_status(broken_sweep)
    assert (status.finished, status.failed, status.unfinished, status.corrupt) == (2 * R, 1, 1, 2)
    assert not status.ok

    text = analysis.summarize(broken_sweep)
    assert f"{2 * R} of {2 * R + 4} runs" in text
    for p in sweep.problems:
        assert str(p.path.relative_to(broken_sweep)) in text
    assert "ValueError: loss is nan" in text
    assert "delete a corrupt run's directory and relaunch to train it again" in text
    assert status.advice == (
        "relaunch the same command to retry the failed runs; delete the corrupt runs' directories "
        "(listed above) and relaunch to train them again"
    )


def test_all_runs_found_message_and_status(clean_sweep):
    text = analysis.summarize(clean_sweep)
    assert f"All {2 * R} runs found" in text
    assert sweep_status(clean_sweep).ok


def test_replicates_without_a_directory_are_named(tmp_path, labels):
    config = source_config(tmp_path, "init")
    rng = np.random.default_rng(4)
    for r in (0, 2):
        c = dict(config, replicate=r, replicates=4)
        write_run(records.run_dir(c), c, random_logits(rng, 1, N, C)[0], labels)
    text = analysis.summarize(tmp_path)
    assert "2 of 4 replicates have no run directory (1, 3)" in text


def test_runs_of_two_directories_never_share_a_row(tmp_path, labels):
    """1 and 1.0 (or true and 1) hash to different run directories; Python's 1 == 1.0 == True must
    not pool them into one row, whose spread would count every replicate twice."""
    rng = np.random.default_rng(5)
    spellings = {"data_resample": (1, 1.0), "user.flag": (True, 1), "user.betas": ([1, 2], [1.0, 2.0])}
    for key, values in spellings.items():
        root = tmp_path / key
        for value in values:
            write_group(source_config(root, "data", **{key: value}), random_logits(rng, 2, N, C), labels)
        sweep = load_sweep(root / "sweep")
        assert len({records.group_dirname(g.config) for g in sweep.groups}) == 2, key
        assert [len(g.runs) for g in sweep.groups] == [2, 2], key
        assert sorted(repr(g.params[key]) for g in sweep.groups) == sorted(repr(hashable(v)) for v in values)
        assert any("for how a number is written" in n for n in sweep.notes), sweep.notes
        assert not any("occur more than once" in n for n in sweep.notes), sweep.notes


@pytest.mark.parametrize("dataset, named", [
    ({"dataset.name": "custom", "dataset._target_": "my_pkg.data.load"},
     "dataset._target_=my_pkg.data.load returned different data for different runs"),
    ({"dataset.name": "imagefolder", "dataset.root": "/data/pets"},
     "dataset.root=/data/pets had different contents for different runs"),
    ({"dataset.name": "ptb", "dataset.root": "/data/ptb"},
     "dataset.root=/data/ptb had different contents for different runs"),
])
def test_rows_apart_by_their_datas_content_name_the_key_of_the_data(tmp_path, labels, dataset, named):
    rng = np.random.default_rng(6)
    for sha in ("a" * 64, "b" * 64):
        config = source_config(tmp_path, "init", **dataset, **{"dataset.sha256": sha})
        write_group(config, random_logits(rng, 2, N, C), labels)
    notes = [n for n in load_sweep(tmp_path / "sweep").notes if "SHA-256" in n]
    assert len(notes) == 1 and named in notes[0] and "dataset.path" not in notes[0], notes


def test_a_group_that_mixes_test_sets_is_left_out_not_the_whole_table(clean_sweep, tmp_path, labels, capsys):
    config = source_config(tmp_path, "init", replicate=9, replicates=R)
    other = (labels + 1) % C
    write_run(records.run_dir(config), config, random_logits(np.random.default_rng(5), 1, N, C)[0], other)
    sweep = load_sweep(clean_sweep)
    assert [g.params["source.name"] for g in sweep.groups] == ["shuffle"]
    assert [g.params["source.name"] for g, _ in sweep.refused] == ["init"]
    assert cli.main([str(clean_sweep)]) == 0
    out = capsys.readouterr().out
    assert "| shuffle |" in out and "| init |" not in out
    assert "init: left out of the tables: runs of one configuration were evaluated on different test sets" in out
    # compare names the reason instead of "no configuration matches".
    assert compare.main([str(clean_sweep), str(clean_sweep), "--group-a", "source=init", "--group-b", "source=shuffle"]) == 2
    assert "different test sets" in capsys.readouterr().err


def test_display_keys_show_what_differs():
    a = (("model.width", 64), ("source.name", "init"), ("source.vary", ("init",)))
    b = (("model.width", 128), ("source.name", "init"), ("source.vary", ("init",)))
    c = (("model.width", 64), ("source.name", "init"), ("source.vary", ("init", "shuffle")))
    assert display_keys([a, b]) == ["source.name", "model.width"]
    # Two groups both named init but varying different sources: vary must be shown.
    assert display_keys([a, c]) == ["source.name", "source.vary"]


def test_cli_prints_summarize_and_writes_csv_latex_figures(broken_sweep, tmp_path, capsys):
    out = tmp_path / "out"
    code = cli.main([str(broken_sweep), "--csv", str(out / "t.csv"), "--latex", str(out / "t.tex"), "--figures", str(out / "figs")])
    assert code == 0
    assert capsys.readouterr().out == analysis.summarize(broken_sweep)

    table = pd.read_csv(out / "t.csv")
    assert COLUMNS[0] == "n_runs"  # the CSV adds how many diverged after it, and the notes last
    assert list(table.columns) == ["source.name", "n_runs", "n_diverged", *COLUMNS[1:], *STATS_COLUMNS, "notes"]
    expected = analysis.summary_frame(load_sweep(broken_sweep))
    np.testing.assert_allclose(table[list(COLUMNS)].to_numpy(float), expected[list(COLUMNS)].to_numpy(float), rtol=1e-12)

    latex = (out / "t.tex").read_text()
    assert r"\begin{tabular}" in latex and r"$\pm$" in latex and latex.count(r"\\") == 3
    names = sorted(p.name for p in (out / "figs").iterdir())
    stems = ("variability", "cross_entropy_spread", "test_set_noise", "best_of_k")
    assert names == sorted(f"{s}.{e}" for s in stems for e in ("png", "pdf"))


def test_markdown_reads_like_table_1(clean_sweep):
    text = analysis.summarize(clean_sweep)
    header, _, first_row = text.splitlines()[:3]
    assert header.startswith("| Source | Runs | Accuracy (%) | Accuracy SD (%)")
    cells = [c.strip() for c in first_row.strip("|").split("|")]
    assert cells[0] == "init" and cells[1] == str(R)
    sd, sd_sd = cells[3].split(" ± ")
    assert len(sd.split(".")[1]) == 2 and len(sd_sd.split(".")[1]) == 2


def test_identical_runs_give_exact_zeros(tmp_path, labels):
    logits = np.repeat(random_logits(np.random.default_rng(6), 1, N, C), 3, axis=0)
    write_group(source_config(tmp_path, "none"), logits, labels)
    row = analysis.summary_frame(load_sweep(tmp_path)).iloc[0]
    for k in ("accuracy_sd", "accuracy_sd_sd", "cross_entropy_sd", "cross_entropy_sd_sd", "disagreement",
              "ensemble_delta_accuracy", "ensemble_delta_cross_entropy", "prediction_difference",
              "relative_prediction_difference"):
        assert row[k] == 0.0, k
    assert row["spearman"] == pytest.approx(1.0, abs=1e-12)


def test_empty_directory(tmp_path):
    assert "No run directories" in analysis.summarize(tmp_path)
    assert cli.main([str(tmp_path)]) == 1


def test_python_dash_m_analysis(clean_sweep):
    done = subprocess.run(
        [sys.executable, "-m", "analysis", str(clean_sweep)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == analysis.summarize(clean_sweep)


def test_diverged_runs_are_kept_and_named(tmp_path, labels):
    config = source_config(tmp_path, "init")
    logits = random_logits(np.random.default_rng(7), 3, N, C)
    logits[1] = np.nan  # what a run whose loss went to NaN evaluates to
    write_group(config, logits, labels)
    text = analysis.summarize(tmp_path)
    assert "1 of 3 runs diverged (non-finite test cross-entropy or logits: r0001)" in text
    assert "lower the learning rate" in text
    assert len(load_sweep(tmp_path).groups[0].runs) == 3


def test_a_control_that_is_not_deterministic_is_named(tmp_path, labels):
    """source=none runs that differ (a model drawing from the global generator) pass silently
    otherwise: every other row's spread would include that nondeterminism unnoticed."""
    control = fake_config(output_root=str(tmp_path), sweep_name="sweep")  # source=none, vary []
    same = np.repeat(random_logits(np.random.default_rng(8), 1, N, C), 3, axis=0)
    write_group(control, same, labels)
    assert not any("control" in n for n in load_sweep(tmp_path / "sweep").notes)  # bitwise identical
    differs = same.copy()
    differs[2, 0, 0] = np.nextafter(differs[2, 0, 0], np.float32(np.inf))  # one ULP is enough
    write_group(control, differs, labels)
    (note,) = [n for n in load_sweep(tmp_path / "sweep").notes if "control" in n]
    assert note.startswith("none: the control is not deterministic: 1 of its 3 runs differ bitwise")
    assert "every other row's spread includes this nondeterminism" in note and "run.dropout()" in note
    assert f"- note: {note}" in analysis.summarize(tmp_path / "sweep")  # the end-of-sweep summary


@pytest.mark.parametrize("source, setting, cause", [
    ("shuffle", {"shuffle_window": 1}, "shuffle_window=1 keeps the stored order"),
    ("shuffle", {"onset_epoch": 2}, "the data order did vary, but it acts from onset_epoch=2 on"),
    ("reduction", {"batch_size": 1}, "batch_size=1"),
    ("init", {}, "torch.manual_seed in its __init__"),
])
def test_a_source_that_varied_nothing_is_named(tmp_path, labels, source, setting, cause):
    config = source_config(tmp_path, source, **setting)
    write_group(config, np.repeat(random_logits(np.random.default_rng(9), 1, N, C), 3, axis=0), labels)
    write_group(source_config(tmp_path, "bitflip"), random_logits(np.random.default_rng(10), 3, N, C), labels)
    sweep = load_sweep(tmp_path / "sweep")
    (note,) = sweep.notes
    assert f": source {source} varied nothing in this configuration: its 3 runs are bitwise identical" in note
    assert cause in note and "\n" not in note
    assert f"- note: {note}" in analysis.summarize(sweep)
    assert cli.main([str(tmp_path / "sweep")]) == 0  # named, not fatal: the rows are what ran


def test_the_summary_imports_no_plotting_or_scipy(clean_sweep):
    """The table the end of every sweep prints needs numpy and pandas only: scipy (compare) and
    matplotlib (figures, report) would cost ~1 s of every ``launch.py -m``."""
    code = (
        "import sys, analysis; from analysis.report import report_command; "
        f"analysis.summarize({str(clean_sweep)!r}); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('scipy', 'matplotlib')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("text", [
    "a: 1\nb: [x, 1.5e-3, null, 1e3]\nc: {d: true, e: '???', f: 2001-01-01}\n",  # OmegaConf's floats, no dates
    "a: ${b}\nb: 2\n",  # an interpolation: OmegaConf resolves it
    "a: '\\${b}'\n",
    "",
    "a: 1\na: 2\n",  # duplicate keys: refused
    "- 1\n",
    "a: [\n",
    "a: !!binary aGk=\n",
    "1: one\n",
])
def test_a_run_config_reads_as_omegaconf_reads_it(tmp_path, text):
    """The C parser that reads config.yaml fast gives what OmegaConf gives, or leaves it to OmegaConf."""
    from omegaconf import OmegaConf

    from analysis.load import _read_config

    path = tmp_path / records.CONFIG_FILE
    path.write_text(text)
    try:
        expected = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
        expected = expected if isinstance(expected, dict) else f"{path} does not hold a mapping"
    except Exception as e:  # noqa: BLE001
        expected = f"cannot read {path}: {e}"
    try:
        got = _read_config(path)
    except records.CorruptRunError as e:
        got = str(e)
    assert got == expected and type(got) is type(expected)
    if isinstance(got, dict):
        assert [type(v) for v in got.values()] == [type(v) for v in expected.values()]


def test_integer_keys_stay_integers_beside_groups_without_them(tmp_path, labels):
    """A key that one group sets to an integer and another lacks: pandas would make the column
    float (``128.0``, ``nan``); the tables, the CSVs and the legends show ``128``, and the group
    without it a blank cell."""
    rng = np.random.default_rng(3)
    for extra in ({"dataset.test_size": 128}, {"dataset.test_size": 256}, {}):
        config = source_config(tmp_path, "init", **extra)
        if not extra:
            config["dataset"].pop("test_size")
        write_group(config, random_logits(rng, 3, N, C), labels)
    text = analysis.summarize(tmp_path / "sweep")
    rows = [line for line in text.splitlines() if line.startswith("| init")]
    assert sorted(row.split("|")[2].strip() for row in rows) == ["", "128", "256"]
    assert "128.0" not in text and "nan" not in text
    out = tmp_path / "t.csv"
    assert cli.main([str(tmp_path / "sweep"), "--csv", str(out)]) == 0
    for path in (out, tmp_path / "t_classes.csv", tmp_path / "t_best_of_k.csv"):
        body = path.read_text()
        assert ",128," in body and "128.0" not in body, path.name
    frame = analysis.summary_frame(load_sweep(tmp_path / "sweep"))
    assert sorted(map(str, frame["dataset.test_size"])) == ["", "128", "256"]


@pytest.mark.parametrize("option", ["--csv", "--latex", "--figures", "--report"])
def test_an_output_path_that_cannot_be_made_is_one_line_before_any_work(clean_sweep, tmp_path, capsys, option):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert cli.main([str(clean_sweep), option, str(blocker / "out" / "x")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {option} ") and "writable" in err


def test_a_run_found_twice_counts_once_and_differing_copies_leave_the_row_out(tmp_path, labels):
    """The same sweep copied twice under the analysed directory (or two presets sharing a
    configuration): its runs would count as twice the replicates, biasing every SD and pairwise
    metric. Bitwise copies count once, with a note; copies that differ leave the row out."""
    import shutil

    rng = np.random.default_rng(8)
    write_group(source_config(tmp_path / "a", "init"), random_logits(rng, 3, N, C), labels)
    write_group(source_config(tmp_path / "a", "shuffle"), random_logits(rng, 3, N, C), labels)
    alone = analysis.summary_frame(load_sweep(tmp_path / "a"))
    shutil.copytree(tmp_path / "a", tmp_path / "both" / "copy1")
    shutil.copytree(tmp_path / "a", tmp_path / "both" / "copy2")
    sweep = load_sweep(tmp_path / "both")
    assert [len(g.runs) for g in sweep.groups] == [3, 3]
    pd.testing.assert_frame_equal(analysis.summary_frame(sweep), alone)
    assert sum("is under the analysed directory 2 times, bitwise the same run" in n for n in sweep.notes) == 6
    # a copy that computed something else cannot be the same replicate
    other = write_group(source_config(tmp_path / "other", "init"), random_logits(rng, 3, N, C), labels)[1]
    (copy,) = [p.parent for p in (tmp_path / "both" / "copy2").rglob(records.RESULT_FILE)
               if p.parent.name == other.name and p.parent.parent.name == other.parent.name]
    shutil.rmtree(copy)
    shutil.copytree(other, copy)
    sweep = load_sweep(tmp_path / "both")
    assert [g.params["source.name"] for g in sweep.groups] == ["shuffle"]
    assert [g.params["source.name"] for g, _ in sweep.refused] == ["init"]
    assert any("left out of the tables: replicate indices [1] occur more than once with different results" in n
               for n in sweep.notes), sweep.notes


def test_a_setting_at_its_default_shows_its_value_and_one_that_does_nothing_is_blank(tmp_path, labels):
    """data_resample=bootstrap is left out of the run identity (its default), so its row beside a
    data_resample=0.5 row showed None; the resampling settings of a row that does not vary the
    data do nothing there and are blank, in the cells and in the labels."""
    from analysis.tables import summary_frame, table_cells

    rng = np.random.default_rng(3)
    for source, resample in (("data", "bootstrap"), ("data", 0.5), ("init", "bootstrap")):
        write_group(source_config(tmp_path, source, data_resample=resample), random_logits(rng, 2, N, C), labels)
    sweep = load_sweep(tmp_path / "sweep")
    keys = sweep.display_keys
    assert keys == ["source.name", "data_order", "data_resample"]
    header, rows = table_cells(summary_frame(sweep, n_boot=5), keys)
    assert sorted(tuple(row[:3]) for row in rows) == [
        ("data", "sorted", "0.5"), ("data", "sorted", "bootstrap"), ("init", "", "")]
    assert sorted(g.label(keys) for g in sweep.groups) == [
        "data, data_order=sorted, data_resample=0.5", "data, data_order=sorted, data_resample=bootstrap", "init"]


def test_a_combination_whose_member_varies_nothing_is_named(make_config):
    """``source=shuffle_augment_reduction`` with dataset.augment off: augment cannot act, the others do.
    The launch is not refused (the rest varies), but the runs record it (env.json
    ``inert_sources``) and the analysis says the row measures the rest alone; ``all``'s inert
    members are documented and get no note."""
    from omegaconf import OmegaConf

    from nondet.job import run_job

    for source in ("shuffle_augment_reduction", "all"):
        for replicate in (0, 1):
            run_job(OmegaConf.create(make_config(f"source={source}", "epochs=1", "replicates=2",
                                                 f"replicate={replicate}")))
    config = make_config("source=shuffle_augment_reduction", "epochs=1")
    env = json.loads((records.run_dir(config, 0) / records.ENV_FILE).read_text())
    assert env["inert_sources"] == {"augment": "dataset.augment is false (set dataset.augment=true)"}
    notes = [n for n in load_sweep(records.run_dir(config, 0).parent.parent).notes if "varied nothing in these" in n]
    assert len(notes) == 1 and "\n" not in notes[0]
    assert notes[0].startswith("shuffle_augment_reduction: source shuffle_augment_reduction varies augment, "
                               "which varied nothing in these runs (augment: dataset.augment is false")
    assert notes[0].endswith("the row measures shuffle, reduction alone")


@pytest.mark.parametrize("seeds_too", [False, True])
def test_a_run_copied_over_another_replicate_is_named(clean_sweep, seeds_too):
    """r0002 made a byte copy of r0001 but for its config.yaml (and seeds.json, or not): bitwise
    identical outputs of two replicates, in a row that varies a source."""
    original, copy = (next(clean_sweep.glob(f"init-*/{name}")) for name in ("r0001", "r0002"))
    names = [records.LOGITS_FILE, records.LABELS_FILE, records.RESULT_FILE, records.METRICS_FILE, records.ENV_FILE]
    for name in names + [records.SEEDS_FILE] * seeds_too:
        (copy / name).write_bytes((original / name).read_bytes())
    sweep = load_sweep(clean_sweep)
    (note,) = [n for n in sweep.notes if "copy" in n]
    assert note.startswith("init: r0001 and r0002: bitwise identical test outputs though they are different replicates")
    assert "likely a copy of the other" in note and "Delete the copy's run directory and relaunch" in note
    init = sweep.groups[0]
    assert init.params["source.name"] == "init" and len(init.runs) == R  # named, not dropped: which is the copy?
    assert not [n for n in sweep.notes if "varied nothing" in n]


def test_a_cut_short_metrics_file_is_named_and_left_out_of_the_per_epoch_figures(clean_sweep):
    from analysis import instability

    cut, emptied = (next(clean_sweep.glob(f"shuffle-*/{name}")) for name in ("r0001", "r0002"))
    metrics = cut / records.METRICS_FILE
    metrics.write_text(metrics.read_text().splitlines()[0] + "\n")  # only the first line kept
    (emptied / records.METRICS_FILE).write_text("")
    sweep = load_sweep(clean_sweep)
    (note,) = [n for n in sweep.notes if "metrics.jsonl" in n]
    assert note.startswith("shuffle: the metrics.jsonl of 2 of 4 runs stops before the epoch their result was "
                           "evaluated at (r0001 (ends at epoch 1 of 5), r0002 (empty, 5 epochs expected))")
    assert "per-epoch figures, which leave these runs out" in note
    shuffle = sweep.groups[1]
    assert shuffle.params["source.name"] == "shuffle" and len(shuffle.runs) == R  # the table keeps them
    epochs, values = instability.per_epoch(shuffle)
    assert list(epochs) == [1, 2, 3, 4, 5] and values.shape == (R - 2, 5)  # no epoch lost for the others
    assert list(instability.spread_by_epoch(shuffle)["epoch"]) == [1, 2, 3, 4, 5]


def test_each_runs_outputs_are_read_once_for_every_note(tmp_path, labels, monkeypatch):
    """The notes (divergence, float arithmetic, variation, copies, a replicate found twice) and
    the comparison's copy checks all ask about a run's test outputs: a sweep of big logits must not
    be read once per question. Every note that reads them goes through ``load._outputs``."""
    import shutil
    from collections import Counter

    from analysis import load

    rng = np.random.default_rng(11)
    control = write_group(source_config(tmp_path / "a", "none"), np.repeat(random_logits(rng, 1, N, C), 3, 0),
                          labels, env={"torch": "2.13.0"})
    records.write_json(control[2] / records.ENV_FILE, {"torch": "2.12.1"})  # the arithmetic note compares outputs
    init = random_logits(rng, 3, N, C)
    init[2] = init[1]  # a copy: the copy note
    write_group(source_config(tmp_path / "a", "init"), init, labels)
    for copy in ("copy1", "copy2"):  # every replicate found twice
        shutil.copytree(tmp_path / "a", tmp_path / "both" / copy)
    reads = Counter()
    outputs = load._outputs
    monkeypatch.setattr(load, "_outputs", lambda run: reads.update([run.path]) or outputs(run))
    sweep = load_sweep(tmp_path / "both")
    assert any("float arithmetic" in n for n in sweep.notes) and any("likely a copy" in n for n in sweep.notes)
    assert sum("bitwise the same run" in n for n in sweep.notes) == 6
    none, seeded = sweep.groups
    assert compare.copies_of_one_run(none, none.runs, "A") and not compare.copies_of_one_run(seeded, seeded.runs, "A")
    assert compare._same_outputs(seeded.runs[1], seeded.runs[2]) and not compare._same_outputs(*seeded.runs[:2])
    assert len(reads) == 12 and set(reads.values()) == {1}, reads  # the kept runs and their copies, once each
    # env.json too: the report's environment table shows what the sweep read, not the files again
    from analysis.report import environment_html

    for env in (tmp_path / "both").rglob(records.ENV_FILE):
        env.unlink()
    assert "<td>torch</td><td>None (3 runs), 2.13.0 (2 runs), 2.12.1 (1 run)</td>" in environment_html(sweep)


def test_the_outputs_digest_is_of_dtype_shape_and_every_byte_in_blocks(monkeypatch):
    """Read a block of rows at a time (no copy of a big array), the digest is that of the whole
    array's C-order bytes, after its dtype and shape: equal digests, bitwise equal outputs."""
    import hashlib

    from analysis import load

    monkeypatch.setattr(load, "_DIGEST_CHUNK", 64)  # many blocks, one row not dividing them
    x = np.asfortranarray(random_logits(np.random.default_rng(12), 1, 50, 3)[0])
    whole = hashlib.sha256(f"{x.dtype.str}{x.shape}".encode() + np.ascontiguousarray(x).tobytes()).hexdigest()
    assert load.digest_outputs(x) == load.OutputsDigest(whole, True, False)
    assert load.digest_outputs(x.reshape(3, 50)).sha256 != whole  # the same bytes, another shape
    assert load.digest_outputs(x.astype(">f4")).sha256 != whole  # the same values, another dtype
    zero = np.zeros((4, 2), np.float32)
    assert load.digest_outputs(zero).sha256 != load.digest_outputs(-zero).sha256  # bits, not values
    x[40, 1] = np.inf
    assert (load.digest_outputs(x).finite, load.digest_outputs(x).nan) == (False, False)
    x[0, 0] = np.nan
    assert (load.digest_outputs(x).finite, load.digest_outputs(x).nan) == (False, True)


def test_hydras_own_config_files_are_not_runs(tmp_path):
    """``hydra.output_subdir=hydra_rec`` puts Hydra's record of a job (config.yaml beside hydra.yaml
    and overrides.yaml) in the pack's directory, and a sweep directory may hold a Hydra config
    directory (a repository's conf/): neither is a run, unfinished or corrupt."""
    config = fake_config(replicate=0)
    logits = random_logits(np.random.default_rng(0), 1, 64, 3)[0]
    write_run(tmp_path / "group" / "r0000", config, logits, np.arange(64) % 3)
    record = tmp_path / "group" / "pack-r0000-r0001" / "hydra_rec"
    record.mkdir(parents=True)
    for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
        (record / name).write_text("replicate: 0\n")
    (tmp_path / "conf" / "model").mkdir(parents=True)
    (tmp_path / "conf" / "config.yaml").write_text("defaults:\n  - model: mlp\n  - _self_\nepochs: 3\n")
    (tmp_path / "conf" / "model" / "mlp.yaml").write_text("width: 8\n")
    status = sweep_status(tmp_path)
    assert (status.finished, status.unfinished, status.corrupt) == (1, 0, 0)
