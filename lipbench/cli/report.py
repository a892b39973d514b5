"""`lipbench report`: leaderboards in the terminal and as files, plots, and one HTML and Markdown page."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import pandas as pd
import typer
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from lipbench.cli import app
from lipbench.errors import UserError
from lipbench.report import (TERMINAL, Cell, board_tables, leaderboard, notes, shown_metrics, violations,
                             write_report)

console = Console()
WIDEST_COLUMN = 26  # characters; the terminal cuts longer settings labels (the files have them whole)
TERMINAL_SPREAD = ("clean_acc", "cra_36")  # ± std over seeds; the files show it for every column
SHORT_HEADERS = {"clean %": "clean\n%", "CRA 36/255 %": "CRA\n36", "CRA 72/255 %": "CRA\n72",
                 "CRA 108/255 %": "CRA\n108", "CRA 1 %": "CRA\n255", "train img/s": "train\nimg/s",
                 "peak MB": "peak\nMB", "seeds": "n"}
LEGEND = ("CRA at radius ε = k/255, in %; clean and CRA 36 as mean±std over the seeds that finished ok; n: runs; "
          "best in bold. report.html and leaderboard.csv hold every column.")


def print_board(board: pd.DataFrame, target: Console) -> None:
    """The essential columns, one table per dataset and budget; the files hold every column."""
    for table in board_tables(board, shown_metrics(board, TERMINAL), spread=TERMINAL_SPREAD):
        rich_table = Table(title=table.title, box=box.SIMPLE_HEAD, padding=(0, 0, 0, 1), pad_edge=False,
                           show_edge=False, title_justify="left")
        for index, column in enumerate(table.columns):
            header = SHORT_HEADERS.get(column.header, column.header)
            widest = max(len(text) for text in [*header.splitlines(), *(row[index].plain("±") for row in table.rows)])
            rich_table.add_column(header, no_wrap=True, justify="right" if column.numeric else "left",
                                  min_width=min(widest, WIDEST_COLUMN), max_width=WIDEST_COLUMN
                                  if column.header == "settings" else None, overflow="ellipsis")
        for row, failed in zip(table.rows, table.failed):
            rich_table.add_row(*(terminal_cell(cell) for cell in row), style="dim" if failed else None)
        target.print(rich_table)
    target.print(f"[dim]{LEGEND}[/]")
    for note in notes(board):
        target.print(f"[yellow]{note}[/]")
    for alert in violations(board):
        target.print(f"[bold red]✗ {alert}[/]")


def terminal_cell(cell: Cell) -> Text:
    text = Text(cell.plain("±"))
    if cell.alert:
        text.stylize("bold red")
    elif cell.bold:
        text.stylize("bold")
    return text


def report_into(out: Path, job_ids: list[str] | None = None) -> pd.DataFrame | None:
    """Write the report files of ``out`` into ``out/report``; return the leaderboard (of ``job_ids`` only, if given)."""
    report = write_report([out], out / "report")
    for problem in report.problems:
        console.print(f"[yellow]{problem}[/]")
    board = report.board
    if job_ids is not None and len(report.runs):
        runs = report.runs
        retried = runs["retry_of"].isin(job_ids) if "retry_of" in runs else False
        board = leaderboard(runs[runs["job_id"].isin(job_ids) | retried])
    if report.files:
        console.print(f"report: {out / 'report' / 'report.html'} (and {len(report.files) - 1} more files)")
    return None if board.empty else board


@app.command("report")
def report_command(
    folders: Optional[list[Path]] = typer.Argument(None, help="Results folders to read (default: results)."),
    out: Optional[Path] = typer.Option(None, help="Where to write tables, plots and pages (default: FIRST/report)."),
) -> None:
    """Leaderboards, plots and a report page from one or more results folders.

    Reads every record.json below the folders (corrupt ones are reported and skipped), averages
    seeds (mean ± std), ranks by CRA at 36/255 per dataset and budget, keeps failed runs as rows,
    and flags audited certificates that did not hold. Writes report.html and report.md (tables,
    plots, how to read them), leaderboard.md/.csv/.tex, runs.csv and the plots as PNG and SVG.
    """
    folders = folders or [Path("results")]
    for folder in folders:
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
