"""Operator norms: exact ones for tests, sound upper bounds for certificates.

* :func:`operator_matrix` builds the exact matrix of a linear map by impulse response
  (feeding it the identity basis); its singular values are the ground truth on small shapes.
* :func:`dense_norm` is the exact spectral norm of a dense weight (an SVD).
* :func:`conv_norm` is a sound upper bound of a convolution's operator norm on a given input
  size. With circular padding and stride 1 it is exact: the convolution is block-diagonalised
  by the 2-D DFT, so its norm is the largest singular value of the kernel's transfer matrix
  over the H x W frequencies. With zero padding, the padded convolution is a restriction of
  the circular convolution on an (H+k-1) x (W+k-1) grid (embed the input in zeros, crop the
  output), and restrictions do not increase norms, so the FFT norm on that grid bounds it.
  A stride subsamples the output, which does not increase the norm either.
* :func:`strided_circular_conv_norm` is exact for a circular convolution at stride s on inputs that
  s divides: it is a stride-1 circular convolution of the input's s x s polyphase components
  (PixelUnshuffle, a permutation), whose kernel :func:`polyphase_kernel` regroups the taps.
Everything runs in float64 so that round-off cannot undercut a certificate.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor


def operator_matrix(linear_map: Callable[[Tensor], Tensor], input_shape: Sequence[int],
                    dtype: torch.dtype = torch.float64, chunk: int = 512) -> Tensor:
    """Matrix M with ``linear_map(x).flatten() == M @ x.flatten()`` for a linear, bias-free map."""
    size = 1
    for dim in input_shape:
        size *= dim
    columns = []
    for start in range(0, size, chunk):
        basis = torch.eye(size, dtype=dtype)[start:start + chunk].reshape(-1, *input_shape)
        columns.append(linear_map(basis).reshape(basis.shape[0], -1))
    return torch.cat(columns).T


def affine_operator_matrix(affine_map: Callable[[Tensor], Tensor], input_shape: Sequence[int],
                           dtype: torch.dtype = torch.float64) -> Tensor:
    """Like :func:`operator_matrix` for an affine map (a layer with bias): subtracts f(0)."""
    offset = affine_map(torch.zeros(1, *input_shape, dtype=dtype))
    return operator_matrix(lambda x: affine_map(x) - offset, input_shape, dtype)


def singular_values(matrix: Tensor) -> Tensor:
    return torch.linalg.svdvals(matrix.to(torch.float64))


def dense_norm(weight: Tensor) -> float:
    """Exact spectral norm of a dense weight."""
    return float(torch.linalg.matrix_norm(weight.detach().to(torch.float64), ord=2))


def circular_conv_norm(weight: Tensor, height: int, width: int) -> float:
    """Exact norm of a stride-1 circular convolution with ``weight`` (out, in, kh, kw) on H x W."""
    kernel = weight.detach().to(torch.float64)
    kh, kw = kernel.shape[-2:]
    if kh > height or kw > width:  # wrap the kernel onto the torus (taps that coincide add up)
        folded = kernel.new_zeros(*kernel.shape[:2], height, width)
        for i in range(kh):
            for j in range(kw):
                folded[..., i % height, j % width] += kernel[..., i, j]
        kernel = folded
    transfer = torch.fft.fft2(kernel, s=(height, width))  # (out, in, H, W)
    per_frequency = transfer.permute(2, 3, 0, 1)
    return float(torch.linalg.matrix_norm(per_frequency, ord=2).max())


def conv_norm(weight: Tensor, input_size: tuple[int, int], padding_mode: str = "zeros") -> float:
    """Sound upper bound of a 2-D convolution's operator norm on inputs of ``input_size``.

    Exact for circular padding at stride 1; an upper bound for zero padding and for strides.
    """
    height, width = input_size
    if padding_mode == "circular":
        return circular_conv_norm(weight, height, width)
    kh, kw = weight.shape[-2:]
    return circular_conv_norm(weight, height + kh - 1, width + kw - 1)


def polyphase_kernel(weight: Tensor, stride: int, padding: int) -> Tensor:
    """The (out, in * s^2, q, q) kernel of the stride-1 convolution that the stride-s convolution with
    ``weight`` (out, in, k, k) and ``padding`` is on the s x s polyphase components of its input.

    Tap j reads input pixel s o + j - padding, i.e. component r = (j - padding) mod s at offset
    floor((j - padding) / s) from o. The taps are shifted by (-padding) mod s so that the position t
    in the zero-filled kernel has r = t mod s; a common offset changes no norm.
    """
    out_channels, in_channels, kernel_height, kernel_width = weight.shape
    shift = -padding % stride
    height = -(-(kernel_height + shift) // stride) * stride
    width = -(-(kernel_width + shift) // stride) * stride
    padded = weight.new_zeros(out_channels, in_channels, height, width)
    padded[..., shift:shift + kernel_height, shift:shift + kernel_width] = weight
    grouped = padded.reshape(out_channels, in_channels, height // stride, stride, width // stride, stride)
    return grouped.permute(0, 1, 3, 5, 2, 4).reshape(out_channels, in_channels * stride ** 2,
                                                      height // stride, width // stride)


def strided_circular_conv_norm(weight: Tensor, stride: int, padding: int, height: int, width: int) -> float:
    """Exact norm of a circular convolution at ``stride`` on H x W inputs that the stride divides; for
    other sizes the stride-1 norm (an upper bound: a stride subsamples the output)."""
    if stride == 1 or height % stride or width % stride:
        return circular_conv_norm(weight, height, width)
    return circular_conv_norm(polyphase_kernel(weight, stride, padding), height // stride, width // stride)


def power_iteration_norm(linear_map: Callable[[Tensor], Tensor], adjoint: Callable[[Tensor], Tensor],
                         input_shape: Sequence[int], iterations: int = 100, seed: int = 0) -> float:
    """A LOWER bound of a linear map's norm (never a certificate): ``sqrt`` of the Rayleigh quotient."""
    generator = torch.Generator().manual_seed(seed)
    vector = torch.randn(1, *input_shape, generator=generator, dtype=torch.float64)
    vector /= vector.norm()
    estimate = 0.0
    for _ in range(iterations):
        image = adjoint(linear_map(vector))
        estimate = float(image.norm()) ** 0.5
        vector = image / image.norm()
    return estimate
