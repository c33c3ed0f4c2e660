"""Progress lines while a sweep runs: the basic launcher's callback and the submitit launchers'
polling loop, driven by fake run directories (nothing trains here)."""

from __future__ import annotations

import os
import re
import time

import numpy as np
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

from fake_runs import fake_config, write_run
from nondet.progress import WatchedJob, wait_for_jobs
from nondet import records
from nondet.progress import ProgressCallback, format_duration, planned_runs

LABELS = np.array([0, 1, 1, 0])
LOGITS = np.array([[1, 0], [0, 1], [1, 0], [1, 0]], dtype=np.float32)  # 75% correct


def run(root, source, replicate, finished=True):
    config = fake_config(**{"source.name": source, "source.vary": [source]}, output_root=str(root),
                         replicate=replicate, replicates=2)
    directory = records.run_dir(config)
    if finished:
        write_run(directory, config, LOGITS, LABELS)
    return directory


def test_the_plan_counts_runs_from_the_overrides():
    # hydra.sweeper.params (the replicate range, a preset's sources), then the command line.
    assert planned_runs(["replicate=range(0,3,1)", "source=init,shuffle", "replicates=3"], 3, 1) == 6
    assert planned_runs(["replicate=range(0,6,4)", "source=init"], 6, 4) == 4 + 2  # packs of 4
    preset = ["replicate=range(0,5,1)", "source=init,shuffle,reduction", "+experiment=table1", "scale=smoke"]
    assert planned_runs(preset, 5, 1) == 15
    assert planned_runs(["replicate=range(0,8,1)", "source=init", "replicate=1,2"], 8, 1) == 2
    assert [format_duration(s) for s in (9.4, 250, 7500)] == ["9 s", "4 min 10 s", "2 h 05 min"]


def test_basic_launcher_prints_one_line_per_run_with_count_and_eta(tmp_path, capsys):
    callback = ProgressCallback()
    sweep = OmegaConf.create({"replicates": 2, "pack": 1, "hydra": {
        "sweeper": {"params": {"replicate": "range(0,${replicates},${pack})"}},
        "overrides": {"task": ["source=init,shuffle", "replicates=2"]}}})
    callback.on_multirun_start(sweep)
    callback.progress.started = time.monotonic() - 10.0  # the first run took 10 s

    def job_end(source, replicate, **outcome):
        config = OmegaConf.create({"hydra": {"overrides": {"task": [
            f"source={source}", f"replicate={replicate}", "replicates=2"]}}})
        outcome = {"finished": [], "skipped": [], "failed": [], **outcome}
        callback.on_job_end(config, JobReturn(status=JobStatus.COMPLETED, _return_value=outcome))

    job_end("init", 0, finished=[str(run(tmp_path, "init", 0))])
    job_end("init", 1, skipped=[str(run(tmp_path, "init", 1))])  # finished earlier: counted, silent
    failed = run(tmp_path, "shuffle", 0, finished=False)
    write_run(failed, fake_config(output_root=str(tmp_path)), error="Traceback\nRuntimeError: boom")
    job_end("shuffle", 0, failed=[str(failed)])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "[1/4] init r0000 done 75.0% (1.0 s) — ETA 30 s"
    assert re.fullmatch(r"\[3/4\] shuffle r0000 FAILED: RuntimeError: boom — ETA [0-9] s", lines[1]), lines
    assert len(lines) == 2

    # A pack's runs end together: the 10 s they took count for all 4 of them at once.
    packed = ProgressCallback()
    packed.on_multirun_start(OmegaConf.create({"replicates": 8, "pack": 4, "hydra": {
        "sweeper": {"params": {"replicate": "range(0,${replicates},${pack})"}},
        "overrides": {"task": ["source=init", "replicates=8", "pack=4"]}}}))
    packed.progress.started = time.monotonic() - 10.0
    packed.on_job_end(OmegaConf.create({"hydra": {"overrides": {"task": ["source=init", "replicate=0"]}}}),
                      JobReturn(status=JobStatus.COMPLETED, _return_value={
                          "finished": [str(run(tmp_path, "init", r)) for r in range(4)], "skipped": [],
                          "failed": []}))
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" init ")[0] for line in lines] == ["[1/8]", "[2/8]", "[3/8]", "[4/8]"]
    assert {line.split(" — ")[-1] for line in lines} == {"ETA 10 s"}  # one more pack of 4 (was 18 s first)

    # A copy of the callback in a job's own process (submitit pickles it) stays silent.
    callback.where = ("elsewhere", 1)
    job_end("shuffle", 1, finished=[str(run(tmp_path, "shuffle", 1))])
    assert capsys.readouterr().out == ""


class FakeJob:
    def __init__(self):
        self.ended = False

    def done(self):
        return self.ended


def test_polling_loop_reports_runs_from_their_directories(tmp_path):
    from nondet.progress import SweepProgress

    earlier = run(tmp_path, "init", 0)
    past = time.time() - 3600
    os.utime(earlier / records.RESULT_FILE, (past, past))
    a, b = run(tmp_path, "init", 1, finished=False), run(tmp_path, "shuffle", 0, finished=False)
    jobs = [WatchedJob(0, ["source=init", "replicate=0"], FakeJob(), [earlier], "init"),
            WatchedJob(1, ["source=init", "replicate=1"], FakeJob(), [a], "init"),
            WatchedJob(2, ["source=shuffle", "replicate=0"], FakeJob(), [b], "shuffle")]
    jobs[0].job.ended = True  # a job whose run was finished before this launch

    directories = {id(w.job): w.dirs[0] for w in jobs}

    def collect(job, overrides):
        directory = directories[id(job)]
        if not (directory / records.RESULT_FILE).exists():  # killed outside Python
            records.write_text(directory / records.ERROR_FILE, "# SLURM job 7\nkilled (OUT_OF_MEMORY)\n")
        return JobReturn(status=JobStatus.COMPLETED, _return_value={})

    # What happens between two polls: a starts, a finishes, b's job dies without a result.
    steps = iter([
        lambda: records.write_json(a / records.ENV_FILE, {}),
        lambda: (run(tmp_path, "init", 1), setattr(jobs[1].job, "ended", True)),
        lambda: setattr(jobs[2].job, "ended", True),
    ])
    lines = []
    returns = wait_for_jobs(jobs, collect, SweepProgress(3), time.time() - 1, 0.0,
                            sleep=lambda s: next(steps)(), echo=lambda line, flush: lines.append(line))
    assert sorted(returns) == [0, 1, 2]
    assert lines[:2] == ["[1/3] 0 running, 2 pending, 0 failed — ETA unknown",
                         "[1/3] 1 running, 1 pending, 0 failed — ETA unknown"]
    assert re.fullmatch(r"\[2/3\] init r0001 done 75\.0% \(1\.0 s\) — 0 running, 1 pending, 0 failed — ETA \d+ s",
                        lines[2])
    assert lines[3] == "[3/3] shuffle r0000 FAILED: killed (OUT_OF_MEMORY) — 0 running, 0 pending, 1 failed — done"
    assert len(lines) == 4
