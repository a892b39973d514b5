"""Sandwich: 1-Lipschitz layers by direct parameterization, activation included.

Wang & Manchester, "Direct Parameterization of Lipschitz-Bounded Deep Networks", ICML 2023,
arXiv:2301.11526.

Math: the layer (in -> out) is h(x) = sqrt2 A^H Psi ReLU(sqrt2 Psi^-1 B x + b), with Psi =
diag(exp(psi)) per channel and [A B] (out x (out + in)) the semi-unitary Cayley transform of a
free matrix scaled to a learned Frobenius norm alpha (``lipbench.linalg.cayley_transform``), so
A A^H + B B^H = I. Why it is 1-Lipschitz: ReLU's difference quotients are a diagonal J in
[0, 1], which commutes with Psi, so every difference quotient of h is 2 A^H J B, and for unit u, v
2 Re <J^1/2 A u, J^1/2 B v> <= ||J^1/2 (A u + B v)||^2 / 2 <= ||[A B]||^2 (|u|^2 + |v|^2) / 2:
h is ||[A B]||^2-Lipschitz, 1 for the Cayley factors. The convolution does the same per frequency
of the 2-D DFT (A(f), B(f) from the transfer matrices of a k x k kernel, circular padding): A, B
and [A B] are then convolutions and J, Psi are diagonal over pixels and channels, so the argument
holds verbatim, with ||[A B]|| = max_f ||[A(f) B(f)]||. The dense layer (and the 1x1
convolution) uses one matrix.

How it fits lipbench's layer contract: the module computes the whole sandwich, ReLU included, and
its bound is for that function; the method's ``activation`` hook is the identity, so the generic
families (the ConvNet) add no activation of their own after it.

Approximation: none in exact arithmetic. ``lipschitz_bound`` returns ||[A B]||^2 of the matrices
actually used (float64 SVD), so Cayley round-off cannot inflate a certificate; the audit re-derives
the same bound from the layer's ``sandwich_factors`` after checking that they reproduce its output.
Init: as the references (acfr/LBDN, SandwichConv of Prach et al.): nn.Linear / nn.Conv2d default
weight of shape (out, in + out), alpha = its Frobenius norm, psi = 0, bias uniform in
+-1/sqrt(fan in). Padding: circular; stride 1. Eval mode caches the factors per input size.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lipbench.caching import eval_cached_per_shape
from lipbench.contracts import Shape
from lipbench.fourier import extreme_singular_values, fourier_conv, transfer_matrices
from lipbench.layerkit import check_conv_options, full_precision
from lipbench.linalg import cayley_transform
from lipbench.registry import register_layer

SQRT2 = math.sqrt(2)


class Sandwich(nn.Module):
    """The sandwich h(x) = sqrt2 A^H Psi ReLU(sqrt2 Psi^-1 B x + b): dense (kernel_size None) or a
    circular k x k convolution; a 1x1 convolution is the dense layer applied per pixel."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | None = None):
        super().__init__()
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        taps = (kernel_size, kernel_size) if kernel_size else ()
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels + out_channels, *taps))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # the nn.Linear / nn.Conv2d default
        self.alpha = nn.Parameter(self.weight.detach().norm())
        self.psi = nn.Parameter(torch.zeros(out_channels))
        fan_in = self.weight[0].numel()
        self.bias = nn.Parameter(torch.empty(out_channels).uniform_(-fan_in ** -0.5, fan_in ** -0.5))

    @eval_cached_per_shape
    @full_precision
    def cayley_factors(self, size: Shape) -> Tensor:
        """[A B] (..., out, out + in), one per frequency for a convolution, with orthonormal rows."""
        weight = self.weight * (self.alpha / self.weight.norm())
        return cayley_transform(transfer_matrices(weight, size) if self.kernel_size else weight)

    def sandwich_factors(self, input_shape: Shape) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(A, B, the diagonal of Psi, b): the layer is sqrt2 A^H Psi ReLU(sqrt2 Psi^-1 B x + b)."""
        factors = self.cayley_factors(tuple(input_shape[1:]) if self.kernel_size else ())
        out = self.out_channels
        return factors[..., :out], factors[..., out:], self.psi.exp(), self.bias

    def forward(self, x: Tensor) -> Tensor:
        a, b, scale, bias = self.sandwich_factors(x.shape[1:])
        down = (SQRT2 / scale)[:, None] * b
        up = SQRT2 * a.mH * scale
        if self.kernel_size:
            return fourier_conv(F.relu(fourier_conv(x, down, bias)), up)
        if x.dim() == 4:
            return F.conv2d(F.relu(F.conv2d(x, down[..., None, None], bias)), up[..., None, None])
        return F.linear(F.relu(F.linear(x, down, bias)), up)

    def singular_value_range(self, input_shape: Shape) -> tuple[float, float]:
        """Extreme singular values of [A B] (of every [A(f) B(f)] for a convolution)."""
        return extreme_singular_values(self.cayley_factors(tuple(input_shape[1:]) if self.kernel_size else ()))

    def lipschitz_bound(self, input_shape: Shape) -> float:
        return self.singular_value_range(input_shape)[1] ** 2


@register_layer("sandwich", family="direct", padding="circular", exact=True, activation=nn.Identity,
                description="sqrt2 A^T Psi ReLU(sqrt2 Psi^-1 B x + b), Cayley [A B] per frequency "
                            "(Wang & Manchester 2023); includes its activation")
def build_sandwich(kind: str, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1) -> nn.Module:
    check_conv_options("sandwich", kernel_size, stride)
    return Sandwich(in_channels, out_channels, kernel_size if kind == "conv" and kernel_size > 1 else None)
