"""Test plugin: AOL with its output scaled by 1.1 while declaring the bound 1 (a planted certificate bug).

Each layer is then 1.1-Lipschitz (exactly 1.1 at AOL's Dirac/orthogonal initialization), so the
ConvNet's 27 layers make it up to 1.1^27 = 13.1-Lipschitz while its certificate assumes 1. Its
model is the ConvNet at a quarter of the XS width (4), whatever the size, so that tests train
and audit it in seconds.
"""
from torch import Tensor, nn

import lipbench
from lipbench.layers.aol import AOLConv2d, AOLLinear
from lipbench.models.convnet import ConvNet

GAIN = 1.1
WIDTH = 4


class BrokenAOLConv2d(AOLConv2d):
    def forward(self, x: Tensor) -> Tensor:
        return GAIN * super().forward(x)


class BrokenAOLLinear(AOLLinear):
    def forward(self, x: Tensor) -> Tensor:
        return GAIN * super().forward(x)


@lipbench.register_model("test-broken-convnet", sizes=("XS", "S", "M", "L"), methods=("test-broken",))
def small_convnet(method, size: str, in_shape: tuple[int, int, int], n_classes: int, **options) -> nn.Module:
    return ConvNet(method, WIDTH, in_shape, n_classes, **options)


@lipbench.register_layer("test-broken", family="test", padding="circular", exact=True, bound=1.0,
                         model="test-broken-convnet", description="AOL x 1.1 declaring 1: the audit must catch it")
def build(kind, in_channels, out_channels, kernel_size=3, stride=1):
    if kind == "linear":
        return BrokenAOLLinear(in_channels, out_channels)
    return BrokenAOLConv2d(in_channels, out_channels, kernel_size, stride)
