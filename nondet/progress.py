"""Progress of a running sweep: one line per run that ends, with the sweep's count and an ETA.

    [17/24] init r0004 done 74.9% (1.2 s) — ETA 9 s
    [18/24] init r0005 FAILED: RuntimeError: ... — ETA 8 s

Under the basic launcher the lines come from ``ProgressCallback`` (a Hydra callback, registered
in conf/config.yaml as ``hydra.callbacks.progress``) when each job ends; under the submitit
launchers from the launcher's polling loop (hydra_plugins/nondet_launcher/launcher.py), which
adds how many runs are running, pending and failed, read from the run directories. Plain lines,
never a redrawn bar, so a log file or a SLURM output file stays readable. The ETA is the runs
left times the mean time per run finished by this launch (runs finished earlier and skipped
count as done but not in that mean).
"""

from __future__ import annotations

import itertools
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from nondet import records


def format_duration(seconds: float) -> str:
    """``9 s``, ``4 min 10 s``, ``2 h 05 min``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def run_outcome(directory: Path) -> str:
    """``done 74.9% (1.2 s)``, or ``FAILED: <error.txt's last line>``, for a run that ended."""
    directory = Path(directory)
    try:
        result = records.read_json(directory / records.RESULT_FILE)
        return f"done {result['test_accuracy']:.1f}% ({result['train_seconds']:.1f} s)"
    except (records.CorruptRunError, KeyError, TypeError, ValueError):
        pass
    try:
        lines = (directory / records.ERROR_FILE).read_text(errors="replace").strip().splitlines()
        return f"FAILED: {lines[-1][:200]}" if lines else "FAILED"
    except OSError:
        return "ended without result.json"


@dataclass
class SweepProgress:
    """The sweep's counts; ``line`` formats one run that ended."""

    total: int | None  # None: the plan could not be read ("[17/?]", no ETA)
    started: float = field(default_factory=time.monotonic)
    ended: int = 0  # finished (now or earlier) or failed
    trained: int = 0  # finished or failed by this launch: the ETA's rate

    def skipped(self, n: int) -> None:
        self.ended += n

    @property
    def count(self) -> str:
        return f"[{self.ended}/{'?' if self.total is None else self.total}]"

    def eta(self) -> str:
        if self.total is None or not self.trained:
            return "ETA unknown" if self.total is None or self.ended < self.total else "done"
        left = self.total - self.ended
        if left <= 0:
            return "done"
        return "ETA " + format_duration((time.monotonic() - self.started) / self.trained * left)

    def line(self, label: str, directory: Path, counts: str = "") -> str:
        """Count the run as ended and say so: ``[17/24] init r0004 done 74.9% (1.2 s) — ETA 9 s``."""
        return self.lines([(label, directory)], counts)[0]

    def lines(self, ended: Sequence[tuple[str, Path]], counts: str = "") -> list[str]:
        """``line`` for runs that ended together (a pack's replicas): the time they took counts
        for all of them at once, so the first line's ETA is not that of one run per pack."""
        self.trained += len(ended)
        first = self.ended
        self.ended += len(ended)
        if self.total is not None:
            self.total = max(self.total, self.ended)
        eta, total = self.eta(), "?" if self.total is None else self.total
        middle = f" — {counts}" if counts else ""
        return [f"[{first + i}/{total}] {f'{label} {Path(directory).name}'.strip()} {run_outcome(directory)}"
                f"{middle} — {eta}" for i, (label, directory) in enumerate(ended, 1)]


# --- the sweep's plan, from its overrides -------------------------------------------------


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("~+")


def sweep_overrides(config: DictConfig) -> list[str]:
    """What Hydra's basic sweeper expands, in its order: ``hydra.sweeper.params`` (the replicate
    range, a preset's sources), then the command line's overrides, which win."""
    params = OmegaConf.to_container(config.hydra.sweeper.params, resolve=True) or {}
    return [f"{k}={v}" for k, v in params.items()] + list(config.hydra.overrides.task)


def _parse(overrides: list[str]) -> dict[str, Any]:
    """Parsed overrides by key, the last of a key winning (as in Hydra's basic sweeper)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return {o.get_key_element().lstrip("~+"): o for o in OverridesParser.create().parse_overrides(list(overrides))}


def swept_keys(overrides: list[str]) -> list[str]:
    """The keys a multirun sweeps over (``source`` in ``-m source=init,shuffle``), but ``replicate``."""
    return [k for k, o in _parse(overrides).items() if o.is_sweep_override() and k != "replicate"]


def planned_runs(overrides: list[str], replicates: int, pack: Any) -> int:
    """The runs a sweep will end with (``sweep_overrides``): the job of each combination of
    swept values trains the replicates from its ``replicate`` up to the next one in the sweep's
    range (``pack`` of them for listed values), or ``replicates`` runs without a ``replicate``."""
    parsed = _parse(overrides)
    replicate = parsed.get("replicate")
    step = getattr(replicate.value(), "step", None) if replicate is not None else None
    if not step:
        from nondet.job import pack_step  # the sweep's own step (pack=auto: up to 16)

        try:
            step = pack_step(pack, replicates)
        except ValueError:
            step = 1
    choices = [
        [(k, v) for v in o.sweep_string_iterator()] if o.is_sweep_override()
        else [(k, o.get_value_element_as_str())]
        for k, o in parsed.items()
    ]
    # Jobs of one configuration whose replicates overlap (``replicate=0,2``, 4 a job) end with
    # each run once.
    runs: dict[tuple, set[int]] = {}
    for combination in itertools.product(*choices):
        values = dict(combination)
        count = int(values.get("replicates", replicates))
        start = int(values.get("replicate", 0))
        stop = min(start + int(step), count) if "replicate" in values else count
        runs.setdefault(tuple(i for i in combination if i[0] != "replicate"), set()).update(range(start, stop))
    return sum(map(len, runs.values()))


def job_label(task_overrides: list[str], swept: list[str], source: str = "") -> str:
    """The job's source (``source`` when no override names it) and values of the other swept
    keys: ``init`` or ``init model.width=64``."""
    values = {_key(o): o.split("=", 1)[1] for o in task_overrides}
    parts = [f"{k}={values[k]}" for k in swept if k in values and k != "source"]
    return " ".join([values.get("source", source), *parts]).strip()


class ProgressCallback(Callback):
    """One line per run as each job of a basic-launcher sweep ends (module docstring)."""

    def __init__(self) -> None:
        self.progress: SweepProgress | None = None
        self.swept: list[str] = []
        self.where: tuple[str, int] | None = None
        self.seen: set[str] = set()  # runs counted: jobs whose replicates overlap meet some twice

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            overrides = sweep_overrides(config)
            total, self.swept = planned_runs(overrides, config.replicates, config.pack), swept_keys(overrides)
        except Exception:  # a sweep the plan cannot read: lines without a total, never a crash
            total, self.swept = None, []
        self.progress = SweepProgress(total)
        self.seen.clear()
        # Jobs that run elsewhere (submitit) get a pickled copy of this callback: they stay silent,
        # the launcher's polling loop reports them.
        self.where = (socket.gethostname(), os.getpid())

    def on_job_end(self, config: DictConfig, job_return: Any = None, **kwargs: Any) -> None:
        from hydra.core.utils import JobStatus

        if self.progress is None or self.where != (socket.gethostname(), os.getpid()) or job_return is None:
            return
        source = OmegaConf.select(config, "source.name", default="")
        label = job_label(list(config.hydra.overrides.task), self.swept, source)
        if job_return.status != JobStatus.COMPLETED:
            error = job_return._return_value  # .return_value would raise it
            first = (str(error).splitlines() or [type(error).__name__])[0]
            print(f"{self.progress.count} {label} job failed: {first[:200]}", flush=True)
            return
        outcome = job_return.return_value or {}

        def new(key: str) -> list:
            found = [d for d in outcome.get(key, []) if str(d) not in self.seen]
            self.seen.update(map(str, found))
            return found

        ended = [(label, d) for d in [*new("finished"), *new("failed")]]
        # Finished earlier, or ("busy") being trained by another launch: counted, not reported.
        self.progress.skipped(len(new("skipped")) + len(new("busy")))
        for line in self.progress.lines(ended):
            print(line, flush=True)


# --- the submitit launchers' polling loop ---------------------------------------------------


POLL_S = 5.0  # seconds between two looks at the jobs and their run directories


@dataclass
class WatchedJob:
    """A job of a submitit sweep, as the launcher's polling loop sees it."""

    idx: int
    overrides: Sequence[str]
    job: Any  # a submitit Job
    dirs: list[Path] | None  # its run directories; None until it returns when they depend on the node
    label: str = ""
    collected: bool = False


def run_counts(watched: list[WatchedJob], reported: set[Path], since: float) -> dict[str, int]:
    """Runs not reported yet, by what their directories say: running (env.json written by this
    launch, job not ended) or pending."""
    counts = {"running": 0, "pending": 0}
    for w in watched:
        for d in w.dirs or ([] if w.collected else [None]):
            if d in reported:
                continue
            env = None if d is None else d / records.ENV_FILE
            started = env is not None and env.exists() and env.stat().st_mtime >= since
            counts["running" if started and not w.collected else "pending"] += 1
    return counts


def wait_for_jobs(watched: list[WatchedJob], collect, progress: SweepProgress, since: float, poll_s: float,
                  sleep=time.sleep, echo=print) -> dict:
    """Poll until every job has ended, collecting each one's JobReturn; print one line per run
    that ends (finished now, or failed) with the runs running / pending / failed, and a line
    when only those counts change. Runs finished before ``since`` count as done, silently."""
    from hydra.core.utils import JobStatus

    returns: dict = {}
    reported: set[Path] = set()
    failed, last = 0, None
    while True:
        for w in watched:
            if not w.collected and w.job.done():
                returns[w.idx] = collect(w.job, w.overrides)
                w.collected = True
                ret = returns[w.idx]
                value = ret.return_value if ret.status == JobStatus.COMPLETED else {}
                value = value if isinstance(value, dict) else {}
                if w.dirs is None:  # the directories, now that the job has said them
                    w.dirs = [Path(d) for k in ("finished", "skipped", "failed", "busy") for d in value.get(k, [])]
                    progress.total = None if progress.total is None else progress.total + len(w.dirs) - 1
                for d in value.get("busy", []):  # another launch is training it: done elsewhere
                    if Path(d) not in reported:
                        reported.add(Path(d))
                        progress.skipped(1)
        ended = []
        for w in watched:
            for d in w.dirs or []:
                if d in reported:
                    continue
                result = d / records.RESULT_FILE
                if result.exists() and result.stat().st_mtime < since:
                    reported.add(d)
                    progress.skipped(1)
                elif result.exists() or w.collected:
                    reported.add(d)
                    failed += not result.exists()
                    ended.append((w.label, d))
        counts = run_counts(watched, reported, since)
        status = f"{counts['running']} running, {counts['pending']} pending, {failed} failed"
        for line in progress.lines(ended, status):
            echo(line, flush=True)
        if not ended and (counts, failed) != last:
            echo(f"{progress.count} {status} — {progress.eta()}", flush=True)
        last = (counts, failed)
        if all(w.collected for w in watched):
            return returns
        sleep(poll_s)
