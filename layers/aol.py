"""AOL: Almost-Orthogonal Lipschitz layers (Prach & Lampert, ECCV 2022, arXiv:2208.03160).

Math: for a weight W, rescale its input coordinates by d_i = (sum_j |W^T W|_ij)^(-1/2).
Then ||W diag(d)||_2 <= 1 (Theorem 1: a Gershgorin/Schur-test bound of D W^T W D). For a
convolution with kernel K, W^T W is the convolution with P = K^T * K (every input channel
correlated with every other over all 2k-1 x 2k-1 offsets), so d_i = (sum_{j,offsets} |P_ij|)^(-1/2)
bounds the convolution on any input size, with zero or circular padding (wrapped taps only
merge terms of the same absolute sum), and a stride only subsamples the output.

Approximation: none; the bound is exact in exact arithmetic (1e-12 is added before the
square root, which only makes the layer smaller).
Init: Dirac (identity) for k x k convs, orthogonal for 1x1 convs and dense layers, as in the
comparison paper.
Padding: zero 'same', as in the reference (circular padding is equally sound, and slower on CPU).
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from lipbench.caching import eval_cached
from lipbench.linalg import dirac_or_orthogonal_init, orthogonal_init
from lipbench.registry import register_layer

EPS = 1e-12


def aol_scale_dense(weight: Tensor) -> Tensor:
    """W diag(d) with d_i = (sum_j |W^T W|_ij)^(-1/2); weight is (out, in)."""
    gram_row_sums = (weight.T @ weight).abs().sum(dim=1)
    return weight * (gram_row_sums + EPS).rsqrt()


def aol_scale_conv(kernel: Tensor) -> Tensor:
    """The AOL-rescaled conv kernel; kernel is (out, in, kh, kw)."""
    kh, kw = kernel.shape[-2:]
    by_input = kernel.transpose(0, 1)  # (in, out, kh, kw)
    gram = F.conv2d(by_input, by_input, padding=(kh - 1, kw - 1))  # (in, in, 2kh-1, 2kw-1)
    gram_row_sums = gram.abs().sum(dim=(1, 2, 3))
    return kernel * (gram_row_sums + EPS).rsqrt()[None, :, None, None]


class AOLConv2d(nn.Conv2d):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride,
                         padding=kernel_size // 2)
        dirac_or_orthogonal_init(self)

    @eval_cached
    def scaled_weight(self) -> Tensor:
        return aol_scale_conv(self.weight)

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.scaled_weight(), self.bias)


class AOLLinear(nn.Linear):
    def __init__(self, in_features: int, out_features: int):
        super().__init__(in_features, out_features)
        orthogonal_init(self)

    @eval_cached
    def scaled_weight(self) -> Tensor:
        return aol_scale_dense(self.weight)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.scaled_weight(), self.bias)


@register_layer("aol", family="rescaled", padding="zero", exact=True, strides=(1, 2),
                description="Almost-orthogonal rescaling (Prach & Lampert 2022)")
def build_aol(kind: str, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1) -> nn.Module:
    if kind == "linear":
        return AOLLinear(in_channels, out_channels)
    return AOLConv2d(in_channels, out_channels, kernel_size, stride)
