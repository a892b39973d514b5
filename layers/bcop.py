"""BCOP: block convolution orthogonal parameterization.

Li, Haghighat, Grosse & Jacobsen, "Preventing Gradient Attenuation in Lipschitz Constrained
Convolutional Networks", NeurIPS 2019, arXiv:1911.00937.

Math: for a symmetric projector P (P = P^2 = P^T) the two-tap kernel [P, I - P] has the transfer
function P + (I - P) z, unitary for |z| = 1, and so is any product of such factors. The k x k
kernel is H R_1(z1) C_1(z2) ... R_{k-1}(z1) C_{k-1}(z2): an orthogonal matrix H times k - 1
vertical and k - 1 horizontal two-tap factors, each growing the kernel by one tap. All its
transfer matrices are unitary, so the circular convolution is orthogonal on every input size.
H is the orthonormalized free (c x c) matrix; each P = M M^T with M the orthonormalized free
(c x c/2) matrix, a rank-c/2 projector as in the paper (which orthonormalizes a c x c matrix and
keeps half of its columns; the set of projectors is the same). For out != in the kernel is
built for c = max(in, out) channels and sliced to (out, in): semi-orthogonal. The dense layer
(and the 1x1 convolution) is the orthonormalized weight matrix alone.

Approximation: 20 Björck iterations, as in the paper (:func:`lipbench.orthogonalize.orthonormalize`;
the start is scaled by an upper bound of the largest singular value where the paper used a
power-iteration estimate, which can fall short of it). In exact arithmetic no singular value of
an iterate exceeds 1; small ones converge slowly and leave H and the projectors inexact.
Measured: 1 +- 1e-6 (float32, 16 and 64 channels, at init and with Gaussian free matrices);
within 1e-14 on the conformance shapes after 20 SGD steps at lr 0.1 (float64). For Gaussian
c x c matrices (20 seeds) 20 iterations converge unless the condition number exceeds ~1e3:
worst smallest singular value 1.000 / 0.62 / 0.11 at c = 16 / 64 / 256.
The layer reports the extreme singular values of its kernel on the input size it sees
(``singular_value_range``, exact for the circular convolution): the largest is its Lipschitz
constant, so the certificate does not rest on convergence, and the certificate hook records
the deviation from orthogonality.
Init: orthogonal free matrices (a random orthogonal convolution), bias uniform in
+-1/sqrt(out), as in the paper. Padding: circular; stride 1. Eval mode caches the kernel.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lipbench.caching import eval_cached
from lipbench.contracts import Shape
from lipbench.fourier import circular_pad, transfer_matrices
from lipbench.layerkit import (OrthonormalizedLinear, SingularValuesMixin, check_conv_options, full_precision,
                               orthogonality_certificate)
from lipbench.linalg import orthonormalize
from lipbench.registry import register_layer

BJORCK_ITERATIONS = 20


def times_two_tap(kernel: Tensor, projector: Tensor, axis: int) -> Tensor:
    """The kernel (kh, kw, c, c) of K(z) (P + (I - P) z), z the shift along ``axis`` (0 or 1)."""
    stay = kernel @ projector
    shift = kernel - stay  # K (I - P)
    zeros = torch.zeros_like(stay.narrow(axis, 0, 1))
    return torch.cat((stay, zeros), dim=axis) + torch.cat((zeros, shift), dim=axis)


def block_orthogonal_kernel(orthogonal: Tensor, row_projectors: Tensor, column_projectors: Tensor) -> Tensor:
    """Conv weight (c, c, k, k) of H R_1(z1) C_1(z2) ... R_{k-1}(z1) C_{k-1}(z2), k - 1 projectors each."""
    kernel = orthogonal[None, None]
    for row, column in zip(row_projectors, column_projectors):
        kernel = times_two_tap(times_two_tap(kernel, row, axis=0), column, axis=1)
    return kernel.permute(2, 3, 0, 1)


def rank_half_projectors(matrices: Tensor, iterations: int) -> Tensor:
    """Symmetric projectors M M^T from a batch of (c, c/2) matrices M, orthonormalized."""
    columns = orthonormalize(matrices, iterations)
    return columns @ columns.mT


class BCOPConv2d(SingularValuesMixin, nn.Module):
    """Orthogonal circular convolution with the block-orthogonal kernel (cached in eval)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3,
                 iterations: int = BJORCK_ITERATIONS):
        super().__init__()
        channels = max(in_channels, out_channels)
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.iterations = iterations
        gain = 1 / math.sqrt(channels)
        self.orthogonal = nn.Parameter(nn.init.orthogonal_(torch.empty(channels, channels), gain))
        self.projector_factors = nn.Parameter(torch.empty(2 * (kernel_size - 1), channels, channels // 2))
        for factor in self.projector_factors.data:
            nn.init.orthogonal_(factor, gain)
        bound = 1 / math.sqrt(out_channels)
        self.bias = nn.Parameter(nn.init.uniform_(torch.empty(out_channels), -bound, bound))

    @eval_cached
    @full_precision
    def kernel(self) -> Tensor:
        orthogonal = orthonormalize(self.orthogonal, self.iterations)
        rows, columns = rank_half_projectors(self.projector_factors, self.iterations).chunk(2)
        return block_orthogonal_kernel(orthogonal, rows, columns)[:self.out_channels, :self.in_channels]

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(circular_pad(x, self.kernel_size // 2), self.kernel(), self.bias)

    def operator_matrices(self, input_shape: Shape) -> Tensor:
        return transfer_matrices(self.kernel().double(), input_shape[-2:])


@register_layer("bcop", family="orthogonal", padding="circular", exact=False, orthogonal=True, tolerance=1e-5,
                approximation={"bjorck_iterations": BJORCK_ITERATIONS}, certificate=orthogonality_certificate,
                description="Block convolution orthogonal parameterization (Li et al. 2019)")
def build_bcop(kind: str, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1) -> nn.Module:
    check_conv_options("bcop", kernel_size, stride)
    if kind == "linear" or kernel_size == 1:
        return OrthonormalizedLinear(in_channels, out_channels, BJORCK_ITERATIONS)
    if max(in_channels, out_channels) < 2:
        raise ValueError("bcop needs in_channels or out_channels >= 2 for kernel_size > 1 (rank c/2 projectors)")
    return BCOPConv2d(in_channels, out_channels, kernel_size)
