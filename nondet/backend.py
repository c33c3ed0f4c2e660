"""Device, low-level (kernel) determinism and numerical precision of a run.

``lowlevel`` is the one source that cannot be seeded: CUDA/cuDNN kernels are either forced to be
deterministic (the default) or left free to pick fast nondeterministic algorithms and atomics
(when ``lowlevel`` is varied). Precision is part of the experiment: strict float32 (TF32 off, the
default, required to see a one-ULP bit flip), TF32, or bfloat16 autocast.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import platform
import socket
import subprocess
from pathlib import Path

import torch

from nondet.config import DEVICES, PRECISIONS, ConfigError

# cuBLAS needs a fixed workspace to be deterministic; it must be set before cuBLAS starts, so
# launch.py imports this module first thing.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

LOWLEVEL_DETERMINISTIC = "deterministic"
LOWLEVEL_NONDETERMINISTIC = "nondeterministic"
LOWLEVEL_UNAVAILABLE = "unavailable (no CUDA device: low-level nondeterminism not exercised)"


class LowLevelUnavailableError(RuntimeError):
    pass


def resolve_device(name: str) -> str:
    """``auto`` -> ``cuda`` if a GPU is visible, else ``cpu``; ``cuda`` without one is an error."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            "device=cuda, but no CUDA GPU is visible to PyTorch (torch.cuda.is_available() is "
            f"False; torch {torch.__version__}, CUDA build {torch.version.cuda}). Run with "
            "device=cpu (or device=auto), or on a machine with a GPU and a CUDA build of torch."
        )
    if name not in DEVICES:
        raise ValueError(f"device={name!r}: use {', '.join(DEVICES)}")
    return name


# The CPU stand-in of each source that varies ``lowlevel`` (conf/source/), and, where there is
# one, the same source without lowlevel.
CPU_STAND_INS = {
    "lowlevel": ("reduction", None),
    "shuffle_lowlevel": ("shuffle_reduction", "shuffle"),
    "shuffle_augment_lowlevel": ("shuffle_augment_reduction", None),
}


def check_lowlevel(device: str, source: dict, language_model: bool = False) -> None:
    """``LowLevelUnavailableError`` when ``source`` (a config's ``source`` node) must vary
    ``lowlevel`` on a device without CUDA, naming the sources that run there instead (for a
    ``language_model``, whose text has no batch order to permute, not the image stand-ins)."""
    if "lowlevel" not in source["vary"] or not source["lowlevel_required"] or device == "cuda":
        return
    name, rest = source["name"], [s for s in source["vary"] if s != "lowlevel"]
    if language_model:
        raise LowLevelUnavailableError(
            f"source={name} varies `lowlevel` (CUDA/cuDNN kernel nondeterminism), which needs a CUDA "
            "device, but this run is on the CPU, and a language model has no CPU stand-in (reduction, "
            "shuffle and augment act on nothing in text). Use source=init, source=dropout (its masks "
            "and BPTT lengths) or source=bitflip; or run on a GPU."
        )
    stand_in, without = CPU_STAND_INS.get(name, (None if rest else "reduction", None))
    fixes = []
    if stand_in:
        fixes.append(f"source={stand_in}, its seedable stand-in on a CPU (reduction permutes examples "
                     "within each minibatch, so only the floating-point summation order changes)")
    if without or rest:
        instead = f"source={without}" if without else f"source.name={'_'.join(rest)} source.vary=[{','.join(rest)}]"
        fixes.append(f"{instead} to vary the rest without lowlevel")
    raise LowLevelUnavailableError(
        f"source={name} varies `lowlevel` (CUDA/cuDNN kernel nondeterminism), which needs a CUDA "
        f"device, but this run is on the CPU. Use {', or '.join(fixes)}; or run on a GPU."
    )


def check_precision(device: str, precision: str) -> None:
    """``precision=tf32`` off CUDA is refused: TF32 is an NVIDIA tensor-core format, so such runs
    would compute something else (strict fp32 here; on CPUs where oneDNN takes float32 matmuls
    at reduced precision, not even that) under a ``tf32`` label, and a tf32 row would look like
    a measurement of TF32."""
    if precision == "tf32" and device not in ("cuda", "auto"):
        raise ConfigError(
            f"precision=tf32 needs a CUDA device (TF32 is an NVIDIA tensor-core format), but device={device}: "
            "use precision=fp32 or precision=bf16 on the CPU"
        )


def configure_lowlevel(device: str, nondeterministic: bool, required: bool) -> str:
    """Set PyTorch's determinism switches for this process; returns the status for env.json."""
    if nondeterministic and device != "cuda":
        check_lowlevel(device, {"name": "lowlevel", "vary": ["lowlevel"], "lowlevel_required": required})
        nondeterministic = False
        status = LOWLEVEL_UNAVAILABLE
    else:
        status = LOWLEVEL_NONDETERMINISTIC if nondeterministic else LOWLEVEL_DETERMINISTIC
    _deterministic_algorithms(not nondeterministic)
    torch.backends.cudnn.deterministic = not nondeterministic
    torch.backends.cudnn.benchmark = nondeterministic
    return status


def _deterministic_algorithms(mode: bool) -> None:
    """``torch.use_deterministic_algorithms(mode)`` without its import of torch._inductor (about
    a second of every job's start) when nothing has imported it: its only use there is a flag
    for ``torch.compile``, which nondet does not call. Set on the inductor too once it is loaded."""
    if "torch._inductor" in sys.modules or not hasattr(torch._C, "_set_deterministic_algorithms"):
        torch.use_deterministic_algorithms(mode)
    else:
        torch._C._set_deterministic_algorithms(mode, warn_only=False)


def configure_precision(precision: str) -> None:
    """TF32 on only for ``tf32``; ``fp32`` and ``bf16`` keep float32 matmuls strict."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}: use {', '.join(PRECISIONS)}")
    tf32 = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.set_float32_matmul_precision("high" if tf32 else "highest")


def autocast(precision: str, device: str):
    """The context a forward pass runs in: bf16 autocast, or nothing."""
    if precision == "bf16":
        return torch.autocast(device_type=device, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@functools.cache  # one subprocess per process, not one per run
def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


@functools.cache
def cpu_model() -> str:
    """The CPU's model name (``AMD EPYC 7B13``): Linux's /proc/cpuinfo, else what ``platform``
    knows. Two CPUs (or vector widths) round the same float operations differently."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                name, sep, value = line.partition(":")
                if sep and name.strip() == "model name" and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_capability() -> str | None:
    """The vector instruction set ATen's CPU kernels dispatch to (``AVX512``, ``AVX2``, ``DEFAULT``)."""
    try:
        return torch.backends.cpu.get_cpu_capability()
    except (AttributeError, RuntimeError):  # torch builds without the query
        return None


def environment(device: str, precision: str, lowlevel: str) -> dict:
    """What env.json records: enough to tell two machines' runs apart."""
    cuda = device == "cuda"
    slurm = {
        k.lower(): os.environ[k]
        for k in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_RESTART_COUNT")
        if k in os.environ
    }
    return {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "device": device,
        "device_name": torch.cuda.get_device_name() if cuda else platform.processor() or platform.machine(),
        "cpu_model": cpu_model(),
        "cpu_capability": cpu_capability(),
        "threads": torch.get_num_threads(),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
        "allow_tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "allow_tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "precision": precision,
        "lowlevel": lowlevel,
        "python": platform.python_version(),
        "git_commit": _git_commit(),
        "host": socket.gethostname(),
        "slurm_job_id": slurm.get("slurm_job_id"),
        "slurm": slurm or None,
    }
