"""`lipbench layers`: the table of registered methods."""
from __future__ import annotations

from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from lipbench.cli import app
from lipbench.registry import get_method, list_layers, load_plugin


@app.command("layers")
def layers_command(
    pattern: str = typer.Argument("*", help="Wildcard filter, e.g. 's*' or 'aol,soc'."),
    plugin: Optional[list[str]] = typer.Option(None, help="Import a module (dotted path or .py file) that registers layers."),
) -> None:
    """List the registered 1-Lipschitz methods: family, padding, bound and approximations."""
    for module in plugin or []:
        load_plugin(module)
    table = Table(title="Registered layers")
    for column in ("name", "family", "kinds", "padding", "bound", "exact", "approximation", "description"):
        table.add_column(column)
    for name in list_layers(pattern):
        method = get_method(name)
        approximation = ", ".join(f"{k}={v}" for k, v in method.approximation.items()) or "-"
        table.add_row(name, method.family, ",".join(method.kinds), method.padding, f"{method.bound:g}",
                      "yes" if method.exact else f"no (tol {method.tolerance:g})", approximation, method.description)
    Console().print(table)
