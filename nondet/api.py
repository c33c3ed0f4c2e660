"""Your own training loop under the protocol: one run directory, written by nondet's own code.

    python my_train.py -m source=init,shuffle,bitflip     # a sweep, as with launch.py
    python -m analysis outputs/default                    # the same tables

A script of yours stays a plain PyTorch loop. It gets, from ``Run``, what the protocol needs:

    from nondet import api

    @api.main(config_path="conf", config_name="train")   # your config: `defaults: [config, _self_]`
    def main(cfg):
        with api.Run(cfg) as run:                          # the run directory; resumes it
            model = run.build(MyNet, width=cfg.user.width) # built from the init source
            optimizer = torch.optim.SGD(model.parameters(), lr=cfg.optimizer.lr)
            run.track(model, optimizer)                    # restores model, optimizer, generators
            shuffle = run.generator("shuffle")             # one generator per source
            for epoch in run.epochs():                     # the epochs left; checkpoints between
                for index in torch.randperm(n, generator=shuffle).split(cfg.batch_size):
                    with run.dropout():                    # nn.Dropout & co. draw the dropout stream
                        loss = F.cross_entropy(model(x[index]), y[index])
                        loss.backward()
                    optimizer.step(); optimizer.zero_grad()
                run.record(test_logits, train_loss=loss.item())   # metrics.jsonl, per epoch
        return run.outcome                                 # for the sweep's summary

Leaving the block writes logits.npy, labels.npy, weights.pt and result.json (last) from the last
epoch's ``record``; an exception writes error.txt instead and the sweep goes on. A finished run
is skipped (``run.done``: ``epochs()`` yields nothing); a run another process is training is left
to it. ``bitflip``: ``track`` moves one element of ``bitflip.param`` by one ULP before training.
``precision=bf16``: wrap each forward pass (training and evaluation) in ``with run.autocast():``.

The configuration is nondet's (``model``, ``dataset``, ``optimizer``, ``source``, ``replicates``,
``epochs``, ...), composed with your own: put your settings under ``user:`` (a group of yours at
``user/NAME`` lands at ``user.NAME``); they are part of the runs' identity, and so is the script
(``script``: its file, which ``main`` sets), so its runs are never launch.py's. A script trains one
replicate per job (``api.main`` sets ``pack=1``). ``onset_epoch`` is not offered here.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from nondet import callbacks, records, train, usercode, usermodel
from nondet.bitflip import flip_one_ulp
from nondet.config import ConfigError, register_configs
from nondet.data import data_sha256
from nondet.job import configure_backend, job_config, refuse_runs, register_resolvers, report_failure
from nondet.lock import run_locks
from nondet.seeds import SEEDABLE, SeedPlan

log = logging.getLogger("nondet")

# nondet's config directory: your primary config lists `config` (nondet's) in its defaults.
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def main(config_path: str | None = None, config_name: str = "config") -> Callable:
    """``hydra.main`` for a training script of yours, with nondet's config groups on the search
    path (after your own ``config_path``), so your config can compose them. The decorated
    function's return value is the sweep summary's outcome (``run.outcome`` by default)."""
    import hydra

    register_configs()
    register_resolvers()

    def decorate(task: Callable) -> Callable:
        script = Path(sys.modules[task.__module__].__file__).resolve()
        path = str(script.parent / config_path) if config_path else str(CONF_DIR)

        @functools.wraps(task)
        def job(cfg: DictConfig):
            returned = task(cfg)
            return returned if returned is not None else Run.last_outcome

        wrapped = hydra.main(version_base="1.3", config_path=path, config_name=config_name)(job)

        @functools.wraps(task)
        def entry() -> Any:
            callbacks.CHECK_JOBS = False  # check_job checks nondet's model and data, not yours
            callbacks.check_command_line(sys.argv[1:], CONF_DIR, Path(path), config_name)  # epoch=3: one line
            sys.argv = script_arguments(sys.argv, script)
            return wrapped()

        return entry

    return decorate


def script_arguments(argv: list[str], script: Path) -> list[str]:
    """The command line of a script of yours as nondet's config needs it: ``pack=1`` (one
    replicate per job: the sweep steps by one), ``script=`` its file (the runs' identity: never
    launch.py's nor another script's directories) and nondet's config groups on the search path
    (after yours), each unless given."""
    argv = list(argv)
    given = lambda key: any(a.startswith(key) for a in argv[1:])  # noqa: E731
    if not given("pack="):
        argv.append("pack=1")
    if not given("script="):
        argv.append(f"script={quoted(str(script))}")
    search = f"file://{CONF_DIR}"
    if not given("hydra.searchpath"):
        argv.append(f"hydra.searchpath=[{search}]")
    else:  # yours first, then nondet's
        argv = [a[:-1] + f",{search}]" if a.startswith("hydra.searchpath=[") else a for a in argv]
    return argv


def quoted(text: str) -> str:
    """``text`` as one value of a Hydra override (a path may hold commas or spaces)."""
    return "'" + text.replace("'", "\\'") + "'"


class Run:
    """One replicate of a sweep trained by your own loop; a context manager (module docstring)."""

    last_outcome: dict | None = None

    def __init__(self, cfg: DictConfig | dict, data: Any = None) -> None:
        self.cfg = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(cfg)
        # the code that trains, for a config composed without api.main (which names the script):
        # a file, or None where the caller is none (a notebook cell, ``python -c``), whose name
        # would change with every kernel or shell and so never find its finished runs again
        caller = Path(sys._getframe(1).f_code.co_filename)
        self._caller = str(caller.resolve()) if caller.is_file() and "ipykernel" not in caller.parts[-2] else None
        self._data = data
        self._own_data = data is not None
        self._autocast_entered = False
        self.replica: train.Replica | None = None
        self.extra: dict[str, Any] = {}
        self.done = False
        self.outcome: dict[str, Any] = {"finished": [], "skipped": [], "failed": [], "busy": [], "fixes": {}}
        self._evaluation: train.Evaluation | None = None
        self._locks = contextlib.ExitStack()

    # --- the run directory ----------------------------------------------------------------

    def __enter__(self) -> "Run":
        config = job_config(self.cfg)
        if not config.get("script"):  # your loop's runs are not launch.py's (identity: nondet.config)
            if self._caller is None:
                raise ConfigError("this Run is not made in a script file (a notebook or python -c): set "
                                  "script=NAME in its config, a name for your training code that stays "
                                  "the same from one launch to the next, so its runs are found again")
            config = {**config, "script": self._caller}
        if config["pack"] != 1:
            raise ConfigError(f"pack={config['pack']}: a training script of yours trains one replicate per job; set pack=1")
        if config["onset_epoch"]:
            raise ConfigError(f"onset_epoch={config['onset_epoch']}: a training script of yours starts every source at epoch 0")
        if "data" in config["source"]["vary"]:
            raise ConfigError(f"source={config['source']['name']} varies data: a training script of yours "
                              "draws its own batches, which nondet cannot resample; train with launch.py "
                              "or leave data out of source.vary")
        if self._data is not None:  # your own data: identified by content (refused in one line if it cannot be)
            data_sha256(self._data)
        self.config = config
        self.directory = records.run_dir(config)
        self.lowlevel = configure_backend(config)
        self.plan = SeedPlan.for_run(config["base_seed"], config["source"]["vary"], config["replicate"])
        self.generators = self.plan.generators(config["device"])
        Run.last_outcome = self.outcome
        try:  # your script or model, edited since a run of this group was trained?
            usercode.check_code_unchanged(config)
        except ConfigError:  # refused: nothing trained, error.txt (a finished run stays as it is)
            refuse_runs([self.directory], self.outcome)
            self.done = True
            return self
        if records.is_done(self.directory):
            log.info("%s: finished already, skipped", self.directory)
            self.outcome["skipped"].append(str(self.directory))
            self.done = True
            return self
        busy = self._locks.enter_context(run_locks([self.directory]))
        if busy:
            log.info("%s: being trained by another process (%s); left to it", self.directory, busy[self.directory])
            self.outcome["busy"].append(str(self.directory))
            self.done = True
            return self
        train.write_run_config(config, self.directory)
        return self

    def __exit__(self, kind, error, tb) -> bool:
        try:
            if self.done or isinstance(error, (KeyboardInterrupt, SystemExit)):
                return False  # a kill leaves the checkpoint to resume from, nothing else
            if error is None:
                try:
                    self._finish()
                except Exception:  # noqa: BLE001 - reported like a failure in the loop
                    self._failed()
            else:
                self._failed()
            return True  # the sweep goes on, as with nondet's own jobs
        finally:
            self._locks.close()

    def _failed(self) -> None:
        report_failure(self.directory, self.outcome)  # inside __exit__: the exception is being handled

    def _finish(self) -> None:
        replica = self._tracked()
        if replica.epoch < self.config["epochs"] or self._evaluation is None:
            raise RuntimeError(
                f"{self.directory}: the run left its block after epoch {replica.epoch} of "
                f"{self.config['epochs']} without run.record(test_logits) for the last epoch; iterate "
                "over run.epochs() to the end and record each evaluated epoch"
            )
        weights = {k: v.detach().cpu() for k, v in replica.model.state_dict().items()}
        result = train.finish_replica(replica, self.config, self.directory, self.lowlevel, self._evaluation, weights)
        self.outcome["finished"].append(str(self.directory))
        log.info("%s: done  test_acc %.2f%%  test_ce %.4f  (%.1fs)", self.directory,
                 result["test_accuracy"], result["test_cross_entropy"], result["train_seconds"])

    # --- what your loop uses --------------------------------------------------------------

    @property
    def data(self):
        """nondet's dataset of ``cfg.dataset``, whole on the device (``nondet.data.Dataset``);
        loaded on first use. Pass your own to ``Run(cfg, data=...)``: a ``Dataset``, or any object
        whose tensors are its attributes (``SimpleNamespace(x_train=..., y_train=..., x_test=...,
        y_test=...)``; ``record`` takes its labels from ``y_test`` unless given). Its tensors'
        SHA-256 is env.json's ``data_sha256``: a checkpoint is resumed only on the same data."""
        if self._data is None:
            from nondet.job import _dataset, check_data_unchanged

            self._data = _dataset(self.config)
            check_data_unchanged(self.config, self._data)
        return self._data

    @property
    def device(self) -> str:
        return self.config["device"]

    def generator(self, source: str) -> torch.Generator:
        """The generator of one source (``shuffle``, ``augment``, ``dropout``, ``reduction``, on
        the training device; ``init``, ``bitflip`` on the CPU). Draw only from these."""
        if source not in SEEDABLE:
            raise ValueError(f"source {source!r}: the seeded sources are {', '.join(SEEDABLE)}")
        return self.generators[source]

    def build(self, factory: Callable[..., torch.nn.Module], *args, **kwargs) -> torch.nn.Module:
        """``factory(*args, **kwargs)`` with the global RNGs seeded from the init source and given
        back afterwards (your model's own initialisation, a function of the init seed alone);
        on the training device."""
        seed = usermodel.seed_from(self.generators["init"], "init")
        with usermodel.forked_global_rng(seed):
            model = factory(*args, **kwargs)
        return model.to(self.device)

    def build_model(self) -> torch.nn.Module:
        """The model of ``cfg.model`` (nondet's, or ``model=custom``) for ``run.data``."""
        from nondet.models import build_model, set_dropout_generator

        model = build_model(OmegaConf.create(self.config["model"]), self.data.input_shape,
                            self.data.num_classes, self.generators["init"]).to(self.device)
        set_dropout_generator(model, self.generators["dropout"])
        return model

    def track(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, **stateful: Any) -> None:
        """What a checkpoint holds: ``model``, ``optimizer``, every generator, the epoch, and any
        other object with ``state_dict``/``load_state_dict`` (a scheduler, a GradScaler). Resumes
        them from the run's checkpoint; writes env.json and seeds.json; makes the bit flip."""
        self.replica = train.Replica(self.plan, usermodel.mark_custom(model), lambda: optimizer, self.generators)
        self.extra = stateful
        if self.done:
            return

        def restore(state: dict) -> None:
            for name, obj in stateful.items():
                obj.load_state_dict(state["user"][name])

        env = usercode.code_identity(self.config)
        if self._data is not None or self.config["dataset"].get("sha256"):
            from nondet.data import data_identity
            from nondet.job import check_resumed_data

            env.update(data_identity(self.data))
            # a checkpoint resumes only on the data it trained on: your own are not in the run's name
            check_resumed_data(self.config, self.data, [self.config["replicate"]],
                               where="the script's Run(cfg, data=...)" if self._own_data else None)
        train.start_replica(self.replica, self.config, self.directory, self.lowlevel, env, restore)
        self._began = time.perf_counter()
        if self.plan.varies("bitflip") and self.replica.bitflip is None:
            self.replica.bitflip = flip_one_ulp(model, self.generators["bitflip"], self.config)

    def _tracked(self) -> train.Replica:
        if self.replica is None:
            raise RuntimeError("call run.track(model, optimizer) before training")
        return self.replica

    def epochs(self) -> Iterator[int]:
        """The epochs left to train (none when the run is done); after each, a checkpoint every
        ``checkpoint_every`` epochs."""
        if self.done:
            return
        replica = self._tracked()
        self._last_checkpoint = time.monotonic()  # checkpoint_every=auto counts from here
        while replica.epoch < self.config["epochs"]:
            self._began = time.perf_counter()
            yield replica.epoch
            self.end_epoch()

    @property
    def epoch(self) -> int:
        """Epochs completed (a resumed run starts from its checkpoint's)."""
        return self._tracked().epoch

    def end_epoch(self) -> None:
        """Count an epoch done, and checkpoint every ``checkpoint_every``: what ``epochs()`` does
        after each, for a loop that is not yours to write (a Lightning callback's
        ``on_train_epoch_end``)."""
        replica = self._tracked()
        self._count_seconds()
        replica.epoch += 1
        last = replica.epoch == self.config["epochs"]
        since = getattr(self, "_last_checkpoint", None) or time.monotonic()  # a loop of its own
        if not last and train.checkpoint_due(self.config["checkpoint_every"], replica.epoch, since):
            user = {"user": {k: o.state_dict() for k, o in self.extra.items()}}
            train.write_checkpoint(replica, self.directory, self.config, user)
            self._last_checkpoint = time.monotonic()

    def _count_seconds(self) -> None:
        """Add the time since the epoch began (or since last counted) to the run's train_seconds."""
        if self.device == "cuda":
            torch.cuda.synchronize()
        now = time.perf_counter()
        self._tracked().train_seconds += now - getattr(self, "_began", now)
        self._began = now

    def autocast(self):
        """A block whose forward pass runs at the run's ``precision``: bf16 autocast on the training
        device for ``precision=bf16``, nothing otherwise. Your loop is yours, so nondet cannot put
        its passes there: wrap each forward pass in it, training and evaluation. A bf16 run that
        records an epoch without having entered it fails (error.txt) rather than pass fp32 off as bf16."""
        from nondet.backend import autocast

        self._autocast_entered = True
        return autocast(self.config["precision"], torch.device(self.device).type)

    def dropout(self):
        """A block whose random draws (``nn.Dropout``, ``torch.rand``, ...) come from the dropout
        source: the global generator of the training device holds its stream meanwhile. Wrap each
        training step's forward and backward in it."""
        return usermodel.global_rng_from([self.generators["dropout"]])

    def record(self, logits: torch.Tensor, labels: torch.Tensor | None = None, train_loss: float = math.nan,
               lr: float | None = None) -> None:
        """The epoch's test logits (N, K): a metrics.jsonl row (accuracy, cross-entropy); the
        last epoch's are the run's logits.npy. ``labels`` default to ``run.data.y_test``; ``lr``
        to the optimizer's."""
        replica = self._tracked()
        if self.config["precision"] == "bf16" and not self._autocast_entered:
            raise ConfigError("precision=bf16, but no forward pass of this run ran under run.autocast(): wrap "
                              "your model's forward passes in `with run.autocast():`, or set precision=fp32")
        self._count_seconds()  # the row's seconds: the training time to the end of this epoch
        labels = self.data.y_test if labels is None else labels
        logits = logits.detach().float()
        labels = labels.to(logits.device)
        accuracy = float((logits.argmax(dim=1) == labels).float().mean() * 100.0)
        cross_entropy = float(F.cross_entropy(logits, labels))
        self._evaluation = train.Evaluation(accuracy, cross_entropy, logits=logits, labels=labels)
        lr = replica.optimizer.param_groups[0]["lr"] if lr is None else lr
        # the row of the epoch now ending: end_epoch counts it done afterwards
        train.record_evaluation(replica, self.directory, self.config, float(train_loss), self._evaluation, lr,
                                epoch=replica.epoch + 1)
