"""The report, end to end: read the records of results folders, build the leaderboard, and write every
table, plot and page into a folder (atomically; an unwritable folder is one WriteError line)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
from rich.console import Console

from lipbench.jobfolder import make_folder, write_text_atomic
from lipbench.report.board import leaderboard, shown_metrics
from lipbench.report.cells import board_tables, csv_frame
from lipbench.report.html import html_page
from lipbench.report.latex import LATEX_PREAMBLE, latex_table
from lipbench.report.markdown import board_markdown, markdown_page
from lipbench.report.metrics import PAPER
from lipbench.report.plots import write_plots
from lipbench.report.runs import load_results
from lipbench.report.sections import Report, page_sections


def write_report(folders: list[Path], out: Path) -> Report:
    """Read ``folders`` and write every table, plot and page into ``out``."""
    runs, problems = load_results(folders)
    board = leaderboard(runs)
    report = Report(board, runs, problems)
    if board.empty:
        return report
    make_folder(out)
    tables = board_tables(board, shown_metrics(board))
    files = {
        "leaderboard.md": board_markdown(tables, level="##"),
        "leaderboard.tex": LATEX_PREAMBLE + "\n".join(map(latex_table, board_tables(board, shown_metrics(board, PAPER)))),
        "leaderboard.csv": csv_frame(board).to_csv(index=False),
        "runs.csv": runs.to_csv(index=False),
    }
    for name, text in files.items():
        write_text_atomic(out / name, text)
        report.files.append(out / name)
    report.plots = write_plots(board, out)
    report.files += [f for plot in report.plots for f in plot.files]
    sections = page_sections(report, tables, folders)
    for name, render in (("report.html", html_page), ("report.md", markdown_page)):
        write_text_atomic(out / name, render(sections))
        report.files.append(out / name)
    return report


def report_into(out: Path, job_ids: list[str] | None, console: Console) -> pd.DataFrame | None:
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
