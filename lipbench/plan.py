"""Plan: expand what the user asked for into a list of jobs, each a plain, hashable config.

A job's id is a hash of its configuration and the lipbench version, so the same sweep run again
finds its finished jobs (resume) and a changed setting makes a new job. A field added after the
first version enters the id only when it differs from its default, so results folders made before
it still resume.
"""
from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

from lipbench.budget import Budget
from lipbench.registry import get_method, model_family
from lipbench.settings import TrainSettings
from lipbench.version import __version__

NOT_HASHED = ("data_dir", "save_model", "plugins", "with_audit")  # none of these changes what is trained
FIRST_VERSION_FIELDS = frozenset({
    "layer", "size", "dataset", "budget", "budget_s", "seed", "batch_size", "lr", "momentum", "weight_decay",
    "offset", "temperature", "augment", "precision", "device", "layer_options", "holdout", "retry_of"})


@dataclass(frozen=True, kw_only=True)
class JobConfig(TrainSettings):
    """One job: what to train (layer, model family and size, dataset), how (the inherited training
    settings) and where (device, data folder)."""

    layer: str
    size: str
    dataset: str
    budget: str
    seed: int = 0
    model: str = ""  # the model family; "" is the method's own
    device: str = "auto"
    layer_options: dict[str, Any] = field(default_factory=dict)
    plugins: tuple[str, ...] = ()
    holdout: float = 0.0  # > 0: evaluate on this fraction of the training set, held out (tuning)
    retry_of: str | None = None  # the id of the failed job this one retries
    data_dir: str | None = None
    save_model: bool = True
    with_audit: bool = False  # audit the trained model's certificate (lipbench.audit) and record it

    @property
    def job_id(self) -> str:
        defaults = {f.name: f.default_factory() if f.default_factory is not MISSING else f.default for f in fields(self)}
        identity = {k: v for k, v in asdict(self).items()
                    if k not in NOT_HASHED and (k in FIRST_VERSION_FIELDS or v != defaults.get(k))}
        text = json.dumps({"config": identity, "version": __version__}, sort_keys=True, default=list)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    @property
    def label(self) -> str:
        return f"{self.layer} {self.size} {self.dataset} {self.budget} seed {self.seed}"

    @classmethod
    def from_dict(cls, document: dict[str, Any]) -> "JobConfig":
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in document.items() if k in known}
        values["plugins"] = tuple(values.get("plugins", ()))
        return cls(**values)


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
        job = JobConfig(layer=layer, size=size, dataset=dataset, budget=budget.name, budget_s=budget.seconds,
                        seed=seed, model="" if family.name == method.model else family.name, **settings, **common)
        jobs.setdefault(job.job_id, job)
    return list(jobs.values())
