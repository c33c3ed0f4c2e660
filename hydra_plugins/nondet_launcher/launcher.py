"""The submitit launchers (``hydra/launcher=submitit_slurm`` / ``submitit_local``), made sweep-aware.

hydra-submitit-launcher's own launchers submit every job of a sweep and then read the results
in order, raising at the first job that produced none. For a protocol that is relaunched until
every run is done, that has two costs, which these subclasses remove:

- **Finished jobs are not submitted.** A job whose runs all hold ``result.json`` (and the
  ``config.yaml`` the analysis needs: a run that lost it is submitted, to restore it) would only start
  Python on a node to skip them; a relaunch of a 700-run sweep with 690 done submits 10 jobs.
  The run directories are computed from the job's composed config, exactly as the job would
  (``nondet.job.job_run_dirs``); a SLURM job whose directories depend on the node
  (``device=auto``) is submitted as before. A local job's node is this machine, so ``auto``
  is resolved here, as submitit's local executor will let the job see it.
- **A job killed outside Python does not end the sweep.** Out of memory, ``scancel``, a node
  failure or a time limit with no requeue left leave no result; the job's unfinished runs get
  ``error.txt`` saying so (with submitit's report and the job's last stderr lines) and the sweep
  goes on to the end-of-sweep summary, which lists them as failed and exits 1 (a SLURM job with
  ``device=auto``: the runs whose lock it still holds; one killed before it locked any is named
  in the summary by its job id, in one line). A relaunch
  resumes them from their last checkpoint; a run killed for memory a second time is told what
  to change instead (``killed_report``). A job that raised inside Python (a configuration
  mistake, reported before anything is trained) still ends the sweep with its traceback, as
  under the basic launcher.

While the jobs run, the launcher polls them (every ``POLL_S`` seconds) and prints one line per
run that ends, with the sweep's count, the runs running / pending / failed (read from the run
directories) and an ETA (nondet/progress.py):

    [17/24] init r0004 done 74.9% (1.2 s) — 3 running, 4 pending, 0 failed — ETA 9 s

The cluster presets (conf/cluster/) select them with ``hydra.launcher._target_``; every
parameter of hydra-submitit-launcher's configs works unchanged. With a plain
``hydra/launcher=submitit_slurm`` (or ``submitit_local``) add
``hydra.launcher._target_=hydra_plugins.nondet_launcher.launcher.SlurmLauncher``
(``LocalLauncher``) to get them. Hydra instantiates launchers only from the ``hydra_plugins``
namespace, hence this package's place; it imports nondet lazily, so Hydra's plugin discovery
stays fast in every application of the environment.
"""

from __future__ import annotations

import logging
import os
import re
import signal
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher import submitit_launcher
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from omegaconf import OmegaConf

log = logging.getLogger(__name__)


def _has_results(sweep_dir: Path) -> bool:
    from nondet.records import RESULT_FILE

    return next(sweep_dir.rglob(RESULT_FILE), None) is not None


# Each kill of a run is one line of its error.txt, carried over to the next kill's error.txt
# (a run's error.txt stays until it finishes), so that a run killed again is told apart.
_KILL_LINE = re.compile(r"^# kill \d+ of this run: .*\(cause (\w+); checkpoint ([^)]+)\)$", re.M)
# SLURM states that say the kill was not for memory (scancel: "CANCELLED by <uid>"), with what
# each says ended the job.
_STATE_CAUSES = {
    "CANCELLED": "cancelled: scancel, by you or an administrator",
    "TIMEOUT": "its time limit, with no requeue left",
    "PREEMPTED": "preempted, with no requeue left",
    "NODE_FAIL": "its node failed",
    "DEADLINE": "its deadline passed",
    "BOOT_FAIL": "its node failed to boot",
}
_NOT_MEMORY = tuple(_STATE_CAUSES)


def _causes(state: str, cause: str) -> str:
    """What may have killed a job, as far as its state and ``kill_cause`` tell."""
    for prefix, why in _STATE_CAUSES.items():
        if state.startswith(prefix):
            return why
    if cause == "sigkill":
        return "SIGKILL: the kernel's OOM killer when out of memory, or a kill -9"
    return "out of memory, scancel, a node failure, or a time limit with no requeue left"


def kill_cause(job: Any, error: Exception) -> str:
    """Why a job ended without a result, as far as the launcher can see: ``memory`` (SLURM's
    OUT_OF_MEMORY, or slurmstepd's oom-kill notice in its stderr), ``sigkill`` (a local job's
    process died of SIGKILL: the kernel's OOM killer, or a kill -9), ``other`` (scancel, a time
    limit, a node failure) or ``unknown``."""
    state = str(getattr(job, "state", "UNKNOWN"))
    if state.startswith("OUT_OF_MEMORY") or re.search(r"oom[-_]kill", str(error), re.I):
        return "memory"
    process = getattr(job, "_process", None)  # a submitit LocalJob's process, when this launcher started it
    if getattr(process, "returncode", None) == -signal.SIGKILL:
        return "sigkill"
    return "other" if state.startswith(_NOT_MEMORY) else "unknown"


def _checkpoint_stamp(directory: Path | None) -> str:
    """When the run's checkpoint was written: two kills with one stamp came at the same point."""
    from nondet.records import CHECKPOINT_FILE

    try:
        mtime = (Path(directory) / CHECKPOINT_FILE).stat().st_mtime_ns if directory else None
    except OSError:
        mtime = None
    if mtime is None:
        return "none"
    return datetime.fromtimestamp(mtime / 1e9, tz=timezone.utc).isoformat(timespec="microseconds")


def _memory_options(executor: str, mem_gb: Any, runs_in_job: int) -> str:
    now = f", now {mem_gb}" if mem_gb is not None else ""
    more = (f"give the job more memory (hydra.launcher.mem_gb{now}) or a node with more"
            if executor == "slurm" else "free memory on this machine")
    fewer = f"fewer replicas per job (pack, now {runs_in_job} runs in this job), " if runs_in_job > 1 else ""
    return (f"{more}, then relaunch the same command (it resumes from the last checkpoint); or need less: "
            f"{fewer}a smaller batch_size (a different experiment: new runs)")


def killed_report(job: Any, error: Exception, executor: str, directory: Path | None = None,
                  mem_gb: Any = None, runs_in_job: int = 1) -> tuple[str, str | None]:
    """error.txt for a run of a job that ended without a result (where, why, every kill of the
    run so far, and a last line, which the sweep summary shows, saying what to do), and the fix
    when a relaunch alone would meet the same kill (None when relaunching mends it)."""
    from nondet.records import ERROR_FILE

    state = getattr(job, "state", "UNKNOWN")
    where = "SLURM job" if executor == "slurm" else "local submitit job"
    try:  # a traceback there instead (the run failed in Python since) starts the count anew
        found = list(_KILL_LINE.finditer((Path(directory) / ERROR_FILE).read_text(errors="replace")))
    except (OSError, TypeError):  # none yet, or no directory
        found = []
    kills, earlier = [m.group(0) for m in found], [m.groups() for m in found]
    cause, stamp = kill_cause(job, error), _checkpoint_stamp(directory)
    kills.append(f"# kill {len(kills) + 1} of this run: {where} {job.job_id}, state {state} "
                 f"(cause {cause}; checkpoint {stamp})")
    causes = [c for c, _ in earlier] + [cause]
    same_point = bool(earlier) and earlier[-1][1] == stamp
    options = _memory_options(executor, mem_gb, runs_in_job)
    fix = None
    if cause == "memory" and causes.count("memory") >= 2:
        fix = (f"Killed for running out of memory {causes.count('memory')} times (state {state}): a relaunch "
               f"as it is meets the same kill; {options}.")
    elif (cause == "sigkill" and causes.count("sigkill") >= 2) or (cause == "unknown" and same_point):
        # Nothing says why; a kill that comes again, with no new checkpoint in between or by the
        # signal the kernel's OOM killer sends, is most likely memory, but it may not be.
        count = causes.count("sigkill") if cause == "sigkill" else len(causes)
        how = " by SIGKILL" if cause == "sigkill" else ""
        point = "before its next checkpoint each time" if same_point else "again"
        fix = (f"Killed {count} times{how} (state {state}), {point}: most likely out of memory (the kernel's "
               f"OOM killer: dmesg on the machine says so), else a kill from outside. If memory: {options}. "
               f"If not: relaunch the same command.")
    if fix:
        advice = fix
    elif cause == "memory":
        advice = (f"The job ran out of memory (state {state}); relaunch the same command to resume from the "
                  f"last checkpoint. If it is killed for memory again: {options}.")
    else:
        advice = (f"The job was killed outside Python (state {state}: {_causes(str(state), cause)}); relaunch "
                  f"the same command to resume from the last checkpoint.")
    text = f"# {where} {job.job_id} ended without a result (state: {state})\n{error}\n" + "\n".join(kills)
    return text + f"\n{advice}\n", fix


class _SweepAware:
    """The launch of hydra-submitit-launcher 1.2.0's BaseSubmititLauncher (the version pyproject.toml
    pins) with the two changes of the module docstring."""

    _EXECUTOR: str

    def _executor(self) -> Any:
        # As in BaseSubmititLauncher.launch: init parameters, then the queue's parameters with the
        # executor's prefix for those that are not common to every queue.
        import submitit

        params = self.params
        specific_init_keys = {"max_num_timeout"}
        init_params = {"folder": params["submitit_folder"]}
        init_params.update(
            {f"{self._EXECUTOR}_{k}": v for k, v in params.items() if k in specific_init_keys}
        )
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, **init_params)
        common = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{
            k if k in common else f"{self._EXECUTOR}_{k}": v
            for k, v in params.items()
            if k not in specific_init_keys | {"submitit_folder"}
        })
        return executor

    def _node_device(self) -> str | None:
        """What ``device=auto`` becomes on the machine that runs a job; None when only that
        machine can tell (a SLURM node)."""
        return None

    def _run_dirs(self, overrides: Sequence[str], device: str | None = None) -> list[Path] | None:
        """The run directories of a job, from its composed config; None when they cannot be known
        here (they depend on the node, or the config does not compose: the job will say why).
        ``device``: what ``auto`` becomes on the node, when not ``_node_device()``. Composed once
        per job (the check for finished jobs, the progress watch and the report of a killed job
        all ask)."""
        from nondet.job import job_run_dirs

        cache = self.__dict__.setdefault("_run_dirs_of", {})
        key = (tuple(overrides), device or self._node_device())
        if key not in cache:
            try:
                configs = self.__dict__.setdefault("_config_of", {})
                if key[0] not in configs:
                    configs[key[0]] = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
                cache[key] = job_run_dirs(configs[key[0]], device=key[1])
            except Exception as e:
                log.debug("cannot tell the run directories of %s: %s", overrides, e)
                cache[key] = None
        return cache[key]

    def _killed_job_dirs(self, job: Any, overrides: Sequence[str]) -> list[Path]:
        """The run directories of a job killed outside Python. Where they depend on the node's
        device (``device=auto`` on SLURM), those of either device whose run lock the job still
        holds: the job locked them when it started training them, and a kill leaves the lock."""
        from nondet import lock

        directories = self._run_dirs(overrides)
        if directories is not None:
            return directories
        held = []
        for device in ("cpu", "cuda"):
            held += [d for d in self._run_dirs(overrides, device) or []
                     if lock.run_lock(d).held_by_job(job.job_id, local=self._EXECUTOR == "local")]
        return held

    def _finished(self, overrides: Sequence[str]) -> list[Path] | None:
        """The job's run directories when every one is finished, else None."""
        from nondet.records import is_whole

        directories = self._run_dirs(overrides)
        return directories if directories and all(is_whole(d) for d in directories) else None

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))
        log.info(f"Submitit '{self._EXECUTOR}' sweep output dir : {sweep_dir}")

        returns: dict[int, JobReturn] = {}
        submit: list[tuple[int, Sequence[str]]] = []
        check = _has_results(sweep_dir)  # a new sweep has nothing to skip: compose nothing
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            finished = self._finished(overrides) if check else None
            if finished is None:
                submit.append((idx, overrides))
                continue
            returns[idx] = JobReturn(
                overrides=list(overrides),
                status=JobStatus.COMPLETED,
                _return_value={"finished": [], "skipped": [str(d) for d in finished], "failed": []},
            )
        if returns:
            log.info("%d of %d jobs not submitted: every run of theirs is finished",
                     len(returns), len(job_overrides))
        if submit:
            for idx, overrides in submit:
                log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            params = [
                (list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state())
                for idx, overrides in submit
            ]
            from nondet.callbacks import filesystem_now

            since = filesystem_now(sweep_dir)  # runs finished before it were finished earlier
            jobs = self._executor().map_array(self, *zip(*params))
            returns.update(self._wait(submit, jobs, returns, since))
        ordered = [returns[idx] for idx in sorted(returns)]
        # The jobs ran elsewhere: hand their outcomes to the end-of-sweep summary of this process.
        from nondet.callbacks import record_job_returns

        record_job_returns(ordered)
        return ordered

    def _wait(self, submit, jobs, returns: dict[int, JobReturn], since: float) -> dict[int, JobReturn]:
        """Collect the jobs as they end, with a progress line per run that ends (nondet/progress.py)."""
        from nondet.progress import POLL_S, SweepProgress, WatchedJob, job_label, swept_keys, sweep_overrides, wait_for_jobs

        skipped = sum(len(r.return_value.get("skipped", [])) for r in returns.values())  # not submitted
        watched = [WatchedJob(idx, overrides, job, self._run_dirs(overrides))
                   for (idx, overrides), job in zip(submit, jobs)]
        try:
            swept = swept_keys(sweep_overrides(self.config))
        except Exception:  # a label without the swept values is no reason to stop a sweep
            swept = []
        source = OmegaConf.select(self.config, "source.name", default="")
        for w in watched:
            w.label = job_label(list(w.overrides), swept, source)
        progress = SweepProgress(skipped + sum(len(w.dirs) if w.dirs else 1 for w in watched))
        progress.skipped(skipped)
        return wait_for_jobs(watched, self._collect, progress, since, POLL_S)

    def _collect(self, job: Any, overrides: Sequence[str]) -> JobReturn:
        """The job's JobReturn; for a job killed outside Python, error.txt in its unfinished runs."""
        from submitit.core.utils import FailedJobError, UncompletedJobError

        from nondet import lock, records

        try:
            return job.results()[0]
        except FailedJobError as e:  # raised inside Python: the sweeper re-raises it
            return JobReturn(overrides=list(overrides), status=JobStatus.FAILED, _return_value=e)
        except UncompletedJobError as e:
            failed, fixes = [], {}
            directories = self._killed_job_dirs(job, overrides)
            for directory in directories:
                if records.is_done(directory):
                    continue
                run_lock = lock.run_lock(directory)
                if run_lock.held_by_job(job.job_id, local=self._EXECUTOR == "local"):
                    run_lock.release()  # the killed job's: a relaunch must not wait for it
                elif run_lock.is_held():
                    continue  # another launch is training it (this job skipped it)
                directory.mkdir(parents=True, exist_ok=True)
                text, fix = killed_report(job, e, self._EXECUTOR, directory, getattr(self, "params", {}).get("mem_gb"),
                                          len(directories))
                records.write_text(directory / records.ERROR_FILE, text)
                failed.append(str(directory))
                if fix:
                    fixes[str(directory)] = fix
            label = " ".join(filter_overrides(overrides))
            log.error("job %s (%s) ended without a result: %s", job.job_id, label, str(e).splitlines()[0])
            # Killed before it locked any run of a device=auto job on SLURM: no run directory to
            # record it in, so the sweep summary names the job instead (and exits 1).
            lost = [] if directories else [f"{self._EXECUTOR} job {job.job_id} ({label}), state "
                                           f"{getattr(job, 'state', 'UNKNOWN')}"]
            return JobReturn(
                overrides=list(overrides),
                status=JobStatus.COMPLETED,
                _return_value={"finished": [], "skipped": [], "failed": failed, "fixes": fixes, "lost": lost},
            )


class SlurmLauncher(_SweepAware, submitit_launcher.SlurmLauncher):
    pass


class LocalLauncher(_SweepAware, submitit_launcher.LocalLauncher):
    def _node_device(self) -> str:
        # The node is this machine; submitit gives a local job CUDA_VISIBLE_DEVICES with
        # hydra.launcher.gpus_per_node GPUs, none by default, so device=auto trains on the CPU then.
        import torch

        gpus = (getattr(self, "params", None) or {}).get("gpus_per_node") or 0
        return "cuda" if gpus > 0 and torch.cuda.is_available() else "cpu"
