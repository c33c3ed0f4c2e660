"""Runs whose numbers cannot be trusted are left out and named, never pooled or compared silently:
diverged runs in compare, logits that contradict result.json, runs that saw different data, runs
computed with different float arithmetic, runs without config.yaml, runs this user may not read;
and the files a run writes honour the umask."""

from __future__ import annotations

import os

import numpy as np
import pytest
from omegaconf import OmegaConf

import analysis
from analysis import compare
from analysis.load import load_sweep, sweep_status
from fake_runs import fake_config, random_logits, write_group
from nondet import records
from nondet.job import run_job

N, C = 60, 4
FAST = ["--bootstrap", "500", "--permutations", "500"]


def write_sweep(root, source, logits, labels, name="s", **overrides):
    config = fake_config(
        **{"source.name": source, "source.vary": [source]}, output_root=str(root), sweep_name=name, **overrides
    )
    return write_group(config, logits, labels)


@pytest.fixture
def labels():
    return np.random.default_rng(0).integers(0, C, N)


# --- compare never concludes from NaN ------------------------------------------------------


def test_compare_leaves_out_diverged_runs_and_names_them(tmp_path, labels, capsys):
    rng = np.random.default_rng(1)
    a = random_logits(rng, 4, N, C)
    a[1] = np.nan  # a run whose loss went to NaN evaluates to NaN logits
    write_sweep(tmp_path / "a", "init", a, labels)
    write_sweep(tmp_path / "b", "init", random_logits(rng, 4, N, C) + 3 * np.eye(C)[labels], labels)
    code = compare.main([str(tmp_path / "a" / "s"), str(tmp_path / "b" / "s"), "--metric", "test_cross_entropy", *FAST])
    out = capsys.readouterr().out
    assert code == 0
    numbers = [line for line in out.splitlines() if not line.startswith("- note:")]
    assert numbers[-1].startswith(("Yes", "No", "Borderline")) and "nan" not in "\n".join(numbers).lower()
    assert "A: 1 of 4 runs left out: their test_cross_entropy is not finite (r0001" in out
    assert "A: init: 1 of 4 runs diverged" in out  # the table's note, shown by compare too
    assert "- A: " in out and "3 runs, mean" in out

    # Fewer than two finite runs: refused, naming them.
    many = random_logits(rng, 3, N, C)
    many[1:] = np.nan
    write_sweep(tmp_path / "c", "init", many, labels)
    assert compare.main([str(tmp_path / "c" / "s"), str(tmp_path / "b" / "s"), "--metric", "test_cross_entropy"]) == 2
    err = capsys.readouterr().err
    assert "only 1 of 3 runs have a finite test_cross_entropy" in err and "r0001, r0002" in err
    with pytest.raises(ValueError, match="NaN"):
        compare.compare_samples([1.0, np.nan, 2.0], [1.0, 2.0, 3.0])


def test_zero_variance_paired_gets_the_unpaired_verdict():
    a, b = [1.0, 1.0, 1.0], [2.0, 2.0, 2.0]
    unpaired = compare.compare_samples(a, b)
    paired = compare.compare_samples(a, b, paired=True)
    assert unpaired.state == paired.state == "unassessed"
    assert unpaired.verdict.split(":")[0] == paired.verdict.split(":")[0] == "Unassessed"


# --- logits that contradict result.json ----------------------------------------------------


def test_logits_contradicting_result_json_are_corrupt_in_table_and_compare(tmp_path, labels, capsys):
    rng = np.random.default_rng(2)
    paths = write_sweep(tmp_path, "init", random_logits(rng, 3, N, C), labels)
    write_sweep(tmp_path, "shuffle", random_logits(rng, 3, N, C), labels)
    records.write_npy(paths[1] / records.LOGITS_FILE, np.zeros((N, C), np.float32))  # valid, but not this run's

    sweep = load_sweep(tmp_path / "s")
    assert [len(g.runs) for g in sweep.groups] == [2, 3]
    (problem,) = sweep.problems
    assert problem.status == "corrupt" and problem.path == paths[1]
    assert "result.json says test_accuracy" in problem.reason and "logits.npy gives" in problem.reason
    assert sweep_status(tmp_path / "s").corrupt == 1
    assert "corrupt: init-" in analysis.summarize(tmp_path / "s")

    code = compare.main([str(tmp_path / "s"), str(tmp_path / "s"), "--group-a", "source=init",
                         "--group-b", "source=shuffle", *FAST])
    out = capsys.readouterr().out
    assert code == 0
    assert "- A: " in out and "2 runs, mean" in out
    assert f"A: corrupt run left out: {paths[1]}: result.json says test_accuracy" in out


# --- runs that saw different data ----------------------------------------------------------


def test_runs_that_saw_different_data_are_never_pooled(tmp_path, labels, capsys):
    rng = np.random.default_rng(3)
    paths = write_sweep(tmp_path, "init", random_logits(rng, 4, N, C), labels)
    old, new = "a" * 64, "b" * 64  # the data file was rewritten in place between launches
    for path, sha in zip(paths, (old, old, new, new)):
        records.write_json(path / records.ENV_FILE, {"data_sha256": sha})

    sweep = load_sweep(tmp_path / "s")
    assert sorted((g.params["data_sha256"], len(g.runs)) for g in sweep.groups) == [("a" * 12, 2), ("b" * 12, 2)]
    assert "data_sha256" in sweep.display_keys
    text = analysis.summarize(tmp_path / "s")
    assert "init: its runs saw different data (env.json data_sha256: 2 with aaaaaaaaaaaa (r0000, r0001); " \
           "2 with bbbbbbbbbbbb (r0002, r0003)): they are not pooled" in text

    d = str(tmp_path / "s")
    assert compare.main([d, d, *FAST]) == 2
    assert "--group-a data_sha256=aaaaaaaaaaaa" in capsys.readouterr().err
    assert compare.main([d, d, "--group-a", "data_sha256=aaaaaaaaaaaa", "--group-b", "data_sha256=bbbbbbbbbbbb", *FAST]) == 0
    assert "its runs saw different data" in capsys.readouterr().out


# --- runs computed with different float arithmetic ----------------------------------------

CPU_ENV = {"torch": "2.13.0", "device": "cpu", "device_name": "x86_64", "precision": "fp32",
           "cpu_model": "AMD EPYC 7B13", "cpu_capability": "AVX2", "threads": 1, "cuda": "12.8"}


def test_a_row_whose_runs_differ_in_float_arithmetic_is_named_once(tmp_path, labels):
    same = np.repeat(random_logits(np.random.default_rng(4), 1, N, C), 4, 0)
    paths = write_sweep(tmp_path, "none", same, labels)
    for path, threads in zip(paths, (1, 1, 2, 2)):
        records.write_json(path / records.ENV_FILE, {**CPU_ENV, "threads": threads})
    [named] = [n for n in load_sweep(tmp_path / "s").notes if "float arithmetic" in n]
    assert named.endswith("which can change results bit for bit; here every run's test outputs are bitwise "
                          "identical all the same")  # rounded alike: no advice to delete them
    paths = write_sweep(tmp_path, "none", random_logits(np.random.default_rng(4), 4, N, C), labels)
    for path, threads in zip(paths, (1, 1, 2, 2)):
        records.write_json(path / records.ENV_FILE, {**CPU_ENV, "threads": threads})
    records.write_json(paths[3] / records.ENV_FILE, {**CPU_ENV, "threads": 2, "cpu_capability": "AVX512",
                                                      "cuda": "13.0"})  # a CPU run's CUDA build: no matter

    sweep = load_sweep(tmp_path / "s")
    assert [len(g.runs) for g in sweep.groups] == [4]  # the same experiment: one row, not split
    note = ("none: its runs were computed with different float arithmetic (cpu_capability: AVX2 for r0000, "
            "r0001, r0002; AVX512 for r0003), (threads: 1 for r0000, r0001; 2 for r0002, r0003): on the "
            "same inputs these can change results bit for bit")
    named = [n for n in sweep.notes if "float arithmetic" in n]
    assert len(named) == 1 and named[0].startswith(note) and "threads=N" in named[0]
    assert note in analysis.summarize(tmp_path / "s")

    records.write_json(paths[2] / records.ENV_FILE, {**CPU_ENV, "torch": "2.12.1"})  # only torch differs now
    records.write_json(paths[3] / records.ENV_FILE, CPU_ENV)
    [named] = [n for n in load_sweep(tmp_path / "s").notes if "float arithmetic" in n]
    assert "(torch: 2.13.0 for r0000, r0001, r0003; 2.12.1 for r0002)" in named and "threads=N" not in named


def test_runs_with_one_arithmetic_or_none_recorded_get_no_arithmetic_note(tmp_path, labels):
    paths = write_sweep(tmp_path, "init", random_logits(np.random.default_rng(5), 4, N, C), labels)
    for path in paths:
        records.write_json(path / records.ENV_FILE, CPU_ENV)
    # An older run, without the keys: unknown is no difference by itself.
    records.write_json(paths[0] / records.ENV_FILE, {"torch": "2.13.0", "device": "cpu"})
    (paths[1] / records.ENV_FILE).unlink()
    sweep = load_sweep(tmp_path / "s")
    recorded = [run.arithmetic for run in sweep.groups[0].runs]
    assert recorded[:2] == [{"torch": "2.13.0", "device": "cpu"}, {}]
    assert recorded[2] == recorded[3] and recorded[2]["cpu_model"] == "AMD EPYC 7B13" and "cuda" not in recorded[2]
    assert not [n for n in sweep.notes if "float arithmetic" in n]


# --- a run without config.yaml -------------------------------------------------------------


def test_a_run_without_config_yaml_is_reported_broken_and_a_relaunch_restores_it(make_config):
    config = make_config("replicates=2", "pack=2")
    run_job(OmegaConf.create(config))
    kept, bad = records.run_dir(config, 0), records.run_dir(config, 1)
    for directory in (kept, bad):
        (directory / records.CONFIG_FILE).unlink()
    shape = np.load(bad / records.LOGITS_FILE).shape
    records.write_npy(bad / records.LOGITS_FILE, np.zeros(shape, np.float32))  # not its evaluation
    sweep_dir = kept.parents[1]

    sweep = load_sweep(sweep_dir)
    assert sorted(p.status for p in sweep.problems) == ["broken", "broken"]
    assert "config.yaml is missing" in sweep.problems[0].reason
    assert "relaunch the same command to restore" in analysis.summarize(sweep_dir)
    assert not sweep_status(sweep_dir).ok

    stamp = (kept / records.RESULT_FILE).stat().st_mtime_ns
    outcome = run_job(OmegaConf.create(config))
    # The intact run gets its config.yaml back untouched; the other is trained again, its old
    # result kept aside.
    assert outcome["skipped"] == [str(kept)] and outcome["finished"] == [str(bad)]
    assert (kept / records.RESULT_FILE).stat().st_mtime_ns == stamp
    assert (bad / (records.RESULT_FILE + ".untrusted")).exists()
    sweep = load_sweep(sweep_dir)
    assert not sweep.problems and [len(g.runs) for g in sweep.groups] == [2]


def test_the_cluster_launcher_submits_a_job_whose_run_lost_its_config(tmp_path, labels):
    from hydra_plugins.nondet_launcher.launcher import _SweepAware

    (path,) = write_sweep(tmp_path, "init", random_logits(np.random.default_rng(4), 1, N, C), labels)

    class Launcher(_SweepAware):
        def _run_dirs(self, overrides):
            return [path]

    assert Launcher()._finished([]) == [path]
    (path / records.CONFIG_FILE).unlink()
    assert Launcher()._finished([]) is None


# --- permissions ---------------------------------------------------------------------------


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_honour_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        records.write_json(tmp_path / "result.json", {"test_accuracy": 1.0})
        records.write_npy(tmp_path / "logits.npy", np.zeros((2, 2), np.float32))
    finally:
        os.umask(old)
    for name in ("result.json", "logits.npy"):
        assert (tmp_path / name).stat().st_mode & 0o777 == mode


def test_a_run_this_user_may_not_read_is_unreadable_not_corrupt(tmp_path, labels, monkeypatch):
    paths = write_sweep(tmp_path, "init", random_logits(np.random.default_rng(5), 3, N, C), labels)
    private = paths[2] / records.LOGITS_FILE
    real_load = np.load

    def load(path, *args, **kwargs):  # as np.load fails on a 0600 file of another user
        if str(path) == str(private):
            raise PermissionError(13, "Permission denied", str(path))
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(np, "load", load)
    sweep = load_sweep(tmp_path / "s")
    (problem,) = sweep.problems
    assert problem.status == "unreadable" and "permission denied" in problem.reason
    assert "not corrupt" in problem.reason and "Delete" not in problem.reason
    status = sweep_status(tmp_path / "s")
    assert (status.corrupt, status.unreadable) == (0, 1) and "do not delete them" in status.advice
    text = analysis.summarize(tmp_path / "s")
    assert "- unreadable: init-" in text and "- corrupt:" not in text


def test_a_run_resumed_under_other_arithmetic_is_named(make_config, monkeypatch, caplog):
    """A run killed on one kind of node and resumed on another is no run an uninterrupted training
    gives: its env.json keeps the earlier arithmetic, the resume logs it, the analysis names it."""
    import json

    from conftest import kill_after_epoch
    from nondet import train

    config = make_config("source=init", "epochs=3", "checkpoint_every=1")
    directory = records.run_dir(config)
    undo = kill_after_epoch(monkeypatch, 2)  # its checkpoint: epoch 1
    assert run_job(OmegaConf.create(config))["failed"] == [str(directory)]
    first = json.loads((directory / records.ENV_FILE).read_text())
    undo()
    real = train.environment
    monkeypatch.setattr(train, "environment", lambda *a: {**real(*a), "cpu_model": "Another CPU"})
    assert run_job(OmegaConf.create(config))["finished"] == [str(directory)]
    env = json.loads((directory / records.ENV_FILE).read_text())
    assert env["resumed_from_epoch"] == 1
    assert env[records.EARLIER_ARITHMETIC] == [records.arithmetic_of(first)]
    assert "resumed under other float arithmetic" in caplog.text
    sweep = load_sweep(directory.parents[1])
    assert any(f"r0000 (cpu_model: {first['cpu_model']} before, Another CPU after)" in n for n in sweep.notes)


def test_a_resume_on_the_same_arithmetic_records_none_earlier():
    now = {"device": "cpu", "torch": "2", "threads": 2, "cpu_model": "A"}
    assert records.earlier_arithmetic({**now}, now) == []
    assert records.earlier_arithmetic(None, now) == []
    assert records.earlier_arithmetic({"device": "cpu", "torch": "2"}, now) == []  # older env.json: nothing differs
    before = {**now, "threads": 1}
    assert records.earlier_arithmetic(before, now) == [records.arithmetic_of(before)]
    # carried through a later resume on the same arithmetic, once
    again = {**now, records.EARLIER_ARITHMETIC: [records.arithmetic_of(before)]}
    assert records.earlier_arithmetic(again, now) == [records.arithmetic_of(before)]
