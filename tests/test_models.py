"""Tests for nondet.models: shapes, seeded init, seeded dropout, SmeLU, layer bookkeeping."""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from nondet.config import ModelConfig
from nondet.models import (
    ACTIVATIONS,
    IMAGE_MODELS,
    MODEL_NAMES,
    SeededDropout,
    SmeLU,
    build_model,
    first_layer_weight,
    init_parameters,
    make_activation,
    representation_layers,
    set_dropout_generator,
)

# Cheapest input each model accepts: resnets, vgg11 and shufflenet on 32x32 (the CIFAR size they
# are adapted to; vgg11 needs it), the shallow models on 8x8 or features.
IMAGE_32 = (3, 32, 32)
SMALL_IMAGE = (3, 8, 8)
FEATURES = (12,)
SIGNAL = (1, 40)
CASES = {
    "linear": FEATURES,
    "mlp": FEATURES,
    "conv1": SMALL_IMAGE,
    "cnn1d": SIGNAL,
    "resnet6": IMAGE_32,
    "resnet10": IMAGE_32,
    "resnet14": IMAGE_32,
    "resnet18": IMAGE_32,
    "vgg11": IMAGE_32,
    "shufflenetv2_050": IMAGE_32,
}
CLASSES = 5
BATCH = 3

_CACHE: dict = {}


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def make(name, shape=None, seed=0, **kw) -> nn.Module:
    cfg = ModelConfig(name=name, width=kw.pop("width", 4), **kw)
    return build_model(cfg, shape or CASES[name], CLASSES, gen(seed))


def cached(name) -> nn.Module:
    """One default-sized model per name, for the read-only tests (vgg11 is the slow one)."""
    if name not in _CACHE:
        _CACHE[name] = make(name)
    return _CACHE[name]


def batch(shape, n=BATCH, seed=123) -> torch.Tensor:
    return torch.randn((n, *shape), generator=gen(seed))


# ---------------------------------------------------------------- building and shapes


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_model_gives_logits(name):
    model = cached(name)
    out = model(batch(CASES[name]))
    assert out.shape == (BATCH, CLASSES)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(
    "name, shape",
    [
        ("linear", SMALL_IMAGE),  # images are flattened
        ("mlp", (1, 6, 6)),
        ("conv1", (1, 28, 28)),  # MNIST-shaped
        ("resnet14", (1, 8, 8)),
        ("shufflenetv2_050", (1, 28, 28)),
    ],
)
def test_other_input_shapes(name, shape):
    out = make(name, shape)(batch(shape, n=2))
    assert out.shape == (2, CLASSES)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("name", ["mlp", "conv1", "resnet14"])
def test_every_activation_trains(name, activation):
    model = make(name, activation=activation, depth=2)
    out = model(batch(CASES[name]))
    assert out.shape == (BATCH, CLASSES)
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_activation_replaces_torchvision_relus():
    for name in ("vgg11", "shufflenetv2_050"):
        model = make(name, activation="smelu")
        assert not any(isinstance(m, nn.ReLU) for m in model.modules())
        assert any(isinstance(m, SmeLU) for m in model.modules())


def test_conv1_pools_4x4_windows():
    model = make("conv1", IMAGE_32, width=4)
    assert model.fc.in_features == 4 * 8 * 8


def test_mlp_depth_and_width():
    model = make("mlp", width=7, depth=3)
    assert list(representation_layers(model)) == ["hidden1", "hidden2", "hidden3", "logits"]
    assert model.fc.in_features == 7


def test_build_accepts_dictconfig():
    from omegaconf import OmegaConf

    cfg = OmegaConf.structured(ModelConfig(name="mlp", width=4))
    assert build_model(cfg, FEATURES, CLASSES, gen(0))(batch(FEATURES)).shape == (BATCH, CLASSES)


def test_clear_errors():
    with pytest.raises(ValueError, match="valid: linear, mlp"):
        make("resnet15", IMAGE_32)
    with pytest.raises(ValueError, match="valid: relu, smelu"):
        make("mlp", activation="swish")
    with pytest.raises(ValueError, match="unknown activation"):
        make_activation("swish")
    for name in sorted(IMAGE_MODELS):
        with pytest.raises(ValueError, match=re.escape("dataset.image_shape=[3,32,32]")):
            make(name, FEATURES)
    with pytest.raises(ValueError, match="32x32"):
        make("vgg11", SMALL_IMAGE)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        make("mlp", dropout=1.0)
    with pytest.raises(ValueError, match="depth"):
        make("mlp", depth=0)


# ---------------------------------------------------------------- seeded initialisation


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_build_leaves_global_rng_alone(name):
    torch.manual_seed(7)
    before = torch.get_rng_state()
    make(name)
    assert torch.equal(torch.get_rng_state(), before)


def _same_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_init_depends_only_on_the_generator(name):
    torch.manual_seed(1)
    a = make(name, seed=11)
    torch.manual_seed(2)  # a different global RNG state must not matter
    b = make(name, seed=11)
    assert _same_state(a, b)
    c = make(name, seed=12)
    sa, sc = a.state_dict(), c.state_dict()
    for qualified, module in a.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            key = f"{qualified}.weight"
            assert not torch.equal(sa[key], sc[key]), key


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_init_touches_every_parameter_and_buffer(name):
    model = copy.deepcopy(cached(name))
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
        for b in model.buffers():
            b.fill_(7)
    init_parameters(model, gen(0))
    assert not any(torch.isnan(p).any() for p in model.parameters())
    assert _same_state(model, make(name, seed=0))  # ... and to the same values as build_model
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.equal(m.running_mean, torch.zeros_like(m.running_mean))
            assert torch.equal(m.running_var, torch.ones_like(m.running_var))
            assert m.num_batches_tracked.item() == 0
            assert torch.equal(m.weight, torch.ones_like(m.weight))
            assert torch.equal(m.bias, torch.zeros_like(m.bias))


def test_init_follows_the_stated_rules():
    conv = nn.Conv2d(64, 128, 3, bias=True)
    linear = nn.Linear(200, 300)
    model = nn.Sequential(conv, nn.Flatten(), linear)
    init_parameters(model, gen(3))
    fan_out = 128 * 9
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2.0 / fan_out), rel=0.03)
    assert torch.equal(conv.bias, torch.zeros_like(conv.bias))
    # kaiming_uniform_(a=sqrt(5)) is U(-1/sqrt(fan_in), 1/sqrt(fan_in)); so is the bias.
    bound = 1 / math.sqrt(200)
    assert linear.weight.abs().max().item() <= bound
    assert linear.weight.abs().max().item() > 0.99 * bound
    assert linear.bias.abs().max().item() <= bound
    assert linear.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.03)


def test_init_refuses_unknown_parameterised_modules():
    with pytest.raises(TypeError, match="Embedding"):
        init_parameters(nn.Sequential(nn.Embedding(4, 3)), gen(0))

    class Scale(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(1))

    with pytest.raises(TypeError, match="Scale"):
        init_parameters(nn.Sequential(nn.Linear(2, 2), Scale()), gen(0))


def test_init_is_the_same_for_every_dtype():
    a = make("resnet6")
    b = copy.deepcopy(a).double()
    init_parameters(b, gen(0))
    assert all(torch.equal(pa.double(), pb) for pa, pb in zip(a.parameters(), b.parameters()))


# ---------------------------------------------------------------- SmeLU


@pytest.mark.parametrize("beta", [1.0, 0.5, 2.5])
def test_smelu_values_and_gradients(beta):
    f = SmeLU(beta)
    x = torch.linspace(-3 * beta, 3 * beta, 601, dtype=torch.float64, requires_grad=True)
    y = f(x)
    (grad,) = torch.autograd.grad(y.sum(), x)
    x, y = x.detach(), y.detach()
    outside = x.abs() >= beta
    assert torch.equal(y[outside], torch.relu(x)[outside])
    inside = ~outside
    assert torch.allclose(y[inside], (x[inside] + beta) ** 2 / (4 * beta))
    assert torch.allclose(grad[inside], (x[inside] + beta) / (2 * beta))
    assert torch.equal(grad[x >= beta], torch.ones_like(grad[x >= beta]))
    assert torch.equal(grad[x <= -beta], torch.zeros_like(grad[x <= -beta]))


@pytest.mark.parametrize("beta", [1.0, 0.5])
def test_smelu_continuous_at_the_joints(beta):
    f = SmeLU(beta)
    joints = torch.tensor([-beta, beta], dtype=torch.float64, requires_grad=True)
    y = f(joints)
    (g,) = torch.autograd.grad(y.sum(), joints)
    assert y.tolist() == [0.0, beta]
    assert g.tolist() == [0.0, 1.0]
    eps = 1e-6
    for j, value, slope in ((-beta, 0.0, 0.0), (beta, beta, 1.0)):
        for side in (-1, 1):
            x = torch.tensor(j + side * eps, dtype=torch.float64, requires_grad=True)
            out = f(x)
            (gx,) = torch.autograd.grad(out, x)
            assert out.item() == pytest.approx(value, abs=2 * eps)
            assert gx.item() == pytest.approx(slope, abs=2 * eps / beta)
            # Finite differences agree with autograd on both sides of each joint.
            h = 1e-7
            fd = (f(x.detach() + h) - f(x.detach() - h)).item() / (2 * h)
            assert fd == pytest.approx(gx.item(), abs=1e-6)


# ---------------------------------------------------------------- seeded dropout


def test_seeded_dropout_masks_come_from_the_generator():
    x = torch.ones(64, 50)
    d = SeededDropout(0.3, gen(5))
    a = d(x)
    assert torch.equal(a, SeededDropout(0.3, gen(5))(x))
    assert not torch.equal(a, SeededDropout(0.3, gen(6))(x))
    assert not torch.equal(a, d(x))  # the stream advances
    kept = a != 0
    assert torch.allclose(a[kept], torch.full_like(a[kept], 1 / 0.7))
    assert kept.float().mean().item() == pytest.approx(0.7, abs=0.03)


def test_seeded_dropout_does_not_touch_the_global_rng():
    before = torch.get_rng_state()
    SeededDropout(0.5, gen(0))(torch.ones(10, 10))
    assert torch.equal(torch.get_rng_state(), before)


def test_seeded_dropout_identity_in_eval_or_p0_and_raises_without_generator():
    x = torch.randn(4, 6)
    d = SeededDropout(0.5)
    assert d.eval()(x) is x
    assert SeededDropout(0.0)(x) is x  # training, p == 0: no generator needed
    with pytest.raises(RuntimeError, match="set_dropout_generator"):
        d.train()(x)


@pytest.mark.parametrize("name", ["mlp", "conv1", "resnet6", "vgg11", "shufflenetv2_050"])
def test_model_dropout_follows_its_generator(name):
    model = make(name, dropout=0.5)
    x = batch(CASES[name])
    with pytest.raises(RuntimeError, match="no generator"):
        model(x)
    set_dropout_generator(model, gen(1))
    a = model(x)
    set_dropout_generator(model, gen(1))
    assert torch.equal(a, model(x))
    set_dropout_generator(model, gen(2))
    assert not torch.equal(a, model(x))
    model.eval()
    assert torch.equal(model(x), model(x))


def test_copied_model_keeps_an_independent_copy_of_the_stream():
    # Packed replicas may be deep copies of one model: each copy continues the stream on its own.
    model = make("mlp", dropout=0.5)
    set_dropout_generator(model, gen(4))
    twin = copy.deepcopy(model)
    x = batch(FEATURES)
    assert torch.equal(model(x), twin(x))
    assert "generator" not in " ".join(model.state_dict())


def test_set_dropout_generator_rejects_stock_dropout():
    with pytest.raises(TypeError, match="global RNG"):
        set_dropout_generator(nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.1)), gen(0))


def test_no_stock_dropout_anywhere():
    # In the built models ...
    for name in MODEL_NAMES:
        model = make(name, dropout=0.1)
        assert not any(isinstance(m, nn.modules.dropout._DropoutNd) for m in model.modules())
        assert any(isinstance(m, SeededDropout) for m in model.modules())
    # ... and in the source, so no future model slips one in.
    source = Path(__file__).resolve().parents[1] / "nondet" / "models"
    pattern = re.compile(r"nn\.Dropout\w*\(|F\.dropout|functional\.dropout|\.bernoulli\(")
    for path in source.glob("*.py"):
        assert not pattern.search(path.read_text()), path


# ---------------------------------------------------------------- layer bookkeeping


def _forward_order(model, shape, types):
    """Modules of ``types`` in the order the forward pass calls them."""
    order = []
    handles = [
        m.register_forward_pre_hook(lambda mod, args: order.append(mod))
        for m in model.modules()
        if isinstance(m, types)
    ]
    try:
        model(batch(shape, n=2))
    finally:
        for h in handles:
            h.remove()
    return order


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_first_layer_weight_is_the_layer_the_input_meets(name):
    model = cached(name)
    qualified, weight = first_layer_weight(model)
    assert dict(model.named_parameters())[qualified] is weight
    first = _forward_order(model, CASES[name], (nn.Conv1d, nn.Conv2d, nn.Linear))[0]
    assert first.weight is weight


EXPECTED_LAYERS = {
    "linear": ["logits"],
    "mlp": ["hidden1", "logits"],
    "conv1": ["conv", "logits"],
    "cnn1d": ["conv1", "conv2", "conv3", "logits"],
    "resnet6": ["conv1", "stage1", "stage2", "pool", "logits"],
    "resnet10": ["conv1", "stage1", "stage2", "stage3", "stage4", "pool", "logits"],
    "resnet14": ["conv1", "stage1", "stage2", "stage3", "pool", "logits"],
    "resnet18": ["conv1", "stage1", "stage2", "stage3", "stage4", "pool", "logits"],
    "vgg11": ["block1", "block2", "block3", "block4", "block5", "pool", "logits"],
    "shufflenetv2_050": ["conv1", "stage2", "stage3", "stage4", "conv5", "pool", "logits"],
}


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_representation_layers_hooks(name):
    model = cached(name)
    layers = representation_layers(model)
    assert list(layers) == EXPECTED_LAYERS[name]
    captured = []
    handles = [
        m.register_forward_hook(lambda mod, args, out, key=key: captured.append((key, out)))
        for key, m in layers.items()
    ]
    try:
        logits = model(batch(CASES[name], n=2))
    finally:
        for h in handles:
            h.remove()
    # Each fires once, in forward order, with the batch in dimension 0.
    assert [k for k, _ in captured] == EXPECTED_LAYERS[name]
    assert all(out.shape[0] == 2 for _, out in captured)
    assert torch.equal(captured[-1][1], logits)
    outputs = dict(captured)
    if "pool" in outputs:
        assert outputs["pool"].dim() == 2
    if name.startswith("resnet"):
        # The stem's representation is after BN + activation (ReLU here): non-negative.
        assert outputs["conv1"].min().item() >= 0


@pytest.mark.parametrize(
    "name, layers", [("resnet6", 6), ("resnet10", 10), ("resnet14", 14), ("resnet18", 18)]
)
def test_resnet_layer_counts(name, layers):
    model = cached(name)
    main_path = [
        q
        for q, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear)) and "shortcut" not in q
    ]
    assert len(main_path) == layers


def test_resnet14_default_layout():
    model = make("resnet14", width=16)
    widths = [getattr(model, f"stage{i}")[-1].conv2.out_channels for i in (1, 2, 3)]
    assert widths == [16, 32, 64]
    assert len(model.stage1) == len(model.stage2) == len(model.stage3) == 2
    assert model.stem.conv.stride == (1, 1)
    assert model.stage2[0].conv1.stride == (2, 2)
    assert isinstance(model.stage1[0].shortcut, nn.Identity)
    assert isinstance(model.stage2[0].shortcut, nn.Sequential)
