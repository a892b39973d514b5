"""`lipbench report`: leaderboard tables (terminal, Markdown, CSV) and plots from results folders."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import pandas as pd
import typer
from rich.console import Console
from rich.table import Table

from lipbench.cli import app
from lipbench.errors import UserError
from lipbench.report import formatted, leaderboard, load_results, write_report

console = Console()


def print_board(board: pd.DataFrame, target: Console) -> None:
    table = formatted(board)
    shown = [c for c in table.columns if c not in ("CRA 108/255 %", "train s")]
    for (dataset, budget), rows in table.groupby(["dataset", "budget"], sort=False):
        rich_table = Table(title=f"{dataset} · budget {budget}", show_lines=False)
        for column in shown:
            if column not in ("dataset", "budget"):
                rich_table.add_column(column, justify="left" if column in ("layer", "size", "status") else "right")
        for _, row in rows.iterrows():
            style = None if row["status"] == "ok" else "red"
            rich_table.add_row(*(str(row[c]) for c in shown if c not in ("dataset", "budget")), style=style)
        target.print(rich_table)


def report_into(out: Path, job_ids: list[str] | None = None) -> pd.DataFrame | None:
    """Write the report files of ``out`` and return the leaderboard (of ``job_ids`` only, if given)."""
    board, files, problems = write_report([out], out / "report")
    for problem in problems:
        console.print(f"[yellow]{problem}[/]")
    if job_ids is not None:
        frame, _ = load_results([out])
        board = leaderboard(frame[frame["job_id"].isin(job_ids)]) if "job_id" in frame else board
    if files:
        console.print("report: " + ", ".join(str(f) for f in files))
    return None if board.empty else board


@app.command("report")
def report_command(
    folders: Optional[list[Path]] = typer.Argument(None, help="Results folders to read (default: results)."),
    out: Optional[Path] = typer.Option(None, help="Where to write the tables and plots (default: FIRST/report)."),
) -> None:
    """Leaderboard tables and comparison plots from one or more results folders.

    Reads every record.json below the folders (corrupt ones are reported and skipped), groups
    seeds, ranks by CRA at 36/255 per dataset and budget, keeps failed runs as rows, and writes
    leaderboard.md, leaderboard.csv and cra_vs_throughput.png.
    """
    folders = folders or [Path("results")]
    for folder in folders:
        if not folder.is_dir():
            raise UserError(f"results folder {folder} does not exist; run `lipbench run` first or pass a folder")
    board, files, problems = write_report(folders, out or folders[0] / "report")
    for problem in problems:
        console.print(f"[yellow]{problem}[/]")
    if board.empty:
        raise UserError(f"no records found under {', '.join(map(str, folders))}")
    print_board(board, console)
    console.print("written: " + ", ".join(str(f) for f in files))
