"""SOC: skew orthogonal convolutions (Singla & Feizi, ICML 2021, arXiv:2105.11417).

Math: if A^T = -A, exp(A) is orthogonal. SOC takes for A the convolution with the kernel
S = (M - M*) / 2, where M* (M transposed in channels, flipped in space) is the kernel of the
adjoint convolution, scaled to A = c S / nu, and applies exp(A) by its Taylor polynomial
p_d(A) = sum_{j<=d} A^j / j!. For in != out channels the input is zero-padded to
max(in, out) channels and the output sliced (the paper's choice): the top-left block of p_d(A).
A 1x1 kernel (and the dense variant) is the matrix exponential of a skew-symmetric matrix.

Normalization (as the reference): nu = min of power-iteration estimates of the spectral norms
of S reshaped to (out*h, in*w) and to (out, in*h*w) ("fantastic four" reshapings; for a skew
kernel the other two are permuted transposes of these), c = 0.7 (1 for 1x1 kernels), 50
iterations at construction and at every 200th training step, one at every other step (the
reference's init_iters, update_freq and update_iters). It is a heuristic, not a bound: ||A|| is about 1.2 to
1.5 for random 3x3 kernels. Soundness comes from ``lipschitz_bound`` below.

Approximation and its error: degree d = 5 in training, 12 in eval (the reference's
train_terms and eval_terms). ||p_d(A) - exp(A)|| <= tau = sum_{j>d} ||A||^j / j!, so every
singular value of p_d(A) lies in [1 - tau, 1 + tau]. ``lipschitz_bound`` returns 1 + tau (the
series tail bounded by a geometric one) with ||A|| exact on the input size (the FFT norm of the
circular convolution, an SVD for dense), valid for the mode the layer is in; a training
forward only raises nu, so a bound taken before it stays valid. Measured (float64, random 3x3
kernel, 64 channels, 16 x 16): ||A|| = 1.22, tau = 5.5e-3 in training and 2.3e-9 in eval,
while the singular values deviate from 1 by at most 2.3e-3 and 1.9e-9. A is normal, so they
are |p_d(i theta)| over its eigenvalues i theta: degree 5 never falls below 1 for
|theta| <= 1.9 and degree 12 stays above 1 - 3e-8 for |theta| <= 1.5; the declared tolerance
for sigma_min, 1e-4, covers that (conformance shapes after 20 SGD steps: 1 - 5e-9).

Padding: circular by default; ``padding="zero"`` (``--layer-option padding=zero``) is the
paper's and the reference's variant. A zero-padded 'same' convolution with an odd kernel has for
adjoint the zero-padded convolution with the transposed-flipped kernel, so with S* = -S the
operator A is exactly skew-symmetric (the paper's Theorem 2) and exp(A) exactly orthogonal; the
layer applies p_d(A) as d zero-padded convolutions (Horner's scheme), and the bound uses the
circular norm on the input padded by k - 1 pixels, which bounds ||A|| from above (so tau stays
sound, not exact). With circular padding (the default): A circular convolution is one matrix per
frequency of the 2-D DFT, so p_d(A) is one matrix per frequency, built with d - 1 products
(C^3 per frequency) and applied with one FFT-domain product; when the batch is smaller than
the channels, training applies the d products to the batch's spectrum instead (the same
operator). Eval mode caches p_d(A) per input size: one product instead of the reference's 12
convolutions. Circular padding also makes ||A|| and so tau exact.
Init: M Gaussian with std 1/sqrt(channels), bias uniform in +-1/sqrt(out) (the reference).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from lipbench.bounds import conv_norm, dense_norm
from lipbench.caching import eval_cached, eval_cached_per_shape
from lipbench.contracts import Shape
from lipbench.errors import UserError
from lipbench.fourier import (fourier_conv, from_spectrum_by_frequency, skew_kernel, spectrum_by_frequency,
                              transfer_matrices_by_dft)
from lipbench.layerkit import apply_dense, check_conv_options
from lipbench.linalg import power_iteration, taylor_polynomial, taylor_tail_bound
from lipbench.registry import register_layer

TRAIN_DEGREE = 5
EVAL_DEGREE = 12
CORRECTION = 0.7
INIT_ITERATIONS = 50
TRAIN_ITERATIONS = 1
REESTIMATE_EVERY = 200
PADDINGS = ("circular", "zero")


def norm_reshapings(kernel: Tensor) -> tuple[Tensor, Tensor]:
    """The kernel (out, in, h, w) as (out*h, in*w) and (out, in*h*w) matrices."""
    out_channels, in_channels, height, width = kernel.shape
    return (kernel.permute(0, 2, 1, 3).reshape(out_channels * height, in_channels * width),
            kernel.reshape(out_channels, -1))


class SkewOrthogonal(nn.Module):
    """What SOC's convolution and dense layers share: the normalized skew kernel and its bound."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int):
        super().__init__()
        channels = max(in_channels, out_channels)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.correction = CORRECTION if kernel_size > 1 else 1.0
        self.weight = nn.Parameter(torch.randn(channels, channels, kernel_size, kernel_size) / math.sqrt(channels))
        self.bias = nn.Parameter(torch.empty(out_channels).uniform_(-1, 1) / math.sqrt(out_channels))
        by_rows, by_channels = norm_reshapings(self.weight)
        self.register_buffer("rows_vector", nn.functional.normalize(torch.randn(by_rows.shape[1]), dim=0))
        self.register_buffer("channels_vector", nn.functional.normalize(torch.randn(by_channels.shape[1]), dim=0))
        self.advance_normalization(INIT_ITERATIONS)
        self.training_steps = 0

    def track_normalization(self) -> None:
        """One training step's power iterations: many at every REESTIMATE_EVERY-th step, else one."""
        self.advance_normalization(INIT_ITERATIONS if self.training_steps % REESTIMATE_EVERY == 0
                                   else TRAIN_ITERATIONS)
        self.training_steps += 1

    def advance_normalization(self, steps: int) -> None:
        by_rows, by_channels = norm_reshapings(skew_kernel(self.weight.detach()))
        self.rows_vector = power_iteration(by_rows.mv, by_rows.T.mv, self.rows_vector, steps)
        self.channels_vector = power_iteration(by_channels.mv, by_channels.T.mv, self.channels_vector, steps)

    def generator(self) -> Tensor:
        """The kernel of A = c S / nu."""
        kernel = skew_kernel(self.weight)
        by_rows, by_channels = norm_reshapings(kernel)
        estimate = torch.minimum((by_rows @ self.rows_vector).norm(), (by_channels @ self.channels_vector).norm())
        return kernel * (self.correction / estimate.clamp_min(torch.finfo(kernel.dtype).tiny))

    def degree(self) -> int:
        return TRAIN_DEGREE if self.training else EVAL_DEGREE

    def generator_norm(self, size: Shape) -> float:
        raise NotImplementedError

    @eval_cached_per_shape
    @torch.no_grad()
    def lipschitz_bound(self, input_shape: Shape) -> float:
        """1 + tau for the current mode's degree (sound, see the module docstring)."""
        return 1.0 + taylor_tail_bound(self.generator_norm(tuple(input_shape[1:])), self.degree() + 1)


class SOCConv2d(SkewOrthogonal):
    """SOC with a k x k kernel (k > 1), applied in the Fourier domain (circular padding)."""

    @eval_cached_per_shape
    def frequency_matrices(self, size: Shape) -> Tensor:
        polynomial = taylor_polynomial(transfer_matrices_by_dft(self.generator(), size), self.degree())
        return polynomial[..., :self.out_channels, :self.in_channels]

    def series_on_batch(self, x: Tensor) -> Tensor:
        """p_d(A) x by Horner's scheme on the batch's spectrum, v <- A v + x / j!: d products of
        size batch x C^2 per frequency instead of the C^3 ones that build p_d(A)."""
        generator = transfer_matrices_by_dft(self.generator(), x.shape[-2:]).flatten(0, 1).mT
        spectrum = spectrum_by_frequency(x, generator.shape[-1])  # (frequencies, batch, channels)
        result = spectrum / math.factorial(self.degree())
        for j in range(self.degree() - 1, -1, -1):
            result = torch.baddbmm(spectrum, result, generator, beta=1 / math.factorial(j))
        return from_spectrum_by_frequency(result[..., :self.out_channels], x.shape[-2:])

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            self.track_normalization()
        if self.training and x.shape[0] < self.weight.shape[0]:
            output = self.series_on_batch(x)
        else:
            output = fourier_conv(x, self.frequency_matrices(x.shape[-2:]))
        return output + self.bias[:, None, None]

    def generator_norm(self, size: Shape) -> float:
        return conv_norm(self.generator(), size, "circular")


class SOCZeroPaddedConv2d(SkewOrthogonal):
    """SOC with a k x k kernel and zero padding (the paper's variant): p_d(A) x by Horner's scheme,
    v <- A v / j + x, one zero-padded convolution per degree."""

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            self.track_normalization()
        generator = self.generator()
        padded = nn.functional.pad(x, (0, 0, 0, 0, 0, generator.shape[0] - x.shape[1]))
        result = padded
        for j in range(self.degree(), 0, -1):
            result = padded + nn.functional.conv2d(result, generator, padding=generator.shape[-1] // 2) / j
        return result[:, :self.out_channels] + self.bias[:, None, None]

    def generator_norm(self, size: Shape) -> float:
        return conv_norm(self.generator(), size, "zeros")


class SOCLinear(SkewOrthogonal):
    """SOC of a skew matrix: the dense layer and, applied per pixel, the 1x1 convolution."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(in_channels, out_channels, kernel_size=1)

    @eval_cached
    def exponential(self) -> Tensor:
        polynomial = taylor_polynomial(self.generator()[:, :, 0, 0], self.degree())
        return polynomial[:self.out_channels, :self.in_channels]

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            self.track_normalization()
        return apply_dense(x, self.exponential(), self.bias)

    def generator_norm(self, size: Shape) -> float:
        return dense_norm(self.generator()[:, :, 0, 0])


@register_layer("soc", family="orthogonal", padding="circular", exact=False, orthogonal=True,
                tolerance=1e-4, approximation={"train_degree": TRAIN_DEGREE, "eval_degree": EVAL_DEGREE,
                                               "correction": CORRECTION, "norm_iterations_per_step": TRAIN_ITERATIONS,
                                               "reestimate_every": REESTIMATE_EVERY},
                description="Skew orthogonal convolution, Taylor series in the Fourier domain (Singla & Feizi 2021)")
def build_soc(kind: str, in_channels: int, out_channels: int, kernel_size: int = 3,
              stride: int = 1, padding: str = "circular") -> SkewOrthogonal:
    if padding not in PADDINGS:
        raise UserError(f"soc: padding must be one of {', '.join(PADDINGS)}, not {padding!r} (--layer-option padding=zero)")
    if kind == "linear":
        return SOCLinear(in_channels, out_channels)
    check_conv_options("soc", kernel_size, stride)
    if kernel_size == 1:
        return SOCLinear(in_channels, out_channels)
    if padding == "zero":
        return SOCZeroPaddedConv2d(in_channels, out_channels, kernel_size)
    return SOCConv2d(in_channels, out_channels, kernel_size)
