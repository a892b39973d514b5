"""Training-time budgets: ``30s``, ``2m``, ``1h30m``, ``10h``, or a YAML preset from ``budgets/``
(``PRESET@DURATION`` runs a preset's protocol for another time, e.g. ``cpu-2m@1m``).

A budget is wall-clock *training* time on the user's device. A preset also fixes the training
protocol (batch size, optimizer settings, loss, augmentation) and may override it per method::

    budget: 10h
    batch_size: 256
    lr: 0.01
    methods:
      lot: {lr: 0.005}        # every size
      aol@XS: {lr: 0.057}     # one size
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from lipbench.errors import UserError
from lipbench.settings import MAX_BUDGET_S, PROTOCOL_KEYS, check_settings

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)([smhd]))")
PRESET_KEYS = {"budget", "description", "extends", "mode", "methods", *PROTOCOL_KEYS}
MODES = ("time", "epochs")


@dataclass(frozen=True)
class Budget:
    """A named amount of training seconds plus the protocol settings it fixes."""

    name: str
    seconds: float
    protocol: dict[str, Any] = field(default_factory=dict)
    per_method: dict[str, dict[str, Any]] = field(default_factory=dict)
    epochs_required: bool = False  # mode: epochs: every job must get an epoch count from the preset


def parse_duration(text: str) -> float:
    """Seconds in ``text`` such as ``90s``, ``2m``, ``1h30m``, ``1.5h``; a bare number is seconds."""
    text = text.strip().lower()
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        seconds = float(text)
    elif text and DURATION.sub("", text) == "":
        seconds = sum(float(value) * UNITS[unit] for value, unit in DURATION.findall(text))
    else:
        raise UserError(f"malformed budget {text!r}: write a duration like 30s, 2m, 1h30m or 10h, "
                        f"or a preset name ({', '.join(preset_names())})")
    if seconds <= 0:
        raise UserError(f"budget {text!r} must be positive")
    if seconds > MAX_BUDGET_S:
        raise UserError(f"budget {text!r} is longer than {MAX_BUDGET_S / 86400:.0f} days, the most a job may train; "
                        "a typo? (write e.g. 10h or 2d)")
    return seconds


def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("lipbench.budgets").iterdir() if p.name.endswith(".yaml"))


def load_budget(text: str) -> Budget:
    """A duration, a preset name from ``budgets/``, the path of a YAML preset, or ``PRESET@DURATION``
    (the preset's protocol for another amount of time, e.g. ``cpu-2m@1m``)."""
    text = text.strip()
    if "@" in text:
        preset, duration = text.rsplit("@", 1)
        base = load_budget(preset)
        if not base.protocol:
            raise UserError(f"budget {text!r}: {preset!r} is no preset; PRESET@DURATION takes a preset name "
                            f"({', '.join(preset_names())}) or YAML file before the @")
        return replace(base, name=text, seconds=parse_duration(duration))
    path = Path(text).expanduser()
    if text.endswith((".yaml", ".yml")):
        if not path.is_file():
            raise UserError(f"budget file {text} does not exist")
        return parse_preset(path.stem, path.read_text(), str(path))
    if text in preset_names():
        source = resources.files("lipbench.budgets") / f"{text}.yaml"
        return parse_preset(text, source.read_text(), f"budgets/{text}.yaml")
    return Budget(name=text, seconds=parse_duration(text))


def parse_preset(name: str, text: str, origin: str) -> Budget:
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise UserError(f"{origin} is not valid YAML{where}: {getattr(error, 'problem', error)}") from None
    if not isinstance(document, dict) or "budget" not in document:
        raise UserError(f"{origin} must be a mapping with at least a `budget:` duration (e.g. budget: 2h)")
    unknown = set(document) - PRESET_KEYS
    if unknown:
        raise UserError(f"{origin}: unknown keys {sorted(unknown)}; allowed: {sorted(PRESET_KEYS)}")
    methods = document.get("methods") or {}
    if not isinstance(methods, dict) or not all(isinstance(v, dict) for v in methods.values()):
        raise UserError(f"{origin}: `methods:` must map method names to settings, e.g. methods: {{lot: {{lr: 0.005}}}}")
    mode = document.get("mode", "time")
    if mode not in MODES:
        raise UserError(f"{origin}: mode must be {' or '.join(MODES)}, not {mode!r}")
    own = Budget(name=name, seconds=parse_duration(str(document["budget"])),
                 protocol=check_settings({k: v for k, v in document.items() if k in PROTOCOL_KEYS}, origin),
                 per_method={m: check_settings(v, f"{origin} (methods.{m})") for m, v in methods.items()},
                 epochs_required=mode == "epochs")
    return extend(load_budget(str(document["extends"])), own, origin) if "extends" in document else own


def extend(base: Budget, own: Budget, origin: str) -> Budget:
    """``own`` on top of the preset it extends: its protocol and per-method settings override the base's."""
    if not base.protocol and not base.per_method:
        raise UserError(f"{origin}: extends {base.name!r}, which is no preset ({', '.join(preset_names())})")
    per_method = {key: {**base.per_method.get(key, {}), **own.per_method.get(key, {})}
                  for key in [*base.per_method, *(k for k in own.per_method if k not in base.per_method)]}
    return replace(own, protocol={**base.protocol, **own.protocol}, per_method=per_method,
                   epochs_required=own.epochs_required or base.epochs_required)




def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    clock = f"{hours}:{minutes:02d}:{secs:02d}" if hours or days else f"{minutes}:{secs:02d}"
    return f"{days}d {clock}" if days else clock
