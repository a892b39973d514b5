"""Learning-rate search, as in the comparison paper: random search over the peak learning rate
and weight decay (log-uniform), each trial trained under the budget on a held-out split of the
training set (the test set is never looked at), best by CRA at 36/255 then clean accuracy.
"""
from __future__ import annotations

import math
import random
from dataclasses import replace
from typing import Any

import yaml

from lipbench.settings import PROTOCOL_KEYS, JobConfig

LR_RANGE = (1e-3, 0.3)
WEIGHT_DECAY_RANGE = (1e-6, 1e-3)


def log_uniform(rng: random.Random, low: float, high: float) -> float:
    return math.exp(rng.uniform(math.log(low), math.log(high)))


def trials(base: list[JobConfig], count: int, holdout: float, seed: int = 0) -> list[JobConfig]:
    """``count`` random (lr, weight decay) variants of every base job, evaluated on a held-out split."""
    rng = random.Random(seed)
    settings = [(log_uniform(rng, *LR_RANGE), log_uniform(rng, *WEIGHT_DECAY_RANGE)) for _ in range(count)]
    return [replace(job, lr=round(lr, 6), weight_decay=float(f"{wd:.3g}"), holdout=holdout)
            for job in base for lr, wd in settings]


def best_settings(records: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per ``layer@size``, the lr and weight decay of the best finished trial."""
    best: dict[str, dict[str, Any]] = {}
    for record in records:
        if record.get("status") != "ok":
            continue
        key = f"{record['layer']}@{record['size']}"
        score = (record["cra_36"], record["clean_acc"])
        if key not in best or score > best[key]["score"]:
            best[key] = {"score": score, "lr": record["lr"], "weight_decay": record["weight_decay"]}
    return {key: {"lr": value["lr"], "weight_decay": value["weight_decay"]} for key, value in best.items()}


def tuned_preset(base: JobConfig, chosen: dict[str, dict[str, float]]) -> str:
    """A budget preset (YAML) that carries the tuned settings; edit `budget:` to use them at another budget."""
    document = {"budget": f"{base.budget_s:g}s", **{key: getattr(base, key) for key in PROTOCOL_KEYS},
                "methods": chosen}
    header = "# Tuned by `lipbench tune` on a held-out split of the training set.\n"
    return header + yaml.safe_dump(document, sort_keys=False)
