"""BRO: block reflector orthogonal layers.

Lai et al., "Enhancing Certified Robustness via Block Reflector Orthogonal Layers and Logit
Annealing Loss", ICML 2025, arXiv:2505.15174.

Math: for a c x r matrix V of rank r < c, W = I - 2 V (V^H V)^-1 V^H = I - 2 P is the block
reflector across the range of V: P is the orthogonal projector onto it, so W = W^H = W^-1 is
unitary, with eigenvalue -1 on range(V) and +1 on its complement. The convolution takes V(f), the
c x r transfer matrix of a learned k x k kernel, at every frequency f of the 2-D DFT; V(-f) =
conj V(f), so W(-f) = conj W(f) and the layer is a real circular convolution, orthogonal, with a
kernel as large as the input. No iteration, no series: (V^H V)^-1 is never formed; W = I - 2 Q Q^H
with Q the orthonormal factor of V's Householder QR (Q Q^H = P), one QR per frequency. The dense
layer (and the 1x1 convolution, whose V(f) is the same at every frequency) is the reflector of one V.
Channel change (as the paper): c = max(in, out), W sliced to its first out rows and in columns
(an isometry for out > in, a co-isometry for out < in). Stride 2: the input is first rearranged
by PixelUnshuffle(2) (a permutation: 4 x in channels at half the resolution), as the reference.
Rank: square layers r = round(rank_ratio * c), 0 < r < c (rank_ratio = 0.5, the paper's BRONet
setting; r = c would give W = -I); rectangular ones r = min(in, out), as the reference.

Approximation: none. Round-off: Householder QR gives a Q orthonormal to machine precision whatever
the conditioning of V, so W is unitary to ~1e-6 (float32) even for a rank-deficient or
near-singular V(f) (a rank-deficient V gives the reflector across an r-dimensional space
containing its range: still orthogonal). The reference instead solves with V^H V + eps I, eps =
1e-5 x mean(diag V^H V) (1e-7 in its BRONet backbone): with V = U S R^H its W has eigenvalues
(eps - s^2) / (eps + s^2), in (-1, 1], so that ridge never makes the layer expansive but loses
norm where s^2 is within a few decades of eps (eps = 1e-6 x mean: sigma_min 0.87 at cond(V^H V) =
2e5), and without it float32 Cholesky solves turn expansive (sigma_max 1 + 4e-3 there) or NaN
(rank-deficient V). The one cost of QR: its gradient is undefined at an exactly rank-deficient V(f) (measure zero) and, as
the reflector's own derivative, large near one. The layer reports the extreme singular values of
the matrices it actually applies (``singular_value_range``), so the certificate uses its exact
Lipschitz constant, never an assumed 1.
Init (the reference's identity init, plus a small Gaussian, as BRONet's quasi-residual
parameterization starts): V = [I_r; 0] at the centre tap + N(0, 1/(c k^2)^2) on every tap,
zero bias. Padding: circular (the reference zero-pads and crops, which keeps the bound <= 1 but
not orthogonality). Eval mode caches W(f) per input size.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lipbench.caching import eval_cached, eval_cached_per_shape
from lipbench.contracts import Shape
from lipbench.fourier import fourier_conv, transfer_matrices
from lipbench.layerkit import SingularValuesMixin, apply_dense, full_precision, orthogonality_certificate
from lipbench.registry import register_layer

RANK_RATIO = 0.5


def block_reflector(v: Tensor, rows: int, cols: int) -> Tensor:
    """The first ``rows`` x ``cols`` block of I - 2 V (V^H V)^-1 V^H = I - 2 Q Q^H for a batch (..., c, r) of V,
    Q the orthonormal factor of V's (Householder) QR decomposition."""
    basis = torch.linalg.qr(v).Q
    identity = torch.eye(v.shape[-2], dtype=v.dtype, device=v.device)[:rows, :cols]
    return identity - 2 * basis[..., :rows, :] @ basis[..., :cols, :].mH


def reflector_rank(in_channels: int, out_channels: int, rank_ratio: float) -> int:
    channels = max(in_channels, out_channels)
    rank = round(rank_ratio * channels) if in_channels == out_channels else min(in_channels, out_channels)
    if not 0 < rank < channels:
        raise ValueError(f"bro needs 0 < rank < channels: rank_ratio {rank_ratio} of {channels} channels "
                         f"gives rank {rank}")
    return rank


def reflector_init(weight: Tensor) -> None:
    """[I_r; 0] at the centre tap plus a small Gaussian on every tap."""
    channels, rank, height, width = weight.shape
    with torch.no_grad():
        weight.normal_(0, 1 / (channels * height * width))
        weight[:, :, height // 2, width // 2] += torch.eye(channels, rank, dtype=weight.dtype)


class BROConv2d(SingularValuesMixin, nn.Module):
    """Orthogonal circular convolution by a block reflector per frequency (cached in eval)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 rank_ratio: float = RANK_RATIO):
        super().__init__()
        self.in_channels, self.out_channels, self.stride = in_channels * stride ** 2, out_channels, stride
        channels = max(self.in_channels, out_channels)
        rank = reflector_rank(self.in_channels, out_channels, rank_ratio)
        self.weight = nn.Parameter(torch.empty(channels, rank, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        reflector_init(self.weight)

    @eval_cached_per_shape
    @full_precision
    def frequency_matrices(self, size: Shape) -> Tensor:
        return block_reflector(transfer_matrices(self.weight, size), self.out_channels, self.in_channels)

    def forward(self, x: Tensor) -> Tensor:
        if self.stride > 1:
            x = F.pixel_unshuffle(x, self.stride)
        return fourier_conv(x, self.frequency_matrices(x.shape[-2:]), self.bias)

    def operator_matrices(self, input_shape: Shape) -> Tensor:
        return self.frequency_matrices(tuple(n // self.stride for n in input_shape[-2:]))


class BROLinear(SingularValuesMixin, nn.Module):
    """Orthogonal dense layer (per pixel: the 1x1 convolution, after PixelUnshuffle for stride 2)."""

    def __init__(self, in_features: int, out_features: int, stride: int = 1, rank_ratio: float = RANK_RATIO):
        super().__init__()
        self.in_features, self.out_features, self.stride = in_features * stride ** 2, out_features, stride
        features = max(self.in_features, out_features)
        rank = reflector_rank(self.in_features, out_features, rank_ratio)
        self.weight = nn.Parameter(torch.empty(features, rank, 1, 1))
        self.bias = nn.Parameter(torch.zeros(out_features))
        reflector_init(self.weight)

    @eval_cached
    @full_precision
    def orthogonal_weight(self) -> Tensor:
        return block_reflector(self.weight[..., 0, 0], self.out_features, self.in_features)

    def forward(self, x: Tensor) -> Tensor:
        if self.stride > 1:
            x = F.pixel_unshuffle(x, self.stride)
        return apply_dense(x, self.orthogonal_weight(), self.bias)

    def operator_matrices(self, input_shape: Shape) -> Tensor:
        return self.orthogonal_weight()


@register_layer("bro", family="orthogonal", padding="circular", exact=True, orthogonal=True, strides=(1, 2),
                model="bronet", certificate=orthogonality_certificate,
                description="Low-rank block reflector per frequency, no iteration (Lai et al. 2025)")
def build_bro(kind: str, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
              rank_ratio: float = RANK_RATIO) -> nn.Module:
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"bro needs an odd kernel_size, got kernel_size {kernel_size}")
    if stride not in (1, 2):
        raise ValueError(f"bro supports stride 1 or 2 (PixelUnshuffle), got stride {stride}")
    if kind == "linear" or kernel_size == 1:
        return BROLinear(in_channels, out_channels, stride if kind == "conv" else 1, float(rank_ratio))
    return BROConv2d(in_channels, out_channels, kernel_size, stride, float(rank_ratio))
