"""The ``lipbench`` command line. Each module in this package adds its commands to ``app``.

Errors a user can fix (:class:`lipbench.UserError`) print one line and exit with status 2;
usage errors exit 2 as well.
"""
from __future__ import annotations

import sys
from importlib import import_module
from pkgutil import iter_modules

import typer
from rich.console import Console

from lipbench.errors import UserError

app = typer.Typer(
    name="lipbench",
    help="Benchmark 1-Lipschitz layers under a fixed training-time budget.\n\n"
         "Start with `lipbench layers`, then `lipbench run --budget 2m --layers aol,standard`, "
         "then `lipbench report`.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)


@app.callback()
def _group() -> None:
    """Benchmark 1-Lipschitz layers under a fixed training-time budget."""

for _module in iter_modules(__path__):
    import_module(f"{__name__}.{_module.name}")


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``lipbench`` script."""
    try:
        app(args=argv)  # standalone: typer reports usage errors itself (exit 2)
    except UserError as error:
        console.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
        sys.exit(2)
