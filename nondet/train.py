"""The run lifecycle, one for every model: open, resume, fork, train, evaluate, checkpoint, finish.

A replica is one trained model: its sources' generators, its parameters and optimizer state, its
metrics so far. A job trains its replicas through ``train_job``: each opens its run directory
(config.yaml first, then resumes from ``checkpoint.pt``; env.json and seeds.json), forks from the
shared prefix of an onset sweep, and trains in the one epoch loop (``train_group``) with
evaluation every ``eval_every`` epochs, a checkpoint every ``checkpoint_every``, snapshots after
the steps ``schedule=snapshot`` names, and at the end the run-directory contract of the README
("The run directory"), ``result.json`` last and the checkpoint removed.

A model family supplies only what is its own, its replica, its step and its evaluation:

- images (``nondet.pack.ImageFamily``): a pack of P replicas trained as one fused computation,
  P = 1 for a solo run or a model without a packed form (then the replicas of a job go one at a
  time through the same loop);
- language models (``nondet.lm.LMFamily``): BPTT windows, AR/TAR, clipping and NT-ASGD, one
  replica at a time.

A resumed run ends bitwise identical to an uninterrupted one because every piece of state that
feeds the computation (weights, optimizer, step, every generator) is in the checkpoint, and the
learning rate is a pure function of the step.

Onset (``onset_epoch=k``): every source uses the base seed for epochs < k and the varied sources
switch to their replicate seeds at the start of epoch k; a bit flip is made at the start of
epoch k. With k = 0 (the default) this is the ordinary protocol.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from nondet import logger, onset, records, snapshot
from nondet.backend import configure_lowlevel, environment
from nondet.bitflip import flip_one_ulp
from nondet.data import data_identity
from nondet.models import set_dropout_generator
from nondet.seeds import SeedPlan, generator_device, make_generator
from nondet.usercode import code_identity, record_prefix_code

log = logging.getLogger("nondet")

EVAL_BATCH = 1024
# checkpoint_every=auto: a checkpoint after the first epoch that ends this long after the last
# (or the start): a kill loses at most about a minute, and a run of one-second epochs does not
# spend its time writing checkpoints.
CHECKPOINT_SECONDS = 60.0


@dataclass
class Replica:
    """Everything a replica's training depends on, and everything a checkpoint must hold."""

    plan: SeedPlan
    model: torch.nn.Module
    # The replica's torch.optim optimizer, built on first use (``optimizer``): a pack steps
    # through torch's functional update and needs it only for a checkpoint.
    make_optimizer: Callable[[], torch.optim.Optimizer]
    generators: dict[str, torch.Generator]
    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    train_seconds: float = 0.0
    bitflip: dict | None = None
    metrics: list[dict] = field(default_factory=list)
    # source=data: the indices of the training examples this replica trains on, drawn when it is
    # created from its data generator's seed (so a resumed replica draws the same ones; not in
    # the checkpoint). None: the whole training set.
    resample: torch.Tensor | None = None
    _optimizer: torch.optim.Optimizer | None = field(default=None, repr=False)

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        if self._optimizer is None:
            self._optimizer = self.make_optimizer()
        return self._optimizer

    @property
    def has_optimizer(self) -> bool:
        """Whether the optimizer was built (it holds state only then)."""
        return self._optimizer is not None

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "step": self.step,
            "train_seconds": self.train_seconds,
            "bitflip": self.bitflip,
            "metrics": self.metrics,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generators": {name: g.get_state() for name, g in self.generators.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        self.epoch = state["epoch"]
        self.step = state["step"]
        self.train_seconds = state["train_seconds"]
        self.bitflip = state["bitflip"]
        self.metrics = list(state["metrics"])
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        for name, generator_state in state["generators"].items():
            self.generators[name].set_state(generator_state)
        set_dropout_generator(self.model, self.generators["dropout"])


@dataclass
class Evaluation:
    """One replica's test evaluation: the numbers of its metrics row and result.json, and what
    its prediction files are made of (image: ``logits``; a language model: ``files``)."""

    accuracy: float
    cross_entropy: float
    logits: Optional[torch.Tensor] = None  # (N, K) float32
    labels: Optional[torch.Tensor] = None
    row: dict = field(default_factory=dict)  # more fields of the metrics row
    result: dict = field(default_factory=dict)  # more fields of result.json
    files: Optional[Callable[[], dict[str, np.ndarray]]] = None

    def arrays(self) -> dict[str, np.ndarray]:
        """The prediction files of a finished run, by name."""
        if self.files is not None:
            return self.files()
        return {records.LOGITS_FILE: self.logits.cpu().numpy().astype(np.float32),
                records.LABELS_FILE: self.labels.cpu().numpy().astype(np.int64)}


class Group(Protocol):
    """Replicas at one epoch and step, trained together by a family's step."""

    epoch: int
    step: int
    lr: float  # the schedule's rate at the last step (metrics.jsonl's ``lr``)

    def train_epoch(self, after_step: Callable[[int], None] | None) -> torch.Tensor: ...
    def end_of_epoch(self, report: bool) -> list[Evaluation] | None: ...
    def evaluate(self) -> list[Evaluation]: ...
    def train_mode(self) -> None: ...
    def write_back(self, with_optimizer: bool = True) -> None: ...


class Family(Protocol):
    """What a model family supplies to the lifecycle (``nondet.pack.ImageFamily``,
    ``nondet.lm.LMFamily``)."""

    def new_replica(self, config: dict, data: Any) -> Replica: ...
    def steps_per_epoch(self, config: dict, data: Any) -> int: ...
    def apart(self, config: dict, data: Any, size: int | None = None) -> str | None: ...
    def env(self, config: dict, replicates: list[int]) -> dict: ...
    def with_spares(self, replicas: list[Replica], config: dict, data: Any) -> list[Replica]: ...
    def group(self, replicas: list[Replica], config: dict, data: Any) -> Group: ...
    def weights(self, replica: Replica) -> dict: ...


def start_of_epoch(replica: Replica, config: dict) -> None:
    """At the onset epoch the varied sources switch to their replicate seeds; bit flip."""
    onset_epoch = config["onset_epoch"]
    if replica.plan.varies("lowlevel") and config["device"] == "cuda":
        # Kernels stay deterministic through the shared prefix, free from the onset epoch on.
        configure_lowlevel("cuda", replica.epoch >= onset_epoch, required=True)
    if replica.epoch != onset_epoch:
        return
    if onset_epoch > 0:
        for source in replica.plan.vary:
            if source in replica.generators:
                device = generator_device(source, config["device"])
                replica.generators[source] = make_generator(replica.plan.seeds[source], device)
        set_dropout_generator(replica.model, replica.generators["dropout"])
    if replica.plan.varies("bitflip") and replica.bitflip is None:
        replica.bitflip = flip_one_ulp(replica.model, replica.generators["bitflip"], config)


# --------------------------------------------------------------------------- the run directory


def open_replica(
    config: dict, directory: Path, data: Any, lowlevel: str, family: Family, env_extra: dict | None = None
) -> Replica:
    """A new replica, resumed from ``directory/checkpoint.pt`` when there is one, with
    config.yaml, env.json (plus ``env_extra``) and seeds.json written: the start of a run."""
    write_run_config(config, directory)
    replica = family.new_replica(config, data)
    env = {**data_identity(data), **code_identity(config), **inert_record(config, data), **(env_extra or {})}
    start_replica(replica, config, directory, lowlevel, env)
    if config["dataset"]["augment"] and getattr(data, "is_image", None) is False and replica.epoch == 0:
        warnings.warn(
            "dataset.augment=true has no effect on feature data: crop and flip need images",
            stacklevel=2,
        )
    return replica


def inert_record(config: dict, data: Any) -> dict:
    """``{"inert_sources": {source: why}}`` for env.json: the varied sources that can change
    nothing in this run while others still vary (``source=init_dropout`` at ``model.dropout=0``
    measures init alone; the analysis names it), or {} (a launch whose sources are all inert is
    refused: ``nondet.job.refuse_inert``)."""
    from nondet.job import inert_sources  # the job's judgement, as the launch made it

    inert = inert_sources(config, data)
    return {"inert_sources": inert} if inert and set(inert) < set(config["source"]["vary"]) else {}


def write_run_config(config: dict, directory: Path) -> None:
    """The run directory and its config.yaml, the first of a run's records: a run that fails
    later (on its checkpoint, in its first epoch) is still found by the analysis."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    records.write_config(directory, config)


def start_replica(
    replica: Replica,
    config: dict,
    directory: Path,
    lowlevel: str,
    env_extra: dict | None = None,
    restore: Callable[[dict], None] | None = None,
) -> None:
    """Resume ``replica`` from ``directory/checkpoint.pt`` when there is one (``restore(state)``
    then restores what else the checkpoint holds), and write env.json (``resumed_from_epoch``,
    then ``env_extra``) and seeds.json: a run's start, after its config.yaml."""
    directory = Path(directory)
    checkpoint = directory / records.CHECKPOINT_FILE
    resumed_from = None
    if checkpoint.exists():
        state = records.read_checkpoint(checkpoint, config["device"])
        check_checkpoint_run(state, checkpoint, run_identity(replica.plan, config))
        replica.load_state_dict(state)
        if restore is not None:
            restore(state)
        resumed_from = replica.epoch
        log.info("%s: resuming from the checkpoint of epoch %d", directory, replica.epoch)
    env = environment(config["device"], config["precision"], lowlevel)
    env["resumed_from_epoch"] = resumed_from
    env.update(env_extra or {})
    if resumed_from is not None:  # a run resumed under other arithmetic is no longer bitwise one
        earlier = records.earlier_arithmetic(_previous_env(directory), env)
        if earlier:
            env[records.EARLIER_ARITHMETIC] = earlier
            log.warning("%s: resumed under other float arithmetic than it trained with before (%s); it "
                        "may not be bitwise the run trained uninterrupted", directory, _differences(earlier[-1], env))
    records.write_json(directory / records.ENV_FILE, env)
    records.write_json(directory / records.SEEDS_FILE, replica.plan.as_record(lowlevel))


def _previous_env(directory: Path) -> dict | None:
    try:
        previous = records.read_json(directory / records.ENV_FILE)
    except records.CorruptRunError:  # none, or unreadable: nothing earlier to keep
        return None
    return previous if isinstance(previous, dict) else None


def _differences(earlier: dict, env: dict) -> str:
    return ", ".join(f"{k}: {v} before, {now} now" for k, (v, now) in records.arithmetic_changes(earlier, env).items())


def record_evaluation(
    replica: Replica, directory: Path, config: dict, train_loss: float, evaluation: Evaluation, lr: float,
    epoch: int | None = None,
) -> None:
    """Append the row of ``epoch`` (default ``replica.epoch``, the epoch just completed) to
    metrics.jsonl."""
    epoch = replica.epoch if epoch is None else epoch
    row = {
        "epoch": epoch,
        "test_accuracy": evaluation.accuracy,
        "test_cross_entropy": evaluation.cross_entropy,
        "train_loss": train_loss,
        "lr": lr,
        "seconds": replica.train_seconds,
        **evaluation.row,
    }
    replica.metrics.append(row)
    records.write_jsonl(Path(directory) / records.METRICS_FILE, replica.metrics)
    logger.record_metrics(config, directory, replica.metrics)
    extra = "".join(f"  {k} {v:.4g}" for k, v in evaluation.row.items() if k.endswith("perplexity"))
    log.info(
        "%s epoch %d/%d  train_loss %.4f  test_acc %.2f%%  test_ce %.4f%s  lr %.4g  %.1fs",
        Path(directory).name, epoch, config["epochs"], train_loss, evaluation.accuracy,
        evaluation.cross_entropy, extra, lr, replica.train_seconds,
    )


# The checkpoint's key for the identity of the run that wrote it (``run_identity``); a checkpoint
# of an earlier nondet has none, and its load_state_dict ignores it in a newer one.
RUN_KEY = "run"


def run_identity(plan: SeedPlan, config: dict) -> dict:
    """What names one run: its configuration's hash (its group), replicate and seeds."""
    return {"config_hash": records.config_hash(config), "replicate": plan.replicate,
            "base_seed": plan.base_seed, "vary": list(plan.vary), "seeds": dict(plan.seeds)}


def check_checkpoint_run(state: dict, path: Path, identity: dict) -> None:
    """Refuse a checkpoint written by another run (another replicate's, copied over, or another
    configuration's): resumed, this run would become a bitwise clone of that one under its own
    seeds.json. A checkpoint without the record (an earlier nondet's) resumes as it is."""
    stored = state.get(RUN_KEY)
    if not isinstance(stored, dict):
        return
    differ = [_difference(k, stored.get(k), v) for k, v in identity.items() if stored.get(k) != v]
    if differ:
        raise records.CorruptRunError(
            f"the checkpoint {path} was written by another run ({'; '.join(differ)}): resuming it would "
            f"make this run a copy of that one; delete it to train this run from scratch")


def _difference(key: str, there: Any, here: Any) -> str:
    if isinstance(there, dict) and isinstance(here, dict):
        sources = sorted(s for s in set(there) | set(here) if there.get(s) != here.get(s))
        return f"the seeds of {', '.join(sources)} differ"
    return f"{key.replace('_', ' ')} {there} there, {here} here"


def write_checkpoint(replica: Replica, directory: Path, config: dict, extra: dict | None = None) -> None:
    """checkpoint.pt: the replica's state, ``extra`` (a script's own objects) and the run's identity."""
    state = {**replica.state_dict(), **(extra or {}), RUN_KEY: run_identity(replica.plan, config)}
    records.write_torch(Path(directory) / records.CHECKPOINT_FILE, state)


def finish_replica(
    replica: Replica, config: dict, directory: Path, lowlevel: str, evaluation: Evaluation, weights: dict
) -> dict:
    """Write the prediction files, labels, weights and, last, result.json; remove the checkpoint."""
    directory = Path(directory)
    for name, array in evaluation.arrays().items():
        records.write_npy(directory / name, array)
    records.write_torch(directory / records.WEIGHTS_FILE, weights)
    result: dict[str, Any] = {
        "test_accuracy": evaluation.accuracy,
        "test_cross_entropy": evaluation.cross_entropy,
        "train_seconds": replica.train_seconds,
        "epochs": config["epochs"],
        "replicate": config["replicate"],
        "source": config["source"]["name"],
        "lowlevel": lowlevel,
        **evaluation.result,
    }
    if replica.bitflip is not None:
        result["bitflip"] = replica.bitflip
    (directory / records.ERROR_FILE).unlink(missing_ok=True)
    records.write_json(directory / records.RESULT_FILE, result)
    (directory / records.CHECKPOINT_FILE).unlink(missing_ok=True)
    return result


def snapshot_ensemble(directory: Path, count: int, labels: torch.Tensor) -> Evaluation:
    """The run's prediction under ``schedule=snapshot``: the ensemble of its snapshots' logits."""
    members = snapshot.load_snapshots(directory, count)
    logits = snapshot.ensemble_log_probabilities([torch.from_numpy(m) for m in members])
    labels = labels.cpu()
    accuracy = float((logits.argmax(1) == labels).double().mean() * 100.0)
    return Evaluation(accuracy, float(F.cross_entropy(logits, labels)), logits=logits, labels=labels)


# --------------------------------------------------------------------------- the loop


@dataclass
class Member:
    """A replica of the job and its run: where it is written, and its result once finished."""

    replica: Replica
    config: dict
    directory: Path
    lowlevel: str
    result: dict | None = None


def train_group(
    members: list[Member], data: Any, stop: int, family: Family, on_epoch: Callable[[], None] | None = None
) -> None:
    """Train ``members`` (all at one epoch) together up to epoch ``stop``: evaluate every
    ``eval_every`` epochs and at the last, checkpoint every ``checkpoint_every`` epochs (``auto``:
    by elapsed time, ``CHECKPOINT_SECONDS``), take the snapshots of ``schedule=snapshot`` after
    their steps; at ``stop == epochs`` finish every run directory."""
    config = members[0].config  # what the members share: all but ``replicate``
    epochs, onset_epoch = config["epochs"], config["onset_epoch"]
    flips = "bitflip" in config["source"]["vary"]
    replicas = [m.replica for m in members]
    if family.apart(config, data, len(replicas)) is None:  # a pack (spares fill it where its size matters)
        replicas = family.with_spares(replicas, config, data)
    group = family.group(replicas, config, data)
    snapshots = snapshot.snapshot_steps(config["schedule"], epochs * family.steps_per_epoch(config, data))

    def take_snapshot(step: int) -> None:
        if step in snapshots:
            for member, evaluation in zip(members, group.evaluate()):
                path = snapshot.snapshot_path(member.directory, snapshots.index(step) + 1)
                records.write_npy(path, evaluation.logits.cpu().numpy().astype(np.float32))
            group.train_mode()

    final = None
    last_checkpoint = time.monotonic()
    while group.epoch < stop:
        if group.epoch == onset_epoch and (onset_epoch > 0 or flips):
            # new generators, the bit flip: made on the solo replicas, then the group rebuilt
            group.write_back()
            for replica in replicas:
                start_of_epoch(replica, config)
            group = family.group(replicas, config, data)
        else:  # nothing changes in the replicas then, but the low-level switch of an onset sweep
            for replica in replicas:
                start_of_epoch(replica, config)
        began = time.perf_counter()
        train_loss = group.train_epoch(take_snapshot if snapshots else None)
        if config["device"] == "cuda":
            torch.cuda.synchronize()
        seconds = (time.perf_counter() - began) / len(members)  # amortised over the pack
        group.epoch += 1
        last = group.epoch == epochs
        for replica in replicas:  # spares too: start_of_epoch reads the epoch
            replica.epoch = group.epoch
        for member in members:
            member.replica.train_seconds += seconds
        evaluations = group.end_of_epoch(last or group.epoch % config["eval_every"] == 0)
        if evaluations is not None:
            losses = train_loss.tolist()
            for p, member in enumerate(members):
                record_evaluation(member.replica, member.directory, config, losses[p], evaluations[p], group.lr)
            final = evaluations if last else None
        if not last and checkpoint_due(config["checkpoint_every"], group.epoch, last_checkpoint):
            group.write_back()
            for member in members:
                write_checkpoint(member.replica, member.directory, member.config)
            last_checkpoint = time.monotonic()
        if on_epoch is not None:
            on_epoch()
    group.write_back(with_optimizer=stop < epochs)  # finished runs keep no optimizer state
    if stop < epochs:
        return
    if snapshots:  # the run's prediction is the snapshot ensemble
        final = [snapshot_ensemble(m.directory, len(snapshots), data.y_test) for m in members]
    elif final is None:  # epochs == 0: the untrained models
        final = group.evaluate()
    for member, evaluation in zip(members, final):
        member.result = finish_replica(
            member.replica, member.config, member.directory, member.lowlevel, evaluation,
            family.weights(member.replica),
        )


def checkpoint_due(every: Any, epoch: int, last_checkpoint: float) -> bool:
    """Whether a checkpoint is due after ``epoch`` epochs: every ``every`` epochs, or with
    ``auto`` once ``CHECKPOINT_SECONDS`` have passed since ``last_checkpoint`` (time.monotonic)."""
    if every == "auto":
        return time.monotonic() - last_checkpoint >= CHECKPOINT_SECONDS
    return epoch % every == 0


def fork_from_prefix(member: Member, data: Any, family: Family) -> None:
    """Bring a replica to the onset epoch from the shared prefix (nondet/onset.py): load it when
    another job has trained it, else train it here and share it. The snapshots the prefix takes
    (``schedule=snapshot``) are shared with it, in the prefix's directory, before its checkpoint
    announces it; ``check_snapshots`` then copies them into the run."""
    replica, config, directory = member.replica, member.config, Path(member.directory)
    onset_epoch = config["onset_epoch"]
    shared = onset.prefix_checkpoint(config, onset_epoch)
    prefix = onset.prefix_dir(config)
    lock = onset.Lock(shared.with_name(shared.name + ".lock"))
    if not onset.wait_for(shared, lock):
        with onset.held(lock):
            if not shared.exists():
                latest = onset.latest_prefix_checkpoint(config, onset_epoch)
                if (latest is not None and latest[0] > replica.epoch
                        and not snapshot.missing(snapshots_before(config, data, family, latest[0]), prefix)):
                    replica.load_state_dict(records.read_checkpoint(latest[1], config["device"]))
                log.info("%s: training the shared prefix up to epoch %d", directory.name, onset_epoch)
                train_group([member], data, onset_epoch, family, on_epoch=lock.refresh)
                check_snapshots(member, data, family)  # the ones before ``latest``, from the prefix
                snapshot.copy_missing(snapshots_before(config, data, family, onset_epoch), directory, prefix)
                record_prefix_code(config)
                records.write_torch(shared, replica.state_dict())
                return
    if snapshot.missing(snapshots_before(config, data, family, onset_epoch), prefix):
        # A prefix shared without its snapshots (by an earlier nondet): every fork would lack them.
        log.warning("%s: the shared prefix at epoch %d holds no snapshots; training the prefix in this run",
                    directory.name, onset_epoch)
        train_group([member], data, onset_epoch, family)
        snapshot.copy_missing(snapshots_before(config, data, family, onset_epoch), directory, prefix)
        return
    log.info("%s: forking from the shared prefix at epoch %d", directory.name, onset_epoch)
    replica.load_state_dict(records.read_checkpoint(shared, config["device"]))


def snapshots_before(config: dict, data: Any, family: Family, epoch: int) -> list[int]:
    """The snapshots (``schedule=snapshot``) a run takes in its first ``epoch`` epochs."""
    if config["schedule"]["name"] != "snapshot":
        return []
    return snapshot.taken_by(config["schedule"], family.steps_per_epoch(config, data), config["epochs"], epoch)


def check_snapshots(member: Member, data: Any, family: Family) -> None:
    """A replica resumed or forked at epoch e goes on only with the snapshots of its first e
    epochs in its run directory (the run's prediction is their ensemble); those of an onset
    sweep's shared prefix are copied from it, bitwise the ones a run from scratch takes."""
    config, directory, epoch = member.config, Path(member.directory), member.replica.epoch
    numbers = snapshots_before(config, data, family, epoch)
    if config["onset_epoch"] > 0:
        shared = snapshots_before(config, data, family, min(epoch, config["onset_epoch"]))
        snapshot.copy_missing(shared, onset.prefix_dir(config), directory)
    gone = snapshot.missing(numbers, directory)
    if gone:
        raise records.CorruptRunError(
            f"{snapshot.snapshot_path(directory, gone[0])} is missing, a snapshot taken before epoch {epoch}, "
            f"where this run resumes: delete {directory / records.CHECKPOINT_FILE} to train the run again from scratch")


def train_job(
    jobs: list[tuple[dict, Path]],
    data: Any,
    lowlevel: str,
    family: Family,
    finished: Callable[[Path, dict], None],
    failed: Callable[[Path], None],
) -> None:
    """Train the unfinished replicas ``jobs`` = [(config, directory)] of one job: as one pack
    where the family packs them, else one at a time, through the one loop.

    Each replica opens its run directory (resuming from its checkpoint); one that fails to open
    fails alone. In a pack, replicas at different epochs catch up: the ones furthest behind train
    together until they reach the next ones. ``finished(directory, result)`` and
    ``failed(directory)`` (called inside an ``except`` block) report each replica.
    """
    if not jobs:
        return
    config = jobs[0][0]
    apart = family.apart(config, data, len(jobs))
    if apart is not None and len(jobs) > 1:
        log.info("pack=%s: %s; training its replicas one after another", config["pack"], apart)
    env = None if apart is not None else family.env(config, [c["replicate"] for c, _ in jobs])
    members = []
    for replica_config, directory in jobs:
        try:
            replica = open_replica(replica_config, directory, data, lowlevel, family, env)
            member = Member(replica, replica_config, Path(directory), lowlevel)
            check_snapshots(member, data, family)
            if 0 < config["onset_epoch"] <= config["epochs"] and replica.epoch < config["onset_epoch"]:
                fork_from_prefix(member, data, family)  # the shared prefix, trained once for all
                check_snapshots(member, data, family)
        except Exception:
            failed(directory)
            continue
        members.append(member)
    groups = [members] if apart is None else [[m] for m in members]
    if apart is None and members:
        log.info("a pack of %d replicas in one process", len(members))
    for group in groups:
        _train_catching_up(group, data, family, finished, failed)


def _train_catching_up(members: list[Member], data: Any, family: Family, finished, failed) -> None:
    """Train ``members`` to the end; the ones furthest behind first catch up with the next."""
    epochs = members[0].config["epochs"] if members else 0
    while members:
        start = min(m.replica.epoch for m in members)
        behind = [m for m in members if m.replica.epoch == start]
        ahead = [m.replica.epoch for m in members if m.replica.epoch > start]
        stop = min(ahead) if ahead else epochs
        if ahead:
            log.info("replicas at epoch %d catch up with those at epoch %d", start, stop)
        try:
            config = behind[0].config
            if len(behind) > 1 and family.apart(config, data, len(behind)) is not None:
                for member in behind:  # a pack of this size is not the solo computation
                    train_group([member], data, stop, family)
            else:
                train_group(behind, data, stop, family)
        except Exception:
            for member in behind:
                failed(member.directory)
            stop = epochs
        if stop == epochs:
            for member in behind:
                if member.result is not None:
                    finished(member.directory, member.result)
            gone = {id(m) for m in behind}
            members = [m for m in members if id(m) not in gone]
