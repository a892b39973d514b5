"""The layer registry: one obvious way to register a 1-Lipschitz method and to build it.

A method is a factory ``build(kind, in_channels, out_channels, kernel_size, stride, **options)``
returning an ``nn.Module``, plus a :class:`LayerMethod` record of what it promises (its
Lipschitz bound, padding, approximations) and optional hooks for the training loop
(activation, optimizer, extra loss, model-level bound, whole model).

Built-in methods in ``lipbench.layers`` register with :func:`register_layer`, the same
decorator a third-party plugin uses. Plugins arrive through the entry-point group
``lipbench.layers`` or by importing a module (``--plugin my.module``).
"""
from __future__ import annotations

import fnmatch
import importlib
import importlib.util
import re
import warnings
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Callable, Mapping

from torch import nn

from lipbench.budget import typed_settings
from lipbench.errors import UserError

ENTRY_POINT_GROUP = "lipbench.layers"
KINDS = ("conv", "linear")


@dataclass(frozen=True)
class OptimizerSettings:
    """What the training loop tells a method's ``optimizer`` hook.

    The loop schedules the learning rate (OneCycle) by writing ``group["lr"]`` of every param
    group before each step, so a custom optimizer must read its lr from its param groups.
    """

    lr: float
    momentum: float
    weight_decay: float
    steps_per_epoch: int
    total_steps: int


@dataclass(frozen=True)
class LayerMethod:
    """What a registered method is and what it promises.

    bound: the Lipschitz constant each layer declares (w.r.t. the L2 norm). A built layer may
        refine it per instance with ``lipschitz_bound(input_shape) -> float`` (the
        unconstrained baseline computes its exact operator norm that way).
    exact: True when the bound holds by proof in exact arithmetic; False when it rests on an
        approximation (truncated series, finitely many iterations). ``tolerance`` is the
        relative slack the exact operator norm may then exceed ``bound`` by, and
        ``approximation`` names the settings (recorded with every result).
    orthogonal: the layer preserves norms (all singular values 1 up to ``tolerance``).
    protocol: training settings the method needs on any budget (keys as in a budget preset, e.g.
        ``{"lr": 0.01}`` for unconstrained layers that diverge at the default lr). They override a
        preset's protocol; the preset's own entry for the method and command-line options override them.
    Hooks (all optional): ``activation() -> nn.Module`` replaces MaxMin;
        ``optimizer(model, settings) -> Optimizer`` replaces SGD; ``extra_loss(model) -> Tensor``
        is added to the task loss; ``certificate(model) -> dict`` returns the model's bound as
        ``lipschitz_bound`` (sound) plus any fields to record with the result (e.g.
        ``lipschitz_bound_claimed``, ``orthogonality_error``);
        ``model(size, in_shape, n_classes, **options) -> nn.Module`` replaces the ConvNet.
    """

    name: str
    build: Callable[..., nn.Module]
    family: str
    padding: str
    exact: bool
    bound: float = 1.0
    tolerance: float = 1e-5
    orthogonal: bool = False
    kinds: tuple[str, ...] = KINDS
    strides: tuple[int, ...] = (1,)
    approximation: Mapping[str, Any] = field(default_factory=dict)
    protocol: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""
    activation: Callable[[], nn.Module] | None = None
    optimizer: Callable[..., Any] | None = None
    extra_loss: Callable[[nn.Module], Any] | None = None
    certificate: Callable[[nn.Module], dict] | None = None
    model: Callable[..., nn.Module] | None = None
    sizes: tuple[str, ...] = ("XS", "S", "M", "L")


_METHODS: dict[str, LayerMethod] = {}
_plugins_loaded = False


def register_layer(name: str, **declaration: Any) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register ``build`` under ``name``; returns ``build`` unchanged.

    >>> @register_layer("mine", family="orthogonal", padding="circular", exact=True)
    ... def mine(kind, in_channels, out_channels, kernel_size=3, stride=1): ...
    """
    if not re.fullmatch(r"[a-z0-9][a-z0-9_.-]*", name):
        raise ValueError(f"layer name {name!r} must be lower-case letters, digits, '_', '-' or '.'")

    def decorator(build: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _METHODS:
            raise ValueError(f"layer {name!r} is already registered (by {_METHODS[name].build.__module__})")
        protocol = typed_settings(dict(declaration.pop("protocol", {})), f"layer {name!r}: protocol")
        method = LayerMethod(name=name, build=build, protocol=protocol, **declaration)
        unknown_kinds = set(method.kinds) - set(KINDS)
        if unknown_kinds:
            raise ValueError(f"layer {name!r}: unknown kinds {sorted(unknown_kinds)}; use {KINDS}")
        _METHODS[name] = method
        return build

    return decorator


def unregister_layer(name: str) -> None:
    """Remove a method (for tests and interactive sessions)."""
    _METHODS.pop(name, None)


def _ensure_loaded() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    importlib.import_module("lipbench.layers")
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        try:
            entry.load()
        except Exception as error:  # a broken plugin costs a warning, never the run
            warnings.warn(f"lipbench plugin {entry.name!r} ({entry.value}) failed to load: {error}", stacklevel=2)


def load_plugin(module: str) -> None:
    """Import ``module`` (a dotted path or a ``.py`` file) so that its layers register."""
    _ensure_loaded()
    try:
        if module.endswith(".py"):
            spec = importlib.util.spec_from_file_location(f"lipbench_plugin_{abs(hash(module))}", module)
            if spec is None or spec.loader is None:
                raise ImportError(f"cannot load {module}")
            loaded = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(loaded)
        else:
            importlib.import_module(module)
    except Exception as error:
        warnings.warn(f"plugin {module!r} failed to load: {error}", stacklevel=2)


def list_layers(pattern: str = "*", exclude: str | None = None) -> list[str]:
    """Registered names matching the fnmatch ``pattern`` (commas separate several), sorted."""
    _ensure_loaded()
    patterns = [p.strip() for p in pattern.split(",") if p.strip()]
    names = [n for n in _METHODS if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
    if exclude:
        names = [n for n in names if not fnmatch.fnmatchcase(n, exclude)]
    return sorted(names)


def get_method(name: str) -> LayerMethod:
    """The :class:`LayerMethod` registered as ``name``; a :class:`UserError` names it if unknown."""
    _ensure_loaded()
    try:
        return _METHODS[name]
    except KeyError:
        known = ", ".join(sorted(_METHODS))
        raise UserError(f"unknown layer {name!r}; registered layers: {known} (see `lipbench layers`)") from None


def resolve_layers(patterns: str) -> list[str]:
    """Expand a comma-separated list of names and wildcards; every item must match something."""
    names: list[str] = []
    for item in (p.strip() for p in patterns.split(",")):
        if not item:
            continue
        matched = list_layers(item) if any(c in item for c in "*?[") else [get_method(item).name]
        if not matched:
            raise UserError(f"no registered layer matches {item!r} (see `lipbench layers`)")
        names += [m for m in matched if m not in names]
    if not names:
        raise UserError("no layers given; pass e.g. --layers aol,standard")
    return names


def create_layer(name: str, kind: str = "conv", in_channels: int | None = None,
                 out_channels: int | None = None, kernel_size: int | None = None,
                 stride: int | None = None, **options: Any) -> nn.Module:
    """Build one layer of method ``name``. Options that are None fall back to the method's defaults."""
    method = get_method(name)
    if kind not in method.kinds:
        raise ValueError(f"layer {name!r} has no {kind!r} variant; it offers {method.kinds}")
    if kind == "conv" and stride is not None and stride not in method.strides:
        raise ValueError(f"layer {name!r} supports stride {method.strides}, not {stride}")
    arguments = dict(in_channels=in_channels, out_channels=out_channels,
                     kernel_size=kernel_size, stride=stride, **options)
    return method.build(kind, **{k: v for k, v in arguments.items() if v is not None})
