"""Building blocks that several layer modules share (BCOP, Cayley, LOT, SOC, and plugins alike).

* :func:`check_conv_options`: stride 1 and odd kernels, refused at construction otherwise.
* :func:`full_precision`: keeps the weight computations out of autocast.
* :func:`apply_dense`: a dense weight applied to features or, as a 1x1 convolution, per pixel.
* :class:`SingularValuesMixin`: a layer that applies one matrix per frequency (or one matrix)
  reports their extreme singular values; the largest is its exact Lipschitz constant.
* :class:`OrthonormalizedLinear`: BCOP's and LOT's dense layer (and 1x1 convolution).
* :func:`orthogonality_certificate`: the certificate hook of the orthogonal methods.
"""
from __future__ import annotations

import functools
import math
from typing import Callable, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lipbench.caching import eval_cached, eval_cached_per_shape
from lipbench.contracts import CertifiableModel, Shape, input_shapes
from lipbench.fourier import extreme_singular_values
from lipbench.linalg import orthonormalize

T = TypeVar("T")


def check_conv_options(name: str, kernel_size: int, stride: int) -> None:
    """Stride 1 and odd kernel sizes only (the circular padding is symmetric); ValueError otherwise."""
    if stride != 1:
        raise ValueError(f"{name} supports stride 1 only, got stride {stride}")
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"{name} needs an odd kernel_size, got kernel_size {kernel_size}")


def full_precision(compute: Callable[..., T]) -> Callable[..., T]:
    """Decorate ``compute(module, ...)`` to run with autocast off: orthogonalizing in bfloat16 leaves
    errors of ~1e-2. The layer's own conv or matmul may still autocast its input."""

    @functools.wraps(compute)
    def exact(module: nn.Module, *args):
        with torch.autocast(next(module.parameters()).device.type, enabled=False):
            return compute(module, *args)

    return exact


def apply_dense(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``weight`` (out, in) applied to x (batch, in) or, as a 1x1 convolution, to x (batch, in, h, w)."""
    if x.dim() == 4:
        return F.conv2d(x, weight[:, :, None, None], bias)
    return F.linear(x, weight, bias)


class SingularValuesMixin:
    """For an nn.Module that applies the matrices ``operator_matrices(input_shape)`` (one per frequency
    for a convolution): their extreme singular values, and the largest as the layer's exact Lipschitz
    constant. Memoized per shape in eval mode."""

    def operator_matrices(self, input_shape: Shape) -> Tensor:
        raise NotImplementedError

    @eval_cached_per_shape
    def singular_value_range(self, input_shape: Shape) -> tuple[float, float]:
        return extreme_singular_values(self.operator_matrices(input_shape))

    def lipschitz_bound(self, input_shape: Shape) -> float:
        return self.singular_value_range(input_shape)[1]


class OrthonormalizedLinear(SingularValuesMixin, nn.Linear):
    """Dense layer with weight ``orthonormalize(W, iterations)``; per pixel, the 1x1 convolution.

    Init: orthogonal W, or the identity with zero bias (``identity_init``).
    """

    def __init__(self, in_features: int, out_features: int, iterations: int, identity_init: bool = False):
        super().__init__(in_features, out_features)
        self.iterations = iterations
        with torch.no_grad():
            if identity_init:
                nn.init.eye_(self.weight)
                self.bias.zero_()
            else:
                nn.init.orthogonal_(self.weight)

    @eval_cached
    @full_precision
    def orthogonal_weight(self) -> Tensor:
        return orthonormalize(self.weight, self.iterations)

    def forward(self, x: Tensor) -> Tensor:
        return apply_dense(x, self.orthogonal_weight(), self.bias)

    def operator_matrices(self, input_shape: Shape) -> Tensor:
        return self.orthogonal_weight()


def orthogonality_certificate(model: CertifiableModel) -> dict[str, float]:
    """The sound bound (the product of the method layers' largest singular values) and the layers'
    largest deviation from orthogonality. Every method layer is a :class:`SingularValuesMixin`."""
    ranges = [layer.singular_value_range(shape) for layer, shape in input_shapes(model)]
    return {"lipschitz_bound": math.prod(high for _, high in ranges),
            "orthogonality_error": max(max(1 - low, high - 1) for low, high in ranges)}
