"""CPL: convex potential layers (Meunier, Delattre, Araujo & Allauzen, ICML 2022, arXiv:2110.12690).

Math: f(x) = x - (2 / sigma^2) W^T ReLU(W x + b), a gradient step on a convex potential. Its
Jacobian I - (2 / sigma^2) W^T D W (D diagonal in [0, 1]) is symmetric with eigenvalues in
[1 - 2 ||W||^2 / sigma^2, 1], so ||J|| <= max(1, 2 ||W||^2 / sigma^2 - 1): 1-Lipschitz iff
sigma >= ||W|| (on the input size the layer sees).

Approximation: sigma comes from power iteration on W^T W, one step per training step from a
persistent unit vector u (the paper's scheme), sigma = ||W u||. That estimate approaches ||W||
from below, so a layer in training mode may be slightly expansive; ``lipschitz_bound`` reports
exactly how much, with ||W|| from :mod:`lipbench.bounds` (the exact SVD norm for dense and 1x1
layers, the sound FFT bound of the zero-padded convolution otherwise). Power iteration's
Rayleigh quotient never decreases, so a bound computed before a training forward stays valid
for it. In eval mode sigma = max(||W u||, that sound bound), raised by 4 ulps so that the
rounded step stays <= 2 / bound^2: the evaluated layer is 1-Lipschitz by proof (its bound is
exactly 1) and differs from the training one only where the estimate fell short. (The
reference ran 100 iterations at eval, still an under-estimate, so its bound exceeded 1.)
The vector u of a k x k convolution cannot have the input's size, unknown at construction
(the reference created it lazily at the first forward): it lives on a fixed 16 x 16 torus
(circular convolution), whose norm approaches the supremum over frequencies of the kernel's
transfer matrix, itself an upper bound of the zero-padded convolution on every input size
(measured on random kernels: within 0.6% of it; the sound bound on a 4 x 4 input can be 5%
below it, and eval then keeps the estimate).
Init: Xavier-normal W (as in the comparison paper), u refined by 10 power iterations.
Padding: zero 'same' padding, as in the paper; stride 1. Eval mode caches W * 2 / sigma^2
per input size.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lipbench.bounds import conv_norm, dense_norm
from lipbench.caching import eval_cached_per_shape
from lipbench.contracts import Shape
from lipbench.fourier import adjoint_kernel, circular_pad
from lipbench.layerkit import check_conv_options
from lipbench.layers._residual import ResidualLayer, check_square
from lipbench.linalg import power_iteration
from lipbench.registry import register_layer

TORUS_SIZE = 16
INIT_ITERATIONS = 10
TRAIN_ITERATIONS = 1
EPS = 1e-12


class ConvexPotentialLayer(ResidualLayer):
    """CPL, dense for ``kernel_size=None``, else a k x k convolution (square: in == out)."""

    def __init__(self, channels: int, kernel_size: int | None = None):
        super().__init__(channels, kernel_size)
        if kernel_size is None:
            shape: tuple[int, ...] = (1, channels)
        else:
            torus = 1 if kernel_size == 1 else TORUS_SIZE
            shape = (1, channels, torus, torus)
        vector = torch.randn(shape)
        self.register_buffer("power_vector", vector / vector.norm())
        self.advance_power_iteration(INIT_ITERATIONS)

    def apply_weight(self, u: Tensor) -> Tensor:
        """W u on the power-iteration domain (a circular convolution for kernels)."""
        if self.weight.dim() == 2:
            return F.linear(u, self.weight)
        return F.conv2d(circular_pad(u, self.padding), self.weight)

    def apply_adjoint(self, v: Tensor) -> Tensor:
        if self.weight.dim() == 2:
            return F.linear(v, self.weight.T)
        return F.conv2d(circular_pad(v, self.padding), adjoint_kernel(self.weight))

    def advance_power_iteration(self, steps: int) -> None:
        self.power_vector = power_iteration(self.apply_weight, self.apply_adjoint, self.power_vector, steps)

    @eval_cached_per_shape
    def norm_bound(self, size: Shape) -> float:
        """A sound upper bound of ||W|| on inputs of spatial ``size`` (exact for dense and 1x1)."""
        if self.weight.dim() == 2 or self.weight.shape[-1] == 1:
            return dense_norm(self.weight.flatten(1))
        return conv_norm(self.weight, size)

    def step_size(self, size: Shape) -> Tensor:
        """2 / sigma^2 with sigma as described in the module docstring for the current mode."""
        sigma = self.apply_weight(self.power_vector).norm()
        if not self.training:  # a few ulps above the bound, so that the rounded step stays <= 2 / bound^2
            sigma = sigma.clamp_min(self.norm_bound(size) * (1 + 4 * torch.finfo(sigma.dtype).eps))
        return 2 / (sigma.square() + EPS)

    @eval_cached_per_shape
    def output_weight(self, size: Shape) -> Tensor:
        return self.weight * self.step_size(size)

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            self.advance_power_iteration(TRAIN_ITERATIONS)
        return super().forward(x)

    @torch.no_grad()
    def lipschitz_bound(self, input_shape: Shape) -> float:
        size = tuple(input_shape[1:])
        return max(1.0, float(self.step_size(size)) * self.norm_bound(size) ** 2 - 1.0)


@register_layer("cpl", family="residual", padding="zero", exact=True,
                approximation={"power_iterations_per_step": TRAIN_ITERATIONS, "init_iterations": INIT_ITERATIONS,
                               "torus": TORUS_SIZE, "eval_sigma": "max(estimate, sound norm bound)"},
                description="Convex potential layer (Meunier et al. 2022); eval sigma >= sound norm bound")
def build_cpl(kind: str, in_channels: int, out_channels: int, kernel_size: int = 3,
              stride: int = 1) -> ConvexPotentialLayer:
    check_square("cpl", in_channels, out_channels)
    if kind == "linear":
        return ConvexPotentialLayer(in_channels)
    check_conv_options("cpl", kernel_size, stride)
    return ConvexPotentialLayer(in_channels, kernel_size)
