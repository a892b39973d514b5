"""Parts 2 and 3 of the audit: an empirical lower bound of the Lipschitz constant (witnessed by pairs of
actual points) and L2 PGD attacks on the points the certificate claims robust."""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from lipbench.certify import margins
from lipbench.radii import EPSILONS

BATCH_SIZE = 256
SAMPLES = 8  # attacked points per radius


STEPS = 50  # PGD steps


LOWER_POINTS = 8


LOWER_STEPS = 10  # power-iteration and pair-ascent steps each


POWER_STEP = 1e-2  # step of the finite difference J v during power iteration (working precision)


FINITE_DIFFERENCE = 1e-4  # length of the pair that witnesses a Jacobian estimate (float64)


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


def attack_certified(model: nn.Module, reference: nn.Module, x: Tensor, y: Tensor, radius: Tensor,
                     test_index: Tensor, samples: int, steps: int,
                     seed: int) -> tuple[dict[str, int], list[dict[str, Any]]]:
    """Attack up to ``samples`` points per radius that the certificate (``radius``: each point's certified
    radius) claims robust there; (points attacked per radius, violations)."""
    generator = torch.Generator().manual_seed(seed)
    radius = radius.cpu()
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
                           "certified_radius": float(radius[index[i]]),
                           "adversarial_margin": float(worst_margin[i]),
                           "perturbation_norm": float(delta[i].norm())})
    return attacked, violations
