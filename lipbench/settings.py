"""The training settings, declared once: :class:`TrainSettings`.

Its fields are the keys a budget preset, a method's ``protocol``, a recipe and the command line may
set; each field's metadata says what it means and which values it takes, and :func:`check_settings`
holds every source to that one declaration: exact types (an integer is an integer, a boolean is
``true``/``false``), ranges, and an error that names the setting and where it came from.
:class:`JobConfig`, a job's whole configuration, extends this class, so a new setting is one new
field here. A job's id is a hash of its configuration and the lipbench version, so the same sweep
run again finds its finished jobs (resume) and a changed setting makes a new job. A field added
after the first version enters the id only when it differs from its default, so results folders
made before it still resume.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, Callable, Mapping

from lipbench.errors import UserError
from lipbench.version import __version__

EPSILON_36 = 36 / 255
OPTIMIZERS = ("sgd", "adam", "nadam")
SCHEDULES = ("onecycle", "cosine")
NAME = re.compile(r"[a-z0-9][a-z0-9_.-]*")
MAX_BUDGET_S = 30 * 86400  # a month: anything longer is a typo (99999h), not a benchmark


@dataclass(frozen=True)
class Rule:
    """What a setting means and which values it accepts."""

    help: str
    kind: type
    check: Callable[[Any], bool] = lambda value: True
    expected: str = ""  # the range or choices, for the error message
    preset: bool = True  # may a budget preset, recipe or method protocol set it


def setting(default: Any, help: str, kind: type, check: Callable[[Any], bool] = lambda value: True,
            expected: str = "", preset: bool = True) -> Any:
    return field(default=default, metadata={"rule": Rule(help, kind, check, expected, preset)})


def positive(value: float) -> bool:
    return value > 0


def is_name(value: str) -> bool:
    return bool(NAME.fullmatch(value))


@dataclass(frozen=True, kw_only=True)
class TrainSettings:
    """How one job trains. Defaults: the protocol of Prach et al. (CVPR 2024) on a GPU."""

    budget_s: float = field(metadata={"rule": Rule("training time in seconds", float, lambda v: 0 < v <= MAX_BUDGET_S,
                                                   f"in (0, {MAX_BUDGET_S:g}] seconds (30 days)", preset=False)})
    batch_size: int = setting(256, "images per training step", int, lambda v: v >= 1, ">= 1")
    lr: float = setting(0.05, "peak learning rate of the OneCycle schedule", float, positive, "> 0")
    momentum: float = setting(0.9, "SGD momentum", float, lambda v: 0 <= v < 1, "in [0, 1)")
    nesterov: bool = setting(True, "Nesterov momentum (the paper's code uses plain momentum: false)", bool)
    momentum_cycle: bool = setting(False, "cycle the momentum 0.95 -> 0.85 -> 0.95 against the OneCycle lr, as the "
                                   "paper's OneCycleLR does", bool)
    weight_decay: float = setting(0.0, "weight decay", float, lambda v: v >= 0, ">= 0")
    offset: float = setting(math.sqrt(2) * 2 * EPSILON_36, "margin subtracted from the true logit by the offset "
                            "cross-entropy", float, lambda v: v >= 0, ">= 0")
    temperature: float = setting(0.25, "temperature of the offset cross-entropy", float, positive, "> 0")
    augment: bool = setting(False, "random crops and horizontal flips", bool)
    precision: str = setting("fp32", "fp32, or bf16 autocast", str, lambda v: v in ("fp32", "bf16"), "fp32 or bf16")
    max_steps: int = setting(0, "at most this many training steps (0: as many as the budget allows)", int,
                             lambda v: v >= 0, ">= 0")
    epochs: float = setting(0.0, "train exactly this many epochs (the budget then only caps the time; 0: the "
                            "budget decides)", float, lambda v: v >= 0, ">= 0")
    tf32: bool = setting(False, "TF32 matmuls and convolutions during training on GPUs that have them (every method "
                         "alike; certification is always strict fp32)", bool)
    loss: str = setting("offset-ce", "the training loss (see `lipbench losses`)", str, is_name, "a registered loss name")
    loss_eps: float = setting(EPSILON_36, "the radius a margin loss (emma, logit-annealing) trains for", float,
                              lambda v: v >= 0, ">= 0")
    eps_start: float = setting(1.0, "a margin loss's radius at the start, as a multiple of loss_eps", float,
                               lambda v: v >= 0, ">= 0")
    eps_end: float = setting(1.0, "a margin loss's radius after its ramp, as a multiple of loss_eps", float,
                             lambda v: v >= 0, ">= 0")
    eps_ramp: float = setting(0.0, "fraction of the planned steps over which the radius goes linearly from eps_start "
                              "to eps_end (0: eps_end throughout)", float, lambda v: 0 <= v <= 1, "in [0, 1]")
    focal_gamma: float = setting(5.0, "the logit-annealing loss's exponent: (1 - p_true)^gamma weighs each point", float,
                                 lambda v: v >= 0, ">= 0")
    optimizer: str = setting("sgd", "sgd (momentum), adam or nadam; orthogonal parameters take the same method on "
                             "the manifold", str, lambda v: v in OPTIMIZERS, " or ".join(OPTIMIZERS))
    lookahead_steps: int = setting(0, "Lookahead: every k steps the slow weights move lookahead_alpha of the way to "
                                   "the fast ones and the fast restart there (0: off)", int, lambda v: v >= 0, ">= 0")
    lookahead_alpha: float = setting(0.5, "Lookahead's step toward the fast weights", float, lambda v: 0 < v <= 1,
                                     "in (0, 1]")
    grad_clip: float = setting(0.0, "clip the gradient to this global L2 norm (0: no clipping)", float,
                               lambda v: v >= 0, ">= 0")
    schedule: str = setting("onecycle", "the lr schedule: onecycle (the paper's) or cosine (linear warm-up, then "
                            "cosine decay)", str, lambda v: v in SCHEDULES, " or ".join(SCHEDULES))
    warmup: float = setting(0.0, "cosine schedule: fraction of the planned steps of linear warm-up", float,
                            lambda v: 0 <= v < 1, "in [0, 1)")
    head: str = setting("default", "the last layer: default (the family's own) or normalized (unit-norm class rows, "
                        "certified per class pair)", str, is_name, "a registered head name")


RULES: dict[str, Rule] = {f.name: f.metadata["rule"] for f in fields(TrainSettings)}
PROTOCOL_KEYS = tuple(name for name, rule in RULES.items() if rule.preset)
TYPE_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def typed(value: Any, kind: type) -> Any:
    """``value`` as ``kind`` when it already is one (an int counts as a float); else raise ValueError."""
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    else:
        ok = isinstance(value, kind)
    if not ok:
        raise ValueError
    return float(value) if kind is float else value


def check_setting(key: str, value: Any, origin: str, allowed: tuple[str, ...] = PROTOCOL_KEYS) -> Any:
    """``value`` of setting ``key``, checked; a :class:`UserError` naming the setting and ``origin`` otherwise."""
    if key not in allowed:
        raise UserError(f"{origin}: unknown setting {key!r}; allowed: {', '.join(allowed)}")
    rule = RULES[key]
    try:
        value = typed(value, rule.kind)
    except ValueError:
        shown = "nan" if isinstance(value, float) and math.isnan(value) else repr(value)
        raise UserError(f"{origin}: {key} must be {TYPE_WORDS[rule.kind]}"
                        f"{' (finite)' if rule.kind is float else ''}, got {shown}") from None
    if not rule.check(value):
        raise UserError(f"{origin}: {key} must be {rule.expected}, got {value!r}")
    return value


def check_settings(values: Mapping[str, Any], origin: str, allowed: tuple[str, ...] = PROTOCOL_KEYS) -> dict[str, Any]:
    """Every item of ``values`` checked by :func:`check_setting`."""
    return {key: check_setting(key, value, origin, allowed) for key, value in values.items()}


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
    recipe: str = "prach"  # the training recipe (lipbench/recipes/) its settings came from
    protocol: str = ""  # a plain duration's protocol, chosen from the epochs it fits: "paper" or "short-run"
    data_dir: str | None = None
    save_model: bool = True
    with_audit: bool = False  # audit the trained model's certificate (lipbench.audit) and record it
    extra_data: str | None = None  # an .npz of extra (e.g. generated) training images x and labels y
    extra_ratio: float = 0.0  # the share of every training batch taken from extra_data

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
    def from_dict(cls, document: Mapping[str, Any], origin: str = "config.json") -> "JobConfig":
        """The configuration saved as ``document`` (a job's config.json or record), checked like any
        other source of settings; unknown keys (fields of a record) are ignored."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in document.items() if k in known}
        values.update(check_settings({k: v for k, v in values.items() if k in RULES}, origin, tuple(RULES)))
        missing = sorted(f.name for f in fields(cls) if f.name not in values and f.default is MISSING
                         and f.default_factory is MISSING)
        if missing:
            raise UserError(f"{origin} lacks {', '.join(missing)}: not a complete lipbench job configuration")
        if not isinstance(values.get("layer_options", {}), dict):
            raise UserError(f"{origin}: layer_options must be a mapping")
        values["plugins"] = tuple(values.get("plugins", ()))
        return cls(**values)
