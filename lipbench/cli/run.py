"""`lipbench run`: plan the jobs, run each in its own process with a live budget bar, then show the table."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch
import typer
import yaml
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from lipbench.budget import Budget, format_duration, load_budget
from lipbench.cli import app
from lipbench.cli.report import print_board, report_into
from lipbench.data import load_dataset
from lipbench.distributed import World, check_batch_sizes
from lipbench.errors import UserError
from lipbench.executors import create_executor, load_slurm_settings, run_sweep
from lipbench.audit import audit_job
from lipbench.device import resolve_device
from lipbench.job import MODEL_NAME
from lipbench.plan import JobConfig, expand
from lipbench.records import environment
from lipbench.registry import load_plugin, model_family, resolve_layers
from lipbench.runner import (FINISHED, RetryPolicy, calibration_key, existing_record, existing_status, job_dir,
                             read_calibration, write_sweep)
from lipbench.settings import TrainSettings

console = Console()


def split(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def parse_key_values(items: list[str], flag: str = "--layer-option", example: str = "sketch_dim=16") -> dict[str, Any]:
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"{flag} {item!r} must look like key=value, e.g. {flag} {example}")
        options[key.strip()] = yaml.safe_load(value)
    return options


def check_datasets(datasets: list[str], data_dir: Optional[str]) -> None:
    """Load each dataset once up front, so a missing one fails in one line before any job starts."""
    for name in datasets:
        data = load_dataset(name, data_dir)
        console.print(f"[dim]{data.name}: {len(data.x_train)} train / {len(data.x_test)} test images "
                      f"of shape {tuple(data.in_shape)}, {data.n_classes} classes[/]")


@app.command("run")
def run_command(
    budget: str = typer.Option("2m", "--budget", "-b", help="Training time per job: 30s, 2m, 1h30m, 10h, or a preset "
                               "(2h, 10h, 24h, cpu-2m) or preset YAML file; PRESET@TIME runs a preset's protocol for "
                               "another time (cpu-2m@1m). A plain duration uses the paper's GPU protocol (batch "
                               f"{TrainSettings.batch_size}, lr {TrainSettings.lr:g}); on a CPU, cpu-2m@TIME suits "
                               "minutes. Commas run several."),
    layers: str = typer.Option("aol,standard", "--layers", "--layer", "-l",
                               help="Methods, comma-separated; wildcards allowed ('*', 'so*'). See `lipbench layers`."),
    sizes: str = typer.Option("XS", "--sizes", "--size", "-s", help="Model sizes: XS, S, M, L (ConvNet widths 16-128)."),
    datasets: str = typer.Option("fashion-mnist", "--datasets", "--dataset", "-d",
                                 help="fashion-mnist, cifar10, cifar100, synthetic, a .npz file or an image folder."),
    seeds: str = typer.Option("0", "--seeds", "--seed", help="Random seeds, comma-separated."),
    out: Path = typer.Option(Path("results"), "--out", "-o", help="Results folder (one sub-folder per job)."),
    device: str = typer.Option("auto", help="auto (CUDA if visible), cpu or cuda[:N]."),
    data_dir: Optional[str] = typer.Option(None, help="Folder holding the dataset files (also $LIPBENCH_DATA)."),
    batch_size: Optional[int] = typer.Option(None, help="Override the preset's batch size (default 256)."),
    lr: Optional[float] = typer.Option(None, help="Override the peak learning rate of the OneCycle schedule."),
    momentum: Optional[float] = typer.Option(None, help="Override SGD momentum (default 0.9)."),
    weight_decay: Optional[float] = typer.Option(None, help="Override weight decay (default 0)."),
    augment: Optional[bool] = typer.Option(None, "--augment/--no-augment", help="Random crops and flips."),
    precision: Optional[str] = typer.Option(None, help="fp32 (default) or bf16 autocast."),
    layer_option: Optional[list[str]] = typer.Option(None, help="key=value passed to every layer/model, repeatable."),
    plugin: Optional[list[str]] = typer.Option(None, help="Module or .py file that registers layers, repeatable."),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Skip jobs that already have a finished record "
                                "(their id is a hash of the settings); --no-resume re-runs them."),
    force: bool = typer.Option(False, help="Same as --no-resume."),
    retries: int = typer.Option(1, help="Re-run a diverged (NaN) job with another seed, an out-of-memory job at half "
                                "the batch, up to this many times; 0 disables. Retries are recorded as their own rows."),
    dry_run: bool = typer.Option(False, help="Print the planned jobs and exit."),
    save_model: bool = typer.Option(True, help="Keep each trained model (model.pt) for audits."),
    audit: bool = typer.Option(False, help="Audit each finished job's certificate (sound bound, lower bound, attacks "
                               "on certified points; see lipbench audit) into its record. Finished jobs without an "
                               "audit are audited here without retraining."),
    executor: str = typer.Option("local", help="local: jobs run here as child processes; slurm: each job is "
                                 "submitted to SLURM through submitit (pip install 'lipbench[slurm]')."),
    max_parallel: Optional[int] = typer.Option(None, help="Jobs running at once. local: default one per visible GPU "
                                               "(group of --nproc GPUs), 1 on CPU; slurm: the job array's limit "
                                               "(default 256)."),
    nproc: int = typer.Option(1, help="Processes (GPUs) training each job together with DDP; the batch size is the "
                              "global batch and must be a multiple of it."),
    slurm_config: Optional[Path] = typer.Option(None, help="YAML file of SLURM settings: partition, account, qos, "
                                                "constraint, gpus_per_job, cpus_per_job, mem_gb, time_margin_min, "
                                                "max_requeues, setup, sbatch."),
    slurm: Optional[list[str]] = typer.Option(None, help="key=value SLURM setting over --slurm-config, repeatable, "
                                              "e.g. --slurm partition=gpu."),
) -> None:
    """Train every layer x size x dataset x budget x seed under the time budget, certify, record, report.

    Each job runs in its own process (clean peak memory, crashes isolated) and writes
    OUT/jobs/<id>/record.json atomically, also when it fails (nan, oom, timeout, error).
    Jobs whose record exists are skipped unless --force, so re-running a sweep resumes it.

    Examples: lipbench run --budget cpu-2m --layers aol,standard --dataset fashion-mnist (two minutes each on a CPU);
    lipbench run --budget 2h --layers lipnext,soc,cpl --sizes XS,S --dataset cifar10 (the paper's protocol, a GPU).
    """
    if World.from_environment().distributed:
        raise UserError("lipbench run starts its own processes: use --nproc N instead of torchrun "
                        "(or torchrun ... -m lipbench.job JOB_DIR to train one planned job)")
    for module in plugin or []:
        load_plugin(module)
    if precision not in (None, "fp32", "bf16"):
        raise UserError(f"--precision must be fp32 or bf16, not {precision!r}")
    names = resolve_layers(layers)
    budgets = [load_budget(b) for b in split(budget)]
    size_list, dataset_list = split(sizes), split(datasets)
    try:
        seed_list = [int(s) for s in split(seeds)]
    except ValueError:
        raise UserError(f"--seeds must be integers separated by commas, not {seeds!r}") from None
    overrides = {k: v for k, v in dict(batch_size=batch_size, lr=lr, momentum=momentum, weight_decay=weight_decay,
                                        augment=augment, precision=precision).items() if v is not None}
    jobs = expand(names, size_list, dataset_list, budgets, seed_list, overrides, device=device,
                  layer_options=parse_key_values(layer_option or []), plugins=tuple(plugin or ()), data_dir=data_dir,
                  save_model=save_model, with_audit=audit)
    report_missing_sizes(names, size_list)
    if not jobs:
        raise UserError("nothing to run: no layer offers the requested sizes")
    rerun = force or not resume
    pending = [job for job in jobs if rerun or existing_status(out, job) not in FINISHED]
    if dry_run:
        print_plan(jobs, out)
        return
    check_batch_sizes([job.batch_size for job in jobs], nproc)
    settings = load_slurm_settings(slurm_config, parse_key_values(slurm or [], "--slurm", "partition=gpu"))
    runner = create_executor(executor, device, nproc, max_parallel, settings, announce=console.print)
    here = resolve_device(device if executor == "local" else "cpu")  # a cluster's login node may have no GPU
    hint = cpu_protocol_hint(budgets, here, overrides)
    if hint:
        console.print(f"[yellow]{hint}[/]")
    check_datasets(dataset_list, data_dir)
    sweep = write_sweep(out, jobs, {"layers": names, "sizes": size_list, "datasets": dataset_list,
                                    "budgets": [b.name for b in budgets], "seeds": seed_list, "overrides": overrides},
                        environment(here))
    console.print(f"{len(jobs)} jobs, {len(jobs) - len(pending)} already done; sweep {sweep.name}; results in {out}/")
    try:
        run_sweep(out, pending, runner, ProgressObserver(), RetryPolicy(nan_retries=retries, oom_retries=retries))
        if audit:
            audit_unaudited(out, jobs, device)
    finally:
        board = report_into(out, [job.job_id for job in jobs])
        if board is not None:
            print_board(board, console)


def cpu_protocol_hint(budgets: list[Budget], device: torch.device, overrides: dict[str, Any]) -> str | None:
    """On a CPU, a plain duration without lr or batch size given gets the paper's GPU protocol: say so."""
    plain = [budget.name for budget in budgets if not budget.protocol]
    if device.type != "cpu" or not plain or {"lr", "batch_size"} & set(overrides):
        return None
    return (f"--budget {plain[0]} trains with the paper's protocol (batch {TrainSettings.batch_size}, "
            f"lr {TrainSettings.lr:g}), made for hours on a GPU; "
            f"for minutes on a CPU, --budget cpu-2m@{plain[0]} uses a protocol tuned for them (see budgets/cpu-2m.yaml)")


def report_missing_sizes(names: list[str], sizes: list[str]) -> None:
    for name in names:
        missing = [s for s in sizes if not model_family(name).accepts(s)]
        if missing:
            console.print(f"[yellow]{name} has no size {', '.join(missing)} (it offers {', '.join(model_family(name).sizes)})"
                          f"; those jobs are left out[/]")


def print_plan(jobs: list[JobConfig], out: Path) -> None:
    from rich.table import Table

    calibration = read_calibration(out)
    device_name = environment(resolve_device(jobs[0].device))["device_name"]
    table = Table(title=f"{len(jobs)} planned jobs", box=None, padding=(0, 1, 0, 0), header_style="bold")
    for column in ("id", "status", "layer", "size", "dataset", "budget", "seed", "lr", "batch", "epochs"):
        table.add_column(column, no_wrap=True)
    total = 0.0
    for job in jobs:
        status = existing_status(out, job) or "pending"
        total += job.budget_s if status not in FINISHED else 0
        measured = calibration.get(calibration_key(job, device_name))
        epochs = f"{job.budget_s / measured['step_seconds'] / measured['steps_per_epoch']:.1f}" if measured else "?"
        table.add_row(job.job_id, status, job.layer, job.size, job.dataset, job.budget, str(job.seed), f"{job.lr:.2g}",
                      str(job.batch_size), epochs)
    console.print(table)
    console.print(f"device time still to spend on training: {format_duration(total)} (plus loading and certification); "
                  "'epochs' are estimated from this device's calibration, '?' where a run has not measured it yet")


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
        self.progress.update(self.tasks.pop(job.job_id), completed=job.budget_s, info=shown)
        if not self.tasks:
            self.progress.stop()


def audit_unaudited(out: Path, jobs: list[JobConfig], device: str) -> None:
    """Audit, in this process, the finished jobs whose record has no audit yet (run before without --audit)."""
    for job in jobs:
        record = existing_record(out, job) or {}
        folder = job_dir(out, job)
        if record.get("status") == "ok" and "audit" not in record and (folder / MODEL_NAME).is_file():
            console.print(f"auditing {job.label} (finished earlier without an audit)")
            audit = audit_job(folder, device=device)
            console.print(f"  audit: {audit['verdict']}, sound bound {audit['sound_bound']}, "
                          f"{audit['violations']} violation(s)")
