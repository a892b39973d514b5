"""Plan: expand what the user asked for into a list of jobs, each a plain, hashable
:class:`lipbench.settings.JobConfig`."""
from __future__ import annotations

import itertools
from typing import Any

from lipbench.budget import Budget
from lipbench.errors import UserError
from lipbench.registry import get_method, model_family
from lipbench.settings import JobConfig

def expand(layers: list[str], sizes: list[str], datasets: list[str], budgets: list[Budget], seeds: list[int],
           overrides: dict[str, Any], model: str = "", **common: Any) -> list[JobConfig]:
    """Every combination, with settings layered: defaults < budget preset < the method's own protocol
    < preset per method(@size) < overrides. A size the model family lacks is left out (the CLI says so);
    the same job asked for twice is planned once."""
    jobs: dict[str, JobConfig] = {}
    for budget, layer, size, dataset, seed in itertools.product(budgets, layers, sizes, datasets, seeds):
        method = get_method(layer)
        family = model_family(layer, model or None)
        if not family.accepts(size):
            continue
        settings = {**budget.protocol, **method.protocol, **budget.per_method.get(layer, {}),
                    **budget.per_method.get(f"{layer}@{size}", {}), **overrides}
        if budget.epochs_required and not settings.get("epochs"):
            raise UserError(f"budget {budget.name} trains the paper's number of epochs, which it does not give for "
                            f"{layer}@{size}; add it (methods: {{{layer}@{size}: {{epochs: N}}}}) or pass --epochs")
        job = JobConfig(layer=layer, size=size, dataset=dataset, budget=budget.name, budget_s=budget.seconds,
                        seed=seed, model="" if family.name == method.model else family.name, **settings, **common)
        jobs.setdefault(job.job_id, job)
    return list(jobs.values())
