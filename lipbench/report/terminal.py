"""The leaderboard in the terminal: the essential columns, one table per dataset and budget, then the
notes and alerts; the files hold every column."""
from __future__ import annotations

import pandas as pd
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from lipbench.report.cells import Cell, board_tables
from lipbench.report.metrics import TERMINAL
from lipbench.report.board import shown_metrics
from lipbench.report.notes import notes, violations

WIDEST_COLUMN = 26  # characters; the terminal cuts longer settings labels (the files have them whole)


TERMINAL_SPREAD = ("cra_36",)  # with its interval; the files show one for every column


SHORT_HEADERS = {"clean %": "clean\n%", "CRA 36/255 %": "CRA\n36", "CRA 72/255 %": "CRA\n72",
                 "CRA 108/255 %": "CRA\n108", "CRA 1 %": "CRA\n255", "train img/s": "train\nimg/s",
                 "peak MB": "peak\nMB", "seeds": "n"}


LEGEND = ("CRA at radius ε = k/255, in %; means over the seeds that finished ok, CRA 36 with its 95% "
          "interval [low,high] (t over seeds, Wilson for one seed); #: rank group at CRA 36 (1-3: could be first to "
          "third); n: runs; best in bold (CRA 36: tied with the best). report.html and leaderboard.csv hold every "
          "column.")


def print_board(board: pd.DataFrame, target: Console) -> None:
    """The essential columns, one table per dataset and budget; the files hold every column."""
    for table in board_tables(board, shown_metrics(board, TERMINAL), spread=TERMINAL_SPREAD):
        title = f"{table.title} ({table.caption})" if table.caption else table.title
        rich_table = Table(title=title, box=box.SIMPLE_HEAD, padding=(0, 0, 0, 1), pad_edge=False,
                           show_edge=False, title_justify="left")
        for index, column in enumerate(table.columns):
            header = SHORT_HEADERS.get(column.header, column.header)
            widest = max(len(text) for text in [*header.splitlines(), *(terminal_text(row[index]) for row in table.rows)])
            rich_table.add_column(header, no_wrap=True, justify="right" if column.numeric else "left",
                                  min_width=min(widest, WIDEST_COLUMN), max_width=WIDEST_COLUMN
                                  if column.header == "settings" else None, overflow="ellipsis")
        for row, failed in zip(table.rows, table.failed):
            rich_table.add_row(*(terminal_cell(cell) for cell in row), style="dim" if failed else None)
        target.print(rich_table)
    target.print(f"[dim]{escape(LEGEND)}[/]")
    for note in notes(board):
        target.print(f"[yellow]{note}[/]")
    for alert in violations(board):
        target.print(f"[bold red]✗ {alert}[/]")


def terminal_cell(cell: Cell) -> Text:
    text = Text(terminal_text(cell))
    if cell.alert:
        text.stylize("bold red")
    elif cell.bold:
        text.stylize("bold")
    return text


def terminal_text(cell: Cell) -> str:
    return cell.plain("±", comma=",")
