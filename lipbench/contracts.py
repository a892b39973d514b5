"""What the training loop, the certificate and the audit may rely on: the contracts of a layer and a model.

A registered method's layers and models need nothing beyond ``nn.Module``, but they are certified
only through these protocols (runtime-checkable, and checked by the conformance suite for every
registered method and model family):

* :class:`BoundedLayer`: a layer that states its own Lipschitz bound on the input it sees
  (``lipschitz_bound(input_shape)``, the shape without the batch). A layer without it is bounded by
  its method's declared ``bound``.
* :class:`CertifiableModel`: a whole network whose Lipschitz bound is the product of its method
  layers' bounds, everything between them being 1-Lipschitz by construction. ``in_shape`` is the
  input it takes (C, H, W) or (features,); ``method_layers()`` lists the layers the method built, in
  order, so that the audit can bound each one by itself; ``lipschitz_bound()`` is the sound bound of
  the whole network that the certificate uses.
* :class:`PairwiseCertifiable`: a network whose last layer is certified per class pair (a normalized
  head): ``features`` is the network before it (a :class:`CertifiableModel`), and ``pair_lipschitz()``
  the (classes x classes) Lipschitz constants of the differences of its outputs z_i - z_j per unit of
  the features' Lipschitz constant (``exact=True``: float64, for certificates; ``False``: differentiable,
  for a margin loss).
"""
from __future__ import annotations

import math
from typing import Protocol, runtime_checkable

import torch
from torch import nn

Shape = tuple[int, ...]


@runtime_checkable
class BoundedLayer(Protocol):
    def lipschitz_bound(self, input_shape: Shape) -> float: ...


@runtime_checkable
class CertifiableModel(Protocol):
    in_shape: Shape

    def method_layers(self) -> list[nn.Module]: ...

    def lipschitz_bound(self) -> float: ...


@runtime_checkable
class PairwiseCertifiable(Protocol):
    features: nn.Module

    def pair_lipschitz(self, exact: bool = True) -> torch.Tensor: ...


def layer_bound(layer: nn.Module, input_shape: Shape, declared: float) -> float:
    """A layer's own ``lipschitz_bound(input_shape)`` if it is a :class:`BoundedLayer`, else ``declared``."""
    return float(layer.lipschitz_bound(input_shape)) if isinstance(layer, BoundedLayer) else declared


def input_shapes(model: CertifiableModel, in_shape: Shape | None = None) -> list[tuple[nn.Module, Shape]]:
    """(layer, input shape without batch) for each of ``model.method_layers()``, traced with one forward pass."""
    layers = model.method_layers()
    shapes: dict[int, Shape] = {}

    def record(module: nn.Module, args: tuple) -> None:
        shapes.setdefault(id(module), tuple(args[0].shape[1:]))

    hooks = [layer.register_forward_pre_hook(record) for layer in layers]
    parameter = next(model.parameters())
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *(in_shape or model.in_shape), dtype=parameter.dtype, device=parameter.device))
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return [(layer, shapes[id(layer)]) for layer in layers]


def product_of_layer_bounds(model: CertifiableModel, declared: float) -> float:
    """The bound of a network that is 1-Lipschitz between its method layers: the product of theirs."""
    return math.prod(layer_bound(layer, shape, declared) for layer, shape in input_shapes(model))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
