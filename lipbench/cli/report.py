"""`lipbench report`: leaderboards in the terminal and as files, plots, and one HTML and Markdown page."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from lipbench.cli import app
from lipbench.cli.common import load_plugins
from lipbench.errors import UserError
from lipbench.report.pages import write_report
from lipbench.report.terminal import print_board

console = Console()


@app.command("report")
def report_command(
    folders: Optional[list[Path]] = typer.Argument(None, help="Results folders to read (default: results)."),
    out: Optional[Path] = typer.Option(None, help="Where to write tables, plots and pages (default: FIRST/report)."),
    plugin: Optional[list[str]] = typer.Option(None, help="Module or .py file that registers plots (or the layers "
                                               "of the runs), repeatable."),
) -> None:
    """Leaderboards, plots and a report page from one or more results folders.

    Reads every record.json below the folders (corrupt ones are reported and skipped), averages
    seeds (mean ± std), ranks by CRA at 36/255 per dataset and budget, keeps failed runs as rows,
    and flags audited certificates that did not hold. Writes report.html and report.md (tables,
    plots, how to read them), leaderboard.md/.csv/.tex, runs.csv and the plots as PNG and SVG.
    """
    load_plugins(plugin)
    folders = folders or [Path("results")]
    for folder in folders:
        if folder.is_file():
            raise UserError(f"{folder} is a file; give the results folder (the one holding jobs/), e.g. results")
        if not folder.is_dir():
            raise UserError(f"results folder {folder} does not exist; run `lipbench run` first or pass a folder")
    target = out or folders[0] / "report"
    report = write_report(folders, target)
    for problem in report.problems:
        console.print(f"[yellow]{problem}[/]")
    if report.board.empty:
        raise UserError(f"no records found under {', '.join(map(str, folders))}")
    print_board(report.board, console)
    for plot in report.plots:
        if plot.note:
            console.print(f"[dim]plot {plot.name}: nothing to show, {plot.note}[/]")
    console.print(f"written to {target}/: report.html, report.md, leaderboard.md/.csv/.tex, runs.csv, "
                  f"{len(report.plots)} plots (PNG + SVG)")
