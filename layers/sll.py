"""SLL: SDP-based Lipschitz layers (Araujo, Havens, Delattre, Allauzen & Hu, ICLR 2023, arXiv:2303.03169).

Math: f(x) = x - 2 W T^-1 ReLU(W^T x + b) with T diagonal, T_ii = sum_j |(W^T W)_ij| q_j / q_i
for any q > 0 (here q = exp(log_q), learned). Then T - W^T W is positive semidefinite
(x^T W^T W x <= sum_ij |G_ij| |x_i| |x_j| <= sum_i x_i^2 sum_j |G_ij| q_j / q_i by AM-GM), so
||W T^-1/2|| <= 1 and the residual form (see ``_residual.py``) is 1-Lipschitz. With q = 1, T is
AOL's rescaling (Prach & Lampert 2022). In the code's notation the hidden map is W x (this
``weight``, the paper's W^T), so G is the Gram matrix of its rows; for a convolution G is the
convolution with kernel ``conv2d(K, K)`` over all 2k-1 x 2k-1 offsets, and its absolute sums
bound the zero-padded convolution on any input size (padding only restricts the output).

Approximation: none; exact in exact arithmetic (1e-12 is added to T, which only makes the
layer smaller). Fixed: the reference convolution multiplied q and 1/q of the same index, so
q had no effect; here it weighs the columns as in the paper's theorem.
Init: Xavier-normal W and uniform bias (as the reference); log_q = 0, so T starts as AOL's.
Padding: zero 'same' padding, as in the paper; stride 1. Eval mode caches W * 2 T^-1.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lipbench.caching import eval_cached
from lipbench.layers._residual import ResidualLayer, check_square
from lipbench.contracts import Shape
from lipbench.layerkit import check_conv_options
from lipbench.registry import register_layer

EPS = 1e-12


def gram_abs_sums(weight: Tensor) -> Tensor:
    """(m, m): sum over offsets of |G_ij| for the Gram matrix G of the rows of ``weight`` (m, n[, k, k])."""
    if weight.dim() == 2:
        return (weight @ weight.T).abs()
    kernel_size = weight.shape[-1]
    return F.conv2d(weight, weight, padding=kernel_size - 1).abs().sum(dim=(2, 3))


def sll_diagonal(weight: Tensor, log_q: Tensor) -> Tensor:
    """T_ii = sum_j |G_ij| q_j / q_i, with q = exp(log_q)."""
    q = log_q.exp()
    return gram_abs_sums(weight) @ q / q


class SDPLipschitzLayer(ResidualLayer):
    """SLL, dense for ``kernel_size=None``, else a k x k convolution (square: in == out)."""

    def __init__(self, channels: int, kernel_size: int | None = None):
        super().__init__(channels, kernel_size)
        self.log_q = nn.Parameter(torch.zeros(channels))

    @eval_cached
    def rescaled_weight(self) -> Tensor:
        scale = 2 / (sll_diagonal(self.weight, self.log_q) + EPS)
        return self.weight * scale.view(-1, *[1] * (self.weight.dim() - 1))

    def output_weight(self, size: Shape) -> Tensor:
        return self.rescaled_weight()


@register_layer("sll", family="residual", padding="zero", exact=True,
                description="SDP-based Lipschitz layer (Araujo et al. 2023)")
def build_sll(kind: str, in_channels: int, out_channels: int, kernel_size: int = 3,
              stride: int = 1) -> SDPLipschitzLayer:
    check_square("sll", in_channels, out_channels)
    if kind == "linear":
        return SDPLipschitzLayer(in_channels)
    check_conv_options("sll", kernel_size, stride)
    return SDPLipschitzLayer(in_channels, kernel_size)
