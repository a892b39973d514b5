"""Certification and measurement of a trained model.

A test point is certified at radius eps when it is classified correctly and
margin / (sqrt(2) * L) > eps, where margin = true logit - largest other logit and L is the
model's (sound) Lipschitz bound: a perturbation of L2 norm eps moves the logit vector by at
most L * eps, which shrinks a margin by at most sqrt(2) * L * eps.
"""
from __future__ import annotations

import math
import time
from typing import Any

import torch
from torch import Tensor, nn

from lipbench.registry import LayerMethod
from lipbench.device import synchronize

EPSILONS = {"cra_36": 36 / 255, "cra_72": 72 / 255, "cra_108": 108 / 255, "cra_255": 1.0}


def certificate(model: nn.Module, method: LayerMethod) -> dict[str, Any]:
    """The method's certificate hook if it has one, else the model's own product of layer bounds."""
    if method.certificate is not None:
        result = dict(method.certificate(model))
    else:
        result = {"lipschitz_bound": float(model.lipschitz_bound())}
    if not math.isfinite(result["lipschitz_bound"]) or result["lipschitz_bound"] <= 0:
        raise ValueError(f"{method.name}: certificate gave a Lipschitz bound of {result['lipschitz_bound']}")
    return result


def margins(logits: Tensor, labels: Tensor) -> Tensor:
    """True-class logit minus the largest other logit (negative when misclassified)."""
    true = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.scatter(1, labels[:, None], float("-inf"))
    return true - others.max(dim=1).values


def certified_accuracy(margin: Tensor, lipschitz_bound: float) -> dict[str, float]:
    """Clean accuracy and CRA at each radius from per-point margins."""
    result = {"clean_acc": float((margin > 0).float().mean())}
    radius = margin / (math.sqrt(2) * lipschitz_bound)
    for key, eps in EPSILONS.items():
        result[key] = float((radius > eps).float().mean())
    return result


@torch.no_grad()
def evaluate(model: nn.Module, x: Tensor, y: Tensor, mean: Tensor, batch_size: int,
             device: torch.device) -> tuple[Tensor, dict[str, float]]:
    """Margins on (x, y) in eval mode, and inference timing (first batch = cache building, excluded)."""
    model.eval()
    all_margins, times = [], []
    for start in range(0, len(x), batch_size):
        synchronize(device)
        began = time.perf_counter()
        logits = model(x[start:start + batch_size] - mean).float()
        synchronize(device)
        times.append(time.perf_counter() - began)
        all_margins.append(margins(logits, y[start:start + batch_size]))
    steady = times[1:] or times
    steady_per_image = sum(steady) / max(1, len(x) - (batch_size if len(times) > 1 else 0))
    timing = {
        "infer_throughput": 1.0 / steady_per_image if steady_per_image > 0 else float("nan"),
        "cache_seconds": max(0.0, times[0] - sorted(steady)[len(steady) // 2]),
    }
    return torch.cat(all_margins), timing
