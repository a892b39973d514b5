"""Plan: expand what the user asked for into a list of jobs, each a plain, hashable config.

A job's id is a hash of its configuration and the lipbench version, so the same sweep run
again finds its finished jobs (resume) and a changed setting makes a new job.
"""
from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from lipbench.budget import Budget
from lipbench.registry import get_method
from lipbench.train import TrainSettings

NOT_HASHED = ("data_dir", "save_model", "plugins", "with_audit")  # none of these changes what is trained


@dataclass(frozen=True)
class JobConfig:
    layer: str
    size: str
    dataset: str
    budget: str
    budget_s: float
    seed: int = 0
    batch_size: int = TrainSettings.batch_size
    lr: float = TrainSettings.lr
    momentum: float = TrainSettings.momentum
    weight_decay: float = TrainSettings.weight_decay
    offset: float = TrainSettings.offset
    temperature: float = TrainSettings.temperature
    augment: bool = TrainSettings.augment
    precision: str = TrainSettings.precision
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
        from lipbench import __version__

        identity = {k: v for k, v in asdict(self).items() if k not in NOT_HASHED}
        text = json.dumps({"config": identity, "version": __version__}, sort_keys=True, default=list)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    @property
    def label(self) -> str:
        return f"{self.layer} {self.size} {self.dataset} {self.budget} seed {self.seed}"

    def train_settings(self) -> TrainSettings:
        return TrainSettings(budget_s=self.budget_s, batch_size=self.batch_size, lr=self.lr, momentum=self.momentum,
                             weight_decay=self.weight_decay, offset=self.offset, temperature=self.temperature,
                             augment=self.augment, precision=self.precision)

    @classmethod
    def from_dict(cls, document: dict[str, Any]) -> "JobConfig":
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in document.items() if k in known}
        values["plugins"] = tuple(values.get("plugins", ()))
        return cls(**values)


def expand(layers: list[str], sizes: list[str], datasets: list[str], budgets: list[Budget], seeds: list[int],
           overrides: dict[str, Any], **common: Any) -> list[JobConfig]:
    """Every combination, with settings layered: defaults < budget preset < the method's own protocol
    < preset per method(@size) < overrides."""
    jobs = []
    for budget, layer, size, dataset, seed in itertools.product(budgets, layers, sizes, datasets, seeds):
        method = get_method(layer)
        if size not in method.sizes:
            continue  # e.g. LipNeXt's sizes differ from the ConvNet's; the CLI reports pairs left out
        settings = {**budget.protocol, **method.protocol, **budget.per_method.get(layer, {}),
                    **budget.per_method.get(f"{layer}@{size}", {}), **overrides}
        jobs.append(JobConfig(layer=layer, size=size, dataset=dataset, budget=budget.name, budget_s=budget.seconds,
                              seed=seed, **settings, **common))
    return jobs

