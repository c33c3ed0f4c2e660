"""Per-epoch metrics as TensorBoard event files in each run's directory (``logger=tensorboard``).

    pip install -e .[tensorboard]
    python launch.py -m source=init,shuffle logger=tensorboard
    tensorboard --logdir outputs/default

TensorBoard names a run by the folder of its event files, ``<group>/r<replicate>``, and every
scalar is tagged ``<group>/<metric>``: each group gets its own section of charts, in which its
replicates overlay. The step is the epoch. The event files always equal ``metrics.jsonl``: a run
that resumes from a checkpoint rewrites them from the checkpoint's metrics, so epochs that were
logged after that checkpoint, and are now trained again, appear once, not twice.
``logger=none`` (the default) writes nothing and imports nothing.
"""

from __future__ import annotations

import atexit
from pathlib import Path

from nondet import records

LOGGERS = ("none", "tensorboard")
EVENT_FILES = "events.out.tfevents.*"

_writers: dict[Path, object] = {}  # run directory -> its SummaryWriter, while the run trains


def check_logger(config: dict) -> None:
    """Refuse an unknown logger, or tensorboard without its package, before anything trains."""
    name = config.get("logger", "none")
    if name not in LOGGERS:
        raise ValueError(f"logger={name!r}: use one of {', '.join(LOGGERS)}")
    if name == "tensorboard":
        try:
            import tensorboard  # noqa: F401  (torch.utils.tensorboard needs it)
        except ImportError:
            raise ValueError(
                "logger=tensorboard needs the tensorboard package: pip install -e .[tensorboard] "
                "(or run with logger=none)"
            ) from None


def _writer(directory: Path, group: str, history: list[dict]):
    """The run's writer; the first time in this process, old event files are replaced by the
    rows before the newest one (those the run kept, from scratch or from its checkpoint)."""
    if directory in _writers:
        return _writers[directory]
    from torch.utils.tensorboard import SummaryWriter

    for old in directory.glob(EVENT_FILES):
        old.unlink()
    writer = SummaryWriter(log_dir=str(directory))
    _writers[directory] = writer
    for row in history[:-1]:
        _add(writer, group, row)
    return writer


def _add(writer, group: str, row: dict) -> None:
    for key, value in row.items():
        if key == "epoch" or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        writer.add_scalar(f"{group}/{key}", value, row["epoch"])  # NaN too: a diverged run shows


def record_metrics(config: dict, directory: Path, history: list[dict]) -> None:
    """Log the newest row of ``history`` (the run's metrics.jsonl rows so far); at the last epoch,
    close the run's writer. ``nondet/train.py`` and ``nondet/lm.py`` call it after each
    evaluation."""
    if config.get("logger", "none") != "tensorboard" or not history:
        return
    directory = Path(directory)
    group = records.group_dirname(config)
    writer = _writer(directory, group, history)
    _add(writer, group, history[-1])
    writer.flush()
    if history[-1]["epoch"] >= config["epochs"]:
        close(directory)


def close(directory: Path | None = None) -> None:
    """Close one run's writer, or (None) every writer still open."""
    for key in [Path(directory)] if directory is not None else list(_writers):
        writer = _writers.pop(key, None)
        if writer is not None:
            writer.close()


atexit.register(close)
