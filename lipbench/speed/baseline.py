"""Baseline files: measured speeds and the config they were measured with, as plain JSON or YAML."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import yaml

from lipbench.errors import UserError
from lipbench.jobfolder import write_text_atomic
from lipbench.speed.processes import DEVICE_CLASSES
from lipbench.speed.samples import Sample, Speeds
from lipbench.speed.worker import STEPS, Config, Workload, Timing

BASELINE_FORMAT = "lipbench-speed-baseline/1"


def to_document(speeds: Speeds, config: Config) -> dict:
    """The baseline file's content: plain data, one config, ratios keyed by layer and step."""
    return {
        "format": BASELINE_FORMAT,
        "about": "ratio = median over processes of (layer step time / reference step time); `lipbench check` "
                 "compares against ratio. Edit ratio by hand to move a layer's threshold: per_process (the "
                 "spread, used by the significance test) is rescaled to it.",
        "config": {"shape": asdict(config.shape), "dtype": config.dtype, "device_class": config.device,
                   "reference": "nn.Linear" if config.shape.kind == "linear" else "nn.Conv2d",
                   "timing": asdict(config.timing)},
        "environment": speeds.environment,
        "layers": {name: {step: {"ratio": round(sample.ratio, 4),
                                 "per_process": [round(value, 4) for value in sample.per_process],
                                 "layer_ms": round(float(np.median(sample.layer_ms)), 4),
                                 "reference_ms": round(float(np.median(sample.reference_ms)), 4)}
                          for step, sample in steps.items()}
                   for name, steps in speeds.samples.items()},
    }


def from_document(document: dict, source: str = "baseline") -> tuple[Config, Speeds]:
    """The config and the speeds of a baseline document; a :class:`UserError` says what is malformed."""
    try:
        if document.get("format") != BASELINE_FORMAT:
            raise ValueError(f"format is {document.get('format')!r}, expected {BASELINE_FORMAT!r}")
        settings = document["config"]
        config = Config(shape=Workload(**settings["shape"]), dtype=str(settings["dtype"]),
                        device=str(settings["device_class"]), timing=Timing(**settings["timing"]))
        speeds = Speeds(environment=dict(document.get("environment") or {}))
        for name, steps in document["layers"].items():
            speeds.samples[name] = {}
            for step in STEPS:
                entry = steps[step]
                per_process = [float(value) for value in entry["per_process"]]
                ratio = float(entry["ratio"])
                if not per_process or ratio <= 0 or min(per_process) <= 0:
                    raise ValueError(f"{name}.{step}: ratio and per_process must be positive and non-empty")
                scale = ratio / float(np.median(per_process))
                speeds.samples[name][step] = Sample([value * scale for value in per_process],
                                                    [float(entry.get("layer_ms", 0))],
                                                    [float(entry.get("reference_ms", 0))])
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise UserError(f"{source} is not a lipbench speed baseline ({type(error).__name__}: {error}); "
                        f"make one with `lipbench speed --save FILE`") from None
    if config.device not in DEVICE_CLASSES:
        raise UserError(f"{source}: unknown device_class {config.device!r}; use one of {DEVICE_CLASSES}")
    return config, speeds


def save_document(document: dict, path: Path) -> None:
    """Write JSON, or YAML for a .yaml/.yml path, atomically (a temp file renamed into place)."""
    text = (yaml.safe_dump(document, sort_keys=False) if path.suffix in (".yaml", ".yml")
            else json.dumps(document, indent=2) + "\n")
    write_text_atomic(path, text)


def load_document(path: Path) -> dict:
    try:
        text = path.read_text()
    except OSError as error:
        raise UserError(f"cannot read baseline {path}: {error.strerror}") from None
    try:
        document = yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else json.loads(text)
    except (yaml.YAMLError, json.JSONDecodeError) as error:
        raise UserError(f"baseline {path} is not valid {path.suffix.lstrip('.') or 'JSON'}: {error}") from None
    if not isinstance(document, dict):
        raise UserError(f"baseline {path} holds no mapping; make one with `lipbench speed --save FILE`")
    return document
