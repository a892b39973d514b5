"""Audit a trained model's certificate: a sound bound, an empirical lower bound, attacks on certified points.

A certificate claims: every test point with margin / (sqrt 2 * L) > eps (or, for a normalized head, with
min_j (z_y - z_j) / (L ||ŵ_y - ŵ_j||) > eps, L the features' bound) keeps its class under any L2
perturbation of norm eps. The audit checks that claim four ways and never trusts the method (for a
normalized head, parts 1 and 2 are about the features, whose pair norms the head gives exactly in float64):

1. Sound upper bound, layer by layer (the ConvNet lists its method layers; everything else in it is
   1-Lipschitz by construction; for a ReLU MLP, the verified LipSDP bound of :mod:`lipbench.lipsdp`
   replaces the product where it is smaller). Each layer is rebuilt in float64 and probed as a black box:
   * linear (f(x) - f(0) additive and homogeneous on random inputs, to 1e-9):
     - ``impulse``: the operator matrix by impulse response and its exact largest singular value, when
       the input is small (<= ``dense_limit`` numbers) or 1-D (a dense layer);
     - ``fft circular``: otherwise the response to one impulse per input channel is the kernel of a
       circular convolution, whose norm is exact by the 2-D FFT (``bounds.circular_conv_norm``);
     - ``fft zero-padded``: or the kernel of a zero-padded 'same' convolution, bounded by embedding it
       in a larger circular one (``bounds.conv_norm``);
     - ``stride s polyphase``: an output s times smaller (s dividing the input) is probed through
       PixelShuffle, a permutation: a stride-1 convolution of the polyphase components, as above.
     A kernel model C is accepted only after random probes x_j (8 Gaussians) show the layer A agrees
     with it: ||A - C|| <= 30 max_j ||(A - C) x_j|| fails only if |v^T x_j| < 1/30 for all j (v the top
     singular vector of A - C), which has probability 0.027^8 < 1e-12; that slack is added to ||C||.
   * nonlinear residual ``x - W_out^T ReLU(W x + b)`` (CPL, SLL; recognised by its ``weight``,
     ``bias`` and ``output_weight(size)`` and checked on random inputs): with W_out = diag(s) W + D,
     s >= 0, every difference quotient is I - W^T diag(s) E W - D^T E W with E diagonal in [0, 1],
     so the layer is max(1, ||diag(sqrt s) W||^2 - 1) + ||D|| ||W||-Lipschitz (``residual``);
   * nonlinear sandwich ``sqrt2 A^H Psi ReLU(sqrt2 Psi^-1 B x + b)`` (recognised by its
     ``sandwich_factors(shape)``, dense or per frequency, checked on random inputs): Psi > 0 diagonal
     commutes with ReLU's difference quotients E (diagonal in [0, 1]), so each is 2 A^H E B, and
     2 Re <E^1/2 A u, E^1/2 B v> <= ||[A B]||^2 for unit u, v: the layer is ||[A B]||^2-Lipschitz;
   * otherwise the layer's own ``lipschitz_bound(input_shape)``, reported as not re-derived
     (``own``), or no bound at all (infinite: an unknown layer is never assumed 1-Lipschitz).
   A model that does not list its layers gets its own ``lipschitz_bound()``, flagged as not re-derived.
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
   it); otherwise the logits of the whole test set are recomputed.

The bounds are for the function the trained parameters define, evaluated in float64; float32
inference adds round-off of about 1e-7 relative per layer, which no Lipschitz bound covers.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import torch
from torch import Tensor, nn

from lipbench.audit.bounds import DENSE_LIMIT, model_layer_bounds
from lipbench.audit.empirical import (BATCH_SIZE, LOWER_POINTS, LOWER_STEPS, SAMPLES, STEPS, attack_certified,
                                      jacobian_lower_bound, pair_lower_bound)
from lipbench.certify import Certifier, certificate, certified_accuracy, evaluate
from lipbench.contracts import PairwiseCertifiable
from lipbench.data import Dataset
from lipbench.device import strict_fp32
from lipbench.jobfolder import finite_or_none
from lipbench.lipsdp import audit_fields
from lipbench.radii import EPSILONS
from lipbench.registry import LayerMethod

EVAL_POINTS = 512  # test points searched for certified points to attack




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


def audit_model(model: nn.Module, method: LayerMethod, data: Dataset, record: dict[str, Any],
                device: torch.device, samples: int = SAMPLES, steps: int = STEPS, *,
                logits_all: Tensor | None = None, **settings: Any) -> dict[str, Any]:
    """Audit ``model``'s certificate (module doc); pure: reads no files, writes none.

    record: the job's record (``lipschitz_bound``, optional ``lipschitz_bound_claimed``, ``cra_*``); when
        it has no ``lipschitz_bound`` the method's certificate is computed here.
    logits_all: the logits of the whole test set, in order, if the caller has them (the job process
        does); they spare an evaluation and make ``cra_sound`` a recomputation.
    settings: the other fields of :class:`AuditSettings`.
    Returns a JSON-ready dict; an unbounded sound bound is None.
    """
    started = time.perf_counter()
    options = AuditSettings(samples=samples, steps=steps, **settings)
    was_training = model.training
    model.eval()
    try:
        with strict_fp32():
            result = run_audit(model, method, data, data.mean.to(device), record, device, options, logits_all)
    finally:
        model.train(was_training)
    result["seconds"] = time.perf_counter() - started
    return finite_or_none(result)


def run_audit(model: nn.Module, method: LayerMethod, data: Dataset, mean: Tensor, record: dict[str, Any],
              device: torch.device, options: AuditSettings, logits_all: Tensor | None) -> dict[str, Any]:
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    if "lipschitz_bound" not in record:
        record = {**certificate(model, method)[0], **record}
    pairwise = isinstance(model, PairwiseCertifiable)
    bounded = model.features if pairwise else model  # what the layer-by-layer bound and the lower bounds are about
    certified_with = float(record["lipschitz_bound_features"] if pairwise else record["lipschitz_bound"])
    layers = model_layer_bounds(bounded, method, options.dense_limit)
    sound = math.prod(row["bound"] for row in layers)
    lipsdp = audit_fields(model)  # ReLU MLPs: the verified LipSDP bound, used where it beats the product
    sound = min(sound, lipsdp.get("lipsdp_bound", math.inf))
    timings["sound_bound"], clock = time.perf_counter() - clock, time.perf_counter()

    count = len(data.x_test) if logits_all is not None else min(options.eval_points, len(data.x_test))
    test_index = torch.arange(count) if logits_all is not None else \
        torch.randperm(len(data.x_test), generator=torch.Generator().manual_seed(options.seed))[:count]
    images = data.x_test[test_index.to(data.x_test.device)].to(device)
    y = data.y_test[test_index.to(data.y_test.device)].to(device)
    logits = logits_all if logits_all is not None else evaluate(model, images, y, mean, BATCH_SIZE, device)[0]
    radius, x = Certifier.for_model(model, certified_with).radii(logits, y), images - mean  # attacks work centred
    timings["margins"], clock = time.perf_counter() - clock, time.perf_counter()

    whole = copy.deepcopy(model).double().requires_grad_(False)  # float64 copies: attacks confirm on the whole network
    reference = whole.features if pairwise else whole
    points = x[:options.lower_points]
    jacobian, directions = jacobian_lower_bound(bounded, reference, points, options.lower_steps, options.seed)
    pairs = pair_lower_bound(bounded, reference, points, directions, EPSILONS["cra_36"], options.lower_steps)
    timings["lower_bound"], clock = time.perf_counter() - clock, time.perf_counter()

    attacked, violation_points = attack_certified(model, whole, x, y, radius, test_index, options.samples,
                                                  options.steps, options.seed)
    timings["attack"], clock = time.perf_counter() - clock, time.perf_counter()

    recorded = {key: record.get(key) for key in EPSILONS}
    cra_sound, cra_source = sound_cra(model, data, mean, device, Certifier.for_model(model, sound),
                                      sound <= certified_with, recorded, logits_all, options.recompute_cra)
    timings["cra"] = time.perf_counter() - clock
    return {
        **verdict({**record, "lipschitz_bound": certified_with},
                  method.tolerance if options.tolerance is None else options.tolerance, sound,
                  max(jacobian, pairs), violation_points, layers),
        "certificate_kind": "pairwise" if pairwise else "margin",
        "lower_bound_jacobian": jacobian, "lower_bound_pairs": pairs,
        "violation_points": violation_points, "attacked": attacked, "attack_steps": options.steps,
        "eval_points": count, "cra_recorded": recorded, "cra_sound": cra_sound, "cra_sound_source": cra_source,
        "cra_difference": {key: None if recorded[key] is None else cra_sound[key] - recorded[key] for key in EPSILONS},
        "layers": layers, "lipsdp": lipsdp, "timings": timings,
        "audited_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def sound_cra(model: nn.Module, data: Dataset, mean: Tensor, device: torch.device, sound: Certifier,
              within_certificate: bool, recorded: dict[str, Any], logits_all: Tensor | None,
              recompute: bool) -> tuple[dict[str, float], str]:
    """The CRA per radius with the sound bound, and where it comes from (module doc, part 4)."""
    if not torch.isfinite(sound.pair_bounds).all():
        return {key: 0.0 for key in EPSILONS}, "no sound bound: nothing is certified"
    if logits_all is None and not recompute and within_certificate and None not in recorded.values():
        return recorded, "recorded: the sound bound is at most the certificate's, so every recorded certificate stands"
    if logits_all is None:
        logits_all, _ = evaluate(model, data.x_test.to(device), data.y_test.to(device), mean, BATCH_SIZE, device)
    cra = certified_accuracy(sound.radii(logits_all, data.y_test))
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
