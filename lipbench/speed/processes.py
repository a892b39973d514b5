"""Measuring in fresh processes, of this code and of another git revision, interleaved."""
from __future__ import annotations

import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch

import lipbench
from lipbench.environment import device_name
from lipbench.errors import UserError
from lipbench.speed import worker
from lipbench.speed.samples import Sample, Speeds
from lipbench.speed.worker import CLOCKS, DEFAULT_SHAPE, Config, Timing

DEVICE_CLASSES = ("cpu", "cuda")
DEFAULT_CLOCK = {"cpu": "cpu", "cuda": "wall"}
# glibc malloc keeps freed memory (no mmap/trim per tensor), as a long training process ends up doing;
# left to its dynamic threshold, some processes page-fault on every step and others never do.
STEADY_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(32 * 2**20), "MALLOC_TRIM_THRESHOLD_": str(2**40)}


def device_class(requested: str) -> str:
    """``cpu`` or ``cuda``: ``auto`` means cuda when torch sees a GPU, else cpu."""
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested not in DEVICE_CLASSES:
        raise UserError(f"unknown device {requested!r}; use auto, cpu or cuda")
    if requested == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda, but torch sees no CUDA GPU here")
    return requested


def timing_config(device: str, dtype: str = "float32", kind: str = "conv", batch: int | None = None,
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


def baseline_environment(device: str) -> dict:
    """What the ratios were measured with (stored with a baseline)."""
    return {"lipbench": lipbench.__version__, "torch": str(torch.__version__), "python": platform.python_version(),
            "device": device_name(torch.device(device)), "cpu_count": os.cpu_count()}


def run_worker(layers: Sequence[str], config: Config, plugins: Sequence[str], tree: Path | None) -> dict:
    """Run one fresh worker process; ``tree`` puts another revision's ``lipbench`` first on the path."""
    request = {"layers": list(layers), "plugins": list(plugins), "config": asdict(config)}
    root = tree or Path(lipbench.__file__).resolve().parent.parent
    env = {**os.environ, **STEADY_MALLOC,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    # Run this file by path (not ``-m``), so that ``import lipbench`` inside finds ``tree``'s package.
    command = [sys.executable, "-c", "import runpy, sys; runpy.run_path(sys.argv[1], run_name='__main__')",
               str(Path(worker.__file__).resolve())]
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
            speeds.environment = speeds.environment or {**baseline_environment(config.device),
                                                         "lipbench": report["lipbench_version"]}
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
