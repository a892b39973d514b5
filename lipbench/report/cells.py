"""The leaderboard as cells: formatted values, spreads, the best of each column in bold, alerts; ready for
any renderer (Markdown, HTML, LaTeX, terminal, CSV)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import pandas as pd

from lipbench.report.metrics import METRICS, Metric

def format_number(kind: str, value: Any) -> str:
    if value is None or pd.isna(value):
        return "-"
    if kind == "percent":
        return f"{value:.1f}"
    if kind in ("rate", "megabytes"):
        return f"{value:,.0f}"
    if kind == "seconds":
        return f"{value:.3f}" if value < 1 else f"{value:.2f}" if value < 10 else f"{value:,.1f}"
    if kind == "params":
        return f"{value / 1e6:.2f}"
    if kind == "epochs":
        return f"{value:,.1f}"
    if kind == "bound":
        return f"{value:.4g}"
    if kind == "small":
        return f"{value:.1e}"
    return f"{value:g}"


def format_spread(mean_text: str, std: Any) -> str:
    """The std with as many decimals as its mean ('' when there is none)."""
    if std is None or pd.isna(std) or mean_text == "-":
        return ""
    decimals = len(mean_text.split(".")[1]) if "." in mean_text else 0
    return f"{std:,.{decimals}f}"


@dataclass(frozen=True)
class Cell:
    """One table cell: a value, its spread over seeds, and whether to stress it."""

    text: str = "-"
    spread: str = ""
    bold: bool = False  # the best value of its column
    alert: bool = False  # a failed run or a certificate that did not hold

    def plain(self, separator: str = " ± ") -> str:
        return f"{self.text}{separator}{self.spread}" if self.spread else self.text


@dataclass(frozen=True)
class Column:
    header: str
    latex: str
    numeric: bool = False
    latex_group: str = ""


@dataclass
class BoardTable:
    """The leaderboard of one dataset and budget, ready for any renderer."""

    dataset: str
    budget: str
    columns: list[Column]
    rows: list[list[Cell]] = field(default_factory=list)
    failed: list[bool] = field(default_factory=list)  # no seed finished
    violated: list[bool] = field(default_factory=list)  # an audit found the certificate did not hold

    @property
    def title(self) -> str:
        return f"{self.dataset} · budget {self.budget}"

    @property
    def headers(self) -> list[str]:
        return [column.header for column in self.columns]

    @property
    def numeric(self) -> list[bool]:
        return [column.numeric for column in self.columns]


def board_tables(board: pd.DataFrame, metrics: list[Metric], spread: Iterable[str] | None = None) -> list[BoardTable]:
    """Cells per dataset (with its extra data apart) and budget: rank, layer, size, seeds, status, the metrics (± std for the keys in
    ``spread``; by default for accuracies, throughput, memory and time) and the audit."""
    spread = set(spread) if spread is not None else {m.key for m in metrics if m.spread}
    with_variant, with_audit = bool(board["variant"].astype(bool).any()), bool(board["audited"].any())
    columns = [Column("#", r"\#", True), Column("layer", "Layer"), Column("size", "Size")]
    columns += [Column("settings", "Settings")] if with_variant else []
    with_extra = bool(board["extra"].astype(bool).any())
    columns += [Column("extra data", "Extra data")] if with_extra else []
    columns += [Column("seeds", "Seeds", True), Column("status", "Status")]
    columns += [Column(m.header, m.latex, True, m.latex_group) for m in metrics]
    columns += [Column("audit", "Audit")] if with_audit else []
    tables = []
    for (dataset, extra, budget), rows in board.groupby(["dataset", "extra", "budget"], sort=False):
        table = BoardTable(f"{dataset} + extra data {extra}" if extra else str(dataset), str(budget), columns)
        best = {m.key: best_text(m, rows) for m in metrics if m.best}
        for _, row in rows.iterrows():
            rank = "-" if pd.isna(row["rank"]) else str(int(row["rank"]))
            cells = [Cell(rank), Cell(str(row["layer"])), Cell(str(row["size"]))]
            cells += [Cell(str(row["variant"]))] if with_variant else []
            cells += [Cell(str(row["extra"]) or "-")] if with_extra else []
            cells += [Cell(str(row["seeds"])), Cell(str(row["status"]), alert=row["ok_seeds"] < row["seeds"])]
            for metric in metrics:
                text = format_number(metric.kind, row[metric.key])
                std = format_spread(text, row[f"{metric.key}_std"]) if metric.key in spread else ""
                cells.append(Cell(text, std, bold=text != "-" and text == best.get(metric.key)))
            cells += [audit_cell(row)] if with_audit else []
            table.rows.append(cells)
            table.failed.append(bool(row["ok_seeds"] == 0))
            table.violated.append(bool(row["violations"] > 0))
        tables.append(table)
    return tables


def best_text(metric: Metric, rows: pd.DataFrame) -> str | None:
    """The best value of a column as shown (ties after rounding are all best); none among fewer than two."""
    values = rows[metric.key].dropna()
    if len(values) < 2:
        return None
    return format_number(metric.kind, values.max() if metric.best == "max" else values.min())


def audit_cell(row: pd.Series) -> Cell:
    if not row["audited"]:
        return Cell("-")
    if row["violations"]:
        return Cell(f"VIOLATED ({row['violations']})", alert=True, bold=True)
    if row["failed_audits"]:
        return Cell(f"FAILED ({row['failed_audits']})", alert=True, bold=True)
    return Cell("ok" if row["audited"] == row["seeds"] else f"ok ({row['audited']}/{row['seeds']})")


def csv_frame(board: pd.DataFrame) -> pd.DataFrame:
    """The leaderboard with explicit units in column names (accuracies in percent)."""
    names = {}
    for metric in METRICS:
        names[metric.key], names[f"{metric.key}_std"] = metric.csv, f"{metric.csv}_std"
    return board.assign(rank=board["rank"].astype("Int64")).rename(columns=names)
