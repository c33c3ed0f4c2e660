"""Parameter initialisation drawn from the ``init`` source's generator and nothing else.

Module constructors (PyTorch's and torchvision's) initialise from the global RNG. ``build_model``
constructs under ``torch.random.fork_rng`` so that stream is left as it was, and then
:func:`init_parameters` overwrites every parameter and buffer, so the initial weights are a
function of the init generator alone.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

_AFFINE = {"weight", "bias"}
_RUNNING_STATS = {"running_mean", "running_var", "num_batches_tracked"}


def _draw(
    tensor: torch.Tensor,
    fill: Callable[..., torch.Tensor],
    generator: torch.Generator,
) -> None:
    """Set ``tensor`` to ``fill(scratch, generator=generator)``, a float32 scratch tensor.

    Drawing into a scratch tensor on the generator's device and copying means the initial weights
    are the same whatever device or dtype the model already lives on, and a CPU generator can
    initialise a CUDA model.
    """
    scratch = torch.empty(tensor.shape, dtype=torch.float32, device=generator.device)
    fill(scratch, generator=generator)
    tensor.copy_(scratch)


def _check_names(qualified: str, module: nn.Module, names: set, allowed: set, what: str) -> None:
    unknown = names - allowed
    if unknown:
        raise TypeError(
            f"init_parameters: {qualified or 'the model'} ({type(module).__name__}) has "
            f"{what} {sorted(unknown)} it does not know how to initialise"
        )


@torch.no_grad()
def init_parameters(model: nn.Module, generator: torch.Generator) -> None:
    """Re-initialise every parameter and reset every buffer of ``model`` from ``generator``.

    Modules are visited in registration order (``model.modules()``), each module's weight before
    its bias, so the same generator state always gives the same weights:

    - Conv: ``kaiming_normal_(mode="fan_out", nonlinearity="relu")`` (ResNet convention), bias 0.
    - Linear: PyTorch's default, weight ``kaiming_uniform_(a=sqrt(5))`` and bias
      U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    - BatchNorm / other norms: weight 1, bias 0, running statistics reset (no randomness).

    Raises ``TypeError`` for a module that owns parameters or buffers of a type not listed
    above, so no parameter is ever left with values from the global RNG.
    """
    for qualified, module in model.named_modules():
        params = {n for n, _ in module.named_parameters(recurse=False)}
        buffers = {n for n, _ in module.named_buffers(recurse=False)}
        if not params and not buffers:
            continue
        if isinstance(module, nn.modules.conv._ConvNd):
            _check_names(qualified, module, params, _AFFINE, "parameters")
            _check_names(qualified, module, buffers, set(), "buffers")
            _draw(
                module.weight,
                lambda t, generator: nn.init.kaiming_normal_(
                    t, mode="fan_out", nonlinearity="relu", generator=generator
                ),
                generator,
            )
            if module.bias is not None:
                module.bias.zero_()
        elif isinstance(module, nn.Linear):
            _check_names(qualified, module, params, _AFFINE, "parameters")
            _check_names(qualified, module, buffers, set(), "buffers")
            _draw(
                module.weight,
                lambda t, generator: nn.init.kaiming_uniform_(
                    t, a=math.sqrt(5), generator=generator
                ),
                generator,
            )
            if module.bias is not None:
                fan_in, _ = nn.init._calculate_fan_in_and_fan_out(module.weight)
                bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
                _draw(
                    module.bias,
                    lambda t, generator: nn.init.uniform_(t, -bound, bound, generator=generator),
                    generator,
                )
        elif isinstance(module, (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)):
            _check_names(qualified, module, params, _AFFINE, "parameters")
            _check_names(qualified, module, buffers, _RUNNING_STATS, "buffers")
            if getattr(module, "weight", None) is not None:
                module.weight.fill_(1.0)
            if getattr(module, "bias", None) is not None:
                module.bias.zero_()
            if isinstance(module, nn.modules.batchnorm._NormBase):
                # Zeroes running_mean and num_batches_tracked, fills running_var with 1; a no-op
                # when the module tracks no running statistics.
                module.reset_running_stats()
        else:
            raise TypeError(
                f"init_parameters: {qualified or 'the model'} is a {type(module).__name__} with "
                f"parameters {sorted(params)} / buffers {sorted(buffers)}; it knows Conv, Linear "
                "and normalisation layers only (add a rule in nondet/models/init.py rather than "
                "leave a parameter initialised by the global RNG)"
            )
