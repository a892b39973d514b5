"""Plan: expand what the user asked for into a list of jobs, each a plain, hashable
:class:`lipbench.settings.JobConfig`.

A plain duration (``--budget 2m``) fixes no protocol, so the plan picks one from the number of epochs
the budget fits: the paper's (the defaults) when it fits many, the short-run protocol of
``budgets/cpu-2m.yaml`` when it fits only a few (the paper's lr and batch need tens of epochs; in a
fraction of an epoch they leave a model far below what the same minutes can train). The epochs are
estimated from the device kind's typical throughput on the small models (``IMAGES_PER_SECOND``) and a
CIFAR-sized training set, before anything runs; presets and explicit options always win.
"""
from __future__ import annotations

import itertools
from dataclasses import replace
from typing import Any

from lipbench.budget import Budget, load_budget
from lipbench.errors import UserError
from lipbench.losses import get_loss
from lipbench.recipes import Recipe
from lipbench.registry import HEADS, get_method, model_family
from lipbench.settings import JobConfig

SHORT_RUN_PRESET = "cpu-2m"
SHORT_RUN_EPOCHS = 10  # a plain duration that fits fewer epochs trains with the short-run protocol
IMAGES_PER_SECOND = {"cpu": 75.0}  # XS models on a laptop-class CPU; any accelerator: the default below
ACCELERATOR_IMAGES_PER_SECOND = 5000.0
TYPICAL_TRAIN_IMAGES = 50_000
PROTOCOLS = ("auto", "paper", "short-run")


def estimated_epochs(seconds: float, device_type: str) -> float:
    return seconds * IMAGES_PER_SECOND.get(device_type, ACCELERATOR_IMAGES_PER_SECOND) / TYPICAL_TRAIN_IMAGES


def choose_protocol(budget: Budget, device_type: str, protocol: str = "auto") -> tuple[Budget, str]:
    """The budget to plan with and the protocol it names ("" for a preset, which brings its own)."""
    if protocol not in PROTOCOLS:
        raise UserError(f"--protocol must be one of {', '.join(PROTOCOLS)}, not {protocol!r}")
    if budget.protocol or budget.per_method:
        return budget, ""
    if protocol == "auto":
        protocol = "short-run" if estimated_epochs(budget.seconds, device_type) < SHORT_RUN_EPOCHS else "paper"
    if protocol == "paper":
        return budget, protocol
    return replace(load_budget(SHORT_RUN_PRESET), name=budget.name, seconds=budget.seconds), protocol


def expand(layers: list[str], sizes: list[str], datasets: list[str], budgets: list[Budget], seeds: list[int],
           overrides: dict[str, Any], model: str = "", recipe: Recipe | None = None, device_type: str = "cpu",
           protocol: str = "auto", **common: Any) -> list[JobConfig]:
    """Every combination, with settings layered: defaults < budget preset < the method's own protocol
    < preset per method(@size) < recipe < overrides. A size the model family lacks is left out (the CLI
    says so); the same job asked for twice is planned once."""
    jobs: dict[str, JobConfig] = {}
    recipe_settings = recipe.settings if recipe else {}
    protocols = {budget.name: choose_protocol(budget, device_type, protocol) for budget in budgets}
    for budget, layer, size, dataset, seed in itertools.product(budgets, layers, sizes, datasets, seeds):
        method = get_method(layer)
        family = model_family(layer, model or None)
        if not family.accepts(size):
            continue
        planned, chosen = protocols[budget.name]
        settings = {**planned.protocol, **method.protocol, **planned.per_method.get(layer, {}),
                    **planned.per_method.get(f"{layer}@{size}", {}), **recipe_settings, **overrides}
        if planned.epochs_required and not settings.get("epochs"):
            raise UserError(f"budget {budget.name} trains the paper's number of epochs, which it does not give for "
                            f"{layer}@{size}; add it (methods: {{{layer}@{size}: {{epochs: N}}}}) or pass --epochs")
        job = JobConfig(layer=layer, size=size, dataset=dataset, budget=budget.name, budget_s=budget.seconds,
                        seed=seed, model="" if family.name == method.model else family.name,
                        recipe=recipe.name if recipe else "prach", protocol=chosen, **settings, **common)
        get_loss(job.loss), HEADS.get(job.head)
        jobs.setdefault(job.job_id, job)
    return list(jobs.values())
