"""Interleaved timing shared by the benchmark scripts: ratios to a baseline measured side by side."""
from __future__ import annotations

import statistics
import time
from typing import Callable


def median_ratios(candidates: dict[str, Callable[[], None]], baseline: str, rounds: int,
                  warmup_rounds: int = 2) -> dict[str, float]:
    """Per candidate, the median over ``rounds`` of its time divided by the ``baseline``'s in the same round.

    One round runs every candidate once, in an order that rotates from round to round, so slow drifts of
    the machine hit every candidate alike; the first ``warmup_rounds`` rounds are not counted.
    """
    names = list(candidates)
    ratios: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(rounds + warmup_rounds):
        seconds = {}
        for name in names[round_index % len(names):] + names[:round_index % len(names)]:
            start = time.perf_counter()
            candidates[name]()
            seconds[name] = time.perf_counter() - start
        if round_index >= warmup_rounds:
            for name in names:
                ratios[name].append(seconds[name] / seconds[baseline])
    return {name: statistics.median(values) for name, values in ratios.items()}
