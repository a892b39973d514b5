"""Training losses, registered like layers: ``@register_loss("name")`` on ``loss(logits, labels, context)``.

A loss returns the batch's mean loss as a tensor. Its ``context`` (:class:`LossContext`) says what a
margin-aware loss needs besides the logits: the settings' offset and temperature, the radius it trains
for at this point of the run (``epsilon``, after the ramp), and ``pair_lipschitz``, a (classes x classes)
tensor whose entry (i, j) bounds the Lipschitz constant of z_i - z_j. For the default heads it is
sqrt(2) (a 1-Lipschitz logit vector); for a normalized head it is ||w_i - w_j||, differentiable
through the head's weights. Training assumes the body is 1-Lipschitz, as every built-in certified
method declares it; the certificate uses the proven bound.

Importing this package registers the built-in losses (one module each), exactly as a plugin would.
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from pkgutil import iter_modules
from typing import Callable

from torch import Tensor

from lipbench.registry import new_registry


@dataclass(frozen=True)
class LossContext:
    offset: float
    temperature: float
    epsilon: float
    pair_lipschitz: Tensor
    focal_gamma: float = 0.0


@dataclass(frozen=True)
class Loss:
    name: str
    compute: Callable[[Tensor, Tensor, LossContext], Tensor]
    description: str = ""
    uses: tuple[str, ...] = ()  # the settings it reads, for `lipbench recipes`


LOSSES = new_registry("loss", "recipes")


def register_loss(name: str, description: str = "", uses: tuple[str, ...] = ()) -> Callable:
    """Register ``compute(logits, labels, context) -> Tensor`` under ``name``; returns it unchanged."""

    def decorator(compute: Callable[[Tensor, Tensor, LossContext], Tensor]) -> Callable:
        LOSSES.add(name, Loss(name, compute, description, uses))
        return compute

    return decorator


def get_loss(name: str) -> Loss:
    return LOSSES.get(name)


for _module in iter_modules(__path__):
    import_module(f"{__name__}.{_module.name}")
