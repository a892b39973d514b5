"""Audit a trained model's certificate: a sound bound, an empirical lower bound, attacks on certified points.

A certificate claims: every test point with margin / (sqrt 2 * L) > eps keeps its class under any L2
perturbation of norm eps. The audit checks that claim four ways and never trusts the method:

1. Sound upper bound, layer by layer (the ConvNet lists its method layers; everything else in it is
   1-Lipschitz by construction). Each layer is rebuilt in float64 and probed as a black box:
   * linear (f(x) - f(0) additive and homogeneous on random inputs, to 1e-9):
     - ``impulse``: the operator matrix by impulse response and its exact largest singular value, when
       the input is small (<= ``dense_limit`` numbers) or 1-D (a dense layer);
     - ``fft circular``: otherwise the response to one impulse per input channel is the kernel of a
       circular convolution, whose norm is exact by the 2-D FFT (``bounds.circular_conv_norm``);
     - ``fft zero-padded``: or the kernel of a zero-padded 'same' convolution, bounded by embedding it
       in a larger circular one (``bounds.conv_norm``).
     A kernel model C is accepted only after random probes x_j (8 Gaussians) show the layer A agrees
     with it: ||A - C|| <= 30 max_j ||(A - C) x_j|| fails only if |v^T x_j| < 1/30 for all j (v the top
     singular vector of A - C), which has probability 0.027^8 < 1e-12; that slack is added to ||C||.
   * nonlinear residual ``x - W_out^T ReLU(W x + b)`` (CPL, SLL; recognised by its ``weight``,
     ``bias`` and ``output_weight(size)`` and checked on random inputs): with W_out = diag(s) W + D,
     s >= 0, every difference quotient is I - W^T diag(s) E W - D^T E W with E diagonal in [0, 1],
     so the layer is max(1, ||diag(sqrt s) W||^2 - 1) + ||D|| ||W||-Lipschitz (``residual``);
   * otherwise the layer's own ``lipschitz_bound(input_shape)``, reported as not re-derived
     (``own``), or no bound at all (infinite: an unknown layer is never assumed 1-Lipschitz).
   A model that does not list its layers (e.g. LipNeXt) gets its own ``lipschitz_bound()``, flagged.
2. Empirical lower bound: power iteration on the Jacobian at test points (J v by a finite difference,
   J^T u by backpropagation), then gradient ascent on ||f(x) - f(y)|| / ||x - y|| over pairs started
   along the top directions, both in the model's precision. Every value reported is a ratio between
   two actual points re-measured in float64, so it is a lower bound of the true constant.
3. Attacks: L2 PGD on a margin loss at each radius, on test points the certificate claims robust
   there. A perturbation within the radius that flips the class (in float32, confirmed in float64)
   is a violation, reported with the point's test index. Perturbations are not clipped to the pixel
   box: the certificate covers the whole ball.
4. Verdict: the CRA with the sound bound. When the sound bound is at most the bound the certificate
   used, every recorded certificate stands and the recorded CRA is kept (recomputing could only raise
   it); otherwise the margins of the whole test set are recomputed.

The bounds are for the function the trained parameters define, evaluated in float64; float32
inference adds round-off of about 1e-7 relative per layer, which no Lipschitz bound covers.
"""
from __future__ import annotations

import copy
import functools
import json
import math
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lipbench.bounds import circular_conv_norm, conv_norm, dense_norm, operator_matrix
from lipbench.certify import EPSILONS, certificate, certified_accuracy, evaluate, margins
from lipbench.data import Dataset, copy_to, load_dataset
from lipbench.errors import UserError
from lipbench.contracts import input_shapes, layer_bound
from lipbench.device import resolve_device
from lipbench.job import CONFIG_NAME, MODEL_NAME
from lipbench.plan import JobConfig
from lipbench.records import RECORD_NAME, write_json_atomic
from lipbench.registry import LayerMethod, create_model, get_method, list_layers, load_plugin

DENSE_LIMIT = 1024  # inputs up to this many numbers get the exact impulse-response SVD
PROBES = 8
PROBE_FACTOR = 30.0  # ||A - C|| <= 30 max_j ||(A - C) x_j|| except with probability 0.027^PROBES
LINEARITY_TOLERANCE = 1e-9
KERNEL_TOLERANCE = 1e-6  # largest probe slack, relative to ||C||, for a kernel model to be accepted
SAMPLES = 8  # attacked points per radius
STEPS = 50  # PGD steps
LOWER_POINTS = 8
LOWER_STEPS = 10  # power-iteration and pair-ascent steps each
POWER_STEP = 1e-2  # step of the finite difference J v during power iteration (working precision)
FINITE_DIFFERENCE = 1e-4  # length of the pair that witnesses a Jacobian estimate (float64)
EVAL_POINTS = 512  # test points searched for certified points to attack
BATCH_SIZE = 256


@dataclass(frozen=True)
class LayerBound:
    """A bound of one layer's Lipschitz constant, how it was obtained, and whether the audit derived it."""

    bound: float
    how: str
    proved: bool


# --- 1. sound upper bounds ------------------------------------------------------------------------


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
                found = residual_bound(probe, shape, gaussian(2))
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
    """The layer as a stride-1 circular or zero-padded convolution, if the probes agree (module doc)."""
    channels, height, width = shape
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


# --- 2. empirical lower bound ---------------------------------------------------------------------


def jacobian_lower_bound(model: nn.Module, reference: nn.Module, points: Tensor, iterations: int,
                         seed: int = 0) -> tuple[float, Tensor]:
    """Power iteration on J(x)^T J(x) at each point, then the witnessed ratio ||f(x + h v) - f(x)|| / ||h v||
    along the final v in ``reference`` (float64); and the v's.

    J v is a one-sided difference over a short step (exact inside a linear piece of a ReLU/MaxMin network)
    and J^T u is backpropagation: both work with any layer that trains, where forward-mode
    differentiation fails on custom autograd functions without a jvp.
    """
    x = points.detach().requires_grad_(True)
    with torch.enable_grad():
        output = model(x)
    generator = torch.Generator().manual_seed(seed)
    vector = unit(torch.randn(x.shape, generator=generator).to(x))
    for _ in range(iterations):
        with torch.no_grad():
            image = (model(points + POWER_STEP * vector) - output) / POWER_STEP
        (pulled,) = torch.autograd.grad(output, x, image, retain_graph=True)
        vector = unit(pulled)
    return witnessed_ratio(reference, points, FINITE_DIFFERENCE * vector), vector


def pair_lower_bound(model: nn.Module, reference: nn.Module, points: Tensor, directions: Tensor, radius: float,
                     steps: int) -> float:
    """Gradient ascent on ||f(x) - f(x + delta)|| / ||delta|| (in ``model``'s precision) from ``points`` along
    ``directions``; the best pair per point is then re-measured in ``reference`` (float64)."""
    x = points.detach().clone().requires_grad_(True)
    delta = (radius * unit(directions)).requires_grad_(True)
    optimizer = torch.optim.Adam([x, delta], lr=radius / 10)
    best_ratio = torch.zeros(len(points), device=points.device)
    best_x, best_delta = x.detach().clone(), delta.detach().clone()
    for _ in range(steps + 1):
        with torch.enable_grad():
            moved, still = model(torch.cat((x + delta, x))).chunk(2)
            ratios = (moved - still).flatten(1).norm(dim=1) / delta.flatten(1).norm(dim=1)
            optimizer.zero_grad()
            (-ratios.log().sum()).backward()
        with torch.no_grad():
            improved = ratios > best_ratio
            best_ratio = torch.where(improved, ratios, best_ratio)
            best_x[improved], best_delta[improved] = x[improved], delta[improved]
        optimizer.step()
    return witnessed_ratio(reference, best_x, best_delta)


def witnessed_ratio(reference: nn.Module, x: Tensor, delta: Tensor) -> float:
    """max over points of ||f(x + delta) - f(x)|| / ||delta||, all in ``reference``'s precision (float64)."""
    dtype = next(reference.parameters()).dtype
    x, delta = x.detach().to(dtype), delta.detach().to(dtype)
    with torch.no_grad():
        moved, still = reference(torch.cat((x + delta, x))).chunk(2)
    return float(((moved - still).flatten(1).norm(dim=1) / delta.flatten(1).norm(dim=1)).max())


def unit(vectors: Tensor) -> Tensor:
    return vectors / vectors.flatten(1).norm(dim=1).clamp_min(1e-300).view(-1, *([1] * (vectors.dim() - 1)))


# --- 3. attacks -----------------------------------------------------------------------------------


def pgd_attack(model: nn.Module, x: Tensor, y: Tensor, radii: Tensor, steps: int) -> tuple[Tensor, Tensor]:
    """L2 PGD minimising the margin within per-point radii; (lowest margin, its perturbation) per point."""
    delta = torch.zeros_like(x)
    step_size = (2.5 * radii / steps).view(-1, *([1] * (x.dim() - 1)))
    best_margin = torch.full((len(x),), math.inf, device=x.device)
    best_delta = delta.clone()
    for _ in range(steps + 1):
        delta.requires_grad_(True)
        with torch.enable_grad():
            margin = margins(model(x + delta).float(), y)
            (gradient,) = torch.autograd.grad(margin.sum(), delta)
        with torch.no_grad():
            improved = margin < best_margin
            best_margin = torch.where(improved, margin, best_margin)
            best_delta[improved] = delta[improved]
            delta = project_ball(delta - step_size * unit(gradient), radii)
    return best_margin.detach(), best_delta.detach()


def project_ball(delta: Tensor, radii: Tensor) -> Tensor:
    norms = delta.flatten(1).norm(dim=1).clamp_min(1e-300)
    return delta * (radii / norms).clamp(max=1).view(-1, *([1] * (delta.dim() - 1)))


def attack_certified(model: nn.Module, reference: nn.Module, x: Tensor, y: Tensor, margin: Tensor,
                     test_index: Tensor, certificate_bound: float, samples: int, steps: int,
                     seed: int) -> tuple[dict[str, int], list[dict[str, Any]]]:
    """Attack up to ``samples`` certified points per radius; (points attacked per radius, violations)."""
    generator = torch.Generator().manual_seed(seed)
    radius = margin.cpu() / (math.sqrt(2) * certificate_bound)
    chosen, radii, attacked = [], [], {}
    for key, eps in EPSILONS.items():
        certified = (radius > eps).nonzero().flatten()
        picked = certified[torch.randperm(len(certified), generator=generator)[:samples]]
        chosen.append(picked)
        radii += [eps] * len(picked)
        attacked[key] = len(picked)
    index = torch.cat(chosen)
    if len(index) == 0:
        return attacked, []
    device = x.device
    points, labels = x[index.to(device)], y[index.to(device)]
    radii_tensor = torch.tensor(radii, dtype=points.dtype, device=device)
    worst, perturbation = [], []
    for start in range(0, len(index), BATCH_SIZE):
        part = slice(start, start + BATCH_SIZE)
        low, delta = pgd_attack(model, points[part], labels[part], radii_tensor[part], steps)
        worst.append(low)
        perturbation.append(delta)
    worst_margin, delta = torch.cat(worst), torch.cat(perturbation)
    with torch.no_grad():
        confirmed = margins(reference((points + delta).to(torch.float64)), labels) <= 0
    keys = [key for key, count in attacked.items() for _ in range(count)]
    violations = []
    for i in ((worst_margin <= 0) & confirmed).nonzero().flatten().tolist():
        violations.append({"index": int(test_index[index[i]]), "eps": radii[i], "radius_key": keys[i],
                           "margin": float(margin[index[i]]), "certified_radius": float(radius[index[i]]),
                           "adversarial_margin": float(worst_margin[i]),
                           "perturbation_norm": float(delta[i].norm())})
    return attacked, violations


# --- 4. the audit ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditSettings:
    """How hard the audit looks (the defaults keep an XS model well under a minute on 2 CPU cores)."""

    samples: int = SAMPLES
    steps: int = STEPS
    eval_points: int = EVAL_POINTS
    lower_points: int = LOWER_POINTS
    lower_steps: int = LOWER_STEPS
    dense_limit: int = DENSE_LIMIT
    tolerance: float | None = None  # None: the method's declared tolerance
    recompute_cra: bool = False
    seed: int = 0


def audit_model(model: nn.Module, method: LayerMethod, data: Dataset, mean: Tensor, record: dict[str, Any],
                device: torch.device, samples: int = SAMPLES, steps: int = STEPS, *,
                margins_all: Tensor | None = None, **settings: Any) -> dict[str, Any]:
    """Audit ``model``'s certificate (module doc); pure: reads no files, writes none.

    record: the job's record (``lipschitz_bound``, optional ``lipschitz_bound_claimed``, ``cra_*``); when
        it has no ``lipschitz_bound`` the method's certificate is computed here.
    margins_all: the margins of the whole test set, in order, if the caller has them (the job process
        does); they spare an evaluation and make ``cra_sound`` a recomputation.
    settings: the other fields of :class:`AuditSettings`.
    Returns a JSON-ready dict; an unbounded sound bound is None.
    """
    started = time.perf_counter()
    options = AuditSettings(samples=samples, steps=steps, **settings)
    was_training = model.training
    model.eval()
    try:
        result = run_audit(model, method, data, mean.to(device), record, device, options, margins_all)
    finally:
        model.train(was_training)
    result["seconds"] = time.perf_counter() - started
    return finite_or_none(result)


def run_audit(model: nn.Module, method: LayerMethod, data: Dataset, mean: Tensor, record: dict[str, Any],
              device: torch.device, options: AuditSettings, margins_all: Tensor | None) -> dict[str, Any]:
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    if "lipschitz_bound" not in record:
        record = {**certificate(model, method), **record}
    layers = model_layer_bounds(model, method, options.dense_limit)
    sound = math.prod(row["bound"] for row in layers)
    timings["sound_bound"], clock = time.perf_counter() - clock, time.perf_counter()

    count = len(data.x_test) if margins_all is not None else min(options.eval_points, len(data.x_test))
    test_index = torch.arange(count) if margins_all is not None else \
        torch.randperm(len(data.x_test), generator=torch.Generator().manual_seed(options.seed))[:count]
    images = data.x_test[test_index.to(data.x_test.device)].to(device)
    y = data.y_test[test_index.to(data.y_test.device)].to(device)
    margin = margins_all if margins_all is not None else evaluate(model, images, y, mean, BATCH_SIZE, device)[0]
    margin, x = margin.cpu(), images - mean  # attacks and lower bounds work on the centred inputs
    timings["margins"], clock = time.perf_counter() - clock, time.perf_counter()

    reference = copy.deepcopy(model).double().requires_grad_(False)
    points = x[:options.lower_points]
    jacobian, directions = jacobian_lower_bound(model, reference, points, options.lower_steps, options.seed)
    pairs = pair_lower_bound(model, reference, points, directions, EPSILONS["cra_36"], options.lower_steps)
    timings["lower_bound"], clock = time.perf_counter() - clock, time.perf_counter()

    attacked, violation_points = attack_certified(model, reference, x, y, margin, test_index,
                                                  float(record["lipschitz_bound"]), options.samples, options.steps,
                                                  options.seed)
    timings["attack"], clock = time.perf_counter() - clock, time.perf_counter()

    recorded = {key: record.get(key) for key in EPSILONS}
    cra_sound, cra_source = sound_cra(model, data, mean, device, sound, float(record["lipschitz_bound"]), recorded,
                                      margins_all, options.recompute_cra)
    timings["cra"] = time.perf_counter() - clock
    return {
        **verdict(record, method.tolerance if options.tolerance is None else options.tolerance, sound,
                  max(jacobian, pairs), violation_points, layers),
        "lower_bound_jacobian": jacobian, "lower_bound_pairs": pairs,
        "violation_points": violation_points, "attacked": attacked, "attack_steps": options.steps,
        "eval_points": count, "cra_recorded": recorded, "cra_sound": cra_sound, "cra_sound_source": cra_source,
        "cra_difference": {key: None if recorded[key] is None else cra_sound[key] - recorded[key] for key in EPSILONS},
        "layers": layers, "timings": timings, "audited_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def sound_cra(model: nn.Module, data: Dataset, mean: Tensor, device: torch.device, sound: float,
              certificate_bound: float, recorded: dict[str, Any], margins_all: Tensor | None,
              recompute: bool) -> tuple[dict[str, float], str]:
    """The CRA per radius with the sound bound, and where it comes from (module doc, part 4)."""
    if not math.isfinite(sound):
        return {key: 0.0 for key in EPSILONS}, "no sound bound: nothing is certified"
    if margins_all is None and not recompute and sound <= certificate_bound and None not in recorded.values():
        return recorded, "recorded: the sound bound is at most the certificate's, so every recorded certificate stands"
    if margins_all is None:
        margins_all, _ = evaluate(model, data.x_test.to(device), data.y_test.to(device), mean, BATCH_SIZE, device)
    cra = certified_accuracy(margins_all.cpu(), sound)
    return {key: cra[key] for key in EPSILONS}, "recomputed on the whole test set"


def verdict(record: dict[str, Any], tolerance: float, sound: float, lower: float,
            violation_points: list[dict[str, Any]], layers: list[dict[str, Any]]) -> dict[str, Any]:
    """The bounds side by side, every problem in words, and one word for the run.

    violated: a certified point was broken, or an observed ratio exceeds the bound the certificate used;
    claim exceeded: the sound bound exceeds the bound the certificate used, or a layer's sound bound its
        declared one, by more than ``tolerance``;
    unproven: some layer's bound was taken on trust; ok otherwise. ``passed`` means no problem.
    A method's own claim (``lipschitz_bound_claimed``, e.g. RS-LMI's prod sqrt(tau), or LipNeXt's 1
    where the exact norms of its trained matrices drift above 1) exceeded by a sound bound that the
    certificate did use is a finding, listed under ``findings``, not a problem: every certificate stands.
    """
    certificate_bound = float(record["lipschitz_bound"])
    claimed = float(record.get("lipschitz_bound_claimed") or certificate_bound)
    problems = []
    if violation_points:
        broken = sorted({point["index"] for point in violation_points})
        problems.append(f"{len(violation_points)} successful attack(s) on {len(broken)} certified point(s), "
                        f"test indices {broken}")
    ratio_too_high = lower > certificate_bound * (1 + tolerance)
    if ratio_too_high:
        problems.append(f"observed Lipschitz ratio {lower:.6g} exceeds the certificate's bound {certificate_bound:.6g}")
    claim_exceeded = sound > certificate_bound * (1 + tolerance)
    if claim_exceeded:
        source = "claimed" if certificate_bound == claimed else "certificate's"
        problems.append(f"sound bound {sound:.6g} exceeds the {source} {certificate_bound:.6g} "
                        f"(tolerance {tolerance:g})")
    findings = []
    if sound > claimed * (1 + tolerance) and not claim_exceeded:
        findings.append(f"sound bound {sound:.6g} exceeds the method's claim {claimed:.6g}; the certificate used "
                        f"{certificate_bound:.6g}, so it stands")
    for row in layers:  # a layer above its own declared bound is a bug even where the product stays small
        if row["declared"] is not None and row["bound"] > row["declared"] * (1 + tolerance):
            claim_exceeded = True
            problems.append(f"layer {row['index']} ({row['layer']}) has sound bound {row['bound']:.6g} above "
                            f"its declared {row['declared']:.6g}")
    proved = all(row["proved"] for row in layers)
    word = "violated" if violation_points or ratio_too_high else "claim exceeded" if claim_exceeded else \
        "ok" if proved else "unproven"
    return {"verdict": word, "passed": not problems, "problems": problems, "findings": findings,
            "claimed_bound": claimed,
            "certificate_bound": certificate_bound, "sound_bound": sound, "sound_bound_proved": proved,
            "tolerance": tolerance, "lower_bound": lower, "violations": len(violation_points)}


def finite_or_none(value: Any) -> Any:
    """JSON-ready: infinities and NaNs become None, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: finite_or_none(item) for key, item in value.items()}
    if isinstance(value, list):
        return [finite_or_none(item) for item in value]
    return value


# --- a job on disk --------------------------------------------------------------------------------


def audit_job(job_dir: Path | str, **options: Any) -> dict[str, Any]:
    """Audit the trained model of ``job_dir`` and write the audit into its record (under ``audit``)."""
    job_dir = Path(job_dir)
    config, record = read_json(job_dir / CONFIG_NAME), read_json(job_dir / RECORD_NAME)
    if record.get("status") != "ok":
        raise UserError(f"{job_dir}: the job's status is {record.get('status')!r}; only finished runs (ok) "
                        "can be audited")
    audit = audit_checkpoint(job_dir / MODEL_NAME, JobConfig.from_dict(config), record, **options)
    write_json_atomic(job_dir / RECORD_NAME, {**record, "audit": audit})
    return audit


def audit_checkpoint(checkpoint: Path, config: JobConfig, record: dict[str, Any] | None = None,
                     device: str | None = None, data_dir: str | None = None, **options: Any) -> dict[str, Any]:
    """Rebuild the model of ``config`` from ``checkpoint`` and audit it (``record`` as in :func:`audit_model`)."""
    if not checkpoint.is_file():
        raise UserError(f"{checkpoint} does not exist: the run kept no model (re-run it with --save-model)")
    method = method_of(config)
    target = resolve_device(device or config.device)
    data = copy_to(cached_dataset(config.dataset, data_dir or config.data_dir), target)
    model = create_model(config.layer, config.size, data.in_shape, data.n_classes, config.model or None,
                         **config.layer_options)
    try:
        model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
    except (RuntimeError, ValueError, OSError) as error:
        raise UserError(f"{checkpoint} does not fit a {config.layer} {config.size} model: "
                        f"{str(error).splitlines()[0]}") from None
    mean = data.x_train.mean(dim=(0, 2, 3), keepdim=True)
    return audit_model(model.to(target), method, data, mean, record or {}, target, **options)


def method_of(config: JobConfig) -> LayerMethod:
    """The job's method, importing the job's plugins first if it is not registered yet."""
    if config.layer not in list_layers():
        for plugin in config.plugins:
            load_plugin(plugin)
    return get_method(config.layer)


@functools.lru_cache(maxsize=1)
def cached_dataset(name: str, data_dir: str | None) -> Dataset:
    """The dataset, loaded once for a folder of jobs audited one after another."""
    return load_dataset(name, data_dir)


def read_json(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise UserError(f"cannot read {path}: {error}") from None
    if not isinstance(document, dict):
        raise UserError(f"{path} is not a JSON object")
    return document
