"""LOT: layer-wise orthogonal training by an inverse square root in the Fourier domain.

Xu, Li & Li, "LOT: Layer-wise Orthogonal Training on Improving l2 Certified Robustness",
NeurIPS 2022, arXiv:2210.11620.

Math: a stride-1 circular convolution on h x w inputs is one (out x in) matrix V(f) per
frequency f of the 2-D DFT. LOT replaces each by W(f) = (V V^H)^(-1/2) V, the closest
(semi-)unitary matrix, computed with Newton–Schulz iterations. W(-f) = conj W(f), so the layer
is a real convolution with a kernel as large as the input. For out > in the iteration runs on
V^H V (orthonormal columns) where the paper regularises the singular V V^H with 1e-4 I. The
dense layer (and the 1x1 convolution, whose V(f) is the same at every frequency) orthonormalizes
its weight matrix the same way.

Approximation: 10 Newton–Schulz iterations, as in the paper. Each maps a singular value s of
the normalised V to s (3 - s^2) / 2, so in exact arithmetic no singular value exceeds 1: the
layer is never expansive, but singular values far below the largest converge slowly (x1.5 per
step) and the layer is then contractive at those frequencies. V V^H is normalised by
min(Frobenius norm, largest row sum), an upper bound of its norm that is tight for nearly
unitary V; the paper's Frobenius norm alone starts every s of a unitary V at c^(-1/4) for c
channels. The limit (V V^H)^(-1/2) V is the same.
Measured (float32, 16x16 input): at the identity init all singular values are 1 to 1e-7, and
within 1e-14 on the conformance shapes after 20 SGD steps at lr 0.1 (float64). A Gaussian random
kernel, the ill-conditioned extreme (per-frequency condition numbers up to 290 / 2500 at 16 / 64
channels), leaves 7% / 9% of the singular values below 0.999 and the smallest at 0.15 / 0.014
(20 iterations: 0% / 0.05% below 0.999; 30: none). The largest stays within 1 + 3e-7.
The layer reports the extreme singular values of the matrices it uses (``singular_value_range``):
the largest is its exact Lipschitz constant, so the certificate never rests on convergence, and
the certificate hook records the deviation from orthogonality.
Init: identity (Dirac kernel) and zero bias, as in the paper. Padding: circular; stride 1.
Eval mode caches W(f) per input size.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from lipbench.caching import eval_cached_per_shape
from lipbench.contracts import Shape
from lipbench.fourier import fourier_conv, transfer_matrices
from lipbench.layerkit import (OrthonormalizedLinear, SingularValuesMixin, check_conv_options, full_precision,
                               orthogonality_certificate)
from lipbench.linalg import orthonormalize
from lipbench.registry import register_layer

NEWTON_ITERATIONS = 10


class LOTConv2d(SingularValuesMixin, nn.Conv2d):
    """Orthogonal circular convolution; W(f) is recomputed for each input size (cached in eval)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3,
                 iterations: int = NEWTON_ITERATIONS):
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2,
                         padding_mode="circular")
        self.iterations = iterations
        with torch.no_grad():
            self.weight.zero_()
            self.weight[:, :, kernel_size // 2, kernel_size // 2] = torch.eye(out_channels, in_channels)
            self.bias.zero_()

    @eval_cached_per_shape
    @full_precision
    def frequency_matrices(self, size: Shape) -> Tensor:
        return orthonormalize(transfer_matrices(self.weight, size), self.iterations)

    def forward(self, x: Tensor) -> Tensor:
        return fourier_conv(x, self.frequency_matrices(x.shape[-2:]), self.bias)

    def operator_matrices(self, input_shape: Shape) -> Tensor:
        return self.frequency_matrices(input_shape[-2:])


@register_layer("lot", family="orthogonal", padding="circular", exact=False, orthogonal=True, tolerance=1e-5,
                approximation={"newton_iterations": NEWTON_ITERATIONS}, certificate=orthogonality_certificate,
                description="Inverse square root per frequency by Newton-Schulz (Xu et al. 2022)")
def build_lot(kind: str, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1) -> nn.Module:
    check_conv_options("lot", kernel_size, stride)
    if kind == "linear" or kernel_size == 1:
        return OrthonormalizedLinear(in_channels, out_channels, NEWTON_ITERATIONS, identity_init=True)
    return LOTConv2d(in_channels, out_channels, kernel_size)
