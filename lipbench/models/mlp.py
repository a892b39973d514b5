"""The small ReLU MLPs of the RS-LMI paper's experiments (Abdeen, Kekatos & Jin, arXiv:2506.23977), from any
method with dense layers.

Layout: flatten the input (an isometry), ``depth`` hidden layers of ``width`` units, each a dense layer of
the method followed by ReLU, then a dense output layer with n_classes outputs. Sizes (the paper's
experiments use one or two hidden layers of 100 to 1,000 units): XS = 1 x 100, S = 2 x 100,
M = 1 x 500, L = 2 x 1000, or any ``<depth>x<width>`` (e.g. 1x300).

ReLU, not MaxMin: LipSDP (:mod:`lipbench.lipsdp`) needs an activation that is slope-restricted in [0, 1]
coordinate by coordinate, which MaxMin (a sort of pairs) is not; ReLU is 1-Lipschitz, so the product of
the method layers' bounds holds as well. A method's own ``activation`` hook still replaces it (LipSDP is
then not offered). :meth:`MLP.lipsdp_layers` names the dense chain LipSDP certifies.
"""
from __future__ import annotations

import math
import re
from typing import Any

from torch import Tensor, nn

from lipbench.contracts import product_of_layer_bounds
from lipbench.errors import UserError
from lipbench.registry import LayerMethod, create_layer, register_model

SIZES = {"XS": (1, 100), "S": (2, 100), "M": (1, 500), "L": (2, 1000)}  # (hidden layers, width)
SIZE_PATTERN = re.compile(r"(\d)x(\d+)")


def parse_size(size: str) -> tuple[int, int]:
    if size in SIZES:
        return SIZES[size]
    match = SIZE_PATTERN.fullmatch(size)
    if match is None or int(match[1]) < 1 or int(match[2]) < 1:
        raise UserError(f"unknown mlp size {size!r}; use {', '.join(SIZES)} or <depth>x<width>, e.g. 1x300")
    return int(match[1]), int(match[2])


class MLP(nn.Module):
    """Flatten, ``depth`` x (dense layer of the method + ReLU), dense output layer."""

    def __init__(self, method: LayerMethod, depth: int, width: int, in_shape: tuple[int, ...], n_classes: int,
                 **options: Any):
        super().__init__()
        self.method, self.in_shape = method, tuple(in_shape)
        widths = [math.prod(in_shape)] + [width] * depth + [n_classes]
        self.dense = nn.ModuleList(create_layer(method.name, "linear", n_in, n_out, **options)
                                   for n_in, n_out in zip(widths, widths[1:]))
        self.activations = nn.ModuleList((method.activation or nn.ReLU)() for _ in range(depth))

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(1)
        for layer, activation in zip(self.dense, self.activations):
            x = activation(layer(x))
        return self.dense[-1](x)

    def method_layers(self) -> list[nn.Module]:
        return list(self.dense)

    def lipschitz_bound(self) -> float:
        return product_of_layer_bounds(self, self.method.bound)

    def lipsdp_layers(self) -> list[nn.Module] | None:
        """The dense layers, in order, when every activation between them is ReLU (LipSDP applies), else None."""
        return list(self.dense) if all(type(a) is nn.ReLU for a in self.activations) else None


@register_model("mlp", sizes=tuple(SIZES), kinds=("linear",), size_pattern=SIZE_PATTERN.pattern,
                description="ReLU MLP of the RS-LMI paper: 1-2 hidden layers of 100-1000 units (LipSDP-certifiable)",
                size_notes={size: f"{depth} x {width}" for size, (depth, width) in SIZES.items()})
def build_mlp(method: LayerMethod, size: str, in_shape: tuple[int, ...], n_classes: int, **options: Any) -> MLP:
    depth, width = parse_size(size)
    return MLP(method, depth, width, in_shape, n_classes, **options)
