"""`lipbench layers`: the table of registered methods."""
from __future__ import annotations

from typing import Optional

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from lipbench.cli import app
from lipbench.registry import MODELS, get_method, list_layers, load_plugin


@app.command("layers")
def layers_command(
    pattern: str = typer.Argument("*", help="Wildcard filter, e.g. 's*' or 'aol,soc'."),
    plugin: Optional[list[str]] = typer.Option(None, help="Import a module (dotted path or .py file) that registers layers."),
) -> None:
    """List the registered 1-Lipschitz methods (family, padding, bound, approximations) and the model
    families they build (sizes); a method trains in its own family unless `lipbench run --model` picks another."""
    for module in plugin or []:
        load_plugin(module)
    console = Console()
    names = list_layers(pattern)
    table = Table(title="Registered layers", title_justify="left", box=box.SIMPLE_HEAD)
    for column in ("name", "family", "kinds", "padding", "bound", "exact"):
        table.add_column(column, no_wrap=True)
    for name in names:
        method = get_method(name)
        table.add_row(name, method.family, ",".join(method.kinds), method.padding, f"{method.bound:g}",
                      "yes" if method.exact else f"tol {method.tolerance:.0e}")
    console.print(table)
    for name in names:  # long texts below the table, so that it fits an 80-column terminal
        method = get_method(name)
        approximation = ", ".join(f"{k}={v}" for k, v in method.approximation.items()) or "none"
        console.print(f"[bold]{name}[/]: {method.description}\n    [dim]approximation: {approximation}[/]")
        if method.protocol:
            settings = ", ".join(f"{k}={v}" for k, v in method.protocol.items())
            console.print(f"    [dim]training: {settings} (unless the budget preset sets it for {name})[/]")
        console.print(f"    [dim]model: {method.model} (sizes {', '.join(MODELS.get(method.model).sizes)})[/]")
    models = Table(title="Model families", title_justify="left", box=box.SIMPLE_HEAD)
    for column in ("model", "built from", "sizes"):
        models.add_column(column)
    for family in MODELS.in_order():
        notes = "; ".join(f"{size}: {note}" for size, note in family.size_notes.items())
        models.add_row(family.name, ", ".join(family.methods) if family.methods else f"any ({', '.join(family.kinds)})",
                       ", ".join(family.sizes) + (f"\n[dim]{notes}[/]" if notes else ""))
    console.print(models)
