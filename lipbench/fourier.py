"""Circular convolutions in the Fourier domain, shared by the orthogonal layers.

A stride-1 circular convolution on h x w inputs is block-diagonalised by the 2-D DFT: it is one
(out x in) matrix per frequency. :func:`transfer_matrices` gives those matrices at the
h x (w//2 + 1) frequencies of ``rfft2`` (the others are complex conjugates, since the kernel is
real), :func:`adjoint_kernel` conjugate-transposes them all at once in the spatial domain,
:func:`fourier_conv` applies such matrices to an input, and the largest of their singular values
(:func:`extreme_singular_values`) is the convolution's exact operator norm.
:func:`circular_pad` is ``F.pad(mode="circular")`` with a cheaper backward.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

Size = tuple[int, ...]


def transfer_matrices(kernel: Tensor, size: Size) -> Tensor:
    """Per-frequency matrices (h, w//2 + 1, out, in) of a circular convolution on h x w inputs.

    The convolution is the one ``F.conv2d`` computes on a circularly padded input: a
    cross-correlation with ``kernel`` (out, in, kh, kw) centred at tap (kh//2, kw//2). Taps that
    wrap onto the same offset (a kernel larger than the input) add up.
    """
    height, width = size
    kernel_height, kernel_width = kernel.shape[-2:]
    device = kernel.device
    rows = (kernel_height // 2 - torch.arange(kernel_height, device=device)) % height
    cols = (kernel_width // 2 - torch.arange(kernel_width, device=device)) % width
    spatial = kernel.new_zeros(*kernel.shape[:2], height, kernel_width).index_add(2, rows, kernel)
    spatial = kernel.new_zeros(*kernel.shape[:2], height, width).index_add(3, cols, spatial)
    return torch.fft.rfft2(spatial).permute(2, 3, 0, 1).contiguous()


def transfer_matrices_by_dft(kernel: Tensor, size: Size) -> Tensor:
    """:func:`transfer_matrices`, computed as a DFT over the k x k taps (one small matrix product)
    instead of an FFT of the kernel zero-padded to h x w; with its backward much cheaper for small
    kernels on larger inputs (``benchmarks/`` times the layers that use it).

    A(f) = Σ_p K[p] exp(2πi <f, p - centre>), the transfer matrix of the cross-correlation.
    """
    height, width = size
    kernel_height, kernel_width = kernel.shape[-2:]
    options = {"dtype": kernel.dtype, "device": kernel.device}
    row_offsets = torch.arange(kernel_height, **options) - kernel_height // 2
    col_offsets = torch.arange(kernel_width, **options) - kernel_width // 2
    angles = 2 * math.pi * (torch.fft.fftfreq(height, **options)[:, None, None, None] * row_offsets[:, None]
                            + torch.fft.rfftfreq(width, **options)[:, None, None] * col_offsets)
    phases = torch.polar(torch.ones_like(angles), angles).flatten(2)  # (h, w//2 + 1, kh * kw)
    taps = kernel.flatten(2).permute(2, 0, 1).flatten(1).to(phases.dtype)  # (kh * kw, out * in)
    return (phases @ taps).unflatten(-1, kernel.shape[:2])


def adjoint_kernel(kernel: Tensor) -> Tensor:
    """The kernel of the adjoint convolution: its transfer matrices are the conjugate transposes."""
    return kernel.transpose(0, 1).flip(-2, -1)


def skew_kernel(kernel: Tensor) -> Tensor:
    """(M - M*) / 2: the kernel of a skew-symmetric convolution (a skew matrix for 1x1 kernels)."""
    return 0.5 * (kernel - adjoint_kernel(kernel))


def spectrum_by_frequency(x: Tensor, channels: int | None = None) -> Tensor:
    """rfft2 of x (batch, in, h, w) as (h * (w//2 + 1), batch, channels), channels zero-padded to ``channels``.

    The transform runs in float32 at least (CUDA's FFT refuses bfloat16, and bf16 spectra lose the
    precision the orthogonal matrices keep); under autocast the caller's next layer casts back.
    """
    spectrum = torch.fft.rfft2(x.to(torch.promote_types(x.dtype, torch.float32))).flatten(2).permute(2, 0, 1)
    if channels is not None and channels > x.shape[1]:
        spectrum = F.pad(spectrum, (0, channels - x.shape[1]))
    return spectrum.contiguous()


def from_spectrum_by_frequency(spectrum: Tensor, size: Size) -> Tensor:
    """The inverse of :func:`spectrum_by_frequency`: (h * (w//2 + 1), batch, out) -> (batch, out, h, w).

    The inverse transform runs along the height, then (real) along the width: on CPU that is
    faster than ``irfft2`` on the same data.
    """
    height, width = size
    columns = torch.fft.ifft(spectrum.unflatten(0, (height, width // 2 + 1)), dim=0)
    return torch.fft.irfft(columns.permute(2, 3, 0, 1).contiguous(), n=width, dim=-1)


def fourier_conv(x: Tensor, matrices: Tensor, bias: Tensor | None = None) -> Tensor:
    """Apply per-frequency matrices (h, w//2 + 1, out, in) to x (batch, in, h, w), then add ``bias``.

    The frequencies are the batch dimension of one matrix product; the bias is added to the zero
    frequency.
    """
    height, width = x.shape[-2:]
    with torch.autocast(x.device.type, enabled=False):
        product = spectrum_by_frequency(x) @ matrices.flatten(0, 1).mT  # (freq, batch, out)
        if bias is not None:
            product[0] += bias * (height * width)
        return from_spectrum_by_frequency(product, (height, width))


class _CircularPad(torch.autograd.Function):
    """``F.pad(x, [pad] * 4, mode="circular")`` with a backward that folds the border gradients onto
    one copy of the centre (torch's own backward builds several full-size temporaries)."""

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
