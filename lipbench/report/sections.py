"""The section model of a report page: what it says, in order, independent of the format. The Markdown
and HTML renderers turn the same sections into report.md and report.html; the terminal shows the
tables, notes and alerts of the same model."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from lipbench.report.cells import BoardTable
from lipbench.report.notes import environment_rows, environment_table, how_to_read, notes, violations
from lipbench.report.plotting import Plot

KINDS = ("lead", "alerts", "notes", "definitions", "tables", "figures", "table", "links")


@dataclass
class Report:
    """What ``write_report`` read and wrote."""

    board: pd.DataFrame
    runs: pd.DataFrame
    problems: list[str]
    files: list[Path] = field(default_factory=list)
    plots: list[Plot] = field(default_factory=list)


@dataclass(frozen=True)
class Section:
    """One part of a page. ``items`` by kind: lead and alerts and notes: lines of text; definitions:
    (term, text) pairs; tables: BoardTables; figures: Plots; table: (headers, rows of Cells, numeric);
    links: file paths."""

    kind: str
    title: str
    items: Any


def page_sections(report: Report, tables: list[BoardTable], folders: list[Path]) -> list[Section]:
    """Every section of the report page, in order; empty alerts and notes are left out."""
    headers, numeric = environment_table()
    sections = [
        Section("lead", "", [f"{len(report.runs)} runs from {', '.join(map(str, folders))}."]),
        Section("alerts", "Certificate violations found by audits", violations(report.board)),
        Section("notes", "Notes", notes(report.board)),
        Section("notes", "Skipped while reading", report.problems),
        Section("definitions", "How to read this", how_to_read(report.runs)),
        Section("tables", "Leaderboards", tables),
        Section("figures", "Plots", report.plots),
        Section("table", "Environment", (headers, environment_rows(report.runs), numeric)),
        Section("links", "Files", [f for f in report.files if f.suffix in (".csv", ".tex", ".md")]),
    ]
    return [section for section in sections if section.items or section.kind not in ("alerts", "notes")]
