"""Measured speeds as plain data: per-process ratios of each layer's steps to the reference."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Sample:
    """One layer's step over several processes: per-process median ratios and step times."""

    per_process: list[float] = field(default_factory=list)
    layer_ms: list[float] = field(default_factory=list)
    reference_ms: list[float] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return float(np.median(self.per_process))

    def pooled(self, other: Sample) -> Sample:
        return Sample(self.per_process + other.per_process, self.layer_ms + other.layer_ms,
                      self.reference_ms + other.reference_ms)


@dataclass
class Speeds:
    """Samples keyed by layer and step, the layers skipped or failed, and where they ran."""

    samples: dict[str, dict[str, Sample]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # the method refuses the shape (ValueError)
    errors: dict[str, str] = field(default_factory=dict)
    environment: dict = field(default_factory=dict)
