"""The ``lipbench`` command line. Each module in this package adds its commands to ``app``.

Errors a user can fix (:class:`lipbench.UserError`) print one line and exit with status 2;
usage errors exit 2 as well; Ctrl-C exits 130 after the running job has been recorded.
"""
from __future__ import annotations

import sys
from importlib import import_module
from pkgutil import iter_modules

import click
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

for _module in iter_modules(__path__):
    import_module(f"{__name__}.{_module.name}")


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``lipbench`` script."""
    try:
        result = app(args=argv, standalone_mode=False)
    except UserError as error:
        console.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except click.exceptions.Abort:
        console.print("[yellow]interrupted[/]")
        sys.exit(130)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
    sys.exit(result if isinstance(result, int) else 0)
