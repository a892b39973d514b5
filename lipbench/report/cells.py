"""The leaderboard as cells: formatted values, spreads, the best of each column in bold, alerts; ready for
any renderer (Markdown, HTML, LaTeX, terminal, CSV)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import pandas as pd

from lipbench.radii import RANKING
from lipbench.report.intervals import RANGED_KINDS
from lipbench.report.metrics import ACCURACIES, METRICS, Metric

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
    """One table cell: a value, its spread over seeds (± std) or its interval ([low, high]: a 95% interval
    for an accuracy, the range over seeds for throughput and memory), and whether to stress it."""

    text: str = "-"
    spread: str = ""
    bold: bool = False  # the best value of its column (for CRA 36/255: tied with the best)
    alert: bool = False  # a failed run or a certificate that did not hold
    interval: tuple[str, str] | None = None

    def plain(self, separator: str = " ± ", comma: str = ", ") -> str:
        text = f"{self.text}{separator}{self.spread}" if self.spread else self.text
        return f"{text} [{self.interval[0]}{comma}{self.interval[1]}]" if self.interval else text


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
    caption: str = ""  # what holds for the whole table (device, extra data, seeds)
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
    """Cells per dataset (with its extra data apart) and budget: the rank group, layer, size, seeds, status, the metrics (for the keys in
    ``spread``, by default every accuracy, throughput, memory and time: accuracies with their 95% interval,
    throughput and memory with their range over seeds, times ± std), the paper's CRA 36/255 where a row
    matches one, and the audit. Device and extra data are columns where they differ within a table, else
    the table's caption says them."""
    spread = set(spread) if spread is not None else {m.key for m in metrics if m.spread}
    with_variant, with_audit = bool(board["variant"].astype(bool).any()), bool(board["audited"].any())
    with_paper = bool(board["paper"].astype(bool).any()) if "paper" in board else False
    tables = []
    for (dataset, extra, budget), rows in board.groupby(["dataset", "extra", "budget"], sort=False):
        shared = {key: shared_value(rows[key]) for key in ("device", "extra_data")}
        columns = [Column("#", r"\#", True), Column("layer", "Layer"), Column("size", "Size")]
        columns += [Column("settings", "Settings")] if with_variant else []
        columns += [Column("seeds", "Seeds", True), Column("status", "Status")]
        columns += [Column(m.header, m.latex, True, m.latex_group) for m in metrics]
        columns += [Column("paper CRA 36 %", r"Paper CRA$_{36}$", True), Column("Δ paper", r"$\Delta$ paper", True)
                    ] if with_paper else []
        columns += [Column(HARDWARE_HEADERS[key], HARDWARE_HEADERS[key].capitalize())
                    for key, value in shared.items() if value is None]
        columns += [Column("audit", "Audit")] if with_audit else []
        table = BoardTable(f"{dataset} + extra data {extra}" if extra else str(dataset), str(budget), columns,
                           caption=table_caption(rows, shared))
        best = {m.key: best_text(m, rows) for m in metrics if m.best}
        contested = int(rows[RANKING.key].notna().sum()) >= 2
        for _, row in rows.iterrows():
            cells = [rank_cell(row), Cell(str(row["layer"])), Cell(str(row["size"]))]
            cells += [Cell(str(row["variant"]))] if with_variant else []
            cells += [Cell(str(row["seeds"])), Cell(str(row["status"]), alert=row["ok_seeds"] < row["seeds"])]
            for metric in metrics:
                text = format_number(metric.kind, row[metric.key])
                bold = bool(row["tied_with_best"]) and contested if metric.key == RANKING.key else \
                    text != "-" and text == best.get(metric.key)
                cells.append(metric_cell(metric, row, text, bold) if metric.key in spread else Cell(text, bold=bold))
            cells += paper_cells(row) if with_paper else []
            cells += [Cell(str(row[key]) or "none") for key, value in shared.items() if value is None]
            cells += [audit_cell(row)] if with_audit else []
            table.rows.append(cells)
            table.failed.append(bool(row["ok_seeds"] == 0))
            table.violated.append(bool(row["violations"] > 0))
        tables.append(table)
    return tables


HARDWARE_HEADERS = {"device": "device", "extra_data": "extra data"}


def shared_value(values: pd.Series) -> str | None:
    """The one value a table's rows share (failed rows without a device left out), None where they differ."""
    found = {str(v) for v in values if isinstance(v, str)} - {""} if values.name == "device" else \
        {str(v) for v in values}
    return found.pop() if len(found) == 1 else "" if not found else None


def table_caption(rows: pd.DataFrame, shared: dict[str, str | None]) -> str:
    """What holds for every row of a table: its device, its extra data, how many seeds the ranking rests on."""
    parts = []
    if shared["device"] is not None:
        parts.append(f"device: {shared['device'] or 'not recorded'}")
    if shared["extra_data"] is not None:
        parts.append(f"extra data: {shared['extra_data'] or 'none'}")
    finished = rows[rows["ok_seeds"] > 0]
    if len(finished) >= 2 and (finished["ok_seeds"] <= 1).all():
        parts.append("one seed per row: the ranking rests on one seed")
    return "; ".join(parts)


def rank_cell(row: pd.Series) -> Cell:
    """The rank group ("1-3": the ranks the row could hold at CRA 36/255), else the rank."""
    if isinstance(row.get("group"), str) and row["group"]:
        return Cell(row["group"])
    return Cell("-" if pd.isna(row["rank"]) else str(int(row["rank"])))


def metric_cell(metric: Metric, row: pd.Series, text: str, bold: bool) -> Cell:
    """An accuracy with its 95% interval, throughput and memory with their range over seeds (where two
    or more seeds finished), other measurements ± std."""
    if metric.key in ACCURACIES or metric.kind in RANGED_KINDS:
        suffix = ("_ci_low", "_ci_high") if metric.key in ACCURACIES else ("_seed_min", "_seed_max")
        low, high = (row.get(f"{metric.key}{end}") for end in suffix)
        shown = pd.notna(low) and pd.notna(high) and (metric.key in ACCURACIES or row["ok_seeds"] >= 2)
        interval = (format_number(metric.kind, low), format_number(metric.kind, high)) if shown else None
        return Cell(text, bold=bold, interval=interval)
    return Cell(text, format_spread(text, row[f"{metric.key}_std"]), bold=bold)


def paper_cells(row: pd.Series) -> list[Cell]:
    """The paper's CRA 36/255 for the row's setting and lipbench's difference to it ("-" without a match)."""
    reported, difference = row.get("paper_cra_36"), row.get("paper_diff_cra_36")
    return [Cell(format_number("percent", reported)),
            Cell("-" if pd.isna(difference) else f"{difference:+.1f}")]


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
        for suffix in ("", "_std", "_ci_low", "_ci_high", "_seed_min", "_seed_max"):
            names[f"{metric.key}{suffix}"] = f"{metric.csv}{suffix}"
    return board.assign(rank=board["rank"].astype("Int64")).rename(columns=names)
