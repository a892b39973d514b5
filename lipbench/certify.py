"""Certification and measurement of a trained model.

A test point of class y is certified at radius eps when min_{j != y} (z_y - z_j) / K_yj > eps, where
K_yj is a sound bound on the Lipschitz constant of z_y - z_j. With the model's sound bound L on the
whole logit vector, K_yj = sqrt(2) L for every pair (a perturbation of norm eps moves z_y - z_j by at
most sqrt(2) L eps), and the test reads margin / (sqrt(2) L) > eps. A network with a normalized last
layer (:class:`lipbench.contracts.PairwiseCertifiable`) is certified per pair instead: K_yj =
L_features ||ŵ_y - ŵ_j||, exact for that layer. A :class:`Certifier` holds the K of a model.

Everything here runs in strict fp32 (TF32 off) on the model in eval mode, whatever precision it
was trained in. Inference is timed first, on a model whose eval caches are cold: the first batch
builds them (``cache_seconds``), the full batches after it are the steady state
(``infer_throughput``); the certificate is computed after.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Iterable

import torch
from torch import Tensor, nn

from lipbench.contracts import PairwiseCertifiable
from lipbench.data import AnyDataset
from lipbench.device import PeakMemory, strict_fp32, synchronize
from lipbench.lipsdp import audit_fields
from lipbench.radii import EPSILONS
from lipbench.registry import LayerMethod


def method_certificate(model: nn.Module, method: LayerMethod) -> dict[str, Any]:
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


@dataclass(frozen=True)
class Certifier:
    """The pair bounds K (classes x classes, float64) of a model's certificate and their kind."""

    pair_bounds: Tensor  # a scalar for every pair alike
    kind: str  # "margin": sqrt(2) L for every pair; "pairwise": per pair, from a normalized head

    @classmethod
    def for_model(cls, model: nn.Module, bound: float) -> "Certifier":
        """The certifier of ``model`` whose features (or whole network) are ``bound``-Lipschitz."""
        if isinstance(model, PairwiseCertifiable):
            return cls(bound * model.pair_lipschitz(exact=True).double().cpu(), "pairwise")
        return cls.margin(bound)

    @classmethod
    def margin(cls, bound: float) -> "Certifier":
        """The certifier of a ``bound``-Lipschitz logit vector: sqrt(2) bound for every pair."""
        return cls(torch.tensor(math.sqrt(2) * bound, dtype=torch.float64), "margin")

    def radii(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Each point's certified radius (<= 0 when misclassified or tied)."""
        logits, labels = logits.double().cpu(), labels.cpu()
        gaps = logits.gather(1, labels[:, None]) - logits
        bounds = self.pair_bounds.expand_as(gaps) if self.pair_bounds.dim() == 0 else self.pair_bounds[labels]
        radius = torch.where(bounds > 0, gaps / bounds.clamp_min(torch.finfo(torch.float64).tiny),
                             torch.where(gaps > 0, math.inf, -math.inf))
        return radius.scatter(1, labels[:, None], math.inf).min(dim=1).values


def certificate(model: nn.Module, method: LayerMethod) -> tuple[dict[str, Any], Certifier]:
    """The record fields of ``model``'s certificate (its sound ``lipschitz_bound``, the method's extra fields)
    and the certifier that decides each point. A normalized head is certified per pair on the features'
    bound (``lipschitz_bound_features``); ``lipschitz_bound`` is then the whole network's."""
    if not isinstance(model, PairwiseCertifiable):
        result = method_certificate(model, method)
        return result, Certifier.for_model(model, result["lipschitz_bound"])
    result = method_certificate(model.features, method)
    features_bound = result["lipschitz_bound"]
    result.update(lipschitz_bound_features=features_bound, lipschitz_bound=float(model.lipschitz_bound()),
                  certificate_kind="pairwise")
    return result, Certifier.for_model(model, features_bound)


def margins(logits: Tensor, labels: Tensor) -> Tensor:
    """True-class logit minus the largest other logit (negative when misclassified)."""
    true = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.scatter(1, labels[:, None], float("-inf"))
    return true - others.max(dim=1).values


def certified_accuracy(radius: Tensor) -> dict[str, float]:
    """Clean accuracy and CRA at each radius from per-point certified radii."""
    result = {"clean_acc": float((radius > 0).float().mean())}
    for key, eps in EPSILONS.items():
        result[key] = float((radius > eps).float().mean())
    return result


@torch.no_grad()
def evaluate_batches(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]],
                     device: torch.device) -> tuple[Tensor, Tensor, dict[str, float]]:
    """Logits and labels of centred (x, y) batches in eval mode, and inference timing: the first batch
    builds the eval caches, the steady state is timed on the full batches after it."""
    model.eval()
    all_logits, all_labels, times, sizes = [], [], [], []
    for x, y in batches:
        synchronize(device)
        began = time.perf_counter()
        logits = model(x).float()
        synchronize(device)
        times.append(time.perf_counter() - began)
        sizes.append(len(x))
        all_logits.append(logits)
        all_labels.append(y)
    steady = [t for t, n in zip(times[1:], sizes[1:]) if n == sizes[0]] or times[:1]
    per_image = sorted(steady)[len(steady) // 2] / sizes[0]
    timing = {
        "infer_throughput": 1.0 / per_image if per_image > 0 else float("nan"),
        "cache_seconds": max(0.0, times[0] - per_image * sizes[0]),
    }
    return torch.cat(all_logits), torch.cat(all_labels), timing


def evaluate(model: nn.Module, x: Tensor, y: Tensor, mean: Tensor, batch_size: int,
             device: torch.device) -> tuple[Tensor, dict[str, float]]:
    """Logits on (x, y) in tensors, centred by ``mean``, and the timing of :func:`evaluate_batches`."""
    slices = ((x[start:start + batch_size] - mean, y[start:start + batch_size]) for start in range(0, len(x), batch_size))
    logits, _, timing = evaluate_batches(model, slices, device)
    return logits, timing


def certify_and_measure(model: nn.Module, method: LayerMethod, data: AnyDataset, batch_size: int,
                        device: torch.device) -> tuple[dict[str, Any], Tensor]:
    """Inference timing and memory, the certificate, clean accuracy and CRA of a trained model; and the
    test logits (the audit reuses them). Gradients are freed first, so the inference peak holds none."""
    model.zero_grad(set_to_none=True)
    with strict_fp32():
        with PeakMemory(device) as memory:
            logits, labels, measured = evaluate_batches(model, data.test_batches(batch_size), device)
        measured["infer_peak_memory_mb"] = memory.peak_mb
        fields, certifier = certificate(model, method)
        measured.update(fields)
    measured.update(certified_accuracy(certifier.radii(logits, labels)))
    return measured, logits
