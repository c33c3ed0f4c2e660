"""The same work three ways, each as a whole process, side by side: 16 seeds of the default MLP
recipe on synthetic data (conf/config.yaml with dataset=synthetic epochs=12: an MLP of width 128 on
8192 synthetic examples, batch 32, 12 epochs of SGD with momentum 0.9, weight decay 5e-4, lr 0.2
with one warm-up epoch and cosine decay, on the CPU).

    python benchmarks/peers.py                 # 16 seeds, best of 3 interleaved rounds
    python benchmarks/peers.py --seeds 8 --rounds 1

- ``plain``: what a user writes first: a ``DataLoader`` over the training set and the model, one
  seed after another, test accuracy at the end.
- ``torch.func``: model ensembling as the PyTorch tutorial does it: ``stack_module_state``, then
  ``vmap`` of ``grad`` of ``functional_call`` over the 16 stacked models (each its own shuffle),
  SGD with momentum and weight decay by hand on the stacked tensors, test accuracy at the end.
- ``nondet``: ``python launch.py -m source=init replicates=16 dataset=synthetic epochs=12`` with
  every other key at its default, which writes the whole run directory of every run (metrics of every epoch, logits,
  weights, seeds, environment, checkpoints) and prints the spread table.

Each is timed from process start to exit (Python, imports, data, training, records), so what
nondet adds (Hydra, records, the summary) is in its figure. The data are nondet's synthetic set,
built the same way in each process. Results: docs/benchmarks.md ("Against a plain loop and
torch.func").
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

EPOCHS, BATCH, LR, MOMENTUM, WEIGHT_DECAY, WARMUP_EPOCHS = 12, 32, 0.2, 0.9, 5e-4, 1

COMMON = f'''
import math, sys, time
sys.path.insert(0, {str(REPO)!r})
import torch, torch.nn.functional as F
from omegaconf import OmegaConf
from nondet.config import DatasetConfig
from nondet.data import load_dataset
data = load_dataset(OmegaConf.structured(DatasetConfig(name="synthetic")), "cpu")
x_train, y_train = data.normalize(data.x_train), data.y_train
x_test, y_test = data.normalize(data.x_test), data.y_test
SEEDS, EPOCHS, BATCH, LR, MOMENTUM, WD, WARMUP = int(sys.argv[1]), {EPOCHS}, {BATCH}, {LR}, {MOMENTUM}, {WEIGHT_DECAY}, {WARMUP_EPOCHS}
steps = math.ceil(len(y_train) / BATCH)
def lr_at(step):
    warmup = WARMUP * steps
    if step < warmup:
        return LR * (step + 1) / warmup
    return LR * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, EPOCHS * steps - warmup)))
def mlp():
    return torch.nn.Sequential(torch.nn.Linear(x_train.shape[1], 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
'''

PLAIN = COMMON + '''
from torch.utils.data import DataLoader, TensorDataset
accuracies = []
for seed in range(SEEDS):
    torch.manual_seed(seed)
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WD)
    loader = DataLoader(TensorDataset(x_train, y_train), batch_size=BATCH, shuffle=True)
    step = 0
    for epoch in range(EPOCHS):
        for x, y in loader:
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
    with torch.no_grad():
        accuracies.append((model(x_test).argmax(1) == y_test).float().mean().item() * 100)
print("accuracy %.2f +- %.2f" % (torch.tensor(accuracies).mean(), torch.tensor(accuracies).std()))
'''

FUNC = COMMON + '''
from torch.func import functional_call, grad, stack_module_state, vmap
models = []
for seed in range(SEEDS):
    torch.manual_seed(seed)
    models.append(mlp())
params, buffers = stack_module_state(models)
base = mlp().to("meta")
def loss_of(p, b, x, y):
    return F.cross_entropy(functional_call(base, (p, b), (x,)), y)
gradient = vmap(grad(loss_of))
momentum = {k: torch.zeros_like(v) for k, v in params.items()}
generator = torch.Generator().manual_seed(0)
n, step = len(y_train), 0
with torch.no_grad():
    for epoch in range(EPOCHS):
        order = torch.stack([torch.randperm(n, generator=generator) for _ in range(SEEDS)])
        for start in range(0, n, BATCH):
            index = order[:, start:start + BATCH]
            with torch.enable_grad():
                grads = gradient(params, buffers, x_train[index], y_train[index])
            lr = lr_at(step)
            for k in params:
                g = grads[k].add(params[k], alpha=WD)
                momentum[k].mul_(MOMENTUM).add_(g)
                params[k].sub_(momentum[k], alpha=lr)
            step += 1
    logits = vmap(lambda p, b: functional_call(base, (p, b), (x_test,)))(params, buffers)
    accuracies = (logits.argmax(2) == y_test).float().mean(1) * 100
print("accuracy %.2f +- %.2f" % (accuracies.mean(), accuracies.std()))
'''


def timed(command: list[str], cwd: Path, env: dict) -> tuple[float, float, str]:
    """Wall seconds and CPU seconds (user + system) of the command, and its last output line."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - began
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command[:3])} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return seconds, cpu, done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the best is reported")
    parser.add_argument("--ways", default="plain,func,nondet", help="which of plain, func, nondet to time")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads of every way (OMP_NUM_THREADS; default: torch's, one per core)")
    args = parser.parse_args()
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.threads)
    python = sys.executable
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        (scratch / "plain.py").write_text(PLAIN)
        (scratch / "func.py").write_text(FUNC)
        ways = {
            "plain PyTorch loop": lambda r: [python, str(scratch / "plain.py"), str(args.seeds)],
            "torch.func ensemble": lambda r: [python, str(scratch / "func.py"), str(args.seeds)],
            "nondet sweep (defaults)": lambda r: [
                python, str(REPO / "launch.py"), "-m", "source=init", f"replicates={args.seeds}",
                "dataset=synthetic", f"epochs={EPOCHS}", "device=cpu", f"output_root={scratch / f'nondet-{r}'}"],
        }
        chosen = args.ways.split(",")
        ways = {name: way for name, way in ways.items() if name.split()[0].split(".")[-1] in chosen}
        times: dict[str, list[float]] = {name: [] for name in ways}
        cpus: dict[str, list[float]] = {name: [] for name in ways}
        for r in range(args.rounds):
            for name, command in ways.items():
                seconds, cpu, line = timed(command(r), REPO, env)
                times[name].append(seconds)
                cpus[name].append(cpu)
                print(f"round {r + 1}  {name:26s} {seconds:6.1f} s  CPU {cpu:6.1f} s   {line}", flush=True)
    nondet = min(times.get("nondet sweep (defaults)", [float("nan")]))
    nondet_cpu = min(cpus.get("nondet sweep (defaults)", [float("nan")]))
    threads = args.threads or "default"
    print(f"\n{args.seeds} seeds x {EPOCHS} epochs, whole processes, {os.cpu_count()} CPUs, torch "
          f"threads {threads}; best of {args.rounds} (median); CPU = user + system seconds\n")
    print("| way | wall seconds | nondet is faster by | CPU seconds | nondet uses less CPU by |")
    print("|---|---|---|---|---|")
    for name in times:
        best, cpu = min(times[name]), min(cpus[name])
        print(f"| {name} | {best:.1f} ({statistics.median(times[name]):.1f}) | {best / nondet:.2f}x "
              f"| {cpu:.1f} ({statistics.median(cpus[name]):.1f}) | {cpu / nondet_cpu:.2f}x |")

if __name__ == "__main__":
    main()
