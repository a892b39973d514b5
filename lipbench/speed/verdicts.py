"""Judging a change of speed: a one-sided rank test on the per-process ratios, and the verdicts."""
from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations
from typing import Callable, Sequence

import numpy as np

from lipbench.speed.samples import Sample, Speeds
from lipbench.speed.worker import STEPS

DEFAULT_FACTOR = {"cpu": 1.5, "cuda": 1.1}
DEFAULT_ALPHA = 0.05
EXACT_TEST_LIMIT = 20_000  # splits enumerated exactly by the rank test; a normal approximation beyond


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their average rank."""
    order = np.argsort(values, kind="mergesort")
    _, first, counts = np.unique(values[order], return_index=True, return_counts=True)
    ranks = np.empty(len(values))
    ranks[order] = np.repeat(first + (counts + 1) / 2, counts)
    return ranks


def mann_whitney_greater(after: Sequence[float], before: Sequence[float]) -> float:
    """One-sided p-value of the Mann-Whitney U test that ``after`` tends to exceed ``before``.

    Exact (every split of the pooled ranks, ties averaged) for small samples; the normal
    approximation with tie and continuity corrections beyond ``EXACT_TEST_LIMIT`` splits.
    """
    m, n = len(after), len(before)
    ranks = average_ranks(np.concatenate([np.asarray(after, float), np.asarray(before, float)]))
    observed = ranks[:m].sum()
    if math.comb(m + n, m) <= EXACT_TEST_LIMIT:
        sums = np.array([ranks[list(split)].sum() for split in combinations(range(m + n), m)])
        return float(np.mean(sums >= observed - 1e-9))
    mean = m * (m + n + 1) / 2
    _, ties = np.unique(ranks, return_counts=True)
    variance = m * n / 12 * ((m + n + 1) - (ties ** 3 - ties).sum() / ((m + n) * (m + n - 1)))
    z = (observed - mean - 0.5) / math.sqrt(variance)
    return 0.5 * math.erfc(z / math.sqrt(2))


def smallest_p(after_count: int, before_count: int) -> float:
    """The smallest p-value the rank test can give with these sample sizes (no ties)."""
    return 1 / math.comb(after_count + before_count, after_count)


@dataclass(frozen=True)
class Verdict:
    """One layer's step before and after: the ratios, their change, the test and the mark."""

    layer: str
    step: str
    before: float
    after: float
    change: float
    p_value: float
    mark: str  # "ok", "~" (over the factor, not significant) or "regressed"


def judge(layer: str, step: str, before: Sample, after: Sample, factor: float, alpha: float) -> Verdict:
    """Regressed when ``after/before > factor`` and the rank test says after > before at ``alpha``.

    The test sees the baseline's per-process values rescaled to its ``ratio``, so that a ratio
    edited by hand moves its spread with it.
    """
    before_values = np.array(before.per_process) * (before.ratio / float(np.median(before.per_process)))
    change = after.ratio / before.ratio
    p_value = mann_whitney_greater(after.per_process, before_values)
    mark = "ok" if change <= factor else "regressed" if p_value <= alpha else "~"
    return Verdict(layer, step, before.ratio, after.ratio, change, p_value, mark)


def compare(before: Speeds, after: Speeds, factor: float, alpha: float) -> list[Verdict]:
    """A verdict for every step of every layer measured after."""
    return [judge(name, step, before.samples[name][step], after.samples[name][step], factor, alpha)
            for name in after.samples for step in STEPS]


def confirmed_verdicts(before: Speeds, after: Speeds, measure_again: Callable[[list[str]], Speeds],
                       factor: float, alpha: float) -> list[Verdict]:
    """Verdicts after measuring every layer over the factor once more, its new processes pooled in."""
    suspects = sorted({verdict.layer for verdict in compare(before, after, factor, alpha) if verdict.mark != "ok"})
    if suspects:
        again = measure_again(suspects)
        for name in suspects:
            after.samples[name] = {step: sample.pooled(again.samples[name][step])
                                   for step, sample in after.samples[name].items()}
    return compare(before, after, factor, alpha)
