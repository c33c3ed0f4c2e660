"""Model-epochs per second: one replica at a time (pack=1) against a pack of P in one process.

    python benchmarks/throughput.py                          # the CPU cases, and the GPU ones if CUDA is visible
    python benchmarks/throughput.py --cases mlp --pack 16 --threads 2
    python benchmarks/throughput.py --cases resnet14 --device cuda --pack 16 --images 50000 \\
        --precisions fp32,tf32,bf16 --lowlevel deterministic,nondeterministic
    python benchmarks/throughput.py --alternatives           # the measurements behind the design

pack=1 is nondet's pack of one (``nondet.pack.train_epoch``), one replica after another, as a user
of a plain training script would run them; pack=P is ``nondet.pack.train_pack_epoch``. Both train
the same configuration (source=init: every replica its own initialisation), only the training
epochs are timed (evaluation is not), after one untimed warm-up epoch, best of ``--repeats``
interleaved measurements (the machine may be shared). Cases:

- ``mlp``: the default MLP (conf/config.yaml: mlp width 128, batch 32) on 8192 synthetic examples
  (dataset=synthetic) on the CPU.
- ``resnet14``: ResNet-14 (width 16) on CIFAR-shaped data (random uint8 images 3x32x32, the real
  shape and dtype; crop and flip on), batch 512 as in the paper; on the CPU with ``--cpu-images``
  images (seconds per replica-epoch are scaled to 50,000), on the GPU with ``--images`` in every
  precision and low-level setting asked for.

For ResNet-14 it also prints the achieved FLOP rate (3x the forward FLOPs of the convolutions
and linear layers per image, counted with hooks) so the figure can be set against the device's
peak. Results and their discussion: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import statistics
import sys
import time
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
from nondet.data import Dataset, channel_stats, load_dataset  # noqa: E402
from nondet.job import register_resolvers, resolved_config  # noqa: E402
from nondet.models import build_model  # noqa: E402
from nondet.seeds import make_generator  # noqa: E402

register_configs()
register_resolvers()

PAPER_IMAGES = 50_000


def config_for(overrides: list[str]) -> dict:
    """The config of ``overrides`` on synthetic data (a later ``dataset=`` wins)."""
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return resolved_config(compose("config", overrides=["dataset=synthetic", *overrides]))


def cifar_shaped(train_size: int, test_size: int, device: str) -> Dataset:
    """Random uint8 images of CIFAR-10's shape, ten classes: CIFAR-10's cost without the download."""
    generator = make_generator(0)
    x_train = torch.randint(0, 256, (train_size, 3, 32, 32), dtype=torch.uint8, generator=generator)
    x_test = torch.randint(0, 256, (test_size, 3, 32, 32), dtype=torch.uint8, generator=generator)
    y_train = torch.randint(0, 10, (train_size,), generator=generator)
    y_test = torch.randint(0, 10, (test_size,), generator=generator)
    mean, std = channel_stats(x_train)
    return Dataset("cifar_shaped", x_train, y_train, x_test, y_test, 10, mean, std).to(device)


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def seconds(device: str, epochs: int, run_epoch) -> float:
    synchronize(device)
    began = time.perf_counter()
    for _ in range(epochs):
        run_epoch()
    synchronize(device)
    return time.perf_counter() - began


def forward_flops(config: dict, data: Dataset) -> float:
    """Multiply-adds x 2 of the Conv and Linear layers for one example, forward."""
    model = build_model(OmegaConf.create(config["model"]), data.input_shape, data.num_classes, make_generator(0))
    total = [0]

    def count(module, inputs, output):
        if isinstance(module, torch.nn.Conv2d):
            kernel = module.weight[0].numel()  # in/groups * kh * kw
            total[0] += 2 * kernel * output[0].numel()
        elif isinstance(module, torch.nn.Linear):
            total[0] += 2 * module.weight.numel() * (output.numel() // output.shape[-1])

    for module in model.modules():
        module.register_forward_hook(count)
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, *data.input_shape))
    return float(total[0])


def measure(config: dict, data: Dataset, packs: int, epochs: int, repeats: int, conv_mode: str) -> dict:
    """Model-epochs per second of a pack of one and of a pack of ``packs`` (best of repeats)."""
    device = config["device"]
    solo = packing.new_replica({**config, "replicate": 0}, data)
    replicas = [packing.new_replica({**config, "replicate": r}, data) for r in range(packs)]
    group = packing.Pack(replicas, config, conv_mode)
    packing.train_epoch(solo, config, data)  # warm-up: allocator, cuDNN autotuning, MKL-DNN primitives
    packing.train_pack_epoch(group, data)
    solo_rates, pack_rates = [], []
    for _ in range(repeats):  # interleaved, so a busy spell on a shared machine hits both
        solo_rates.append(epochs / seconds(device, epochs, lambda: packing.train_epoch(solo, config, data)))
        pack_rates.append(packs * epochs / seconds(device, epochs, lambda: packing.train_pack_epoch(group, data)))
    return {
        "solo": max(solo_rates), "pack": max(pack_rates),
        "solo_median": statistics.median(solo_rates), "pack_median": statistics.median(pack_rates),
    }


def row(cells: list) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


HEADER = ["case", "device", "precision", "lowlevel", "threads", "P", "conv", "pack=1 model-epochs/s",
          "pack=P model-epochs/s", "ratio", "s/replica-epoch (pack=P, 50k images)", "TFLOP/s (pack=P)",
          "peak GPU memory"]


def run_case(args, case: str, device: str, precision: str, lowlevel: str, packs: int, conv_mode: str | None) -> list:
    configure_lowlevel(device, lowlevel == "nondeterministic", required=True)
    configure_precision(precision)
    if case == "mlp":
        config = config_for([f"device={device}", f"precision={precision}", "source=init", f"pack={packs}"])
        data = load_dataset(OmegaConf.create(config["dataset"]), device)
        images = None
    else:
        images = args.images if device == "cuda" else args.cpu_images
        config = config_for([
            f"device={device}", f"precision={precision}", "source=init", f"pack={packs}",
            "model=resnet14", "dataset=cifar10", "batch_size=512", "epochs=500",
        ])
        data = cifar_shaped(images, 1024, device)
    epochs = args.epochs if case == "mlp" or device == "cuda" else 1
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    result = measure(config, data, packs, epochs, args.repeats, conv_mode or "split")
    per_epoch = flops = "-"
    if images:
        scale = PAPER_IMAGES / images
        per_epoch = f"{scale / result['pack']:.3g} (pack=1: {scale / result['solo']:.3g})"
        flops = f"{3 * forward_flops(config, data) * images * result['pack'] / 1e12:.3g}"
    cells = [case, device, precision, lowlevel, torch.get_num_threads(), packs, conv_mode or "-",
             f"{result['solo']:.3g} (median {result['solo_median']:.3g})",
             f"{result['pack']:.3g} (median {result['pack_median']:.3g})",
             f"{result['pack'] / result['solo']:.2f}x", per_epoch, flops,
             f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if device == "cuda" else "-"]
    print(row(cells), flush=True)
    return cells


# --------------------------------------------------------------------------- alternatives


def alternatives(args) -> None:
    """The measurements behind nondet/pack.py's choices, on this machine's CPU."""
    import torch.nn.functional as F
    from torch.func import functional_call, grad, vmap
    from torch.optim.sgd import sgd as sgd_update

    device = "cpu"
    packs = int(args.pack.split(",")[-1])
    configure_lowlevel(device, False, required=True)
    configure_precision("fp32")
    print("\n## vmap over functional_call vs packed layers (default MLP, one training step)\n")
    config = config_for(["device=cpu", "source=init", f"pack={packs}"])
    data = load_dataset(OmegaConf.create(config["dataset"]), device)
    replicas = [packing.new_replica({**config, "replicate": r}, data) for r in range(packs)]
    group = packing.Pack(replicas, config, "split")
    model = replicas[0].model
    params = {name: torch.stack([dict(r.model.named_parameters())[name].detach() for r in replicas])
              for name, _ in model.named_parameters()}
    x = data.x_train[: 32 * packs].view(32, packs, -1)
    y = data.y_train[: 32 * packs].view(32, packs)

    def loss_of(p, xb, yb):
        return F.cross_entropy(functional_call(model, p, (xb,)), yb)

    vmapped = vmap(grad(loss_of), in_dims=(0, 1, 1))

    buffers = [None] * len(params)

    def step_vmap():  # the same update as the pack's: torch's functional SGD on stacked tensors
        grads = vmapped(params, x, y)
        group = replicas[0].optimizer.param_groups[0]
        sgd_update(list(params.values()), [grads[name] for name in params], buffers, lr=0.1,
                   weight_decay=group["weight_decay"], momentum=group["momentum"], dampening=0.0,
                   nesterov=group["nesterov"], maximize=False)

    def step_packed():  # the default MLP's pack is replica-major: (P, B, D) -> (P, B, K)
        logits = group.model(x.transpose(0, 1).contiguous())
        losses = F.cross_entropy(logits.flatten(0, 1), y.t().flatten(), reduction="none").view(packs, 32)
        for p in group.params:
            p.grad = None
        losses.mean(1).sum().backward()
        group.optimizer_step()

    for name, step in (("vmap(grad(functional_call))", step_vmap), ("packed layers", step_packed)):
        for _ in range(20):
            step()
        best = min(seconds(device, 1, lambda: [step() for _ in range(100)]) for _ in range(args.repeats))
        print(f"- {name}: {best / 100 * 1e6:.0f} us per step for {packs} replicas")

    print("\n## the dense step by hand vs through autograd (default MLP, epochs of the pack)\n")
    from nondet.models.dense import DenseStep

    by_hand = DenseStep.__dict__["of"]
    groups = {way: packing.Pack([packing.new_replica({**config, "replicate": r}, data) for r in range(packs)],
                                config, "split") for way in ("autograd", "by hand")}
    best = {way: math.inf for way in groups}
    try:
        for _ in range(args.repeats + 1):  # interleaved; the first round warms up
            for way, group in groups.items():
                DenseStep.of = by_hand if way == "by hand" else classmethod(lambda cls, *a: None)
                best[way] = min(best[way], seconds(device, 1, lambda: packing.train_pack_epoch(group, data)))
    finally:
        DenseStep.of = by_hand
    same = all(torch.equal(a, b) for a, b in zip(groups["autograd"].params, groups["by hand"].params))
    steps = math.ceil(len(data.y_train) / config["batch_size"])
    for way, epoch in best.items():
        print(f"- {way}: {epoch:.3f} s per epoch of {packs} replicas ({epoch / steps * 1e6:.0f} us "
              f"per step), {packs / epoch:.1f} model-epochs/s")
    print(f"- by hand is {best['autograd'] / best['by hand']:.2f}x faster; the weights after the same "
          f"epochs are {'bitwise equal' if same else 'DIFFERENT'}")

    print("\n## grouped vs split convolutions (ResNet-14, CIFAR-shaped, CPU)\n")
    config = config_for(["device=cpu", "source=init", "model=resnet14", "dataset=cifar10", "batch_size=128"])
    data = cifar_shaped(args.cpu_images // 2, 256, device)
    for mode in ("split", "grouped"):
        result = measure(config, data, args.cpu_pack, 1, args.repeats, mode)
        print(f"- {mode}, P={args.cpu_pack}: pack=1 {result['solo']:.3g}, pack=P {result['pack']:.3g} model-epochs/s "
              f"({result['pack'] / result['solo']:.2f}x) on {len(data.y_train)} images")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="mlp,resnet14")
    parser.add_argument("--device", default=None, help="cpu, cuda, or both when unset and CUDA is visible")
    parser.add_argument("--pack", default="16", help="P, or a list: 2,4,8,16")
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", type=int, default=PAPER_IMAGES, help="ResNet-14 training images on a GPU")
    parser.add_argument("--cpu-images", type=int, default=2048, help="ResNet-14 training images on the CPU")
    parser.add_argument("--cpu-pack", type=int, default=4, help="P for ResNet-14 on the CPU")
    parser.add_argument("--precisions", default="fp32,tf32,bf16", help="GPU precisions")
    parser.add_argument("--lowlevel", default="deterministic,nondeterministic", help="GPU low-level settings")
    parser.add_argument("--conv-mode", default=None,
                        help="grouped, split or both (grouped,split); default: split on CPU, grouped on CUDA")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--alternatives", action="store_true", help="the measurements behind the design")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    cuda = torch.cuda.is_available()
    devices = [args.device] if args.device else (["cpu", "cuda"] if cuda else ["cpu"])
    print(f"# nondet throughput, {datetime.date.today()}: torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"{torch.get_num_threads()} threads" + (f", {torch.cuda.get_device_name()}" if cuda else "")
          + f", load average {os.getloadavg()[0]:.1f}\n")
    if args.alternatives:
        alternatives(args)
        return
    print(row(HEADER))
    print(row(["---"] * len(HEADER)))
    packs = [int(p) for p in args.pack.split(",")]
    for device in devices:
        for case in args.cases.split(","):
            sizes = [args.cpu_pack] if device == "cpu" and case == "resnet14" else packs
            settings = [("fp32", "deterministic")] if device == "cpu" else [
                (p, l) for p in args.precisions.split(",") for l in args.lowlevel.split(",")]
            modes = [None] if case == "mlp" else (args.conv_mode or packing.default_conv_mode(device)).split(",")
            for size in sizes:
                for precision, lowlevel in settings:
                    for mode in modes:
                        run_case(args, case, device, precision, lowlevel, size, mode)

if __name__ == "__main__":
    main()
