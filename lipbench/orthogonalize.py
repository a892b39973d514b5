"""Matrix math shared by the orthogonal layers (BCOP, Cayley, LOT).

* :func:`orthonormalize`: the polar factor U of W = U P by the Newton–Schulz / Björck–Bowie
  iteration W <- (3 W - W W^H W) / 2. It maps every singular value s to s (3 - s^2) / 2, which
  converges to 1 for s in (0, sqrt 3) and never exceeds 1 on [0, sqrt 3]; the start is scaled
  by an upper bound of s_max, so in exact arithmetic every iterate has norm <= 1. A singular
  value below 1 grows by x1.5 per step while small and converges quadratically near 1.
* :func:`cayley_transform`: the (semi-)unitary Cayley transform of Trockman & Kolter;
  :func:`skew_cayley` for a skew-Hermitian argument.
* Circular convolutions in the Fourier domain: a stride-1 circular convolution on h x w inputs
  is block-diagonalised by the 2-D DFT. :func:`transfer_matrices` gives its (out x in) matrix
  at each of the h x (w//2 + 1) frequencies of ``rfft2`` (the others are complex conjugates,
  since the kernel is real), :func:`adjoint_kernel` conjugate-transposes them all at once in
  the spatial domain, :func:`fourier_conv` applies such matrices to an input, and the largest
  of their singular values (:func:`extreme_singular_values`) is the exact operator norm.
* :func:`circular_pad` is ``F.pad(mode="circular")`` with a cheaper backward.
* :func:`apply_dense` applies a dense weight to features or, as a 1x1 convolution, per pixel;
  :class:`OrthonormalizedLinear` is BCOP's and LOT's dense layer (and 1x1 convolution);
  :func:`orthogonality_certificate` is the methods' certificate hook.
* :func:`full_precision` keeps the weight computations out of autocast;
  :func:`eval_cached_per_shape` extends :func:`lipbench.caching.eval_cached` to values that
  depend on the input shape as well (per-frequency matrices, bounds).
"""
from __future__ import annotations

import functools
import math
from typing import Callable, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lipbench.caching import eval_cached
from lipbench.model import input_shapes

T = TypeVar("T")
Shape = tuple[int, ...]


def gram_norm_bound(gram: Tensor) -> Tensor:
    """Upper bound of the largest eigenvalue of PSD Hermitian matrices (..., n, n), keeping dims.

    The smaller of the Frobenius norm and the largest absolute row sum (Gershgorin); the
    latter is tight for nearly orthogonal weights, whose Gram matrix is nearly diagonal.
    """
    frobenius = torch.linalg.matrix_norm(gram, keepdim=True)
    row_sum = gram.abs().sum(dim=-1, keepdim=True).amax(dim=-2, keepdim=True)
    return torch.minimum(frobenius, row_sum)


def orthonormalize(matrix: Tensor, iterations: int) -> Tensor:
    """Approximate polar factor of a batch (..., m, n) of real or complex matrices.

    Orthonormal rows if m <= n, orthonormal columns otherwise. Written as Björck–Bowie's
    iteration on the smaller Gram matrix; it produces exactly the iterates Z_k W of LOT's
    coupled Newton–Schulz iteration Z_k -> (W W^H)^(-1/2) started from the same scaling.
    """
    if matrix.shape[-2] > matrix.shape[-1]:
        return orthonormalize(matrix.mH, iterations).mH
    batch = matrix.reshape(-1, *matrix.shape[-2:])
    gram = batch @ batch.mH
    scale = gram_norm_bound(gram).clamp_min(torch.finfo(gram.real.dtype).tiny)
    batch, gram = batch / scale.sqrt(), gram / scale
    for step in range(iterations):
        if step:
            gram = batch @ batch.mH
        batch = torch.baddbmm(batch, gram, batch, beta=1.5, alpha=-0.5)
    return batch.reshape(matrix.shape)


def skew_cayley(skew: Tensor) -> Tensor:
    """Unitary Cayley transform (I + S)^-1 (I - S) = 2 (I + S)^-1 - I of skew-Hermitian S (batched)."""
    eye = torch.eye(skew.shape[-1], dtype=skew.dtype, device=skew.device)
    return 2 * invert(eye + skew) - eye


def cayley_transform(matrix: Tensor) -> Tensor:
    """Semi-unitary Cayley transform of a batch (..., m, n) of matrices (Trockman & Kolter 2021).

    For m >= n, split W = [U; V] (U: n x n) and set A = U - U^H + V^H V. Then
    Q = [(I + A)^-1 (I - A); -2 V (I + A)^-1] has Q^H Q = I exactly; I + A is invertible
    because its Hermitian part I + V^H V is positive definite. Square W: the classical
    Cayley transform of the skew part. Wide W: the transpose of the tall case.
    """
    rows, cols = matrix.shape[-2:]
    if rows < cols:
        return cayley_transform(matrix.mH).mH
    top, bottom = matrix[..., :cols, :], matrix[..., cols:, :]
    if rows == cols:
        return skew_cayley(top - top.mH)
    eye = torch.eye(cols, dtype=matrix.dtype, device=matrix.device)
    inverse = invert(eye + top - top.mH + bottom.mH @ bottom)
    return torch.cat((2 * inverse - eye, -2 * bottom @ inverse), dim=-2)


def invert(matrix: Tensor) -> Tensor:
    """Batched inverse without ``linalg.inv``'s error check, which made it many times slower on CPU."""
    return torch.linalg.inv_ex(matrix).inverse


def transfer_matrices(kernel: Tensor, size: Shape) -> Tensor:
    """Per-frequency matrices (h, w//2 + 1, out, in) of a circular convolution on h x w inputs.

    The convolution is the one ``F.conv2d`` computes on a circularly padded input: a
    cross-correlation with ``kernel`` (out, in, kh, kw) centred at tap (kh//2, kw//2). Taps
    that wrap onto the same offset (a kernel larger than the input) add up.
    """
    height, width = size
    kernel_height, kernel_width = kernel.shape[-2:]
    device = kernel.device
    rows = (kernel_height // 2 - torch.arange(kernel_height, device=device)) % height
    cols = (kernel_width // 2 - torch.arange(kernel_width, device=device)) % width
    spatial = kernel.new_zeros(*kernel.shape[:2], height, kernel_width).index_add(2, rows, kernel)
    spatial = kernel.new_zeros(*kernel.shape[:2], height, width).index_add(3, cols, spatial)
    return torch.fft.rfft2(spatial).permute(2, 3, 0, 1).contiguous()


def adjoint_kernel(kernel: Tensor) -> Tensor:
    """The kernel of the adjoint convolution: its transfer matrices are the conjugate transposes."""
    return kernel.transpose(0, 1).flip(-2, -1)


def fourier_conv(x: Tensor, matrices: Tensor, bias: Tensor | None = None) -> Tensor:
    """Apply per-frequency matrices (h, w//2 + 1, out, in) to x (batch, in, h, w), then add ``bias``.

    The frequencies are the batch dimension of one matrix product; the bias is added to the
    zero frequency. The inverse transform runs along the height, then (real) along the width:
    on CPU that is faster than ``irfft2`` on the same data.
    """
    height, width = x.shape[-2:]
    spectrum = torch.fft.rfft2(x).flatten(2).permute(2, 0, 1).contiguous()  # (freq, batch, in)
    product = spectrum @ matrices.flatten(0, 1).mT  # (freq, batch, out)
    if bias is not None:
        product[0] += bias * (height * width)
    product = torch.fft.ifft(product.unflatten(0, matrices.shape[:2]), dim=0)
    return torch.fft.irfft(product.permute(2, 3, 0, 1).contiguous(), n=width, dim=-1)


class _CircularPad(torch.autograd.Function):
    """``F.pad(x, [pad] * 4, mode="circular")`` with a backward that folds the border gradients
    onto one copy of the centre (torch's own backward builds several full-size temporaries)."""

    @staticmethod
    def forward(ctx, x: Tensor, pad: int) -> Tensor:
        ctx.pad = pad
        return F.pad(x, [pad] * 4, mode="circular")

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        p = ctx.pad
        inner = slice(p, -p)
        folded = grad[..., inner, inner].clone()
        # each border strip of the padded grid is a copy of the opposite edge of the input
        for rows, target_rows in ((slice(None, p), slice(-p, None)), (inner, slice(None)),
                                  (slice(-p, None), slice(None, p))):
            for cols, target_cols in ((slice(None, p), slice(-p, None)), (inner, slice(None)),
                                      (slice(-p, None), slice(None, p))):
                if rows is not inner or cols is not inner:
                    folded[..., target_rows, target_cols] += grad[..., rows, cols]
        return folded, None


def circular_pad(x: Tensor, pad: int) -> Tensor:
    """Pad height and width of x (..., h, w) by ``pad`` on each side, wrapping around."""
    return _CircularPad.apply(x, pad) if pad else x


def extreme_singular_values(matrices: Tensor) -> tuple[float, float]:
    """(smallest, largest) singular value over a batch (..., m, n), computed in double precision."""
    high = torch.complex128 if matrices.is_complex() else torch.float64
    values = torch.linalg.svdvals(matrices.detach().to(high))
    return float(values.min()), float(values.max())


def apply_dense(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``weight`` (out, in) applied to x (batch, in) or, as a 1x1 convolution, to x (batch, in, h, w)."""
    if x.dim() == 4:
        return F.conv2d(x, weight[:, :, None, None], bias)
    return F.linear(x, weight, bias)


def full_precision(compute: Callable[..., T]) -> Callable[..., T]:
    """Decorate ``compute(module, ...)`` to run with autocast off: orthogonalizing in bfloat16
    leaves errors of ~1e-2. The layer's own conv or matmul may still autocast its input."""

    @functools.wraps(compute)
    def exact(module: nn.Module, *args):
        with torch.autocast(next(module.parameters()).device.type, enabled=False):
            return compute(module, *args)

    return exact


def eval_cached_per_shape(compute: Callable[[nn.Module, Shape], T]) -> Callable[[nn.Module, Shape], T]:
    """Decorate ``compute(module, shape)``: recomputed in training mode; in eval mode memoized
    per shape (without grad) until a parameter or buffer changes, as ``eval_cached`` does."""

    def table(module: nn.Module) -> dict[Shape, T]:
        return {}

    table.__name__ = f"{compute.__name__}_per_shape"
    table = eval_cached(table)

    @functools.wraps(compute)
    def cached(module: nn.Module, shape: Shape) -> T:
        if module.training:
            return compute(module, shape)
        memo, shape = table(module), tuple(shape)
        if shape not in memo:
            with torch.no_grad():
                memo[shape] = compute(module, shape)
        return memo[shape]

    return cached


def check_conv_options(name: str, kernel_size: int, stride: int) -> None:
    """Stride 1 and odd kernel sizes only (the circular padding is symmetric); ValueError otherwise."""
    if stride != 1:
        raise ValueError(f"{name} supports stride 1 only, got stride {stride}")
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"{name} needs an odd kernel_size, got kernel_size {kernel_size}")


class SingularValuesMixin:
    """For an nn.Module that applies the matrices ``operator_matrices(input_shape)`` (one per
    frequency for a convolution): their extreme singular values, and the largest as the layer's
    exact Lipschitz constant. Memoized per shape in eval mode."""

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


def orthogonality_certificate(model: nn.Module) -> dict[str, float]:
    """The ``certificate`` hook of the orthogonal methods: the model's sound bound (the product of
    its layers' largest singular values) and its layers' largest deviation from orthogonality.

    Every method layer is a :class:`SingularValuesMixin`.
    """
    ranges = [layer.singular_value_range(shape) for layer, shape in input_shapes(model, model.in_shape)]
    return {"lipschitz_bound": math.prod(high for _, high in ranges),
            "orthogonality_error": max(max(1 - low, high - 1) for low, high in ranges)}
