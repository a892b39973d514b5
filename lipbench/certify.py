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
from typing import Any, Iterable

import torch
from torch import Tensor, nn

from lipbench.data import AnyDataset
from lipbench.device import PeakMemory, strict_fp32, synchronize
from lipbench.radii import EPSILONS
from lipbench.registry import LayerMethod


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
def evaluate_batches(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]],
                     device: torch.device) -> tuple[Tensor, dict[str, float]]:
    """Margins on centred (x, y) batches in eval mode, and inference timing: the first batch builds the
    eval caches, the steady state is timed on the full batches after it."""
    model.eval()
    all_margins, times, sizes = [], [], []
    for x, y in batches:
        synchronize(device)
        began = time.perf_counter()
        logits = model(x).float()
        synchronize(device)
        times.append(time.perf_counter() - began)
        sizes.append(len(x))
        all_margins.append(margins(logits, y))
    steady = [t for t, n in zip(times[1:], sizes[1:]) if n == sizes[0]] or times[:1]
    per_image = sorted(steady)[len(steady) // 2] / sizes[0]
    timing = {
        "infer_throughput": 1.0 / per_image if per_image > 0 else float("nan"),
        "cache_seconds": max(0.0, times[0] - per_image * sizes[0]),
    }
    return torch.cat(all_margins), timing


def evaluate(model: nn.Module, x: Tensor, y: Tensor, mean: Tensor, batch_size: int,
             device: torch.device) -> tuple[Tensor, dict[str, float]]:
    """:func:`evaluate_batches` on (x, y) in tensors, centred by ``mean``."""
    slices = ((x[start:start + batch_size] - mean, y[start:start + batch_size]) for start in range(0, len(x), batch_size))
    return evaluate_batches(model, slices, device)


def certify_and_measure(model: nn.Module, method: LayerMethod, data: AnyDataset, batch_size: int,
                        device: torch.device) -> tuple[dict[str, Any], Tensor]:
    """Inference timing and memory, the certificate, clean accuracy and CRA of a trained model; and the
    test margins (the audit reuses them). Gradients are freed first, so the inference peak holds none."""
    model.zero_grad(set_to_none=True)
    with strict_fp32():
        with PeakMemory(device) as memory:
            margin, measured = evaluate_batches(model, data.test_batches(batch_size), device)
        measured["infer_peak_memory_mb"] = memory.peak_mb
        measured.update(certificate(model, method))
    measured.update(certified_accuracy(margin.cpu(), measured["lipschitz_bound"]))
    return measured, margin
