"""Part 1 of the audit: a sound upper bound of each layer's Lipschitz constant, derived from the layer
as a black box in float64 (see :mod:`lipbench.audit` for the argument of each path)."""
from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lipbench.bounds import circular_conv_norm, conv_norm, dense_norm, operator_matrix
from lipbench.contracts import input_shapes, layer_bound
from lipbench.fourier import fourier_conv
from lipbench.layerkit import apply_dense
from lipbench.registry import LayerMethod

DENSE_LIMIT = 1024  # inputs up to this many numbers get the exact impulse-response SVD


PROBES = 8


PROBE_FACTOR = 30.0  # ||A - C|| <= 30 max_j ||(A - C) x_j|| except with probability 0.027^PROBES


LINEARITY_TOLERANCE = 1e-9


KERNEL_TOLERANCE = 1e-6  # largest probe slack, relative to ||C||, for a kernel model to be accepted


@dataclass(frozen=True)
class LayerBound:
    """A bound of one layer's Lipschitz constant, how it was obtained, and whether the audit derived it."""

    bound: float
    how: str
    proved: bool


def sound_layer_bound(layer: nn.Module, input_shape: Sequence[int], dense_limit: int = DENSE_LIMIT,
                      seed: int = 0) -> LayerBound:
    """A sound bound of ``layer``'s Lipschitz constant on inputs of ``input_shape`` (module doc, part 1)."""
    shape = tuple(input_shape)
    probe = copy.deepcopy(layer).double().eval().requires_grad_(False)
    device = next(probe.parameters(), torch.empty(0)).device
    generator = torch.Generator().manual_seed(seed)

    def gaussian(count: int) -> Tensor:
        return torch.randn(count, *shape, generator=generator, dtype=torch.float64).to(device)

    try:
        with torch.no_grad():
            offset = probe(torch.zeros(1, *shape, dtype=torch.float64, device=device))
            linear_part = lambda x: probe(x.to(device)) - offset  # noqa: E731
            if is_linear(linear_part, gaussian(2)):
                found = linear_bound(linear_part, shape, dense_limit, gaussian)
                reason = f"linear on {math.prod(shape)} inputs (> dense_limit), not a convolution"
            else:
                found = residual_bound(probe, shape, gaussian(2)) or sandwich_bound(probe, shape, gaussian(2))
                reason = "nonlinear, no structure the audit knows"
    except Exception as error:  # a layer that cannot run in float64 is not audited, and says so
        found, reason = None, f"not evaluable in float64 ({type(error).__name__}: {error})"
    return found if found is not None else own_bound(layer, shape, reason)


def is_linear(linear_part: Callable[[Tensor], Tensor], points: Tensor) -> bool:
    """f(x) - f(0) is additive and homogeneous on two random points (to 1e-9, float64)."""
    x, y = points[:1], points[1:]
    gx, gy, gsum, gscaled = linear_part(torch.cat((x, y, x + y, -2.5 * x))).split(1)
    scale = gx.norm() + gy.norm() + torch.finfo(torch.float64).tiny
    return bool((gsum - gx - gy).norm() <= LINEARITY_TOLERANCE * scale
                and (gscaled + 2.5 * gx).norm() <= LINEARITY_TOLERANCE * scale)


def linear_bound(linear_part: Callable[[Tensor], Tensor], shape: tuple[int, ...], dense_limit: int,
                 gaussian: Callable[[int], Tensor]) -> LayerBound | None:
    """The exact norm by impulse response on small inputs, else a convolution's FFT bound, else None."""
    if math.prod(shape) <= dense_limit or len(shape) == 1:
        matrix = operator_matrix(linear_part, shape)
        gram = matrix @ matrix.T if matrix.shape[0] <= matrix.shape[1] else matrix.T @ matrix
        return LayerBound(float(torch.linalg.eigvalsh(gram)[-1].clamp_min(0)) ** 0.5, "impulse: exact", True)
    return convolution_bound(linear_part, shape, gaussian(PROBES))


def convolution_bound(linear_part: Callable[[Tensor], Tensor], shape: tuple[int, ...],
                      probes: Tensor) -> LayerBound | None:
    """The layer as a circular or zero-padded convolution, if the probes agree (module doc). At a stride s
    that divides the input, the layer composed with PixelShuffle (a permutation) is probed instead: a
    stride-1 convolution of the input's polyphase components with the same norm."""
    channels, height, width = shape
    out_height, out_width = linear_part(probes[:1]).shape[-2:]
    stride = height // max(out_height, 1)
    if stride > 1 and (height, width) == (out_height * stride, out_width * stride):
        polyphase = convolution_bound(lambda z: linear_part(F.pixel_shuffle(z, stride)),
                                      (channels * stride ** 2, out_height, out_width),
                                      F.pixel_unshuffle(probes, stride))
        return polyphase and LayerBound(polyphase.bound, f"stride {stride} polyphase, {polyphase.how}", True)
    centre = (height // 2, width // 2)
    impulses = probes.new_zeros(channels, *shape)
    impulses[torch.arange(channels), torch.arange(channels), centre[0], centre[1]] = 1
    response = linear_part(impulses)  # (in, out, H', W')
    if response.shape[-2:] != (height, width):
        return None
    images = linear_part(probes)
    circular = response.roll((-centre[0], -centre[1]), dims=(-2, -1)).transpose(0, 1)  # (out, in, H, W)
    slack = probe_slack(images, circular_convolution(probes, circular))
    norm = circular_conv_norm(circular, height, width)
    if slack <= KERNEL_TOLERANCE * norm:
        return LayerBound(norm + slack, "fft circular: exact", True)
    kernel = local_kernel(response, centre)
    if kernel is None:
        return None
    slack = probe_slack(images, F.conv2d(probes, kernel, padding=kernel.shape[-1] // 2))
    norm = conv_norm(kernel, (height, width), "zeros")
    if slack <= KERNEL_TOLERANCE * norm:
        return LayerBound(norm + slack, f"fft zero-padded {kernel.shape[-1]}x{kernel.shape[-1]}: upper bound", True)
    return None


def probe_slack(images: Tensor, modelled: Tensor) -> float:
    """30 x the largest probe residual: a bound of ||A - C|| except with probability < 1e-12."""
    return PROBE_FACTOR * float((images - modelled).flatten(1).norm(dim=1).max())


def circular_convolution(x: Tensor, kernel: Tensor) -> Tensor:
    """y[o] = sum_i kernel[o, i] (*) x[i], circular, kernel (out, in, H, W) with its origin at [0, 0]."""
    spectrum = torch.einsum("oihw,bihw->bohw", torch.fft.fft2(kernel), torch.fft.fft2(x))
    return torch.fft.ifft2(spectrum).real


def local_kernel(response: Tensor, centre: tuple[int, int]) -> Tensor | None:
    """The (out, in, k, k) cross-correlation kernel of a 'same' convolution from its centred impulse
    responses (in, out, H, W), or None when the response does not fit an odd window inside the image."""
    support = response.abs().amax(dim=(0, 1)) > 0
    rows, cols = support.nonzero(as_tuple=True)
    if len(rows) == 0:
        return response.new_zeros(response.shape[1], response.shape[0], 1, 1)
    reach = int(max((rows - centre[0]).abs().max(), (cols - centre[1]).abs().max()))
    height, width = response.shape[-2:]
    if centre[0] - reach < 0 or centre[1] - reach < 0 or centre[0] + reach >= height or centre[1] + reach >= width:
        return None
    window = response[..., centre[0] - reach:centre[0] + reach + 1, centre[1] - reach:centre[1] + reach + 1]
    return window.flip(-2, -1).transpose(0, 1).contiguous()


def residual_bound(layer: nn.Module, shape: tuple[int, ...], points: Tensor) -> LayerBound | None:
    """The bound of a residual ``x - W_out^T ReLU(W x + b)`` layer (module doc), or None if it is not one."""
    weight, bias = getattr(layer, "weight", None), getattr(layer, "bias", None)
    output_weight = getattr(layer, "output_weight", None)
    if not (isinstance(weight, Tensor) and isinstance(bias, Tensor) and callable(output_weight)):
        return None
    dense = weight.dim() == 2
    if dense != (len(shape) == 1) or weight.shape[1] != shape[0]:
        return None
    out_weight = output_weight(tuple(shape[1:]))
    if out_weight.shape != weight.shape:
        return None
    padding = 0 if dense else weight.shape[-1] // 2
    if dense:
        expected = points - F.linear(F.relu(F.linear(points, weight, bias)), out_weight.T)
    else:
        hidden = F.relu(F.conv2d(points, weight, bias, padding=padding))
        expected = points - F.conv_transpose2d(hidden, out_weight, padding=padding)
    if (layer(points) - expected).norm() > LINEARITY_TOLERANCE * points.norm():
        return None
    rows, out_rows = weight.flatten(1), out_weight.flatten(1)
    scales = (rows * out_rows).sum(1) / rows.pow(2).sum(1).clamp_min(torch.finfo(torch.float64).tiny)
    if bool((scales < 0).any()):
        return None
    view = (-1,) + (1,) * (weight.dim() - 1)
    remainder = out_weight - scales.view(view) * weight

    def norm(matrix: Tensor) -> float:
        return dense_norm(matrix) if dense else conv_norm(matrix, tuple(shape[1:]), "zeros")

    gram_norm = norm(scales.sqrt().view(view) * weight) ** 2
    bound = max(1.0, gram_norm - 1.0) + norm(remainder) * norm(weight)
    return LayerBound(bound, "residual: max(1, |S^1/2 W|^2 - 1) + |W_out - SW| |W|", True)


def sandwich_bound(layer: nn.Module, shape: tuple[int, ...], points: Tensor) -> LayerBound | None:
    """The bound of a sandwich ``sqrt2 A^H Psi ReLU(sqrt2 Psi^-1 B x + b)`` layer (module doc), or None."""
    factors = getattr(layer, "sandwich_factors", None)
    if not callable(factors):
        return None
    a, b, scale, bias = factors(shape)
    if bool((scale <= 0).any()) or a.shape[-2] != b.shape[-2] or b.shape[-1] != shape[0]:
        return None
    down, up = math.sqrt(2) * b / scale[:, None], math.sqrt(2) * a.mH * scale
    if a.dim() == 2:
        expected = apply_dense(F.relu(apply_dense(points, down, bias)), up, None)
    else:
        expected = fourier_conv(F.relu(fourier_conv(points, down, bias)), up)
    if (layer(points) - expected).norm() > LINEARITY_TOLERANCE * points.norm():
        return None
    bound = float(torch.linalg.svdvals(torch.cat((a, b), dim=-1)).max()) ** 2
    return LayerBound(bound, "sandwich: ||[A B]||^2", True)


def own_bound(layer: nn.Module, shape: tuple[int, ...], reason: str) -> LayerBound:
    """The layer's own ``lipschitz_bound`` (trusted, not re-derived), else none at all."""
    own = getattr(layer, "lipschitz_bound", None)
    if callable(own):
        return LayerBound(float(own(shape)), f"own lipschitz_bound, not re-derived: {reason}", False)
    return LayerBound(math.inf, f"unbounded: {reason}, no lipschitz_bound", False)


def model_layer_bounds(model: nn.Module, method: LayerMethod, dense_limit: int = DENSE_LIMIT) -> list[dict[str, Any]]:
    """One row per method layer: its input shape, the bound it declares, and the audit's sound bound."""
    if not callable(getattr(model, "method_layers", None)):
        own = getattr(model, "lipschitz_bound", None)
        bound = float(own()) if callable(own) else math.inf
        reason = "the model does not list its layers (no method_layers())"
        how = f"model's own lipschitz_bound, not re-derived: {reason}" if callable(own) else f"unbounded: {reason}"
        return [{"index": 0, "layer": type(model).__name__, "input_shape": list(model.in_shape),
                 "declared": bound, **asdict(LayerBound(bound, how, False))}]
    rows = []
    for index, (layer, shape) in enumerate(input_shapes(model)):
        audited = sound_layer_bound(layer, shape, dense_limit, seed=index)
        rows.append({"index": index, "layer": type(layer).__name__, "input_shape": list(shape),
                     "declared": layer_bound(layer, shape, method.bound), **asdict(audited)})
    return rows
