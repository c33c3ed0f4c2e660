"""analysis.cka: linear CKA against textbook formulas, its invariances, and the sweep pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from analysis import __main__ as cli
from analysis import cka
from analysis.load import load_sweep
from fake_runs import fake_config, write_run
from nondet import records


def song_hsic(k: np.ndarray, l: np.ndarray) -> float:
    """Song et al. (2012) unbiased HSIC, term by term."""
    n = len(k)
    k, l = k.copy(), l.copy()
    np.fill_diagonal(k, 0.0)
    np.fill_diagonal(l, 0.0)
    return (np.trace(k @ l) + k.sum() * l.sum() / ((n - 1) * (n - 2)) - 2 / (n - 2) * (k @ l).sum()) / (n * (n - 3))


def reference_cka(x: np.ndarray, y: np.ndarray, estimator: str) -> float:
    if estimator == "standard":  # Kornblith et al. (2019), feature-space form
        x, y = x - x.mean(0), y - y.mean(0)
        return np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))
    k, l = x @ x.T, y @ y.T
    return song_hsic(k, l) / np.sqrt(song_hsic(k, k) * song_hsic(l, l))


@pytest.fixture
def reps():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 8)) + 3.0
    y = np.tanh(x @ rng.standard_normal((8, 5))) + 0.5 * rng.standard_normal((50, 5))
    return x, y


@pytest.mark.parametrize("estimator", cka.ESTIMATORS)
def test_matches_reference_formulas(reps, estimator):
    x, y = reps
    assert cka.linear_cka(x, y, estimator) == pytest.approx(reference_cka(x, y, estimator), rel=1e-6, abs=1e-9)


def biased_hsic(k: np.ndarray, l: np.ndarray) -> float:
    """tr(K H L H) / (n - 1)^2."""
    n = len(k)
    h = np.eye(n) - 1.0 / n
    return np.trace(k @ h @ l @ h) / (n - 1) ** 2


@pytest.mark.parametrize(
    "estimator, batch_size, batches",
    [
        ("debiased", 10, [(0, 10), (10, 20), (20, 30), (30, 40), (40, 50)]),
        ("debiased", 15, [(0, 15), (15, 30), (30, 45), (45, 50)]),  # a short last batch: one estimate
        ("debiased", 16, [(0, 16), (16, 32), (32, 50)]),  # 2 left over: too few, joins the last
        ("standard", 20, [(0, 20), (20, 40), (40, 50)]),
        ("standard", 24, [(0, 24), (24, 48), (48, 50)]),  # 2 left over: enough for the standard one
        ("standard", 49, [(0, 50)]),  # 1 left over joins
    ],
)
def test_minibatch_cka_sums_hsic_over_batches(reps, estimator, batch_size, batches):
    """Nguyen et al.'s minibatch CKA: one HSIC estimate per batch, summed unweighted."""
    x, y = reps
    hsic_of = song_hsic if estimator == "debiased" else biased_hsic
    hsic = {
        (a, b): sum(hsic_of(u[s:e] @ u[s:e].T, v[s:e] @ v[s:e].T) for s, e in batches)
        for a, u in (("x", x), ("y", y))
        for b, v in (("x", x), ("y", y))
    }
    want = hsic["x", "y"] / np.sqrt(hsic["x", "x"] * hsic["y", "y"])
    assert cka.batch_bounds(50, batch_size, estimator == "debiased") == batches
    assert cka.linear_cka(x, y, estimator, batch_size=batch_size) == pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize("estimator", cka.ESTIMATORS)
def test_identity_orthogonal_and_scale_invariance(reps, estimator):
    x, y = reps
    q, _ = np.linalg.qr(np.random.default_rng(1).standard_normal((8, 8)))
    base = cka.linear_cka(x, y, estimator)
    assert cka.linear_cka(x, x, estimator) == pytest.approx(1.0, abs=1e-12)
    assert cka.linear_cka(x @ q, y, estimator) == pytest.approx(base, abs=1e-10)
    for scale in (3.7, 1e-150, 1e150):
        assert cka.linear_cka(scale * x, y, estimator) == pytest.approx(base, abs=1e-10)


@pytest.mark.parametrize("estimator", cka.ESTIMATORS)
def test_tiny_and_constant_inputs_never_give_nan(reps, estimator):
    x, y = reps
    tiny = 1e-300 * x  # its Gram matrix would underflow to 0 without rescaling
    assert cka.linear_cka(tiny, y, estimator) == pytest.approx(cka.linear_cka(x, y, estimator), abs=1e-10)
    with pytest.raises(cka.ConstantRepresentationError):
        cka.linear_cka(np.full((50, 8), 2.5), y, estimator)
    with pytest.raises(cka.ConstantRepresentationError):
        cka.linear_cka(np.zeros((50, 3)), y, estimator)
    with pytest.raises(ValueError):
        cka.linear_cka(x[:3], y[:3], "debiased")  # the unbiased estimator needs n >= 4


def test_matrix_agrees_with_pairs(reps):
    x, y = reps
    z = x[:, :3] ** 2
    matrix = cka.cka_matrix([x, y, z])
    assert np.allclose(matrix, matrix.T) and np.allclose(np.diag(matrix), 1.0)
    assert matrix[0, 2] == pytest.approx(cka.linear_cka(x, z), rel=1e-12)
    assert matrix[1, 2] == pytest.approx(cka.linear_cka(y, z), rel=1e-12)


def test_probe_is_fixed_and_sorted():
    a, b = cka.probe_indices(100, 10, seed=0), cka.probe_indices(100, 10, seed=0)
    assert np.array_equal(a, b) and np.all(np.diff(a) > 0)
    assert np.array_equal(cka.probe_indices(5, 10), np.arange(5))


# --- end to end, through weights.pt and nondet.models ---------------------------------------


@pytest.fixture
def model_sweep(tmp_path):
    """Three runs of an mlp on tiny synthetic data; runs 0 and 2 hold the same weights."""
    from nondet.data import load_dataset
    from nondet.models import build_model

    config = fake_config(
        **{"source.name": "init", "source.vary": ["init"], "model.name": "mlp", "model.width": 16},
        **{"dataset.train_size": 32, "dataset.test_size": 96},
        output_root=str(tmp_path),
        sweep_name="s",
        replicates=3,
    )
    data = load_dataset(OmegaConf.create(config["dataset"]))
    x = data.normalize(data.x_test)
    for r, seed in enumerate((1, 2, 1)):
        model = build_model(
            OmegaConf.create(config["model"]), data.input_shape, data.num_classes, torch.Generator().manual_seed(seed)
        )
        with torch.no_grad():
            logits = model.eval()(x).numpy()
        run_config = dict(config, replicate=r)
        write_run(
            records.run_dir(run_config), run_config, logits, data.y_test.numpy(), weights=model.state_dict()
        )
    return tmp_path / "s", data, config


@pytest.mark.parametrize("estimator", cka.ESTIMATORS)
def test_sweep_cka_end_to_end(model_sweep, estimator):
    from nondet.models import build_model, representation_layers

    sweep_dir, data, config = model_sweep
    sweep = load_sweep(sweep_dir)
    frame = cka.sweep_cka(sweep, probe_size=64, estimator=estimator, device="cpu")
    assert list(frame["layer"]) == ["hidden1", "logits"]
    assert set(frame["n_runs"]) == {3} and set(frame["n_pairs"]) == {3}

    # The same numbers by hand: rebuild, load weights.pt, hook, CKA of each pair.
    probe = torch.as_tensor(cka.probe_indices(len(data.y_test), 64))
    x = data.normalize(data.x_test[probe])
    features = {"hidden1": [], "logits": []}
    for run in sweep.groups[0].runs:
        model = build_model(OmegaConf.create(config["model"]), data.input_shape, data.num_classes, torch.Generator().manual_seed(0))
        model.load_state_dict(torch.load(run.path / records.WEIGHTS_FILE, weights_only=True))
        captured = cka.capture(model, representation_layers(model), x)
        for name in features:
            features[name].append(captured[name].numpy())
    for name, reps in features.items():
        matrix = cka.cka_matrix(reps, estimator)
        assert matrix[0, 2] == pytest.approx(1.0, abs=1e-12)  # same weights, same representation
        assert matrix[0, 1] < 0.999
        row = frame[frame["layer"] == name].iloc[0]
        assert row["cka_mean"] == pytest.approx(matrix[np.triu_indices(3, 1)].mean(), rel=1e-12)


def test_cli_cka_writes_table_csv_and_figure(model_sweep, tmp_path, capsys):
    sweep_dir, _, _ = model_sweep
    out = tmp_path / "out"
    code = cli.main([str(sweep_dir), "--cka", "--cka-probe", "48", "--csv", str(out / "t.csv"), "--figures", str(out), "--device", "cpu"])
    assert code == 0
    text = capsys.readouterr().out
    assert "Linear CKA (standard HSIC)" in text and "hidden1" in text
    assert (out / "t_cka.csv").exists() and (out / "cka.png").exists() and (out / "cka.pdf").exists()


def test_missing_weights_are_noted_not_fatal(model_sweep):
    sweep_dir, _, _ = model_sweep
    (sorted(sweep_dir.rglob(records.WEIGHTS_FILE))[1]).unlink()
    sweep = load_sweep(sweep_dir)
    frame = cka.sweep_cka(sweep, probe_size=32, device="cpu")
    assert frame.empty
    assert any("CKA skipped" in n and "weights.pt" in n for n in sweep.notes)
