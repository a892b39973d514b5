"""Learning-rate and momentum schedules over the planned steps, as plain functions of progress in [0, 1].

OneCycle is the comparison paper's (torch's ``OneCycleLR`` with its defaults): a cosine rise from
lr/25 to lr over the first 30% of the run, then a cosine fall to lr/25/1e4. With ``momentum_cycle`` the
momentum moves the other way, from 0.95 down to 0.85 while the lr rises and back up while it falls, as
``OneCycleLR(cycle_momentum=True)`` does in the paper's code.

Warm-up then cosine is the schedule of LiResNet's and BRONet's code: the lr rises linearly over the
warm-up fraction, then falls as a cosine to 1e-5 of its peak (their floor). Their warm-up starts from
0; here it starts from lr/25, as OneCycle does, so the calibration steps (taken before the plan, and
so the progress, is known) train too.
"""
from __future__ import annotations

import math

WARMUP = 0.3
BASE_MOMENTUM, MAX_MOMENTUM = 0.85, 0.95


def cosine(start: float, end: float, fraction: float) -> float:
    return end + (start - end) * (1 + math.cos(math.pi * fraction)) / 2


def one_cycle_lr(progress: float, max_lr: float, warmup: float = WARMUP) -> float:
    """OneCycle (cosine) learning rate at ``progress`` in [0, 1]."""
    start, end = max_lr / 25, max_lr / 25 / 1e4
    progress = min(max(progress, 0.0), 1.0)
    if progress < warmup:
        return cosine(start, max_lr, progress / warmup)
    return cosine(max_lr, end, (progress - warmup) / (1 - warmup))


def one_cycle_momentum(progress: float, warmup: float = WARMUP) -> float:
    """OneCycle's momentum at ``progress``: 0.95 -> 0.85 while the lr rises, back to 0.95 as it falls."""
    progress = min(max(progress, 0.0), 1.0)
    if progress < warmup:
        return cosine(MAX_MOMENTUM, BASE_MOMENTUM, progress / warmup)
    return cosine(BASE_MOMENTUM, MAX_MOMENTUM, (progress - warmup) / (1 - warmup))


COSINE_FLOOR = 1e-5


def warmup_cosine_lr(progress: float, max_lr: float, warmup: float) -> float:
    """Linear warm-up from lr/25 over ``warmup`` of the run, then cosine decay to ``COSINE_FLOOR * max_lr``."""
    progress = min(max(progress, 0.0), 1.0)
    if progress < warmup:
        return max_lr * max(progress / warmup, 1 / 25)
    return max_lr * max(COSINE_FLOOR, (1 + math.cos(math.pi * (progress - warmup) / (1 - warmup))) / 2)
