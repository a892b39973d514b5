"""AOC: adaptive orthogonal convolutions (Boissin, Mamalet, Fel, Picard, Massena & Serrurier, ICML 2025,
arXiv:2501.07930), wrapping ``orthogonium`` (github.com/deel-ai/orthogonium, the authors' library).

Math. AOC builds an explicit orthogonal kernel from orthogonal matrices: a stride-1 k x k kernel is
BCOP's block convolution of (k - 1) 2 x 2 orthogonal kernels (each from a symmetric projector and
an orthogonal matrix); a kernel of size s at stride s is RKO (the (out, in s^2) matrix of the
kernel orthogonalized: non-overlapping patches, an isometry or co-isometry); k > s at stride s
is the composition of a (k - s + 1) BCOP kernel and an s x s RKO kernel. With circular padding
the strided convolution is then orthogonal on inputs whose size the stride divides (rows
orthonormal when it reduces dimensions). A dense layer orthogonalizes its matrix.

Approximation. Every matrix is orthogonalized by 14 Björck-Bowie steps w <- 1.5 w - 0.5 w w^T w
(orthogonium: 12). Here each starts from the matrix divided by a sound bound of its norm (the
smaller of the Frobenius and Gershgorin bounds of its Gram matrix, ``linalg.gram_norm_bound``)
instead of orthogonium's 3 power-iteration steps, whose u and v parameters are fixed to float32
(a float64 layer fails): a start inside the unit ball stays there, so in exact arithmetic every
factor has norm <= 1. That start lies deeper inside, hence 2 more steps (at 12, a 4 -> 16 stride-2
layer at init kept sigma_min = 1 - 2e-4; at 14, 1 - 1e-14). The certificate does not rest on
it: ``lipschitz_bound`` is the exact norm of the explicit kernel on the input size (the FFT of
the circular convolution, at a stride on its polyphase components, ``bounds.strided_circular_conv_norm``).

Padding: circular (AOC's default), (k - 1) // 2 on each side, so stride s maps H x W to H/s x W/s.
Eval mode caches the kernel. Install: ``pip install -e '.[orthogonium]'``.
"""
from __future__ import annotations

import importlib

import torch.nn.functional as F
from torch import Tensor, nn

from lipbench.bounds import dense_norm, strided_circular_conv_norm
from lipbench.caching import eval_cached, eval_cached_per_shape
from lipbench.contracts import Shape
from lipbench.errors import UserError
from lipbench.linalg import gram_norm_bound
from lipbench.registry import register_layer

BJORCK_ITERATIONS = 14
INSTALL_HINT = "the aoc layer needs orthogonium: pip install -e '.[orthogonium]'"


class SoundNormalization(nn.Module):
    """Divides a batch of matrices by a sound bound of their norms (orthogonium's ``spectral_normalizer``)."""

    def __init__(self, weight_shape: tuple[int, ...]):
        super().__init__()

    def forward(self, weight: Tensor) -> Tensor:
        gram = weight @ weight.mT if weight.shape[-2] <= weight.shape[-1] else weight.mT @ weight
        return weight / gram_norm_bound(gram).clamp_min(1e-30).sqrt()

    def right_inverse(self, weight: Tensor) -> Tensor:
        return weight


def orthogonium(module: str):
    try:
        return importlib.import_module(f"orthogonium.{module}")
    except ImportError:
        raise UserError(INSTALL_HINT) from None


def ortho_params():
    reparametrizers = orthogonium("reparametrizers")
    class_param = orthogonium("model_factory.classparam").ClassParam
    return reparametrizers.OrthoParams(
        spectral_normalizer=class_param(SoundNormalization),
        orthogonalizer=class_param(reparametrizers.BatchedBjorckOrthogonalization, beta=0.5,
                                   niters=BJORCK_ITERATIONS, pass_through=False))


class AOCConv2d(nn.Module):
    """orthogonium's ``AdaptiveOrthoConv2d`` (circular padding), its kernel cached in eval mode."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1):
        super().__init__()
        if stride == 1 and kernel_size % 2 == 0:
            raise ValueError(f"aoc at stride 1 needs an odd kernel_size ('same' size), got kernel_size {kernel_size}")
        if kernel_size < stride:
            raise ValueError(f"aoc needs kernel_size >= stride (no orthogonal conv otherwise), "
                             f"got kernel_size {kernel_size} at stride {stride}")
        factory = orthogonium("layers.conv.AOC").AdaptiveOrthoConv2d
        self.conv = factory(in_channels, out_channels, kernel_size, stride, padding=(kernel_size - 1) // 2,
                            padding_mode="circular", ortho_params=ortho_params())

    @eval_cached
    def kernel(self) -> Tensor:
        return self.conv.weight

    def forward(self, x: Tensor) -> Tensor:
        return self.conv._conv_forward(x, self.kernel().to(x.dtype), self.conv.bias)

    @eval_cached_per_shape
    def lipschitz_bound(self, input_shape: Shape) -> float:
        """The exact norm of the circular (strided) convolution on ``input_shape``."""
        _, height, width = input_shape
        return strided_circular_conv_norm(self.kernel(), self.conv.stride[0], self.conv.padding[0], height, width)


class AOCLinear(nn.Module):
    """orthogonium's ``OrthoLinear``; per pixel, a 1x1 convolution."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.linear = orthogonium("layers.linear").OrthoLinear(in_features, out_features, ortho_params=ortho_params())

    @eval_cached
    def matrix(self) -> Tensor:
        return self.linear.weight

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.matrix().to(x.dtype), self.linear.bias)

    @eval_cached_per_shape
    def lipschitz_bound(self, input_shape: Shape) -> float:
        return dense_norm(self.matrix())


@register_layer("aoc", family="orthogonal", padding="circular", exact=True, orthogonal=True, strides=(1, 2),
                approximation={"bjorck_iterations": BJORCK_ITERATIONS, "start": "sound norm bound"},
                description="Adaptive orthogonal convolution, BCOP x RKO, strides (Boissin et al. 2025; orthogonium)")
def build_aoc(kind: str, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1) -> nn.Module:
    if kind == "linear":
        return AOCLinear(in_channels, out_channels)
    return AOCConv2d(in_channels, out_channels, kernel_size, stride)
