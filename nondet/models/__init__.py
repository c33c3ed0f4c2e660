"""Models, their seeded initialisation and seeded dropout.

Every model is built by :func:`build_model` from a ``ModelConfig``, the input shape ((D,) for
feature data, (C, H, W) for images), the number of classes and the ``init`` source's generator.
Construction never touches the global RNG and the initial weights depend on that generator only
(:func:`init_parameters`); dropout masks come from the ``dropout`` source's generator
(:func:`set_dropout_generator`). All models return logits of shape (N, num_classes).

=====================  ==================  ====================  ======================  ======
model                  blocks per stage    stage widths          resolution (32x32 in)   layers
=====================  ==================  ====================  ======================  ======
``resnet6``            [1, 1]              w, 2w                 32, 16                  6
``resnet10``           [1, 1, 1, 1]        w, 2w, 4w, 8w         32, 16, 8, 4            10
``resnet14``           [2, 2, 2]           w, 2w, 4w             32, 16, 8               14
``resnet18``           [2, 2, 2, 2]        w, 2w, 4w, 8w         32, 16, 8, 4            18
=====================  ==================  ====================  ======================  ======

ResNets (CIFAR-style, ``w = model.width``): 3x3 stem conv, stride 1, no max-pool, + BN +
activation; basic blocks of two 3x3 conv + BN with a 1x1 conv + BN projection shortcut where the
shape changes and stride 2 in the first block of every stage after the first; global mean
pooling (``x.mean(dim=(2, 3))``); dropout; linear classifier. Layers = stem + 2 per block + fc
(shortcut projections not counted). The paper's ResNet-14 has w = 16.

Other models: ``linear`` and ``mlp`` (any input, flattened), ``conv1`` (one 3x3 conv hidden
layer, 4x4 average pooling, linear classifier) -- see ``shallow.py``; ``cnn1d`` (the MNIST-1D
paper's three strided Conv1d layers for 1-D signals (C, L)) -- see ``cnn1d.py``; ``vgg11`` and
``shufflenetv2_050`` (torchvision's, with the CIFAR adaptations) -- see ``torchvision_models.py``.
The language model ``qrnn`` (tied-embedding QRNN with AWD-LSTM's regularisation, see ``qrnn.py``)
is built by :func:`build_language_model` for a vocabulary size and returns per-token logits.

Representations compared by CKA (:func:`representation_layers`, names in forward order):

- ResNets: ``conv1`` (stem after BN + activation), ``stage1`` .. ``stageK``, ``pool``, ``logits``.
- mlp: ``hidden1`` .. ``hiddenK`` (after the activation), ``logits``; linear: ``logits``;
  conv1: ``conv`` (after the activation, before pooling), ``logits``.
- cnn1d: ``conv1``, ``conv2``, ``conv3`` (after the activation), ``logits``.
- vgg11: ``block1`` .. ``block5`` (after each max-pool), ``pool``, ``logits``.
- shufflenetv2_050: ``conv1``, ``stage2``, ``stage3``, ``stage4``, ``conv5``, ``pool``, ``logits``.
"""

from __future__ import annotations

from typing import Callable, Dict, Sequence, Tuple

import torch
from torch import nn

from nondet.config import ConfigError  # a configuration mistake: no relaunch mends it

from .activations import ACTIVATIONS, SmeLU, make_activation
from .cnn1d import CNN1D
from .dropout import SeededDropout, set_dropout_generator
from .init import init_parameters
from .qrnn import build_qrnn
from .resnet import RESNET_STAGES, ResNet
from .shallow import MLP, Conv1Net, LinearClassifier
from .torchvision_models import VGG11, ShuffleNetV2

__all__ = [
    "ACTIVATIONS",
    "IMAGE_MODELS",
    "LANGUAGE_MODEL_NAMES",
    "MODEL_NAMES",
    "SeededDropout",
    "SmeLU",
    "build_language_model",
    "build_model",
    "first_layer_weight",
    "init_parameters",
    "make_activation",
    "representation_layers",
    "set_dropout_generator",
]


def _linear(cfg, shape, classes):
    return LinearClassifier(shape, classes, cfg.dropout)


def _mlp(cfg, shape, classes):
    return MLP(shape, classes, cfg.width, cfg.depth, cfg.activation, cfg.smelu_beta, cfg.dropout)


def _conv1(cfg, shape, classes):
    return Conv1Net(shape, classes, cfg.width, cfg.activation, cfg.smelu_beta, cfg.dropout)


def _cnn1d(cfg, shape, classes):
    return CNN1D(shape, classes, cfg.width, cfg.activation, cfg.smelu_beta, cfg.dropout)


def _resnet(stages):
    def build(cfg, shape, classes):
        return ResNet(
            stages, shape, classes, cfg.width, cfg.activation, cfg.smelu_beta, cfg.dropout
        )

    return build


def _vgg11(cfg, shape, classes):
    return VGG11(shape, classes, cfg.activation, cfg.smelu_beta, cfg.dropout)


def _shufflenet(cfg, shape, classes):
    return ShuffleNetV2(shape, classes, cfg.activation, cfg.smelu_beta, cfg.dropout)


_BUILDERS: Dict[str, Callable[..., nn.Module]] = {
    "linear": _linear,
    "mlp": _mlp,
    "conv1": _conv1,
    "cnn1d": _cnn1d,
    **{name: _resnet(stages) for name, stages in RESNET_STAGES.items()},
    "vgg11": _vgg11,
    "shufflenetv2_050": _shufflenet,
}
MODEL_NAMES = tuple(_BUILDERS)
# Models that need 1-D signals (C, L); linear and mlp flatten whatever they are given.
SIGNAL_MODELS = frozenset({"cnn1d"})
# Models that need (C, H, W) inputs.
IMAGE_MODELS = frozenset(MODEL_NAMES) - {"linear", "mlp"} - SIGNAL_MODELS
# Language models: built by build_language_model, trained by nondet/lm.py on text datasets.
_LANGUAGE_BUILDERS: Dict[str, Callable[..., nn.Module]] = {"qrnn": build_qrnn}
LANGUAGE_MODEL_NAMES = tuple(_LANGUAGE_BUILDERS)


def build_language_model(cfg, vocab_size: int, init_generator: torch.Generator) -> nn.Module:
    """Build the language model ``cfg.name`` (``qrnn``: see ``qrnn.py``) for ``vocab_size``
    words, initialised from ``init_generator`` alone; on the CPU, in training mode."""
    if cfg.name not in _LANGUAGE_BUILDERS:
        raise ConfigError(
            f"unknown language model {cfg.name!r}; valid: {', '.join(LANGUAGE_MODEL_NAMES)}"
        )
    model = _LANGUAGE_BUILDERS[cfg.name](cfg, int(vocab_size), init_generator)
    for qualified, module in model.named_modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            raise TypeError(f"{cfg.name}: {qualified} is an nn.Dropout; use SeededDropout")
    return model


def build_model(
    cfg,
    input_shape: Sequence[int],
    num_classes: int,
    init_generator: torch.Generator,
) -> nn.Module:
    """Build ``cfg.name`` for inputs of ``input_shape`` and initialise it from ``init_generator``.

    ``cfg`` is a ``ModelConfig`` (or a DictConfig with its keys). The module is constructed inside
    ``torch.random.fork_rng`` (constructors draw from the global RNG; the fork puts its state back)
    and then every parameter and buffer is overwritten by :func:`init_parameters`. The model is
    on the CPU, in training mode; the caller moves it.
    """
    if isinstance(cfg, dict):
        from omegaconf import OmegaConf

        cfg = OmegaConf.create(cfg)
    name = cfg.name
    if name == "custom":  # your own nn.Module (nondet/usermodel.py): its own init, seeded
        from nondet.usermodel import build_custom_model

        return build_custom_model(cfg, input_shape, num_classes, init_generator)
    if name in _LANGUAGE_BUILDERS:
        raise ConfigError(
            f"model {name!r} is a language model: it trains on a text dataset "
            "(dataset=synthetic_text or dataset=ptb) through build_language_model"
        )
    if name not in _BUILDERS:
        raise ConfigError(f"unknown model {name!r}; valid: {', '.join(MODEL_NAMES)}")
    if cfg.activation not in ACTIVATIONS:
        raise ConfigError(
            f"unknown activation {cfg.activation!r}; valid: {', '.join(ACTIVATIONS)}"
        )
    input_shape = tuple(int(d) for d in input_shape)
    if len(input_shape) not in (1, 2, 3) or min(input_shape) < 1:
        raise ConfigError(
            f"input_shape must be (D,) for feature data, (C, L) for signals or (C, H, W) for "
            f"images, got {input_shape}"
        )
    if name in SIGNAL_MODELS and len(input_shape) != 2:
        raise ConfigError(
            f"model {name!r} needs 1-D signals (C, L) but the data have shape {input_shape}; "
            "use dataset=mnist1d (or model=mlp / model=linear)"
        )
    if name in IMAGE_MODELS and len(input_shape) != 3:
        raise ConfigError(
            f"model {name!r} needs image inputs (C, H, W) but the data are features of shape "
            f"{input_shape}; for synthetic data set dataset.image_shape=[3,32,32] (or another "
            "C,H,W whose product is the input size), or use model=mlp or model=linear"
        )
    if num_classes < 1:
        raise ConfigError(f"num_classes must be positive, got {num_classes}")
    if not 0.0 <= cfg.dropout < 1.0:
        raise ConfigError(f"model.dropout must be in [0, 1), got {cfg.dropout}")
    if cfg.width < 1:
        raise ConfigError(f"model.width must be positive, got {cfg.width}")

    with torch.random.fork_rng(devices=[]):
        model = _BUILDERS[name](cfg, input_shape, int(num_classes))
    for qualified, module in model.named_modules():
        # Guards the rule that no stochastic layer reads the global RNG.
        if isinstance(module, nn.modules.dropout._DropoutNd):
            raise TypeError(f"{name}: {qualified} is an nn.Dropout; use SeededDropout")
    init_parameters(model, init_generator)
    return model


def first_layer_weight(model: nn.Module) -> Tuple[str, nn.Parameter]:
    """(qualified name, parameter) of the weight of the first Conv/Linear layer the input meets.

    The bit-flip source moves one element of it by one ULP. Every model here registers its
    layers in forward order, so this is the first Conv/Linear in registration order.
    """
    for qualified, module in model.named_modules():
        if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
            prefix = f"{qualified}." if qualified else ""
            return prefix + "weight", module.weight
    raise ValueError(f"{type(model).__name__} has no Conv or Linear layer")


def representation_layers(model: nn.Module, names: Sequence[str] | None = None) -> Dict[str, nn.Module]:
    """Ordered {name: module} whose forward outputs are the representations compared by CKA;
    ``names`` (``model.representations``) picks modules by qualified name."""
    from nondet.usermodel import representation_modules

    # the built-in models declare theirs; your own: model.representations, else its children
    return representation_modules(model, names)
