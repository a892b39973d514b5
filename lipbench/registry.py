"""The registries: one obvious way to add a layer method, a model family, a dataset, a loss, a recipe
or a plot, and to find it again.

Each kind of thing has one :class:`Registry`: a plain dict from name to entry, filled by a decorator
(``register_layer``, ``register_model``, ...) that returns what it decorates unchanged. Names take
fnmatch wildcards wherever a user types them; a duplicate name is refused; an unknown one fails
with the name and the known ones. Built-in entries live in their own modules and register through
the same public decorators a plugin uses. Plugins arrive through the entry-point groups
``lipbench.<kind>s`` (loaded lazily and once; a broken one costs a warning) or by importing a module
the user names (``--plugin my.module`` or a ``.py`` file; a broken one is an error). A plugin that
fails to load leaves nothing half-registered.

The layer method (:class:`LayerMethod`) is a factory ``build(kind, in_channels, out_channels,
kernel_size, stride, **options)`` returning an ``nn.Module``, plus what it promises (its Lipschitz
bound, padding, approximations) and optional hooks for the training loop. A model family
(:class:`ModelFamily`) builds a whole network from a method; the network must be a
:class:`lipbench.contracts.CertifiableModel`.
"""
from __future__ import annotations

import fnmatch
import importlib
import importlib.util
import re
import sys
import warnings
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable, Generic, Mapping, TypeVar

from torch import nn

from lipbench.errors import UserError
from lipbench.settings import NAME, check_settings

T = TypeVar("T")
KINDS = ("conv", "linear")
COMMON_SIZES = ("XS", "S", "M", "L")  # every model family offers these names (small to large)
BUILTIN_PACKAGES = ("lipbench.layers", "lipbench.models", "lipbench.datasets", "lipbench.losses")


class Registry(Generic[T]):
    """Named entries of one kind (``noun``), listed by ``lipbench <command>``."""

    def __init__(self, noun: str, command: str):
        self.noun, self.command = noun, command
        self.entries: dict[str, T] = {}

    @property
    def group(self) -> str:
        """The entry-point group of third-party plugins."""
        return f"lipbench.{self.noun}s"

    def add(self, name: str, entry: T) -> None:
        if not NAME.fullmatch(name):
            raise ValueError(f"{self.noun} name {name!r} must be lower-case letters, digits, '_', '-' or '.'")
        if name in self.entries:
            raise ValueError(f"{self.noun} {name!r} is already registered (by {origin_of(self.entries[name])})")
        self.entries[name] = entry

    def remove(self, name: str) -> None:
        self.entries.pop(name, None)

    def get(self, name: str) -> T:
        ensure_loaded()
        try:
            return self.entries[name]
        except KeyError:
            known = ", ".join(sorted(self.entries))
            raise UserError(f"unknown {self.noun} {name!r}; registered {self.noun}s: {known} "
                            f"(see `lipbench {self.command}`)") from None

    def names(self, pattern: str = "*", exclude: str | None = None) -> list[str]:
        """Registered names matching the fnmatch ``pattern`` (commas separate several), sorted."""
        ensure_loaded()
        patterns = [p.strip() for p in pattern.split(",") if p.strip()]
        names = [n for n in self.entries if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
        if exclude:
            names = [n for n in names if not fnmatch.fnmatchcase(n, exclude)]
        return sorted(names)

    def in_order(self) -> list[T]:
        """Every entry, in the order it was registered (built-ins first)."""
        ensure_loaded()
        return list(self.entries.values())

    def resolve(self, patterns: str, option: str) -> list[str]:
        """Expand a comma-separated list of names and wildcards; every item must match something."""
        names: list[str] = []
        for item in (p.strip() for p in patterns.split(",")):
            if not item:
                continue
            if any(c in item for c in "*?["):
                matched = self.names(item)
            else:
                self.get(item)  # fails with the known names when unknown
                matched = [item]
            if not matched:
                raise UserError(f"no registered {self.noun} matches {item!r} (see `lipbench {self.command}`)")
            names += [m for m in matched if m not in names]
        if not names:
            raise UserError(f"{option} is empty; give at least one {self.noun}, e.g. {option} "
                            f"{','.join(sorted(self.entries)[:2])}")
        return names


def origin_of(entry: Any) -> str:
    build = getattr(entry, "build", entry)
    return getattr(build, "__module__", type(entry).__name__)


REGISTRIES: list[Registry[Any]] = []


_loaded = False


def new_registry(noun: str, command: str) -> Registry[Any]:
    """A registry whose entries load with every other's (built-ins, entry points, plugins)."""
    registry: Registry[Any] = Registry(noun, command)
    REGISTRIES.append(registry)
    if _loaded:  # declared after the others were loaded (e.g. the report's plots): its plugins load now
        load_entry_points(registry)
    return registry


def ensure_loaded() -> None:
    """Import the built-in modules and the entry-point plugins of every registry, once."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for package in BUILTIN_PACKAGES:
        importlib.import_module(package)
    for registry in list(REGISTRIES):
        load_entry_points(registry)


def load_entry_points(registry: Registry[Any]) -> None:
    for entry in entry_points(group=registry.group):
        try:
            with all_or_nothing():
                entry.load()
        except Exception as error:  # a broken installed plugin costs a warning, never the run
            warnings.warn(f"lipbench plugin {entry.name!r} ({entry.value}) failed to load: {error}", stacklevel=3)


class all_or_nothing:
    """Within the block, registrations stand only if the block completes: a plugin that fails halfway
    (e.g. re-registering an existing name) leaves nothing of itself behind."""

    def __enter__(self) -> None:
        self.before = [set(registry.entries) for registry in REGISTRIES]

    def __exit__(self, kind: Any, error: Any, trace: Any) -> None:
        if error is not None:
            for registry, names in zip(REGISTRIES, self.before):
                for name in set(registry.entries) - names:
                    registry.remove(name)


_imported_plugins: set[str] = set()


def load_plugin(module: str) -> None:
    """Import ``module`` (a dotted path or a ``.py`` file) so that what it defines registers.

    The user named it, so a plugin that is missing or fails is a :class:`UserError` naming it.
    Importing the same plugin twice is a no-op.
    """
    ensure_loaded()
    key = str(Path(module).resolve()) if module.endswith(".py") else module
    if key in _imported_plugins:
        return
    try:
        with all_or_nothing():
            if module.endswith(".py"):
                if not Path(module).is_file():
                    raise FileNotFoundError(f"no such file {module}")
                name = f"lipbench_plugin_{Path(module).stem}_{abs(hash(key))}"
                spec = importlib.util.spec_from_file_location(name, module)
                if spec is None or spec.loader is None:
                    raise ImportError(f"cannot load {module}")
                loaded = importlib.util.module_from_spec(spec)
                sys.modules[name] = loaded  # so that dataclasses and pickling find the module
                spec.loader.exec_module(loaded)
            else:
                importlib.import_module(module)
    except Exception as error:
        raise UserError(f"--plugin {module} failed to load: {type(error).__name__}: {error}") from None
    _imported_plugins.add(key)


# --- layer methods -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class OptimizerSettings:
    """What the training loop tells a method's ``optimizer`` hook.

    The loop schedules the learning rate by writing ``group["lr"]`` of every param group before each
    step, so a custom optimizer must read its lr from its param groups.
    """

    lr: float
    momentum: float
    weight_decay: float
    steps_per_epoch: int
    total_steps: int
    method: str = "sgd"  # sgd, adam or nadam
    lookahead_steps: int = 0  # the hook runs Lookahead itself on parameters it keeps apart (0: off)
    lookahead_alpha: float = 0.5


@dataclass(frozen=True)
class LayerMethod:
    """What a registered method is and what it promises.

    bound: the Lipschitz constant each layer declares (w.r.t. the L2 norm). A built layer may refine
        it per instance as a :class:`lipbench.contracts.BoundedLayer` (the unconstrained baseline
        computes its exact operator norm that way).
    exact: True when the bound holds by proof in exact arithmetic; False when it rests on an
        approximation (truncated series, finitely many iterations). ``tolerance`` is the relative
        slack the exact operator norm may then exceed ``bound`` by, and ``approximation`` names the
        settings (recorded with every result).
    orthogonal: the layer preserves norms (all singular values 1 up to ``tolerance``).
    model: the model family a job of this method builds unless the user picks another (``--model``).
    protocol: training settings the method needs on any budget (keys of
        :class:`lipbench.settings.TrainSettings`, e.g. ``{"lr": 0.01}`` for unconstrained layers that
        diverge at the default lr). They override a preset's protocol; the preset's own entry for the
        method and command-line options override them.
    Hooks (all optional): ``activation() -> nn.Module`` replaces MaxMin in the generic families;
        ``optimizer(model, settings: OptimizerSettings) -> Optimizer`` replaces SGD;
        ``extra_loss(model) -> Tensor`` is added to the task loss; ``certificate(model) -> dict``
        returns the model's bound as ``lipschitz_bound`` (sound) plus any fields to record with the
        result (e.g. ``lipschitz_bound_claimed``, ``orthogonality_error``).
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
    model: str = "convnet"
    description: str = ""
    activation: Callable[[], nn.Module] | None = None
    optimizer: Callable[..., Any] | None = None
    extra_loss: Callable[[nn.Module], Any] | None = None
    certificate: Callable[[nn.Module], dict] | None = None


LAYERS: Registry[LayerMethod] = new_registry("layer", "layers")


def register_layer(name: str, **declaration: Any) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register ``build`` under ``name``; returns ``build`` unchanged.

    >>> @register_layer("mine", family="orthogonal", padding="circular", exact=True)
    ... def mine(kind, in_channels, out_channels, kernel_size=3, stride=1): ...
    """

    def decorator(build: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        protocol = check_settings(dict(declaration.pop("protocol", {})), f"layer {name!r}: protocol")
        method = LayerMethod(name=name, build=build, protocol=protocol, **declaration)
        unknown_kinds = set(method.kinds) - set(KINDS)
        if unknown_kinds:
            raise ValueError(f"layer {name!r}: unknown kinds {sorted(unknown_kinds)}; use {KINDS}")
        LAYERS.add(name, method)
        return build

    return decorator


def unregister_layer(name: str) -> None:
    """Remove a method (for tests and interactive sessions)."""
    LAYERS.remove(name)


def list_layers(pattern: str = "*", exclude: str | None = None) -> list[str]:
    return LAYERS.names(pattern, exclude)


def get_method(name: str) -> LayerMethod:
    return LAYERS.get(name)


def resolve_layers(patterns: str) -> list[str]:
    return LAYERS.resolve(patterns, "--layers")


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


# --- model families ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelFamily:
    """A network architecture built from a layer method: ``build(method, size, in_shape, n_classes,
    **options)`` returns a :class:`lipbench.contracts.CertifiableModel`.

    sizes: the size names it lists (the first is the default); ``size_pattern`` (a regular
    expression) admits more, e.g. LipNeXt's L<depth>W<width>. methods: the layer methods it works with
    (None: any method that has the ``kinds`` it needs). Options it does not take itself go to the
    method's layers.
    """

    name: str
    build: Callable[..., nn.Module]
    sizes: tuple[str, ...]
    description: str = ""
    methods: tuple[str, ...] | None = None
    kinds: tuple[str, ...] = ()
    size_notes: Mapping[str, str] = field(default_factory=dict)  # e.g. what each size costs
    size_pattern: str | None = None
    features: Callable[[str], int] | None = None  # outputs it can give a replacing head, per size (None: n_classes)

    def accepts(self, size: str) -> bool:
        return size in self.sizes or bool(self.size_pattern and re.fullmatch(self.size_pattern, size))


MODELS: Registry[ModelFamily] = new_registry("model", "layers")


def register_model(name: str, **declaration: Any) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a model family's ``build`` under ``name``; returns ``build`` unchanged."""

    def decorator(build: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        MODELS.add(name, ModelFamily(name=name, build=build, **declaration))
        return build

    return decorator


def model_family(layer: str, model: str | None = None) -> ModelFamily:
    """The family a job of ``layer`` builds: ``model`` if given, else the method's own."""
    method = get_method(layer)
    family = MODELS.get(model or method.model)
    if family.methods is not None and layer not in family.methods:
        raise UserError(f"model {family.name!r} is built from {', '.join(family.methods)} only, not {layer!r}")
    missing = set(family.kinds) - set(method.kinds)
    if missing:
        raise UserError(f"model {family.name!r} needs {' and '.join(sorted(missing))} layers, which {layer!r} "
                        f"does not offer (it has {', '.join(method.kinds)})")
    return family


def create_model(layer: str, size: str | None = None, in_shape: tuple[int, ...] = (3, 32, 32), n_classes: int = 10,
                 model: str | None = None, head: str = "default", **options: Any) -> nn.Module:
    """Build the benchmark network of ``size`` from method ``layer``, in its own model family or ``model``,
    with its own last layer or the registered ``head``."""
    family = model_family(layer, model)
    size = size or family.sizes[0]
    if not family.accepts(size):
        raise UserError(f"model {family.name!r} (for {layer}) has no size {size!r}; "
                        f"choose one of {', '.join(family.sizes)}")
    replacing = HEADS.get(head)
    if replacing.attach is None:
        return family.build(get_method(layer), size, tuple(in_shape), n_classes, **options)
    features = family.features(size) if family.features else n_classes
    body = family.build(get_method(layer), size, tuple(in_shape), features, **options)
    return replacing.attach(body, features, n_classes)


# --- heads -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Head:
    """A last layer that replaces a model family's own: ``attach(body, features, n_classes)`` returns the
    network (a :class:`lipbench.contracts.CertifiableModel`) from a body built with ``features`` outputs.
    ``attach`` None keeps the family's own head."""

    name: str
    attach: Callable[[nn.Module, int, int], nn.Module] | None
    description: str = ""


HEADS: Registry[Head] = new_registry("head", "recipes")


def register_head(name: str, description: str = "") -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    def decorator(attach: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        HEADS.add(name, Head(name, attach, description))
        return attach

    return decorator


HEADS.add("default", Head("default", None, "the model family's own last layer"))
