"""Test plugin for `lipbench check`: ``aol-slow``, an AOL layer that does all of its work twice.

Its output is the average of two identical AOL passes (so it is as 1-Lipschitz as AOL), and both
its training step and its eval forward cost about twice AOL's. Loaded only by tests/test_speed.py
through ``--plugin``.
"""
from __future__ import annotations

from torch import Tensor, nn

from lipbench.layers.aol import build_aol
from lipbench.registry import register_layer


class TwiceAOL(nn.Module):
    def __init__(self, kind: str, in_channels: int, out_channels: int, kernel_size: int, stride: int):
        super().__init__()
        self.aol = build_aol(kind, in_channels, out_channels, kernel_size, stride)

    def forward(self, x: Tensor) -> Tensor:
        return (self.aol(x) + self.aol(x)) / 2


@register_layer("aol-slow", family="rescaled", padding="circular", exact=True, strides=(1, 2),
                description="AOL computed twice (a deliberately slow layer for tests)")
def build_aol_slow(kind: str, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1) -> nn.Module:
    return TwiceAOL(kind, in_channels, out_channels, kernel_size, stride)
