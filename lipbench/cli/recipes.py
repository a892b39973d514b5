"""`lipbench recipes`: the shipped training recipes, and the losses and heads they combine."""
from __future__ import annotations

from typing import Optional

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from lipbench.cli import app
from lipbench.losses import LOSSES
from lipbench.recipes import load_recipe, recipe_names
from lipbench.registry import HEADS, load_plugin


@app.command("recipes")
def recipes_command(
    recipe: Optional[str] = typer.Argument(None, help="Show one recipe (a name or a .yaml file) in full."),
    plugin: Optional[list[str]] = typer.Option(None, help="Import a module that registers losses or heads."),
) -> None:
    """List the training recipes (`lipbench run --recipe NAME`), the registered losses (--loss) and heads (--head).

    A recipe sets the loss, optimizer, Lookahead, head, schedule, clipping and radius ramp of a paper; it
    overrides the budget's protocol and command-line options override it. Values a paper and its code do not
    state are marked as inferred, with the reason."""
    for module in plugin or []:
        load_plugin(module)
    console = Console()
    if recipe is not None:
        chosen = load_recipe(recipe)
        console.print(f"[bold]{chosen.name}[/]: {chosen.description}")
        for key, value in chosen.settings.items():
            why = chosen.inferred.get(key)
            console.print(f"  {key} = {value}" + (f"  [dim](inferred: {why})[/]" if why else ""))
        for source in chosen.sources:
            console.print(f"  [dim]source: {source}[/]")
        return
    table = Table(title="Recipes (--recipe)", title_justify="left", box=box.SIMPLE_HEAD)
    for column in ("name", "loss", "optimizer", "head", "description"):
        table.add_column(column)
    for name in recipe_names():
        settings = load_recipe(name).settings
        table.add_row(name, settings.get("loss", "offset-ce"), settings.get("optimizer", "sgd"),
                      settings.get("head", "default"), load_recipe(name).description)
    console.print(table)
    parts = Table(title="Losses (--loss) and heads (--head)", title_justify="left", box=box.SIMPLE_HEAD)
    for column in ("kind", "name", "description"):
        parts.add_column(column)
    for loss in LOSSES.in_order():
        parts.add_row("loss", loss.name, loss.description + (f" [dim](reads {', '.join(loss.uses)})[/]" if loss.uses else ""))
    for head in HEADS.in_order():
        parts.add_row("head", head.name, head.description)
    console.print(parts)
