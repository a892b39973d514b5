"""Layer speed as a ratio to a plain convolution, and regression checks against a baseline.

What is timed, per layer and for one fixed shape, two steps:

* ``train``: forward, backward (to the input and to the parameters) and an SGD step on the
  layer's parameters;
* ``eval``: a forward in eval mode under ``torch.no_grad()``, with the layer's caches warm.

Each step is timed against the same step of a reference workload of the same shape, in the same
process: a plain ``nn.Conv2d`` (``nn.Linear`` for kind ``linear``). After a warm-up, blocks of
the layer's step and of the reference's step alternate (A B A B ...); each block repeats its step
for about ``block_ms`` (a GPU is synchronized at both ends of a block). Two neighbouring blocks
give one ratio of per-step times, and a process reports the median of its pairs. Several fresh
processes run one after another; the ratio is the median of their medians, and the per-process
medians are kept for the significance test. A shared machine's load slows both blocks of a pair
alike, so ratios move far less than raw times do.

On CPU the clock is the process's CPU time and torch runs one thread: a busy runner then delays
a step without adding to its measured cost. Under a load of 8 to 10 on 2 cores, wall time gave
a plain conv's train step 0.49x to 1.38x nn.Conv2d's across processes, CPU time 0.98x to 1.05x
(once the allocator was steadied, see ``STEADY_MALLOC``). On CUDA the clock is wall time, the GPU
synchronized at both ends of a block.

A check flags a layer when its ratio grew by more than ``factor`` *and* a one-sided
Mann-Whitney U test on the per-process medians (after > before) gives ``p <= alpha``; a suspect
is measured once more, and its new processes pooled with the first, before it fails.

Data flow: :func:`measure` runs worker processes (this file run as a script, so it also measures
another revision's ``lipbench`` put first on ``PYTHONPATH``) and returns :class:`Speeds`;
:func:`to_document` / :func:`from_document` turn them into a baseline file and back;
:func:`judge` compares two samples. The worker only uses ``lipbench.create_layer``,
``lipbench.load_plugin``, ``lipbench.__version__`` and ``lipbench.errors``, which every revision has.
"""
from __future__ import annotations

import gc
import io
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from itertools import combinations
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import yaml
from torch import Tensor, nn

import lipbench
from lipbench.errors import UserError
from lipbench.records import device_name

STEPS = ("train", "eval")
DEVICE_CLASSES = ("cpu", "cuda")
DEFAULT_FACTOR = {"cpu": 1.5, "cuda": 1.1}
DEFAULT_ALPHA = 0.05
BASELINE_FORMAT = "lipbench-speed-baseline/1"
SGD_LR, SGD_MOMENTUM = 1e-4, 0.9  # a small lr: hundreds of timed steps leave the weights where they were
# glibc malloc keeps freed memory (no mmap/trim per tensor), as a long training process ends up doing.
# Left to its dynamic threshold, some processes page-fault on every step and others never do:
# that moved a plain conv's ratio to nn.Conv2d by 20% between processes.
STEADY_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(32 * 2**20), "MALLOC_TRIM_THRESHOLD_": str(2**40)}
EXACT_TEST_LIMIT = 20_000  # splits enumerated exactly by the rank test; a normal approximation beyond


@dataclass(frozen=True)
class Shape:
    """The input a layer is timed on: (batch, channels, size, size) for conv, (batch, channels) for linear."""

    kind: str = "conv"
    batch: int = 64
    channels: int = 64
    size: int = 16
    kernel: int = 3

    def describe(self) -> str:
        if self.kind == "linear":
            return f"linear b{self.batch} f{self.channels}"
        return f"conv b{self.batch} c{self.channels} {self.size}x{self.size} k{self.kernel}"


DEFAULT_SHAPE = {"cpu": Shape(), "cuda": Shape("conv", 256, 128, 32, 3)}
CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}  # cpu: this process's CPU time


@dataclass(frozen=True)
class Timing:
    """How one process times a step: ``pairs`` A/B block pairs of about ``block_ms`` each."""

    pairs: int = 30
    block_ms: float = 2.0
    warmup_ms: float = 100.0
    threads: int = 1
    clock: str = "cpu"


DEFAULT_CLOCK = {"cpu": "cpu", "cuda": "wall"}


@dataclass(frozen=True)
class Config:
    """Everything a measurement depends on besides the code: shape, dtype, device class, timing."""

    shape: Shape
    dtype: str = "float32"
    device: str = "cpu"
    timing: Timing = Timing()


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


def make_config(device: str, dtype: str = "float32", kind: str = "conv", batch: int | None = None,
                channels: int | None = None, size: int | None = None, kernel: int | None = None,
                clock: str | None = None, **timing: float) -> Config:
    """A validated config: the device's default shape with the given fields replaced."""
    if kind not in ("conv", "linear"):
        raise UserError(f"unknown kind {kind!r}; use conv or linear")
    if not isinstance(getattr(torch, dtype, None), torch.dtype) or not getattr(torch, dtype).is_floating_point:
        raise UserError(f"unknown dtype {dtype!r}; use e.g. float32, float64, bfloat16 or float16")
    clock = clock or DEFAULT_CLOCK[device]
    if clock not in CLOCKS:
        raise UserError(f"unknown clock {clock!r}; use {' or '.join(CLOCKS)}")
    if clock == "cpu" and device == "cuda":
        raise UserError("the cpu clock cannot see GPU work; use --clock wall with --device cuda")
    given = dict(kind=kind, batch=batch, channels=channels, size=size, kernel=kernel)
    shape = replace(DEFAULT_SHAPE[device], **{key: value for key, value in given.items() if value is not None})
    return Config(shape=shape, dtype=dtype, device=device, timing=Timing(clock=clock, **timing))


# ---------------------------------------------------------------- timing inside one process

def resolve_device(requested: str) -> str:
    """``auto`` means cuda when torch sees a GPU, else cpu."""
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested not in DEVICE_CLASSES:
        raise UserError(f"unknown device {requested!r}; use auto, cpu or cuda")
    if requested == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda, but torch sees no CUDA GPU here")
    return requested


def reference_module(shape: Shape) -> nn.Module:
    """The plain layer every method is timed against: nn.Conv2d ('same' zero padding) or nn.Linear."""
    if shape.kind == "linear":
        return nn.Linear(shape.channels, shape.channels)
    return nn.Conv2d(shape.channels, shape.channels, shape.kernel, padding=shape.kernel // 2)


def make_step(step: str, module: nn.Module, inputs: Tensor) -> Callable[[], None]:
    """A closure running one ``train`` or ``eval`` step of ``module`` on ``inputs``."""
    if step == "eval":
        module.eval()

        def eval_step() -> None:
            with torch.no_grad():
                module(inputs)
        return eval_step
    module.train()
    inputs = inputs.detach().requires_grad_(True)  # a layer inside a network passes gradients on
    with torch.no_grad():
        grad_output = torch.randn_like(module(inputs))
    parameters = [parameter for parameter in module.parameters() if parameter.requires_grad]
    momenta = [torch.zeros_like(parameter) for parameter in parameters]

    def train_step() -> None:
        for tensor in (inputs, *parameters):
            tensor.grad = None
        module(inputs).backward(grad_output)
        sgd_step(parameters, momenta)
    return train_step


@torch.no_grad()
def sgd_step(parameters: list[Tensor], momenta: list[Tensor]) -> None:
    """The update of torch.optim.SGD(lr=SGD_LR, momentum=SGD_MOMENTUM) on its per-tensor path.

    Written out because building a torch optimizer imports torch._dynamo: about 2.5 s of CPU in
    every fresh measuring process.
    """
    for parameter, momentum in zip(parameters, momenta):
        if parameter.grad is not None:  # as torch's SGD, skip a parameter the step did not reach
            momentum.mul_(SGD_MOMENTUM).add_(parameter.grad)
            parameter.add_(momentum, alpha=-SGD_LR)


def timed_block(step: Callable[[], None], repeats: int, synchronize: Callable[[], None],
                clock: Callable[[], float]) -> float:
    """Seconds per step over ``repeats`` back-to-back steps."""
    synchronize()
    start = clock()
    for _ in range(repeats):
        step()
    synchronize()
    return (clock() - start) / repeats


def warm_up(step: Callable[[], None], synchronize: Callable[[], None], clock: Callable[[], float],
            seconds: float) -> float:
    """Run ``step`` at least 3 times and for about ``seconds``; return its fastest single run."""
    fastest, spent, runs = math.inf, 0.0, 0
    while runs < 3 or spent < seconds:
        elapsed = timed_block(step, 1, synchronize, clock)
        fastest, spent, runs = min(fastest, elapsed), spent + elapsed, runs + 1
    return fastest


def interleaved(layer_step: Callable[[], None], reference_step: Callable[[], None], timing: Timing,
                synchronize: Callable[[], None]) -> dict[str, float]:
    """Median ratio of per-step times over ``timing.pairs`` alternating blocks, and the median times."""
    block, clock = timing.block_ms / 1e3, CLOCKS[timing.clock]
    repeats = [max(1, round(block / warm_up(step, synchronize, clock, timing.warmup_ms / 2e3)))
               for step in (layer_step, reference_step)]
    layer_times, reference_times = [], []
    gc.disable()  # a collection inside one block of a pair would bias that pair
    try:
        for _ in range(timing.pairs):
            layer_times.append(timed_block(layer_step, repeats[0], synchronize, clock))
            reference_times.append(timed_block(reference_step, repeats[1], synchronize, clock))
    finally:
        gc.enable()
    ratios = np.array(layer_times) / np.array(reference_times)
    return {"ratio": float(np.median(ratios)), "layer_ms": float(np.median(layer_times)) * 1e3,
            "reference_ms": float(np.median(reference_times)) * 1e3}


def build_layer(name: str, shape: Shape) -> nn.Module:
    """Layer ``name`` at ``shape``, stride 1; a ValueError when the method does not offer that shape."""
    torch.manual_seed(0)
    if shape.kind == "linear":
        return lipbench.create_layer(name, "linear", shape.channels, shape.channels)
    return lipbench.create_layer(name, "conv", shape.channels, shape.channels, shape.kernel, 1)


def time_layer(layer: nn.Module, config: Config) -> dict[str, dict[str, float]]:
    """Both steps of ``layer`` against the reference, in this process."""
    shape, device, dtype = config.shape, torch.device(config.device), getattr(torch, config.dtype)
    batch_shape = (shape.batch, shape.channels) if shape.kind == "linear" else \
        (shape.batch, shape.channels, shape.size, shape.size)
    inputs = torch.randn(batch_shape).to(device, dtype)
    layer, reference = layer.to(device, dtype), reference_module(shape).to(device, dtype)
    synchronize = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    return {step: interleaved(make_step(step, layer, inputs), make_step(step, reference, inputs),
                              config.timing, synchronize)
            for step in STEPS}


def environment(device: str) -> dict:
    """The fingerprint stored with a baseline: what the ratios were measured with."""
    return {"lipbench": lipbench.__version__, "torch": str(torch.__version__), "python": platform.python_version(),
            "device": device_name(torch.device(device)),
            "cpu_count": os.cpu_count()}


def worker_measure(request: dict) -> dict:
    """One worker process: load plugins, time every requested layer, report plain data."""
    config = config_from_dict(request["config"])
    torch.set_num_threads(config.timing.threads)
    for plugin in request["plugins"]:
        lipbench.load_plugin(plugin)
    layers, skipped, errors = {}, {}, {}
    for name in request["layers"]:
        try:
            layer = build_layer(name, config.shape)
        except ValueError as error:  # as in the conformance suite: the method refuses this shape
            skipped[name] = str(error)
            continue
        try:
            layers[name] = time_layer(layer, config)
        except Exception as error:  # reported per layer: one layer that cannot run spoils no other
            errors[name] = f"{type(error).__name__}: {error}"
    return {"layers": layers, "skipped": skipped, "errors": errors, "environment": environment(config.device)}


# ---------------------------------------------------------------- processes and revisions

def config_from_dict(data: dict) -> Config:
    return Config(shape=Shape(**data["shape"]), dtype=data["dtype"], device=data["device"],
                  timing=Timing(**data["timing"]))


def run_worker(layers: Sequence[str], config: Config, plugins: Sequence[str], tree: Path | None) -> dict:
    """Run one fresh worker process; ``tree`` puts another revision's ``lipbench`` first on the path."""
    request = {"layers": list(layers), "plugins": list(plugins), "config": asdict(config)}
    root = tree or Path(lipbench.__file__).resolve().parent.parent
    env = {**os.environ, **STEADY_MALLOC,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    # Run this file by path (not ``-m``), so that ``import lipbench`` inside finds ``tree``'s package.
    command = [sys.executable, "-c", "import runpy, sys; runpy.run_path(sys.argv[1], run_name='__main__')",
               str(Path(__file__).resolve())]
    done = subprocess.run(command, input=json.dumps(request), capture_output=True, text=True, cwd=root, env=env)
    if done.returncode != 0 or not done.stdout.strip():
        last_line = (done.stderr.strip().splitlines() or ["no error output"])[-1]
        raise UserError(f"a measuring process failed (exit {done.returncode}{f' in {tree}' if tree else ''}): "
                        f"{last_line}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(layers: Sequence[str], config: Config, plugins: Sequence[str] = (), processes: int = 3,
            trees: Sequence[Path | None] = (None,),
            progress: Callable[[str], None] = lambda message: None) -> list[Speeds]:
    """Speeds of ``layers`` for each tree (None: this code), processes of the trees interleaved.

    Each process times every layer, starting one layer further down the list than the last.
    """
    results = [Speeds() for _ in trees]
    for index in range(processes):
        order = list(layers[index % len(layers):]) + list(layers[:index % len(layers)])
        for speeds, tree in zip(results, trees):
            started = time.perf_counter()
            report = run_worker(order, config, plugins, tree)
            progress(f"process {index + 1}/{processes}{' (other revision)' if tree else ''}: "
                     f"{time.perf_counter() - started:.1f} s")
            speeds.environment = speeds.environment or report["environment"]
            speeds.skipped.update(report["skipped"])
            for name, error in report["errors"].items():
                speeds.errors.setdefault(name, error)
            for name, steps in report["layers"].items():
                for step, timed in steps.items():
                    sample = speeds.samples.setdefault(name, {}).setdefault(step, Sample())
                    sample.per_process.append(timed["ratio"])
                    sample.layer_ms.append(timed["layer_ms"])
                    sample.reference_ms.append(timed["reference_ms"])
    for speeds in results:  # a layer that failed in any process has no trustworthy sample
        for name in speeds.errors:
            speeds.samples.pop(name, None)
    return results


def _run_git(repository: Path, *arguments: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["git", "-C", str(repository), *arguments], capture_output=True)
    except FileNotFoundError:
        raise UserError("--against needs git on the PATH") from None


@contextmanager
def revision_tree(ref: str) -> Iterator[Path]:
    """A temporary copy of revision ``ref`` of the repository this ``lipbench`` is imported from.

    Made with ``git archive`` (the repository's worktrees and index stay untouched). Sub-packages
    that pyproject.toml maps to other folders (``lipbench.layers`` = ``layers/``) are linked into
    the copy's package, so that importing it from ``PYTHONPATH`` finds them as an install would.
    """
    repository = Path(lipbench.__file__).resolve().parent.parent
    commit = _run_git(repository, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    if commit.returncode != 0:
        raise UserError(f"--against {ref!r}: not a revision of the git repository at {repository}")
    archive = _run_git(repository, "archive", "--format=tar", commit.stdout.decode().strip())
    if archive.returncode != 0:
        raise UserError(f"git archive {ref} failed: {archive.stderr.decode().strip()}")
    tree = Path(tempfile.mkdtemp(prefix="lipbench-against-"))
    try:
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
            tar.extractall(tree, filter="data")
        if not (tree / "lipbench" / "__init__.py").is_file():
            raise UserError(f"revision {ref!r} has no lipbench/ package at its root")
        for package, folder in _package_dirs(tree).items():
            link = tree / "lipbench" / package.removeprefix("lipbench.")
            if package.startswith("lipbench.") and (tree / folder).is_dir() and not link.exists():
                link.symlink_to(tree / folder, target_is_directory=True)
        yield tree
    finally:
        shutil.rmtree(tree, ignore_errors=True)


def _package_dirs(tree: Path) -> dict[str, str]:
    """``[tool.setuptools.package-dir]`` of the tree's pyproject.toml ({} when absent)."""
    try:
        import tomllib
    except ImportError as missing:  # Python 3.10
        raise UserError("--against needs Python 3.11 or newer (tomllib)") from missing
    pyproject = tree / "pyproject.toml"
    if not pyproject.is_file():
        return {}
    settings = tomllib.loads(pyproject.read_text())
    return settings.get("tool", {}).get("setuptools", {}).get("package-dir", {})


# ---------------------------------------------------------------- statistics

def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their average rank."""
    order = np.argsort(values, kind="mergesort")
    _, first, counts = np.unique(values[order], return_index=True, return_counts=True)
    ranks = np.empty(len(values))
    ranks[order] = np.repeat(first + (counts + 1) / 2, counts)
    return ranks


def mann_whitney_greater(after: Sequence[float], before: Sequence[float]) -> float:
    """One-sided p-value of the Mann-Whitney U test that ``after`` tends to exceed ``before``.

    Exact (every split of the pooled ranks, ties averaged) for small samples; the normal
    approximation with tie and continuity corrections beyond ``EXACT_TEST_LIMIT`` splits.
    """
    m, n = len(after), len(before)
    ranks = average_ranks(np.concatenate([np.asarray(after, float), np.asarray(before, float)]))
    observed = ranks[:m].sum()
    if math.comb(m + n, m) <= EXACT_TEST_LIMIT:
        sums = np.array([ranks[list(split)].sum() for split in combinations(range(m + n), m)])
        return float(np.mean(sums >= observed - 1e-9))
    mean = m * (m + n + 1) / 2
    _, ties = np.unique(ranks, return_counts=True)
    variance = m * n / 12 * ((m + n + 1) - (ties ** 3 - ties).sum() / ((m + n) * (m + n - 1)))
    z = (observed - mean - 0.5) / math.sqrt(variance)
    return 0.5 * math.erfc(z / math.sqrt(2))


def smallest_p(after_count: int, before_count: int) -> float:
    """The smallest p-value the rank test can give with these sample sizes (no ties)."""
    return 1 / math.comb(after_count + before_count, after_count)


@dataclass(frozen=True)
class Verdict:
    """One layer's step before and after: the ratios, their change, the test and the mark."""

    layer: str
    step: str
    before: float
    after: float
    change: float
    p_value: float
    mark: str  # "ok", "~" (over the factor, not significant) or "regressed"


def judge(layer: str, step: str, before: Sample, after: Sample, factor: float, alpha: float) -> Verdict:
    """Regressed when ``after/before > factor`` and the rank test says after > before at ``alpha``.

    The test sees the baseline's per-process values rescaled to its ``ratio``, so that a ratio
    edited by hand moves its spread with it.
    """
    before_values = np.array(before.per_process) * (before.ratio / float(np.median(before.per_process)))
    change = after.ratio / before.ratio
    p_value = mann_whitney_greater(after.per_process, before_values)
    mark = "ok" if change <= factor else "regressed" if p_value <= alpha else "~"
    return Verdict(layer, step, before.ratio, after.ratio, change, p_value, mark)


def compare(before: Speeds, after: Speeds, factor: float, alpha: float) -> list[Verdict]:
    """A verdict for every step of every layer measured after."""
    return [judge(name, step, before.samples[name][step], after.samples[name][step], factor, alpha)
            for name in after.samples for step in STEPS]


def confirmed_verdicts(before: Speeds, after: Speeds, measure_again: Callable[[list[str]], Speeds],
                       factor: float, alpha: float) -> list[Verdict]:
    """Verdicts after measuring every layer over the factor once more, its new processes pooled in."""
    suspects = sorted({verdict.layer for verdict in compare(before, after, factor, alpha) if verdict.mark != "ok"})
    if suspects:
        again = measure_again(suspects)
        for name in suspects:
            after.samples[name] = {step: sample.pooled(again.samples[name][step])
                                   for step, sample in after.samples[name].items()}
    return compare(before, after, factor, alpha)


# ---------------------------------------------------------------- baseline files

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
        config = Config(shape=Shape(**settings["shape"]), dtype=str(settings["dtype"]),
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
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    temporary.replace(path)


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


if __name__ == "__main__":  # the worker: a JSON request on stdin, a JSON report as the last stdout line
    print(json.dumps(worker_measure(json.loads(sys.stdin.read()))))
