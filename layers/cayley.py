"""Cayley: orthogonal convolutions by the Cayley transform in the Fourier domain.

Trockman & Kolter, "Orthogonalizing Convolutional Layers with the Cayley Transform",
ICLR 2021, arXiv:2104.07167.

Math: a stride-1 circular convolution on h x w inputs is one (out x in) matrix A(f) per
frequency f of the 2-D DFT. The kernel is scaled to a learned Frobenius norm alpha
(A = DFT(alpha W / ||W||_F)) and each A(f) is replaced by the Cayley transform of its skew part,
Q(f) = (I + A - A^H)^-1 (I - A + A^H), which is unitary (for out != in the paper's semi-unitary
variant, :func:`lipbench.orthogonalize.cayley_transform`). A - A^H is the transfer matrix of
W - adjoint(W), formed on the small spatial kernel. Q(-f) = conj Q(f), so the result is a real
convolution, orthogonal (semi-orthogonal for out != in), with a kernel as large as the input.
The dense layer (and the 1x1 convolution, whose A(f) is the same at every frequency) is the
Cayley transform of alpha W / ||W||_F.

Approximation: none; exact in exact arithmetic. Measured round-off: singular values within
1 +- 1.2e-6 in float32 (16 and 64 channels, 16x16, at init and with a Gaussian kernel) and
1e-14 in float64. The layer reports the extreme singular values of the matrices it actually
uses (``singular_value_range``): the largest is its exact Lipschitz constant, so round-off
cannot inflate a certificate.
Init: nn.Conv2d / nn.Linear defaults, alpha = ||W||_F, as in the paper. Padding: circular
(the FFT); stride 1. Eval mode caches Q per input size.
Fixed: alpha is a parameter from construction (the reference created it lazily, at the first
forward, after the optimizer was built, so it never trained).
"""
from __future__ import annotations

from torch import Tensor, nn

from lipbench.caching import eval_cached, eval_cached_per_shape
from lipbench.contracts import Shape
from lipbench.fourier import adjoint_kernel, fourier_conv, transfer_matrices
from lipbench.layerkit import (SingularValuesMixin, apply_dense, check_conv_options, full_precision,
                               orthogonality_certificate)
from lipbench.linalg import cayley_transform, skew_cayley
from lipbench.registry import register_layer


def normalized(weight: Tensor, norm: Tensor) -> Tensor:
    """``weight`` rescaled to Frobenius norm ``norm``."""
    return weight * (norm / weight.norm())


class CayleyConv2d(SingularValuesMixin, nn.Conv2d):
    """Orthogonal circular convolution; Q(f) is recomputed for each input size (cached in eval)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3):
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2,
                         padding_mode="circular")
        self.alpha = nn.Parameter(self.weight.detach().norm())

    @eval_cached_per_shape
    @full_precision
    def frequency_matrices(self, size: Shape) -> Tensor:
        kernel = normalized(self.weight, self.alpha)
        if self.in_channels == self.out_channels:  # A - A^H, formed on the small spatial kernel
            return skew_cayley(transfer_matrices(kernel - adjoint_kernel(kernel), size))
        return cayley_transform(transfer_matrices(kernel, size))

    def forward(self, x: Tensor) -> Tensor:
        return fourier_conv(x, self.frequency_matrices(x.shape[-2:]), self.bias)

    def operator_matrices(self, input_shape: Shape) -> Tensor:
        return self.frequency_matrices(input_shape[-2:])


class CayleyLinear(SingularValuesMixin, nn.Linear):
    """Orthogonal dense layer; applied per pixel, it is the 1x1 convolution."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__(in_features, out_features)
        self.alpha = nn.Parameter(self.weight.detach().norm())

    @eval_cached
    @full_precision
    def orthogonal_weight(self) -> Tensor:
        return cayley_transform(normalized(self.weight, self.alpha))

    def forward(self, x: Tensor) -> Tensor:
        return apply_dense(x, self.orthogonal_weight(), self.bias)

    def operator_matrices(self, input_shape: Shape) -> Tensor:
        return self.orthogonal_weight()


@register_layer("cayley", family="orthogonal", padding="circular", exact=True, orthogonal=True,
                certificate=orthogonality_certificate,
                description="Cayley transform per frequency (Trockman & Kolter 2021)")
def build_cayley(kind: str, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1) -> nn.Module:
    check_conv_options("cayley", kernel_size, stride)
    if kind == "linear" or kernel_size == 1:
        return CayleyLinear(in_channels, out_channels)
    return CayleyConv2d(in_channels, out_channels, kernel_size)
