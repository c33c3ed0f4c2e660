"""Checks that need a CUDA GPU: is low-level nondeterminism real, does TF32 hide a bit flip, are
packs exact on the GPU. Prints markdown for docs/benchmarks.md.

    python benchmarks/gpu_checks.py                     # all three, ResNet-14 on 3x32x32 synthetic images
    python benchmarks/gpu_checks.py --checks pack --model resnet6 --epochs 1

1. ``lowlevel``: the same replica trained twice with deterministic kernels must be bitwise
   identical; with ``lowlevel`` varied (cuDNN autotuning and nondeterministic algorithms,
   atomics) the two trainings are expected to differ. Reports max |logit difference| and the
   percentage of test predictions that differ.
2. ``tf32``: a one-ULP bit flip of a first-layer weight, against the unflipped control, in strict
   fp32, in TF32 and in bf16: are the logits of the untrained models different (TF32 and bf16 round
   the product inputs to 10 and 7 mantissa bits, so the flip may vanish), and after training?
3. ``pack``: replicas trained in a pack against the same replicas trained alone (mlp; the ResNet
   with grouped and with split convolutions), and ``source=none`` inside a pack (must be
   bitwise identical replicas).

Training uses nondet's own loops (``nondet.train`` and ``nondet.pack``) on synthetic data, so the
script needs no dataset download. It refuses to run without a GPU.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import nondet.backend  # noqa: E402,F401  (CUBLAS_WORKSPACE_CONFIG before CUDA starts)
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from nondet import pack as packing, train  # noqa: E402
from nondet.backend import configure_lowlevel, configure_precision  # noqa: E402
from nondet.config import register_configs  # noqa: E402
from nondet.data import load_dataset  # noqa: E402
from nondet.job import register_resolvers, resolved_config  # noqa: E402

register_configs()
register_resolvers()


def config_for(args, *overrides: str) -> dict:
    model = [f"model={args.model}"]
    images = [] if args.model in ("mlp", "linear") else [
        "dataset.image_shape=[3,32,32]", "dataset.augment=true"]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[
            "dataset=synthetic", "device=cuda", f"epochs={args.epochs}", f"batch_size={args.batch_size}",
            f"dataset.train_size={args.train_size}", "dataset.test_size=2048", *model, *images,
            *overrides,
        ])
    return resolved_config(cfg)


def data_for(config):
    return load_dataset(OmegaConf.create(config["dataset"]), "cuda")


def train_solo(config, data, replicate: int, epochs: int | None = None) -> torch.Tensor:
    """Test logits of ``replicate`` after ``epochs`` epochs alone (a pack of one)."""
    config = {**config, "replicate": replicate}
    replica = packing.new_replica(config, data)
    for _ in range(config["epochs"] if epochs is None else epochs):
        train.start_of_epoch(replica, config)
        packing.train_epoch(replica, config, data)
        replica.epoch += 1
    if epochs == 0:
        train.start_of_epoch(replica, config)
    return packing.evaluate_pack(packing.Pack([replica], config, "split"), data)[0][0]


def train_packed(config, data, replicates: list[int], conv_mode: str) -> torch.Tensor:
    replicas = [packing.new_replica({**config, "replicate": r}, data) for r in replicates]
    for replica in replicas:
        train.start_of_epoch(replica, config)
    group = packing.Pack(replicas, config, conv_mode)
    for _ in range(config["epochs"]):
        packing.train_pack_epoch(group, data)
        group.epoch += 1
    return packing.evaluate_pack(group, data)[0]


def compare(a: torch.Tensor, b: torch.Tensor) -> str:
    if torch.equal(a, b):
        return "bitwise identical"
    differ = (a.argmax(-1) != b.argmax(-1)).float().mean().item() * 100
    return f"differ: max abs {(a - b).abs().max().item():.3g}, predictions differ on {differ:.2f}%"


def check_lowlevel(args) -> None:
    print("\n### Low-level (cuDNN/cuBLAS) nondeterminism\n")
    configure_precision("fp32")
    for nondeterministic in (False, True):
        configure_lowlevel("cuda", nondeterministic, required=True)
        config = config_for(args, "source=lowlevel" if nondeterministic else "source=none")
        data = data_for(config)
        first, second = train_solo(config, data, 0), train_solo(config, data, 0)
        label = "nondeterministic" if nondeterministic else "deterministic"
        print(f"- {args.model}, {label} kernels, the same replica twice: {compare(first, second)}", flush=True)
    configure_lowlevel("cuda", False, required=True)


def check_tf32(args) -> None:
    print("\n### A one-ULP bit flip under fp32, TF32 and bf16\n")
    configure_lowlevel("cuda", False, required=True)
    for precision in ("fp32", "tf32", "bf16"):
        configure_precision(precision)
        control = config_for(args, "source=none", f"precision={precision}")
        flipped = config_for(args, "source=bitflip", f"precision={precision}")
        data = data_for(control)
        at_init = compare(train_solo(control, data, 0, epochs=0), train_solo(flipped, data, 0, epochs=0))
        trained = compare(train_solo(control, data, 0), train_solo(flipped, data, 0))
        print(f"- {args.model}, {precision}: untrained {at_init}; after {args.epochs} epochs {trained}", flush=True)
    configure_precision("fp32")


def check_pack(args) -> None:
    print("\n### Packs on the GPU against solo training\n")
    configure_lowlevel("cuda", False, required=True)
    configure_precision("fp32")
    replicates = list(range(args.pack))
    models = ["mlp", args.model] if args.model != "mlp" else ["mlp"]
    for model in models:
        sub = argparse.Namespace(**{**vars(args), "model": model})
        modes = ["-"] if model in ("mlp", "linear") else ["grouped", "split"]
        for mode in modes:
            config = config_for(sub, "source=init", f"pack={args.pack}")
            data = data_for(config)
            packed = train_packed(config, data, replicates, "split" if mode == "-" else mode)
            results = [compare(packed[p], train_solo(config, data, p)) for p in (0, args.pack - 1)]
            none = config_for(sub, "source=none", f"pack={args.pack}")
            same = train_packed(none, data, replicates, "split" if mode == "-" else mode)
            identical = all(torch.equal(same[0], same[p]) for p in replicates)
            print(f"- {model} ({mode} convolutions), P={args.pack}: replica 0 vs solo {results[0]}; "
                  f"replica {args.pack - 1} vs solo {results[1]}; source=none replicas "
                  f"{'bitwise identical' if identical else 'DIFFER'}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checks", default="lowlevel,tf32,pack")
    parser.add_argument("--model", default="resnet14")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--train-size", type=int, default=10240)
    parser.add_argument("--pack", type=int, default=4)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu_checks.py needs a CUDA GPU (torch.cuda.is_available() is False)")
    print(f"## GPU checks, {datetime.date.today()}: {torch.cuda.get_device_name()}, torch {torch.__version__}, "
          f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}; {args.model}, "
          f"{args.epochs} epochs of {args.train_size} synthetic examples, batch {args.batch_size}")
    checks = {"lowlevel": check_lowlevel, "tf32": check_tf32, "pack": check_pack}
    for name in args.checks.split(","):
        checks[name](args)


if __name__ == "__main__":
    main()
