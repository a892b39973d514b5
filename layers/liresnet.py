"""LiResNet: linear residual blocks (Hu, Zou, Wang, Leino & Fredrikson, "Unlocking Deterministic
Robustness Certification on ImageNet", NeurIPS 2023, arXiv:2301.12549) and LiResNet++'s
Cholesky-orthogonalized dense layers (Hu, Leino, Wang & Fredrikson, "A Recipe for Improved Certifiable
Robustness", ICLR 2024, arXiv:2310.02513). Reference code: github.com/hukkai/liresnet.

Math. A block computes y = x + conv(x) + b = K x + b with the single kernel K = I + a diag(g) W (I the
Dirac kernel, W the free kernel, g a per-channel gain, a a residual scale, depth^-1/2 in the paper's
network). Being one convolution, its Lipschitz constant is ||K|| itself, at most 1 + a ||diag(g) W||: the
papers' point is that this linear residual is bounded tightly, unlike a nonlinear one. The network's
bound is the product over its layers. Here every layer divides by its estimate s of ||K||, so
the product of estimates becomes part of the layers (the same function class up to the positively
homogeneous MinMax activations and the free biases) and the common training losses apply unchanged.
Without a residual (in != out channels or a stride: the paper's stem) K = W.

Approximation. In training s = ||K u|| for a persistent unit vector u on a 16 x 16 torus, advanced
by one power-iteration step per training forward (the reference runs 10 on the feature map); it
approaches the torus norm from below, so a training-mode layer may be slightly expansive, and
``lipschitz_bound`` reports by how much. In eval mode s = max(||K u||, B) raised by 4 ulps, with B
the sound bound of ``lipbench.bounds.conv_norm`` on the input size (FFT norm of the zero-padded
convolution embedded in a circular one; exact SVD for 1x1 kernels): every evaluated layer is
1-Lipschitz by proof, whatever the iteration reached. A strided conv (the stem) is a stride-1 conv
of the input's polyphase components (``bounds.polyphase_kernel``); both u and B live there (the
unstrided norm would overestimate a 5 x 5 stride-2 stem by about 1.6x). The Rayleigh quotient
never decreases, so a bound taken before a training forward stays valid after it.

Dense layers (LiResNet++): W = L^-1 X with L L^T = X X^T + e I (Cholesky), e = 1e-3 mean(diag X X^T)
outside autograd. Then W W^T has eigenvalues l / (l + e) over those l of X X^T: ||W|| < 1 exactly,
nearly orthogonal, with no iteration. Square layers parameterize X = I + a diag(g) V; rectangular
ones orthogonalize the rows of the wide side. ``lipschitz_bound`` is the exact SVD norm.

Choices: zero 'same' padding and init as the reference (W ~ N(0, 1) / (9 width), orthogonal stem,
g = 1, zero bias); the reference's batch centering of the residual is left out (in training it makes
the block depend on the batch). The paper's network is the ``liresnet`` model family.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lipbench.bounds import conv_norm, dense_norm, polyphase_kernel
from lipbench.caching import eval_cached, eval_cached_per_shape
from lipbench.contracts import Shape
from lipbench.fourier import adjoint_kernel, circular_pad
from lipbench.layerkit import apply_dense, full_precision
from lipbench.linalg import power_iteration
from lipbench.registry import register_layer

TORUS_SIZE = 16
INIT_ITERATIONS = 10
TRAIN_ITERATIONS = 1
CHOLESKY_REGULARIZATION = 1e-3
EPS = 1e-12


class LiResConv2d(nn.Module):
    """y = (K / s) x + b, K = I + a diag(g) W when residual (in == out, stride 1), else K = W."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 residual_scale: float = 1.0):
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"liresnet needs an odd kernel_size ('same' padding), got kernel_size {kernel_size}")
        self.residual = in_channels == out_channels and stride == 1
        self.stride, self.padding, self.residual_scale = stride, kernel_size // 2, residual_scale
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.gain = nn.Parameter(torch.ones(out_channels))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        if self.residual:
            nn.init.normal_(self.weight, std=1 / (out_channels * kernel_size ** 2))
            self.register_buffer("identity", nn.init.dirac_(torch.empty_like(self.weight)), persistent=False)
        else:
            nn.init.orthogonal_(self.weight)
        torus = 1 if kernel_size == 1 else TORUS_SIZE
        vector = torch.randn(1, in_channels * stride ** 2, torus, torus)
        self.register_buffer("power_vector", vector / vector.norm())
        if not vector.is_meta:  # a network built on the meta device (to count parameters) has nothing to iterate
            self.advance_power_iteration(INIT_ITERATIONS)

    def kernel(self) -> Tensor:
        """K, the one kernel the layer applies before normalization."""
        scaled = self.weight * self.gain[:, None, None, None]
        return self.identity + self.residual_scale * scaled if self.residual else scaled

    def polyphase(self, kernel: Tensor) -> Tensor:
        """The stride-1 kernel on the input's polyphase components with the norm of the strided conv,
        zero-extended to an odd size (so that 'same' circular padding applies); K itself at stride 1."""
        if self.stride == 1:
            return kernel
        grouped = polyphase_kernel(kernel, self.stride, self.padding)
        even = 1 - grouped.shape[-1] % 2
        return F.pad(grouped, (0, even, 0, even))

    def advance_power_iteration(self, steps: int) -> None:
        kernel = self.polyphase(self.kernel().detach())
        padding = kernel.shape[-1] // 2
        apply = lambda u: F.conv2d(circular_pad(u, padding), kernel)  # noqa: E731
        adjoint = lambda v: F.conv2d(circular_pad(v, padding), adjoint_kernel(kernel))  # noqa: E731
        self.power_vector = power_iteration(apply, adjoint, self.power_vector, steps)

    def estimate(self, kernel: Tensor) -> Tensor:
        """||K u||, with gradient through K (the reference's differentiable norm estimate)."""
        kernel = self.polyphase(kernel)
        return F.conv2d(circular_pad(self.power_vector, kernel.shape[-1] // 2), kernel).norm()

    @eval_cached_per_shape
    def norm_bound(self, size: Shape) -> float:
        """A sound upper bound of ||K|| on inputs of spatial ``size`` (exact for 1x1 kernels at stride 1)."""
        kernel = self.kernel()
        if kernel.shape[-1] == 1 and self.stride == 1:
            return dense_norm(kernel.flatten(1))
        if any(side % self.stride for side in size):
            return conv_norm(kernel, size)  # the unstrided norm bounds the subsampled one
        return conv_norm(self.polyphase(kernel), tuple(side // self.stride for side in size))

    def divisor(self, kernel: Tensor, size: Shape) -> Tensor:
        """s of the module docstring, for the current mode."""
        scale = self.estimate(kernel)
        if not self.training:
            scale = scale.clamp_min(self.norm_bound(size) * (1 + 4 * torch.finfo(scale.dtype).eps))
        return scale.clamp_min(EPS)

    @eval_cached_per_shape
    @full_precision
    def normalized_kernel(self, size: Shape) -> Tensor:
        kernel = self.kernel()
        return kernel / self.divisor(kernel, size)

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            self.advance_power_iteration(TRAIN_ITERATIONS)
        kernel = self.normalized_kernel(tuple(x.shape[-2:]))
        return F.conv2d(x, kernel.to(x.dtype), self.bias, self.stride, self.padding)

    @torch.no_grad()
    def lipschitz_bound(self, input_shape: Shape) -> float:
        size = tuple(input_shape[1:])
        return self.norm_bound(size) / float(self.divisor(self.kernel(), size))


def cholesky_orthogonalize(matrix: Tensor) -> Tensor:
    """L^-1 X for L L^T = X X^T + e I: rows nearly orthonormal, norm < 1 (module docstring). Wide or square X."""
    gram = matrix @ matrix.mT
    regularization = CHOLESKY_REGULARIZATION * gram.diagonal(dim1=-2, dim2=-1).mean().detach()
    gram = gram + regularization * torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
    return torch.linalg.solve_triangular(torch.linalg.cholesky(gram), matrix, upper=False)


class CholeskyLinear(nn.Module):
    """LiResNet++'s dense layer W = chol-orth(X) (X = I + a diag(g) V when square); per pixel, a 1x1 conv."""

    def __init__(self, in_features: int, out_features: int, residual_scale: float = 1.0):
        super().__init__()
        self.residual, self.residual_scale = in_features == out_features, residual_scale
        self.free = nn.Parameter(torch.randn(out_features, in_features) / max(in_features, out_features))
        self.gain = nn.Parameter(torch.ones(out_features))
        self.bias = nn.Parameter(torch.zeros(out_features))

    @eval_cached
    @full_precision
    def orthogonal_weight(self) -> Tensor:
        free = self.free * self.gain[:, None]
        if self.residual:
            free = torch.eye(free.shape[0], dtype=free.dtype, device=free.device) + self.residual_scale * free
        if free.shape[0] > free.shape[1]:  # tall: orthogonalize the columns
            return cholesky_orthogonalize(free.mT).mT
        return cholesky_orthogonalize(free)

    def forward(self, x: Tensor) -> Tensor:
        return apply_dense(x, self.orthogonal_weight().to(x.dtype), self.bias)

    @eval_cached_per_shape
    def lipschitz_bound(self, input_shape: Shape) -> float:
        return dense_norm(self.orthogonal_weight())


@register_layer("liresnet", family="residual", padding="zero", exact=True, strides=(1, 2), model="liresnet",
                approximation={"power_iterations_per_step": TRAIN_ITERATIONS, "init_iterations": INIT_ITERATIONS,
                               "torus": TORUS_SIZE, "eval_norm": "max(estimate, sound norm bound)",
                               "cholesky_regularization": CHOLESKY_REGULARIZATION},
                description="Linear residual conv x + Wx normalized by its norm (Hu et al. 2023); "
                            "Cholesky-orthogonal dense (LiResNet++ 2024)")
def build_liresnet(kind: str, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                   residual_scale: float = 1.0) -> nn.Module:
    if kind == "linear":
        return CholeskyLinear(in_channels, out_channels, residual_scale)
    return LiResConv2d(in_channels, out_channels, kernel_size, stride, residual_scale)
