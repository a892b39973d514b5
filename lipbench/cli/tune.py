"""`lipbench tune`: random search of learning rate and weight decay on a held-out split."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from lipbench.budget import load_budget
from lipbench.cli import app
from lipbench.cli.common import ProgressObserver, check_datasets, console, load_plugins, split
from lipbench.device import resolve_device
from lipbench.errors import UserError
from lipbench.executors import create_executor
from lipbench.jobfolder import write_text_atomic
from lipbench.plan import expand
from lipbench.registry import resolve_layers
from lipbench.sweep import RetryPolicy, run_sweep
from lipbench.tune import best_settings, trials, tuned_preset


@app.command("tune")
def tune_command(
    layers: str = typer.Option("aol", "--layers", "--layer", "-l", help="Methods to tune (wildcards allowed)."),
    sizes: str = typer.Option("XS", "--sizes", "--size", "-s", help="Model sizes."),
    dataset: str = typer.Option("fashion-mnist", "--dataset", "-d", help="Dataset whose training set is split."),
    budget: str = typer.Option("1m", "--budget", "-b", help="Training time per trial (the smallest budget you study)."),
    trial_count: int = typer.Option(6, "--trials", help="Random (lr, weight decay) samples per layer and size."),
    holdout: float = typer.Option(0.1, help="Fraction of the training set held out for evaluation."),
    seed: int = typer.Option(0, help="Seed of the random search."),
    out: Path = typer.Option(Path("results/tune"), "--out", "-o", help="Results folder for the trials."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    data_dir: Optional[str] = typer.Option(None, help="Folder holding the dataset files."),
    plugin: Optional[list[str]] = typer.Option(None, help="Module or .py file that registers layers."),
) -> None:
    """Random search of the peak learning rate and weight decay (log-uniform), as in the paper.

    Every trial trains under the budget and is evaluated on a held-out part of the training set,
    never on the test set. The best (by CRA at 36/255) per layer and size is written to
    OUT/tuned.yaml, a budget preset: `lipbench run --budget OUT/tuned.yaml` uses it.
    """
    plugins = load_plugins(plugin)
    if not 0 < holdout < 1:
        raise UserError(f"--holdout must be between 0 and 1, not {holdout}")
    if trial_count < 1:
        raise UserError(f"--trials must be at least 1, not {trial_count}")
    resolve_device(device)
    base_budget = load_budget(budget)
    base = expand(resolve_layers(layers), split(sizes, "--sizes"), [dataset], [base_budget], [seed], {},
                  device=device, data_dir=data_dir, plugins=plugins, save_model=False)
    if not base:
        raise UserError("nothing to tune: no layer offers the requested sizes (see `lipbench layers`)")
    check_datasets([dataset], data_dir)
    jobs = trials(base, trial_count, holdout, seed)
    console.print(f"{len(jobs)} trials ({trial_count} per layer and size) of {base_budget.name} each")
    records = run_sweep(out, jobs, create_executor("local", device), ProgressObserver(), RetryPolicy(0, 0))
    chosen = best_settings(records)
    if not chosen:
        raise UserError("no trial finished; see the records under " + str(out / "jobs"))
    preset = out / "tuned.yaml"
    write_text_atomic(preset, tuned_preset(base[0], chosen))
    for key, value in chosen.items():
        console.print(f"{key}: lr {value['lr']:g}, weight decay {value['weight_decay']:g}")
    console.print(f"written: {preset} (use with --budget {preset})")
