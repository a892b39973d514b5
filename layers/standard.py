"""Unconstrained baseline: plain convolutions and dense layers.

Nothing constrains the weights, so the certificate may not assume L = 1. Each layer reports
a sound upper bound of its own operator norm on the input it sees (``lipbench.bounds``:
exact SVD for dense layers; the FFT norm of the zero-padded convolution embedded in a
circular one, an upper bound), and the model's bound is their product. That product is
loose for deep networks, which is exactly what the baseline is there to show.
"""
from __future__ import annotations

from torch import nn

from lipbench.bounds import conv_norm, dense_norm
from lipbench.registry import register_layer


class BoundedConv2d(nn.Conv2d):
    """nn.Conv2d with zero 'same' padding that reports a sound bound of its operator norm."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2)

    def lipschitz_bound(self, input_shape: tuple[int, ...]) -> float:
        return conv_norm(self.weight, tuple(input_shape[-2:]), self.padding_mode)


class BoundedLinear(nn.Linear):
    """nn.Linear that reports its exact spectral norm."""

    def lipschitz_bound(self, input_shape: tuple[int, ...] = ()) -> float:
        return dense_norm(self.weight)


@register_layer("standard", family="unconstrained", padding="zero", exact=True, bound=float("inf"),
                strides=(1, 2), description="Plain conv; certificate = product of sound per-layer norms")
def build_standard(kind: str, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1) -> nn.Module:
    if kind == "linear":
        return BoundedLinear(in_channels, out_channels)
    return BoundedConv2d(in_channels, out_channels, kernel_size, stride)
