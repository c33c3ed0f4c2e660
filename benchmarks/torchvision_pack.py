"""Which of torchvision's classification models ``torch.func`` can pack (nondet/funcpack.py).

    python benchmarks/torchvision_pack.py [--size 64] [--skip-over 150]   # CPU, a few minutes

For each model (10 classes, training mode, batch of 2 images): can ``stack_module_state`` +
``functional_call`` + ``vmap`` run one training step of two replicas (``vmap``), and is it bitwise
the two replicas' own steps on this device (``exact``)? Models above ``--skip-over`` million
parameters are left out (their family's smaller members share the code). Prints a markdown table
and the fractions.
"""

from __future__ import annotations

import argparse
import time

import torch
import torchvision

from nondet.funcpack import ROUNDING, pack_reason

NEEDS_224 = ("vit_", "swin_", "maxvit_")
OPTIONS = {"inception_v3": {"aux_logits": False, "init_weights": True}, "googlenet": {"aux_logits": False, "init_weights": True}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--skip-over", type=float, default=150.0)
    parser.add_argument("--start", default="", help="begin at this model name (resume a survey)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    names = torchvision.models.list_models(module=torchvision.models)
    rows, counts = [], {"vmap": 0, "exact": 0, "tried": 0}
    for name in [n for n in names if n >= args.start]:
        began = time.perf_counter()
        kwargs = {"num_classes": 10, **OPTIONS.get(name, {})}
        size = 224 if name.startswith(NEEDS_224) else (299 if name == "inception_v3" else args.size)
        if name.startswith("vit_"):  # a multiple of the patch size (vit_h_14: 14)
            patch = int(name.rsplit("_", 1)[1])
            kwargs["image_size"] = size = args.size - args.size % patch
        torch.manual_seed(0)
        model = torchvision.models.get_model(name, **kwargs)
        millions = sum(p.numel() for p in model.parameters()) / 1e6
        if millions > args.skip_over:
            rows.append((name, f"{millions:.0f}M", "skipped (size)", ""))
            continue
        torch.manual_seed(1)
        other = torchvision.models.get_model(name, **kwargs)
        x, y = torch.randn(2, 3, size, size), torch.tensor([0, 1])
        reason = pack_reason([model, other], x, y)
        counts["tried"] += 1
        vmap = reason is None or reason.startswith(ROUNDING)
        counts["vmap"] += vmap
        counts["exact"] += reason is None
        rows.append((name, f"{millions:.1f}M", "yes" if vmap else "no", reason or "exact"))
        print(f"{name}: {reason or 'exact'} ({time.perf_counter() - began:.1f}s)", flush=True)
    print("\n| model | params | vmap | exact / reason |\n|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(f"\nvmap packs {counts['vmap']}/{counts['tried']}; bitwise exact on this device {counts['exact']}/{counts['tried']}")


if __name__ == "__main__":
    main()
