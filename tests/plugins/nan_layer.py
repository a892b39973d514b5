"""Test plugin: a layer whose output is NaN in training mode (a diverging run)."""
from torch import nn

import lipbench


class NaNAfterSteps(nn.Conv2d):
    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2)
        self.calls = 0

    def forward(self, x):
        self.calls += self.training
        out = super().forward(x)
        return out * float("nan") if self.calls else out


@lipbench.register_layer("test-nan", family="test", padding="zero", exact=True, kinds=("conv",))
def build(kind, in_channels, out_channels, kernel_size=3, stride=1):
    return NaNAfterSteps(in_channels, out_channels, kernel_size, stride)
