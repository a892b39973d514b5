"""Certification and measurement of a trained model.

A test point is certified at radius eps when it is classified correctly and
margin / (sqrt(2) * L) > eps, where margin = true logit - largest other logit and L is the
model's (sound) Lipschitz bound: a perturbation of L2 norm eps moves the logit vector by at
most L * eps, which shrinks a margin by at most sqrt(2) * L * eps.

Everything here runs in strict fp32 (TF32 off) on the model in eval mode, whatever precision it
was trained in. Inference is timed first, on a model whose eval caches are cold: the first batch
builds them (``cache_seconds``), the full batches after it are the steady state
(``infer_throughput``); the certificate is computed after.
"""
from __future__ import annotations

import math
import time
from typing import Any

import torch
from torch import Tensor, nn

from lipbench.data import Dataset
from lipbench.device import PeakMemory, strict_fp32, synchronize
from lipbench.lipsdp import audit_fields
from lipbench.radii import EPSILONS
from lipbench.registry import LayerMethod


def certificate(model: nn.Module, method: LayerMethod) -> dict[str, Any]:
    """The method's certificate hook if it has one, else the model's own product of layer bounds; for a ReLU
    MLP the verified LipSDP bound replaces either when it is smaller (the one it replaced is kept)."""
    if method.certificate is not None:
        result = dict(method.certificate(model))
    else:
        result = {"lipschitz_bound": float(model.lipschitz_bound())}
    if "lipsdp_bound" not in result and "lipsdp_skipped" not in result:
        result.update(audit_fields(model))
        if result.get("lipsdp_bound", math.inf) < result["lipschitz_bound"]:
            result["lipschitz_bound_before_lipsdp"] = result["lipschitz_bound"]
            result["lipschitz_bound"] = result["lipsdp_bound"]
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
    """Margins on (x, y) in eval mode, and inference timing: the first batch builds the eval caches,
    the steady state is timed on the full batches after it."""
    model.eval()
    all_margins, times = [], []
    for start in range(0, len(x), batch_size):
        synchronize(device)
        began = time.perf_counter()
        logits = model(x[start:start + batch_size] - mean).float()
        synchronize(device)
        times.append(time.perf_counter() - began)
        all_margins.append(margins(logits, y[start:start + batch_size]))
    full_batches = len(x) // batch_size
    steady = times[1:full_batches] or times[:1]
    per_image = sorted(steady)[len(steady) // 2] / min(batch_size, len(x))
    timing = {
        "infer_throughput": 1.0 / per_image if per_image > 0 else float("nan"),
        "cache_seconds": max(0.0, times[0] - per_image * min(batch_size, len(x))),
    }
    return torch.cat(all_margins), timing


def certify_and_measure(model: nn.Module, method: LayerMethod, data: Dataset, batch_size: int,
                        device: torch.device) -> tuple[dict[str, Any], Tensor]:
    """Inference timing and memory, the certificate, clean accuracy and CRA of a trained model; and the
    test margins (the audit reuses them). Gradients are freed first, so the inference peak holds none."""
    model.zero_grad(set_to_none=True)
    with strict_fp32():
        with PeakMemory(device) as memory:
            margin, measured = evaluate(model, data.x_test, data.y_test, data.mean, batch_size, device)
        measured["infer_peak_memory_mb"] = memory.peak_mb
        measured.update(certificate(model, method))
    measured.update(certified_accuracy(margin.cpu(), measured["lipschitz_bound"]))
    return measured, margin
