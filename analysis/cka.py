"""Linear CKA between the representations of pairs of runs (the paper's Figure 1).

    python -m analysis SWEEP_DIR --cka [--cka-probe 1000 --cka-runs 25 --cka-estimator standard]

Linear centered kernel alignment (Kornblith et al., 2019) of representations X (n, p) and
Y (n, q) of the same n examples:

    CKA(X, Y) = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)),   K = X X^T,  L = Y Y^T.

Two HSIC estimators:

- ``standard``: the biased estimator tr(K H L H) / (n - 1)^2, H the centering matrix, which is
  Kornblith et al.'s CKA.
- ``debiased``: the unbiased estimator of Song et al. (2012),
  [tr(K~ L~) + 1'K~1 1'L~1 / ((n-1)(n-2)) - 2/(n-2) 1'K~L~1] / (n(n-3)) with K~ = K with a zero
  diagonal, written (as in Kornblith et al.'s code) as the inner product of "unbiasedly
  centered" Gram matrices. It needs n >= 4 per batch.

``batch_size`` splits the probe into consecutive minibatches and sums HSIC over them before
normalising (Nguyen et al., 2021, minibatch CKA; use it with ``debiased``, whose per-batch
estimates are unbiased); a last batch too small for the estimator joins the one before it. It bounds memory by R * n * batch_size per layer instead of R * n^2.

Every representation is centered and scaled by its largest absolute centered value before its
Gram matrix is formed: CKA is invariant to both, and this keeps tiny (1e-200) or huge inputs
from under- or overflowing. A representation that is constant over the probe has no defined
CKA; ``ConstantRepresentationError`` says so instead of returning NaN.

For a sweep, each run's model is rebuilt with ``nondet.models.build_model``, its ``weights.pt``
loaded, and the outputs of ``nondet.models.representation_layers(model)`` (your own model:
``model.representations``, default its top-level children) captured with forward
hooks on a fixed probe subset of the test set (``probe_size`` examples drawn without
replacement with ``np.random.default_rng(probe_seed)``, then sorted). The centered Gram
matrices of all runs of a group are stacked, so every pair's HSIC is one matrix product.
"""

from __future__ import annotations

import json
import math
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from analysis.load import Group, Sweep, key_frame
from nondet import records

ESTIMATORS = ("standard", "debiased")


class ConstantRepresentationError(ValueError):
    """A representation does not vary over the probe examples: its CKA is undefined."""


def _prepared(x, device: torch.device | str = "cpu") -> torch.Tensor:
    """(n, ...) -> (n, features) float64, centered, scaled to max |x| = 1; raises if constant."""
    x = torch.as_tensor(x).to(device=device, dtype=torch.float64)
    x = x.reshape(len(x), -1)
    if not torch.isfinite(x).all():
        raise ValueError("representation holds NaN or infinite values")
    centered = x - x.mean(dim=0, keepdim=True)
    scale = centered.abs().max() if centered.numel() else torch.tensor(0.0)
    # Centering leaves rounding residue of order eps * |x| in a constant column; below 1e-10 of
    # the largest value, what remains is rounding, not signal.
    if scale == 0 or scale <= 1e-10 * x.abs().max():
        raise ConstantRepresentationError(
            f"representation of shape {tuple(x.shape)} is constant over the probe examples; "
            "CKA is undefined for it"
        )
    return centered / scale


def centered_gram(gram: torch.Tensor, debiased: bool) -> torch.Tensor:
    """Center a Gram matrix so that <center(K), center(L)> is proportional to HSIC(K, L).

    ``debiased=False``: H K H. ``debiased=True``: the zero-diagonal centering whose inner
    product is n(n-3) times Song et al.'s unbiased HSIC.
    """
    n = gram.shape[-1]
    if debiased:
        if n < 4:
            raise ValueError(f"the debiased HSIC estimator needs at least 4 examples per batch, got {n}")
        gram = gram.clone()
        gram.diagonal().zero_()
        means = gram.sum(dim=0) / (n - 2)
        means -= means.sum() / (2 * (n - 1))
        gram -= means[:, None]
        gram -= means[None, :]
        gram.diagonal().zero_()
        return gram
    if n < 2:
        raise ValueError("CKA needs at least 2 examples")
    means = gram.mean(dim=0)
    means -= means.mean() / 2
    return gram - means[:, None] - means[None, :]


def batch_bounds(n: int, batch_size: int | None, debiased: bool) -> list[tuple[int, int]]:
    """(start, stop) of the probe's minibatches; a last batch too small for the estimator (under
    4 examples debiased, 2 standard) joins the one before it."""
    size = n if batch_size is None else int(batch_size)
    if size < 1:
        raise ValueError(f"CKA batch size must be positive, got {size}")
    bounds = [(s, min(s + size, n)) for s in range(0, n, size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < (4 if debiased else 2):
        bounds[-2:] = [(bounds[-2][0], n)]
    return bounds


def gram_features(x, debiased: bool = False, batch_size: int | None = None, device="cpu") -> torch.Tensor:
    """One representation -> its centered Gram matrices, flattened and concatenated over batches.

    The inner product of two such vectors (same probe, same batches) is the summed HSIC: each
    batch's centered Gram is divided by the square root of its estimator's normaliser
    (n_b (n_b - 3) debiased, (n_b - 1)^2 standard), so a short last batch counts as one HSIC
    estimate like the others, not in proportion to its size squared.
    """
    x = _prepared(x, device)
    grams = []
    for start, stop in batch_bounds(len(x), batch_size, debiased):
        b = stop - start
        norm = math.sqrt(b * (b - 3)) if debiased else b - 1
        grams.append(centered_gram(x[start:stop] @ x[start:stop].T, debiased).reshape(-1) / norm)
    return torch.cat(grams)


def cka_from_grams(grams: torch.Tensor) -> np.ndarray:
    """(R, M) stacked ``gram_features`` -> (R, R) CKA matrix, one matrix product for all pairs."""
    hsic = grams @ grams.T
    diag = torch.diagonal(hsic)
    if (diag <= 0).any():
        # The debiased self-HSIC is a sum of squares and so >= 0; 0 means a batch-constant input.
        bad = torch.nonzero(diag <= 0).flatten().tolist()
        raise ConstantRepresentationError(f"representations {bad} have zero HSIC with themselves")
    cka = hsic / torch.sqrt(diag[:, None] * diag[None, :])
    return cka.cpu().numpy()


def cka_matrix(
    representations: Sequence, estimator: str = "standard", batch_size: int | None = None, device="cpu"
) -> np.ndarray:
    """(R, R) linear CKA between every pair of representations (each (n, ...), same n)."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    sizes = {len(r) for r in representations}
    if len(sizes) != 1:
        raise ValueError(f"representations must share their examples, got sizes {sorted(sizes)}")
    debiased = estimator == "debiased"
    grams = torch.stack([gram_features(r, debiased, batch_size, device) for r in representations])
    return cka_from_grams(grams)


def linear_cka(x, y, estimator: str = "standard", batch_size: int | None = None) -> float:
    """Linear CKA of two representations (n, p) and (n, q) of the same n examples."""
    return float(cka_matrix([x, y], estimator, batch_size)[0, 1])


# --- from run directories -------------------------------------------------------------------


def probe_indices(n_test: int, size: int, seed: int = 0) -> np.ndarray:
    """A fixed, sorted subset of ``size`` test examples (all of them if size >= n_test)."""
    if size >= n_test:
        return np.arange(n_test)
    return np.sort(np.random.default_rng(seed).choice(n_test, size=size, replace=False))


def capture(model: torch.nn.Module, layers: dict, x: torch.Tensor, batch: int = 256) -> dict[str, torch.Tensor]:
    """The outputs of ``layers`` (name -> module) for inputs ``x``, flattened to (n, features)."""
    outputs: dict[str, list[torch.Tensor]] = {name: [] for name in layers}

    def hook(name: str) -> Callable:
        def record(module, inputs, output):
            if isinstance(output, (tuple, list)):
                output = output[0]
            outputs[name].append(output.detach().reshape(len(output), -1).float())

        return record

    handles = [module.register_forward_hook(hook(name)) for name, module in layers.items()]
    try:
        model.eval()
        with torch.no_grad():
            for s in range(0, len(x), batch):
                model(x[s : s + batch])
    finally:
        for h in handles:
            h.remove()
    return {name: torch.cat(chunks) for name, chunks in outputs.items()}


def _load_state(path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # missing or truncated file: name it
        raise records.CorruptRunError(f"cannot read {path}: {e}") from e
    # torch.compile and DataParallel prefix parameter names; the rebuilt model has neither.
    for prefix in ("_orig_mod.", "module."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def group_cka(
    group: Group,
    data,
    probe: np.ndarray,
    estimator: str = "standard",
    max_runs: int = 25,
    batch_size: int | None = None,
    device: str = "cpu",
) -> dict[str, np.ndarray]:
    """{layer: (R, R) CKA matrix} over the first ``max_runs`` runs of ``group`` (by replicate).

    ``data`` is what ``nondet.data.load_dataset(cfg.dataset)`` returns for the group's dataset.
    """
    from omegaconf import OmegaConf

    from nondet.models import build_model, representation_layers

    runs = group.runs[:max_runs]
    x = data.normalize(data.x_test[torch.as_tensor(probe)]).to(device)
    model_cfg = OmegaConf.create(group.config["model"])
    debiased = estimator == "debiased"
    grams: dict[str, list[torch.Tensor]] = {}
    for run in runs:
        model = build_model(
            model_cfg, data.input_shape, data.num_classes, init_generator=torch.Generator().manual_seed(0)
        )
        try:
            model.load_state_dict(_load_state(run.path / records.WEIGHTS_FILE))
        except RuntimeError as e:  # weights of another model than the config names
            if not group.config.get("script"):
                raise
            raise ValueError(
                f"its runs were trained by the script {group.config['script']} (nondet.api) on a model of its "
                f"own, which nondet cannot rebuild from model={group.config['model'].get('name')}: CKA needs a "
                "model nondet builds (run.build_model() in the script, or launch.py)") from e
        model.to(device)
        outputs = capture(model, representation_layers(model, group.config["model"].get("representations")), x)
        for name, features in outputs.items():
            try:
                grams.setdefault(name, []).append(gram_features(features, debiased, batch_size, device))
            except ConstantRepresentationError as e:
                raise ConstantRepresentationError(f"{run.path}, layer {name}: {e}") from e
    return {name: cka_from_grams(torch.stack(g)) for name, g in grams.items()}


def sweep_cka(
    sweep: Sweep,
    probe_size: int = 1000,
    max_runs: int = 25,
    estimator: str = "standard",
    batch_size: int | None = None,
    device: str = "auto",
    probe_seed: int = 0,
) -> pd.DataFrame:
    """Mean and SD over pairs of CKA, per group and layer; groups that fail are noted in
    ``sweep.notes`` and left out. Columns: the shown keys, layer, cka_mean, cka_sd, n_runs,
    n_pairs, estimator, probe_size."""
    from omegaconf import OmegaConf

    from nondet.data import load_dataset

    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    keys = sweep.display_keys
    datasets: dict[str, object] = {}
    rows = []
    for group in sweep.groups:
        label = group.label(keys)
        if len(group.runs) < 2:
            sweep.notes.append(f"CKA skipped for {label}: it needs at least 2 runs")
            continue
        dataset_cfg = group.config["dataset"]
        cache_key = json.dumps(dataset_cfg, sort_keys=True, default=str)
        try:
            if cache_key not in datasets:
                datasets[cache_key] = load_dataset(OmegaConf.create(dataset_cfg))
            data = datasets[cache_key]
            probe = probe_indices(len(data.y_test), probe_size, probe_seed)
            matrices = group_cka(group, data, probe, estimator, max_runs, batch_size, device)
        except Exception as e:  # a missing dataset or weights file: say so, keep the other groups
            why = (str(e).strip().splitlines() or [""])[0]  # one line (load_state_dict's run to dozens)
            sweep.notes.append(f"CKA skipped for {label}: {type(e).__name__}: {why}")
            continue
        for layer, matrix in matrices.items():
            pairs = matrix[np.triu_indices(len(matrix), k=1)]
            rows.append(
                {
                    **group.cells(keys),
                    "layer": layer,
                    "cka_mean": float(pairs.mean()),
                    "cka_sd": float(pairs.std(ddof=1)) if len(pairs) > 1 else math.nan,
                    "n_runs": len(matrix),
                    "n_pairs": len(pairs),
                    "estimator": estimator,
                    "probe_size": len(probe),
                }
            )
    columns = keys + ["layer", "cka_mean", "cka_sd", "n_runs", "n_pairs", "estimator", "probe_size"]
    return key_frame(rows, columns, keys)
