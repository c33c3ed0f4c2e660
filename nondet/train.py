"""Train one replica and write its run directory.

A replica is one trained model: its sources' generators, its parameters and optimizer state, its
metrics so far. ``train_replica`` trains it from scratch or from ``checkpoint.pt`` (written every
``checkpoint_every`` epochs) and ends by writing the run-directory contract of DESIGN.md,
``result.json`` last. A resumed run ends bitwise identical to an uninterrupted one because every
piece of state that feeds the computation — weights, optimizer, step, every generator — is in the
checkpoint, and the learning rate is a pure function of the step. ``open_replica``,
``record_evaluation``, ``write_checkpoint`` and ``finish_replica`` are the run-directory steps,
shared with packed training (``nondet/pack.py``), which trains P replicas at once.

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
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from nondet import onset, records, snapshot
from nondet.backend import autocast, configure_lowlevel, configure_precision, environment
from nondet.bitflip import flip_one_ulp
from nondet.data import Dataset, data_sha256
from nondet.models import build_model, set_dropout_generator
from nondet.optim import build_optimizer, learning_rate
from nondet.pipeline import batch_bounds, epoch_order, random_crop_flip, within_batch_permutation
from nondet.seeds import SeedPlan, make_generator, generator_device

log = logging.getLogger("nondet")

EVAL_BATCH = 1024


@dataclass
class Replica:
    """Everything a replica's training depends on, and everything a checkpoint must hold."""

    plan: SeedPlan
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    generators: dict[str, torch.Generator]
    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    train_seconds: float = 0.0
    bitflip: dict | None = None
    metrics: list[dict] = field(default_factory=list)

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


def new_replica(config: dict, data: Dataset) -> Replica:
    """A freshly initialised replica: generators, model (from the init generator), optimizer."""
    device = config["device"]
    plan = SeedPlan.for_run(config["base_seed"], config["source"]["vary"], config["replicate"])
    generators = plan.generators(device, before_onset=config["onset_epoch"] > 0)
    model = build_model(
        OmegaConf.create(config["model"]), data.input_shape, data.num_classes, generators["init"]
    ).to(device)
    set_dropout_generator(model, generators["dropout"])
    optimizer = build_optimizer(config["optimizer"], model.parameters())
    return Replica(plan=plan, model=model, optimizer=optimizer, generators=generators)


def start_of_epoch(replica: Replica, config: dict) -> None:
    """At the onset epoch the varied sources switch to their replicate seeds; bit flip."""
    onset = config["onset_epoch"]
    if replica.plan.varies("lowlevel") and config["device"] == "cuda":
        # Kernels stay deterministic through the shared prefix, free from the onset epoch on.
        configure_lowlevel("cuda", replica.epoch >= onset, required=True)
    if replica.epoch != onset:
        return
    if onset > 0:
        for source in replica.plan.vary:
            if source in replica.generators:
                device = generator_device(source, config["device"])
                replica.generators[source] = make_generator(replica.plan.seeds[source], device)
        set_dropout_generator(replica.model, replica.generators["dropout"])
    if replica.plan.varies("bitflip") and replica.bitflip is None:
        replica.bitflip = flip_one_ulp(replica.model, replica.generators["bitflip"], config)


def train_epoch(
    replica: Replica, config: dict, data: Dataset, after_step: Callable[[int], None] | None = None
) -> torch.Tensor:
    """One pass over the training set; returns the mean training loss as a device scalar
    (no host synchronisation inside the loop). ``after_step(step)`` runs after every optimizer
    step (snapshots are taken there)."""
    model, optimizer, generators = replica.model, replica.optimizer, replica.generators
    n = len(data.y_train)
    bounds = batch_bounds(n, config["batch_size"])
    augment = config["dataset"]["augment"] and data.is_image
    precision, device = config["precision"], config["device"]
    max_lr = config["optimizer"]["lr"]
    model.train()
    order = epoch_order(n, generators["shuffle"], config["shuffle_window"])
    loss_sum = torch.zeros((), device=device)
    for start, stop in bounds:
        index = order[start:stop]
        index = index[within_batch_permutation(stop - start, generators["reduction"])]
        x, y = data.x_train[index], data.y_train[index]
        if augment:
            x = random_crop_flip(x, generators["augment"])
        x = data.normalize(x)
        lr = learning_rate(config["schedule"], max_lr, replica.step, len(bounds), config["epochs"])
        for group in optimizer.param_groups:
            group["lr"] = lr
        with autocast(precision, device):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach() * (stop - start)
        replica.step += 1
        if after_step is not None:
            after_step(replica.step)
    return loss_sum / n


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: Dataset, config: dict) -> tuple[torch.Tensor, float, float]:
    """Test-set logits (float32, on the device), accuracy (percent) and cross-entropy (nats)."""
    model.eval()
    chunks = []
    for start, stop in batch_bounds(len(data.y_test), EVAL_BATCH):
        with autocast(config["precision"], config["device"]):
            chunks.append(model(data.normalize(data.x_test[start:stop])).float())
    logits = torch.cat(chunks)
    accuracy = (logits.argmax(dim=1) == data.y_test).float().mean() * 100.0
    cross_entropy = F.cross_entropy(logits, data.y_test)
    return logits, float(accuracy), float(cross_entropy)


def open_replica(
    config: dict, directory: Path, data: Dataset, lowlevel: str, env_extra: dict | None = None
) -> Replica:
    """A new replica, resumed from ``directory/checkpoint.pt`` when there is one, with
    config.yaml, env.json (plus ``env_extra``) and seeds.json written: the start of a run,
    solo or in a pack (nondet/pack.py)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # config.yaml first: a run that fails on its checkpoint is still found by the analysis.
    records.write_text(directory / records.CONFIG_FILE, OmegaConf.to_yaml(OmegaConf.create(config)))
    replica = new_replica(config, data)
    checkpoint = directory / records.CHECKPOINT_FILE
    resumed_from = None
    if checkpoint.exists():
        replica.load_state_dict(records.read_checkpoint(checkpoint, config["device"]))
        resumed_from = replica.epoch
        log.info("%s: resuming from the checkpoint of epoch %d", directory, replica.epoch)
    if config["dataset"]["augment"] and not data.is_image and replica.epoch == 0:
        warnings.warn(
            "dataset.augment=true has no effect on feature data: crop and flip need images",
            stacklevel=2,
        )

    env = environment(config["device"], config["precision"], lowlevel)
    env["resumed_from_epoch"] = resumed_from
    env["data_sha256"] = data_sha256(data)
    env.update(env_extra or {})
    records.write_json(directory / records.ENV_FILE, env)
    records.write_json(directory / records.SEEDS_FILE, replica.plan.as_record(lowlevel))
    return replica


def record_evaluation(
    replica: Replica, directory: Path, config: dict, train_loss: float, accuracy: float,
    cross_entropy: float,
) -> None:
    """Append the epoch's row to metrics.jsonl (``replica.epoch`` just completed)."""
    row = {
        "epoch": replica.epoch,
        "test_accuracy": accuracy,
        "test_cross_entropy": cross_entropy,
        "train_loss": train_loss,
        "lr": replica.optimizer.param_groups[0]["lr"],
        "seconds": replica.train_seconds,
    }
    replica.metrics.append(row)
    records.write_jsonl(Path(directory) / records.METRICS_FILE, replica.metrics)
    log.info(
        "%s epoch %d/%d  train_loss %.4f  test_acc %.2f%%  test_ce %.4f  lr %.4g  %.1fs",
        Path(directory).name, replica.epoch, config["epochs"], train_loss, accuracy,
        cross_entropy, row["lr"], replica.train_seconds,
    )


def write_checkpoint(replica: Replica, directory: Path) -> None:
    records.write_torch(Path(directory) / records.CHECKPOINT_FILE, replica.state_dict())


def finish_replica(
    replica: Replica, config: dict, directory: Path, data: Dataset, lowlevel: str,
    logits: torch.Tensor, accuracy: float, cross_entropy: float,
) -> dict:
    """Write logits, labels, weights and, last, result.json; remove the checkpoint."""
    directory = Path(directory)
    records.write_npy(directory / records.LOGITS_FILE, logits.cpu().numpy().astype(np.float32))
    records.write_npy(directory / records.LABELS_FILE, data.y_test.cpu().numpy().astype(np.int64))
    records.write_torch(
        directory / records.WEIGHTS_FILE,
        {k: v.detach().cpu() for k, v in replica.model.state_dict().items()},
    )
    result: dict[str, Any] = {
        "test_accuracy": accuracy,
        "test_cross_entropy": cross_entropy,
        "train_seconds": replica.train_seconds,
        "epochs": config["epochs"],
        "replicate": config["replicate"],
        "source": config["source"]["name"],
        "lowlevel": lowlevel,
    }
    if replica.bitflip is not None:
        result["bitflip"] = replica.bitflip
    (directory / records.ERROR_FILE).unlink(missing_ok=True)
    records.write_json(directory / records.RESULT_FILE, result)
    (directory / records.CHECKPOINT_FILE).unlink(missing_ok=True)
    return result


def train_epochs(
    replica: Replica, config: dict, directory: Path, data: Dataset, stop: int,
    after_step: Callable[[int], None] | None = None, on_epoch: Callable[[], None] | None = None,
) -> torch.Tensor | None:
    """Train until ``replica.epoch == stop``: evaluate every ``eval_every`` epochs and at the
    last epoch, checkpoint every ``checkpoint_every``. Returns the last evaluation's logits."""
    epochs = config["epochs"]
    logits = None
    while replica.epoch < stop:
        start_of_epoch(replica, config)
        began = time.perf_counter()
        train_loss = train_epoch(replica, config, data, after_step)
        if config["device"] == "cuda":
            torch.cuda.synchronize()
        replica.train_seconds += time.perf_counter() - began
        replica.epoch += 1
        last = replica.epoch == epochs
        if last or replica.epoch % config["eval_every"] == 0:
            logits, accuracy, cross_entropy = evaluate(replica.model, data, config)
            record_evaluation(replica, directory, config, float(train_loss), accuracy, cross_entropy)
        if not last and replica.epoch % config["checkpoint_every"] == 0:
            write_checkpoint(replica, directory)
        if on_epoch is not None:
            on_epoch()
    return logits


def fork_from_prefix(replica: Replica, config: dict, directory: Path, data: Dataset) -> None:
    """Bring a replica to the onset epoch from the shared prefix (nondet/onset.py): load it when
    another job has trained it, else train it here and share it."""
    onset_epoch = config["onset_epoch"]
    shared = onset.prefix_checkpoint(config, onset_epoch)
    lock = onset.Lock(shared.with_name(shared.name + ".lock"))
    if not onset.wait_for(shared, lock):
        with onset.held(lock):
            if not shared.exists():
                latest = onset.latest_prefix_checkpoint(config, onset_epoch)
                if latest is not None and latest[0] > replica.epoch:
                    replica.load_state_dict(records.read_checkpoint(latest[1], config["device"]))
                log.info("%s: training the shared prefix up to epoch %d", directory.name, onset_epoch)
                train_epochs(replica, config, directory, data, onset_epoch, on_epoch=lock.refresh)
                records.write_torch(shared, replica.state_dict())
                return
    log.info("%s: forking from the shared prefix at epoch %d", directory.name, onset_epoch)
    replica.load_state_dict(records.read_checkpoint(shared, config["device"]))


def train_replica(config: dict, directory: Path, data: Dataset, lowlevel: str) -> dict:
    """Train the replica ``config['replicate']`` into ``directory``; returns result.json's dict."""
    directory = Path(directory)
    replica = open_replica(config, directory, data, lowlevel)
    epochs = config["epochs"]
    if 0 < config["onset_epoch"] <= epochs and replica.epoch < config["onset_epoch"]:
        fork_from_prefix(replica, config, directory, data)

    steps_per_epoch = len(batch_bounds(len(data.y_train), config["batch_size"]))
    snapshots = snapshot.snapshot_steps(config["schedule"], epochs * steps_per_epoch)

    def take_snapshot(step: int) -> None:
        if step in snapshots:
            logits, _, _ = evaluate(replica.model, data, config)
            replica.model.train()
            path = snapshot.snapshot_path(directory, snapshots.index(step) + 1)
            records.write_npy(path, logits.cpu().numpy().astype(np.float32))

    logits = train_epochs(replica, config, directory, data, epochs, take_snapshot if snapshots else None)
    if snapshots:  # the run's prediction is the snapshot ensemble
        members = snapshot.load_snapshots(directory, len(snapshots))
        logits = snapshot.ensemble_log_probabilities([torch.from_numpy(m) for m in members])
        labels = data.y_test.cpu()
        accuracy = float((logits.argmax(1) == labels).double().mean() * 100.0)
        cross_entropy = float(F.cross_entropy(logits, labels))
    elif logits is None:  # epochs == 0: the untrained model
        logits, accuracy, cross_entropy = evaluate(replica.model, data, config)
    else:
        accuracy, cross_entropy = replica.metrics[-1]["test_accuracy"], replica.metrics[-1]["test_cross_entropy"]
    return finish_replica(replica, config, directory, data, lowlevel, logits, accuracy, cross_entropy)
