"""What several commands share: parsing lists and key=value options, checking datasets up front, and
the live progress of a sweep."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import yaml
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from lipbench.budget import format_duration
from lipbench.data import DatasetMissing, describe_datasets, load_dataset
from lipbench.errors import UserError
from lipbench.registry import load_plugin
from lipbench.settings import JobConfig

console = Console()


def split(text: str, option: str) -> list[str]:
    """The comma-separated items of ``text``; an empty list is an error naming ``option``."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise UserError(f"{option} is empty; give at least one value (see `lipbench run --help`)")
    return items


def parse_seeds(text: str) -> list[int]:
    """``--seeds``: a list (``0,1,2``) or, as one number N, the first N seeds (``3`` is 0,1,2)."""
    items = split(text, "--seeds")
    try:
        values = [int(item) for item in items]
    except ValueError:
        raise UserError(f"--seeds must be integers separated by commas (0,1,2) or a count (3), not {text!r}") from None
    if len(values) == 1 and "," not in text:
        if values[0] < 1:
            raise UserError(f"--seeds {text} asks for no seed; give a count >= 1 (3 means 0,1,2) or --seed N")
        return list(range(values[0]))
    if any(value < 0 for value in values):
        raise UserError(f"--seeds must be non-negative, not {text!r}")
    return values


def parse_key_values(items: list[str], flag: str = "--layer-option", example: str = "sketch_dim=16") -> dict[str, Any]:
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"{flag} {item!r} must look like key=value, e.g. {flag} {example}")
        try:
            options[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise UserError(f"{flag} {item!r}: the value is not a number, word or list") from None
    return options


def load_plugins(plugins: Optional[list[str]]) -> tuple[str, ...]:
    for module in plugins or []:
        load_plugin(module)
    return tuple(plugins or ())


def check_datasets(datasets: list[str], data_dir: Optional[str], download: bool = True) -> None:
    """Load each dataset once up front, so a missing one fails in one line before any job starts. Without
    ``download`` (a dry run), a dataset that a run would download is only announced."""
    for name in datasets:
        try:
            data = load_dataset(name, data_dir, download)
        except DatasetMissing as missing:
            console.print(f"[dim]{name}: {missing}; the run will download it[/]")
            continue
        console.print(f"[dim]{data.name}: {data.sizes[0]} train / {data.sizes[1]} test images "
                      f"of shape {tuple(data.in_shape)}, {data.n_classes} classes[/]")


def extra_data_settings(path: Optional[Path], ratio: float) -> dict[str, Any]:
    """The job settings of ``--extra-data`` and ``--extra-ratio``, checked; the path absolute (jobs run elsewhere)."""
    if path is None:
        return {}
    if not path.expanduser().is_file():
        raise UserError(f"--extra-data {path} is not a file: give an .npz with arrays x and y")
    if not 0 < ratio < 1:
        raise UserError(f"--extra-ratio must be in (0, 1), the share of each batch from {path.name}; got {ratio:g}")
    return {"extra_data": str(path.expanduser().resolve()), "extra_ratio": float(ratio)}


def datasets_help() -> str:
    return f"Datasets, comma-separated: {describe_datasets()}."


class ProgressObserver:
    """A rich progress bar per job: budget spent, time left, epoch, loss; then the job's result."""

    def __init__(self) -> None:
        columns = [TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"),
                   TimeElapsedColumn()]
        self.progress = Progress(*columns, console=console, transient=False)
        self.tasks: dict[str, TaskID] = {}  # of the jobs running now (several with --max-parallel)

    def started(self, job: JobConfig, number: int, total: int) -> None:
        if not self.tasks:
            self.progress.start()
        retry = " (retry)" if job.retry_of else ""
        self.tasks[job.job_id] = self.progress.add_task(
            f"[{number}/{total}] {job.layer} {job.size} {job.dataset}{retry}", total=job.budget_s, info="starting")

    def event(self, job: JobConfig, event: dict[str, Any]) -> None:
        phase, task = event.get("phase"), self.tasks[job.job_id]
        if phase == "train":
            remaining = max(0.0, event["budget"] - event["elapsed"])
            self.progress.update(task, completed=min(event["elapsed"], event["budget"]),
                                 info=f"{format_duration(remaining)} left · epoch {event['epoch']:.2f} · "
                                      f"loss {event['loss']:.3f}")
        elif phase == "trained":
            self.progress.update(task, completed=event["budget"], info=f"trained {event['epoch']:.2f} epochs")
        elif phase == "certify":
            self.progress.update(task, info="certifying and measuring")
        elif phase == "audit":
            self.progress.update(task, info="auditing the certificate")

    def finished(self, job: JobConfig, record: dict[str, Any]) -> None:
        status = record["status"]
        shown = (f"clean {100 * record['clean_acc']:.1f}%  CRA36 {100 * record['cra_36']:.1f}%" if status == "ok"
                 else f"[red]{status}[/] {record.get('error', '')}"[:110])
        if isinstance(record.get("audit"), dict):
            shown += f"  audit {record['audit'].get('verdict')}"
        task = self.tasks.pop(job.job_id, None)
        if task is None:  # finished before it was seen to start (another sweep had finished it)
            return
        self.progress.update(task, completed=job.budget_s, info=shown)
        if not self.tasks:
            self.progress.stop()
