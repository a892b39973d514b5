"""Unconstrained baseline: plain convolutions and dense layers.

Nothing constrains the weights, so the certificate may not assume L = 1. Each layer reports a
sound upper bound of its own operator norm on the input it sees (exact SVD for dense layers; the
FFT norm of the zero-padded convolution embedded in a circular one, an upper bound), and the
model's bound is their product. That product is loose for deep networks, which is exactly what
the baseline is there to show.

Init: orthogonal kernels and zero bias, so that the signal keeps its scale through 27 layers.
"""
from __future__ import annotations

from torch import nn

from lipbench.layers._unconstrained import UNCONSTRAINED_PROTOCOL, BoundedConv2d, BoundedLinear
from lipbench.registry import register_layer


@register_layer("standard", family="unconstrained", padding="zero", exact=True, bound=float("inf"),
                strides=(1, 2), protocol=UNCONSTRAINED_PROTOCOL,
                description="Plain conv; certificate = product of sound per-layer norms")
def build_standard(kind: str, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1) -> nn.Module:
    if kind == "linear":
        return BoundedLinear(in_channels, out_channels)
    return BoundedConv2d(in_channels, out_channels, kernel_size, stride)
