"""`lipbench audit`: re-check the certificates of trained runs (see lipbench/audit.py)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from lipbench.audit import EVAL_POINTS
from lipbench.audit.bounds import DENSE_LIMIT
from lipbench.audit.empirical import LOWER_POINTS, LOWER_STEPS, SAMPLES, STEPS
from lipbench.audit.ondisk import audit_checkpoint, audit_job
from lipbench.cli import app
from lipbench.cli.common import load_plugins
from lipbench.errors import UserError
from lipbench.jobfolder import CONFIG_NAME, MODEL_NAME, RECORD_NAME, read_json, read_record
from lipbench.radii import RADII
from lipbench.settings import JobConfig

console = Console()


@app.command("audit")
def audit_command(
    run: Path = typer.Argument(..., help="A job folder, a results folder (every finished job in it), "
                                         "or a model checkpoint (.pt) with --config."),
    config: Optional[Path] = typer.Option(None, help="The job's config.json, for a checkpoint outside its job folder."),
    samples: int = typer.Option(SAMPLES, help="Certified test points attacked per radius."),
    steps: int = typer.Option(STEPS, help="PGD steps per attack."),
    eval_points: int = typer.Option(EVAL_POINTS, help="Test points searched for certified points to attack."),
    lower_points: int = typer.Option(LOWER_POINTS, help="Test points for the empirical lower bound."),
    lower_steps: int = typer.Option(LOWER_STEPS, help="Power-iteration and pair-ascent steps of the lower bound."),
    dense_limit: int = typer.Option(DENSE_LIMIT, help="Layers with at most this many inputs get the exact "
                                                      "impulse-response bound."),
    tolerance: Optional[float] = typer.Option(None, help="Relative slack of sound over claimed bound "
                                                         "(default: the method's declared tolerance)."),
    recompute_cra: bool = typer.Option(False, help="Recompute the CRA on the whole test set even when the "
                                                   "recorded certificates stand."),
    device: Optional[str] = typer.Option(None, help="auto (default), cpu, cuda or cuda:N."),
    data_dir: Optional[str] = typer.Option(None, help="Folder holding the dataset files."),
    plugin: Optional[list[str]] = typer.Option(None, help="Module or .py file that registers layers, repeatable."),
    write: bool = typer.Option(True, help="Write each audit into its job's record.json (under 'audit')."),
    as_json: bool = typer.Option(False, "--json", help="Print the audits as JSON instead of tables."),
) -> None:
    """Prove every certificate: sound Lipschitz bound, empirical lower bound, attacks on certified points.

    Exit status 1 when an attack breaks a certified point, an observed ratio exceeds the certificate's
    bound, or a sound bound exceeds the one the certificate used (for the model) or the declared
    one (for any layer) by more than the tolerance. A method's claim that only the sound bound
    exceeds (RS-LMI's prod sqrt(tau)) is printed as a finding: the CRA already used the sound bound.

    Example: lipbench audit results/            (every finished job, one row each)
    """
    load_plugins(plugin)
    options = dict(samples=samples, steps=steps, eval_points=eval_points, lower_points=lower_points,
                   lower_steps=lower_steps, dense_limit=dense_limit, tolerance=tolerance,
                   recompute_cra=recompute_cra, device=device, data_dir=data_dir)
    audits, skipped = [], []
    runs = resolve_runs(run, config)
    for label, target in runs:
        if not as_json:
            console.print(f"[dim]auditing {label}...[/]")
        try:
            audit = audit_target(target, write, **options)
        except UserError as error:
            if len(runs) == 1:
                raise
            skipped.append(f"skipped {label}: {error}")  # one bad job does not stop the audit of the others
            console.print(f"[yellow]{skipped[-1]}[/]", highlight=False)
            continue
        audits.append({"run": label, **audit})
        if not as_json and len(audits) == 1 and not run_is_folder(run):
            print_audit(audit)
    if as_json:
        print(json.dumps(audits[0] if not run_is_folder(run) else audits, indent=2))
    elif run_is_folder(run):
        print_rows(audits)
    for audit in audits:
        print_alarms(audit, as_json)
    if any(not audit["passed"] for audit in audits):
        raise typer.Exit(1)
    if skipped:
        raise UserError(f"{len(skipped)} run(s) could not be audited (see the lines above)")


def run_is_folder(run: Path) -> bool:
    return (run / "jobs").is_dir()


def resolve_runs(run: Path, config: Optional[Path]) -> list[tuple[str, Any]]:
    """(label, job folder or (checkpoint, config, record)) for each run ``run`` names."""
    if not run.exists():
        raise UserError(f"{run} does not exist; give a job folder, a results folder or a checkpoint")
    if run.is_file():
        config_path = config or run.parent / CONFIG_NAME
        if not config_path.is_file():
            raise UserError(f"{run} is a checkpoint: pass --config with its job's config.json")
        record_path = run.parent / RECORD_NAME
        if config is None and run.name == MODEL_NAME and record_path.is_file():
            return [(str(run.parent), run.parent)]
        record = read_json(record_path) if record_path.is_file() and config is None else None
        return [(str(run), (run, JobConfig.from_dict(read_json(config_path), str(config_path)), record))]
    if (run / CONFIG_NAME).is_file():
        return [(str(run), run)]
    if run_is_folder(run):
        jobs = []
        for job in sorted(path.parent for path in (run / "jobs").glob(f"*/{CONFIG_NAME}")):
            record = read_record(job) or {}
            if record.get("status") != "ok" or not (job / MODEL_NAME).is_file():
                console.print(f"[yellow]skipped {job.name}: status {record.get('status', 'unknown')}"
                              f"{'' if (job / MODEL_NAME).is_file() else ', no model.pt'}[/]")
                continue
            jobs.append((f"{record.get('layer')} {record.get('size')} {record.get('dataset')} ({job.name[:6]})", job))
        if not jobs:
            raise UserError(f"{run} holds no finished job with a saved model to audit")
        return jobs
    raise UserError(f"{run} is neither a job folder (config.json), a results folder (jobs/) nor a checkpoint")


def audit_target(target: Any, write: bool, **options: Any) -> dict[str, Any]:
    """Audit a job folder (into its record with ``write``) or a checkpoint with its config (never written)."""
    if isinstance(target, Path):
        return audit_job(target, write, **options)
    checkpoint, config, record = target
    return audit_checkpoint(checkpoint, config, record, **options)


def bound_text(value: Optional[float]) -> str:
    return "∞" if value is None else f"{value:.6g}"


def percent(value: Optional[float]) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def print_audit(audit: dict[str, Any]) -> None:
    """One run: its layers and how each was bounded, then the bounds, the attacks and the CRA."""
    layers = Table(title="Per-layer bounds", box=box.SIMPLE_HEAD, title_justify="left")
    for column in ("#", "layer", "input", "declared", "sound", "how"):
        layers.add_column(column, justify="right" if column in ("#", "declared", "sound") else "left")
    for row in audit["layers"]:
        alert = row["bound"] is None or (row["declared"] is not None and row["bound"] > row["declared"]
                                         * (1 + audit["tolerance"]))
        layers.add_row(str(row["index"]), row["layer"], "x".join(map(str, row["input_shape"])),
                       bound_text(row["declared"]), bound_text(row["bound"]), row["how"],
                       style="bold red" if alert else (None if row["proved"] else "yellow"))
    console.print(layers)

    summary = Table(title=f"Audit: {audit['verdict']}", box=box.SIMPLE_HEAD, title_justify="left")
    summary.add_column("")
    summary.add_column("value", justify="right")
    summary.add_row("claimed bound", bound_text(audit["claimed_bound"]))
    summary.add_row("certificate's bound", bound_text(audit["certificate_bound"]))
    summary.add_row("sound bound" + ("" if audit["sound_bound_proved"] else " (partly trusted)"),
                    bound_text(audit["sound_bound"]))
    if audit.get("lipsdp"):
        summary.add_row("LipSDP bound (verified)", bound_text(audit["lipsdp"].get("lipsdp_bound"))
                        if "lipsdp_bound" in audit["lipsdp"] else audit["lipsdp"]["lipsdp_skipped"])
    summary.add_row("empirical lower bound", bound_text(audit["lower_bound"]))
    summary.add_row("violations / attacked", f"{audit['violations']} / {sum(audit['attacked'].values())}")
    for radius in RADII:
        key, difference = radius.key, audit["cra_difference"][radius.key]
        summary.add_row(f"CRA {radius.label} % recorded → sound",
                        f"{percent(audit['cra_recorded'][key])} → {percent(audit['cra_sound'][key])}"
                        + ("" if difference is None else f" ({100 * difference:+.1f})"))
    summary.add_row("seconds", f"{audit['seconds']:.1f}")
    console.print(summary)
    console.print(f"[dim]CRA: {audit['cra_sound_source']}[/]")


def print_rows(audits: list[dict[str, Any]]) -> None:
    """A results folder: one row per run."""
    table = Table(title="Audits", box=box.SIMPLE_HEAD, title_justify="left")
    for column in ("run", "claimed", "sound", "lower", "violations", "CRA36 rec→sound", "verdict", "s"):
        table.add_column(column, justify="left" if column in ("run", "verdict") else "right")
    for audit in audits:
        table.add_row(audit["run"], bound_text(audit["claimed_bound"]),
                      bound_text(audit["sound_bound"]) + ("" if audit["sound_bound_proved"] else "*"),
                      bound_text(audit["lower_bound"]),
                      f"{audit['violations']}/{sum(audit['attacked'].values())}",
                      f"{percent(audit['cra_recorded']['cra_36'])}→{percent(audit['cra_sound']['cra_36'])}",
                      audit["verdict"], f"{audit['seconds']:.0f}",
                      style="bold red" if not audit["passed"] else None)
    console.print(table)
    console.print("[dim]* sound bound partly taken from a layer's own claim (not re-derived)[/]")


def print_alarms(audit: dict[str, Any], quiet: bool) -> None:
    """Every problem, loudly, on stderr (also with --json, so that it is never missed)."""
    target = Console(stderr=True, soft_wrap=True)
    for problem in audit["problems"]:
        target.print(f"[bold red]✗ {audit['run']}: {problem}[/]")
    for finding in audit.get("findings", []):
        target.print(f"[yellow]! {audit['run']}: {finding}[/]")
    if not quiet:
        for point in audit["violation_points"]:
            target.print(f"[bold red]  VIOLATION test index {point['index']}: certified radius "
                         f"{point['certified_radius']:.4f} > eps {point['eps']:.4f}, yet a perturbation of norm "
                         f"{point['perturbation_norm']:.4f} gives margin {point['adversarial_margin']:.4f}[/]")
