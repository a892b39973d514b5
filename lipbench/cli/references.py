"""`lipbench references`: the papers' numbers (references/*.yaml), one table per paper, dataset and options."""
from __future__ import annotations

import json
from itertools import groupby

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from lipbench.cli import app
from lipbench.references import ACCURACIES, Reference, select, shipped_references

CORRECTED, REPOSITORY = "*", "†"
HEADERS = {"clean_acc": "clean", "cra_36": "36", "cra_72": "72", "cra_108": "108", "cra_255": "255"}


@app.command("references")
def references_command(
    methods: str = typer.Argument("*", help="Wildcard filter on methods, e.g. 's*' or 'aol,soc'."),
    dataset: str = typer.Option("*", "--dataset", "-d", help="Wildcard filter on datasets, e.g. 'cifar*'."),
    paper: str = typer.Option("*", "--paper", "-p", help="Wildcard filter on papers (file names), e.g. 'prach*'."),
    sources: bool = typer.Option(False, help="Also print every entry's source (table and page, or file)."),
) -> None:
    """List the numbers the papers report: clean accuracy and CRA (%) per method, size, dataset and budget."""
    console = Console()
    chosen = select(shipped_references(), methods, dataset, paper)
    if not chosen:
        console.print(f"no paper's numbers for methods {methods!r}, datasets {dataset!r}, papers {paper!r}")
        return
    for _, group in groupby(chosen, key=lambda r: (r.paper.id, r.dataset, json.dumps(r.options, sort_keys=True))):
        entries = list(group)
        console.print(reference_table(entries))
        for line in footnotes(entries, sources):
            console.print(line, highlight=False)
    console.print(f"[dim]{CORRECTED} corrected by the paper's authors; {REPOSITORY} not printed in the paper, from "
                  "its authors' repository. Budgets are the papers' (epochs measured on their GPU).[/]")


def reference_table(entries: list[Reference]) -> Table:
    first = entries[0]
    options = ", ".join(f"{key}={value}" for key, value in first.options.items())
    title = " · ".join(part for part in (first.paper.id, first.dataset, options) if part)
    title += f" · {first.paper.venue}: {first.paper.title}"
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for column in ("method", "size", "budget", "setting"):
        table.add_column(column, no_wrap=True)
    for key in ACCURACIES:
        table.add_column(HEADERS[key], justify="right", no_wrap=True)
    for entry in entries:
        table.add_row(entry.method, entry.size, entry.schedule or "-", setting_text(entry),
                      *(value_text(entry, key) for key in ACCURACIES))
    return table


def setting_text(entry: Reference) -> str:
    parts = ["extra data"] if entry.extra_data else []
    parts += ["failed"] if entry.failed else []
    return ", ".join(parts)


def value_text(entry: Reference, key: str) -> str:
    value = entry.value(key)
    if value is None:
        return "-"
    marker = CORRECTED if key in entry.corrected else REPOSITORY if key not in entry.printed else ""
    return f"{value:.1f}{marker}"


def label(entry: Reference) -> str:
    return " ".join(part for part in (entry.method, entry.size, entry.schedule) if part)


def footnotes(entries: list[Reference], every_source: bool) -> list[str]:
    """Notes of the entries, then their sources: all of them, or the distinct printed ones."""
    lines = [f"[dim]{label(e)}: {e.note}[/]" for e in entries if e.note]
    if every_source:
        for e in entries:
            for source in dict.fromkeys(s for s in (e.source, e.corrected_source, e.repository_source) if s):
                lines.append(f"[dim]{label(e)}: {source}[/]")
    else:
        printed = "; ".join(dict.fromkeys(part for e in entries for part in e.source.split("; ")))
        lines.append(f"[dim]source: {printed}" + ("; † the authors' repository (--sources: which file)"
                                                   if any(e.repository for e in entries) else "") + "[/]")
    return lines
