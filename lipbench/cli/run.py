"""`lipbench run`: plan the jobs, run each in its own process with a live budget bar, then show the table."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import torch
import typer
from rich.table import Table

from lipbench.audit.ondisk import audit_job
from lipbench.budget import Budget, format_duration, load_budget, preset_names
from lipbench.cli import app, dynamic_help
from lipbench.cli.common import (ProgressObserver, check_datasets, console, datasets_help, extra_data_settings,
                                 load_plugins, parse_key_values, parse_seeds, split)
from lipbench.device import resolve_device
from lipbench.distributed import World, check_batch_sizes
from lipbench.environment import device_name, fingerprint
from lipbench.errors import UserError
from lipbench.executors import create_executor
from lipbench.executors.slurm import load_slurm_settings
from lipbench.jobfolder import (CHECKPOINT_NAME, FINISHED, MODEL_NAME, Status, WriteError, job_folder, load_tensors,
                                read_record, read_status)
from lipbench.plan import estimated_epochs, expand
from lipbench.recipes import load_recipe
from lipbench.registry import MODELS, model_family, resolve_layers
from lipbench.report.pages import report_into
from lipbench.report.terminal import print_board
from lipbench.settings import JobConfig, TrainSettings, check_settings
from lipbench.sweep import RUNNING_ELSEWHERE, RetryPolicy, calibration_key, read_calibration, run_sweep, write_sweep

DATASETS_OPTION = dynamic_help(typer.Option("fashion-mnist", "--datasets", "--dataset", "-d"), datasets_help)


@app.command("run")
def run_command(
    budget: str = typer.Option("2m", "--budget", "-b", help="Training time per job: 30s, 2m, 1h30m, 10h, or a preset "
                               f"({', '.join(preset_names())}) or preset YAML file; PRESET@TIME runs a preset's "
                               "protocol for another time (cpu-2m@1m). A plain duration gets the protocol that fits it "
                               "(see --protocol). Commas run several."),
    recipe: str = typer.Option("prach", help="Training recipe: loss, optimizer, Lookahead, head, schedule, clipping "
                               "and radius ramp of a paper (prach, liresnet, bronet, lipnext; see `lipbench recipes`), "
                               "or a recipe YAML file. It overrides the budget's protocol; the options below override "
                               "it."),
    protocol: str = typer.Option("auto", help="For a plain duration: auto picks the paper's protocol (batch "
                                 f"{TrainSettings.batch_size}, lr {TrainSettings.lr:g}, OneCycle) when the budget fits "
                                 "many epochs on this device, else the short-run protocol of budgets/cpu-2m.yaml "
                                 "(batch 32, lr 0.02; for minutes on a CPU); paper or short-run forces one."),
    loss: Optional[str] = typer.Option(None, help="Override the recipe's loss: offset-ce, emma, logit-annealing "
                                       "(see `lipbench recipes`)."),
    optimizer: Optional[str] = typer.Option(None, help="Override the recipe's optimizer: sgd, adam or nadam."),
    head: Optional[str] = typer.Option(None, help="Override the recipe's last layer: default or normalized (certified "
                                       "per class pair)."),
    layers: str = typer.Option("aol,standard", "--layers", "--layer", "-l",
                               help="Methods, comma-separated; wildcards allowed ('*', 'so*'). See `lipbench layers`."),
    sizes: str = typer.Option("XS", "--sizes", "--size", "-s",
                              help="Model sizes, comma-separated: XS, S, M, L for every family (the ConvNet's widths "
                                   "16-128), and each family's own (see `lipbench layers`)."),
    datasets: str = DATASETS_OPTION,
    seeds: str = typer.Option("1", "--seeds", help="Random seeds: a list (0,1,2) or a count (3 means 0,1,2; "
                              "the default 1 is seed 0)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="One seed (instead of --seeds)."),
    model: str = typer.Option("", help="Model family for every layer (e.g. convnet, or a method's own); default: each "
                              "method's own family (the ConvNet for most). See `lipbench layers`."),
    out: Path = typer.Option(Path("results"), "--out", "-o", help="Results folder (one sub-folder per job)."),
    device: str = typer.Option("auto", help="auto (CUDA if visible), cpu, cuda or cuda:N."),
    data_dir: Optional[str] = typer.Option(None, help="Folder holding the dataset files (also $LIPBENCH_DATA)."),
    extra_data: Optional[Path] = typer.Option(None, help="An .npz of extra training images (arrays x and y, in the "
                                              "dataset's shape, e.g. generated ones) mixed into every batch; recorded "
                                              "and reported apart."),
    extra_ratio: float = typer.Option(0.75, help="With --extra-data: the share of every batch taken from it (0.75 is "
                                      "LiResNet++'s 1 real : 3 generated)."),
    batch_size: Optional[int] = typer.Option(None, help="Override the preset's batch size (default 256)."),
    lr: Optional[float] = typer.Option(None, help="Override the peak learning rate of the OneCycle schedule."),
    momentum: Optional[float] = typer.Option(None, help="Override SGD momentum (default 0.9)."),
    weight_decay: Optional[float] = typer.Option(None, help="Override weight decay (default 0)."),
    augment: Optional[bool] = typer.Option(None, "--augment/--no-augment", help="Random crops and flips."),
    precision: Optional[str] = typer.Option(None, help="fp32 (default) or bf16 autocast."),
    max_steps: Optional[int] = typer.Option(None, help="Train at most this many steps (the budget still bounds time)."),
    epochs: Optional[float] = typer.Option(None, help="Train exactly this many epochs instead of as many as the budget "
                                           "allows (the budget then only caps the time); the paper-* presets set "
                                           "the paper's epochs per method and size."),
    tf32: Optional[str] = typer.Option(None, help="on or off (default): TF32 matmuls and convolutions during training "
                                       "on GPUs that have them, for every method alike (certification is always "
                                       "strict fp32)."),
    layer_option: Optional[list[str]] = typer.Option(None, help="key=value passed to every layer/model, repeatable."),
    plugin: Optional[list[str]] = typer.Option(None, help="Module or .py file that registers layers, models or "
                                               "datasets, repeatable (it is passed on to every job)."),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Skip jobs that already have a finished record "
                                "(their id is a hash of the settings); --no-resume re-runs them."),
    force: bool = typer.Option(False, help="Same as --no-resume (a replaced record is kept in the job's earlier/)."),
    retries: int = typer.Option(1, min=0, help="Re-run a diverged (NaN) job with another seed, an out-of-memory job at "
                                "half the batch, up to this many times; 0 disables. Retries are their own rows."),
    dry_run: bool = typer.Option(False, help="Check everything, print the planned jobs and exit."),
    save_model: bool = typer.Option(True, help="Keep each trained model (model.pt) for audits."),
    audit: bool = typer.Option(False, help="Audit each finished job's certificate (sound bound, lower bound, attacks "
                               "on certified points; see lipbench audit) into its record. Finished jobs without an "
                               "audit are audited here without retraining."),
    executor: str = typer.Option("local", help="local: jobs run here as child processes; slurm: each job is "
                                 "submitted to SLURM through submitit (pip install 'lipbench[slurm]')."),
    max_parallel: Optional[int] = typer.Option(None, help="Jobs running at once. local: default one per visible GPU "
                                               "(group of --nproc GPUs), 1 on CPU; slurm: the job array's limit "
                                               "(default 256)."),
    share_gpus: bool = typer.Option(False, help="Allow --max-parallel above the number of visible GPUs (jobs then "
                                    "share GPUs, and their throughput and memory are not comparable)."),
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
    Jobs whose record exists are skipped unless --force, so re-running a sweep resumes it;
    two sweeps on one folder never train the same job twice.

    Examples: lipbench run --budget cpu-2m --layers aol,standard --dataset fashion-mnist (two minutes each on a CPU);
    lipbench run --budget 2h --layers lipnext,soc,cpl --sizes XS,S --dataset cifar10 --seeds 3 (the paper's protocol,
    three seeds, a GPU).

    Exit status: 0 when at least one job finished ok, 1 when every job failed or the results folder could
    not be written after the sweep started, 2 for bad input (nothing was run).
    """
    if World.from_environment().distributed:
        raise UserError("lipbench run starts its own processes: use --nproc N instead of torchrun "
                        "(or torchrun ... -m lipbench.job JOB_DIR to train one planned job)")
    plugins = load_plugins(plugin)
    names = resolve_layers(layers)
    budgets = [load_budget(text) for text in split(budget, "--budget")]
    size_list, dataset_list = split(sizes, "--sizes"), split(datasets, "--datasets")
    seed_list = [seed] if seed is not None else parse_seeds(seeds)
    if model:
        MODELS.get(model)
    chosen_recipe = load_recipe(recipe)
    overrides = check_settings({k: v for k, v in dict(loss=loss, optimizer=optimizer, head=head,
                                                       batch_size=batch_size, lr=lr, momentum=momentum,
                                                       weight_decay=weight_decay, augment=augment, precision=precision,
                                                       max_steps=max_steps, epochs=epochs,
                                                       tf32=on_off(tf32, "--tf32")).items() if v is not None},
                               "the command line")
    here = resolve_device(device if executor == "local" else "cpu")  # a cluster's login node may have no GPU
    jobs = expand(names, size_list, dataset_list, budgets, seed_list, overrides, model=model, recipe=chosen_recipe,
                  device_type=here.type, protocol=protocol, device=device,
                  layer_options=parse_key_values(layer_option or []), plugins=plugins, data_dir=data_dir,
                  **extra_data_settings(extra_data, extra_ratio),
                  save_model=save_model, with_audit=audit)
    console.print(describe_protocol(budgets, jobs, here, chosen_recipe.name), highlight=False)
    report_missing_sizes(names, size_list, model)
    if not jobs:
        raise UserError("nothing to run: no layer offers the requested sizes (see `lipbench layers`)")
    settings = load_slurm_settings(slurm_config, parse_key_values(slurm or [], "--slurm", "partition=gpu"))
    executor_for_jobs = create_executor(executor, device, nproc, max_parallel, settings, announce=console.print,
                             share_gpus=share_gpus, replace=force or not resume)
    check_batch_sizes([job.batch_size for job in jobs], nproc)
    check_datasets(dataset_list, data_dir, download=not dry_run)
    rerun = force or not resume
    pending = [job for job in jobs if rerun or read_status(job_folder(out, job.job_id)) not in FINISHED]
    check_checkpoints(out, pending)
    if dry_run:
        print_plan(jobs, out, here)
        return
    sweep = write_sweep(out, jobs, {"layers": names, "sizes": size_list, "datasets": dataset_list,
                                    "budgets": [b.name for b in budgets], "seeds": seed_list, "overrides": overrides},
                        fingerprint(here))
    console.print(f"{len(jobs)} jobs, {len(jobs) - len(pending)} already done; sweep {sweep.name}; results in {out}/")
    try:
        run_sweep(out, pending, executor_for_jobs, ProgressObserver(), RetryPolicy(nan_retries=retries, oom_retries=retries))
        if audit:
            audit_unaudited(out, jobs, device)
    except WriteError as error:
        console.print(f"[bold red]error:[/] {error}; the sweep stopped, the jobs finished before it keep their "
                      "records, and running the same command again resumes it", highlight=False, soft_wrap=True)
        sys.exit(1)
    finally:
        show_board(out, jobs)
    statuses = [(read_record(job_folder(out, job.job_id)) or {}).get("status") for job in jobs]
    if Status.OK.value not in statuses and RUNNING_ELSEWHERE not in statuses:
        console.print("[bold red]no job finished ok[/]; see the statuses above and each job's stdout.log")
        sys.exit(1)


def on_off(value: Optional[str], option: str) -> Optional[bool]:
    if value is None:
        return None
    if value.lower() not in ("on", "off"):
        raise UserError(f"{option} takes on or off, not {value!r}")
    return value.lower() == "on"


def show_board(out: Path, jobs: list[JobConfig]) -> None:
    """The leaderboard of this sweep's jobs; a report that cannot be written costs a line, not the results."""
    try:
        board = report_into(out, [job.job_id for job in jobs], console)
    except WriteError as error:
        console.print(f"[yellow]the report was not written: {error}[/]", highlight=False)
        return
    if board is not None:
        print_board(board, console)


def check_checkpoints(out: Path, jobs: list[JobConfig]) -> None:
    """A pending job's checkpoint must load as plain tensors before anything runs (files from others run no code)."""
    for job in jobs:
        path = job_folder(out, job.job_id) / CHECKPOINT_NAME
        if path.is_file():
            load_tensors(path)


def describe_protocol(budgets: list[Budget], jobs: list[JobConfig], device: torch.device, recipe: str) -> str:
    """The run's first line: the recipe, and for each plain duration the protocol chosen and why."""
    parts = [f"recipe {recipe}"]
    for budget in budgets:
        chosen = next((job.protocol for job in jobs if job.budget == budget.name and job.protocol), "")
        if chosen:
            fits = estimated_epochs(budget.seconds, device.type)
            source = "budgets/cpu-2m.yaml" if chosen == "short-run" else "Prach et al.'s"
            parts.append(f"--budget {budget.name}: the {chosen} protocol ({source}; about {fits:.2g} epochs of a "
                         f"CIFAR-sized set fit on {device.type}; --protocol changes it)")
    return "; ".join(parts)


def report_missing_sizes(names: list[str], sizes: list[str], model: str) -> None:
    for name in names:
        family = model_family(name, model or None)
        missing = [s for s in sizes if not family.accepts(s)]
        if missing:
            console.print(f"[yellow]{name} ({family.name}) has no size {', '.join(missing)} (it offers "
                          f"{', '.join(family.sizes)}); those jobs are left out[/]")


def print_plan(jobs: list[JobConfig], out: Path, device: torch.device) -> None:
    calibration = read_calibration(out)
    here = device_name(device)
    table = Table(title=f"{len(jobs)} planned jobs", box=None, padding=(0, 1, 0, 0), header_style="bold")
    for column in ("id", "status", "layer", "size", "dataset", "budget", "seed", "lr", "batch", "epochs"):
        table.add_column(column, no_wrap=True)
    total = 0.0
    for job in jobs:
        status = read_status(job_folder(out, job.job_id)) or "pending"
        total += job.budget_s if status not in FINISHED else 0
        measured = calibration.get(calibration_key(job, here))
        epochs = f"{job.epochs:g}" if job.epochs else \
            f"{job.budget_s / measured['step_seconds'] / measured['steps_per_epoch']:.1f}" if measured else "?"
        table.add_row(job.job_id, status, job.layer, job.size, job.dataset, job.budget, str(job.seed), f"{job.lr:.2g}",
                      str(job.batch_size), epochs)
    console.print(table)
    console.print(f"device time still to spend on training: at most {format_duration(total)} (plus loading and "
                  "certification); 'epochs' are the preset's or --epochs where a job trains a number of epochs, else "
                  "estimated from this device's calibration ('?' where no run has measured it yet)")


def audit_unaudited(out: Path, jobs: list[JobConfig], device: str) -> None:
    """Audit, in this process, the finished jobs whose record has no audit yet (run before without --audit)."""
    for job in jobs:
        folder = job_folder(out, job.job_id)
        record = read_record(folder) or {}
        if record.get("status") == Status.OK.value and "audit" not in record and (folder / MODEL_NAME).is_file():
            console.print(f"auditing {job.label} (finished earlier without an audit)")
            found = audit_job(folder, device=device)
            console.print(f"  audit: {found['verdict']}, sound bound {found['sound_bound']}, "
                          f"{found['violations']} violation(s)")
