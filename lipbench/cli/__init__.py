"""The ``lipbench`` command line. Each module in this package adds its commands to ``app``.

Errors a user can fix (:class:`lipbench.UserError`) print one line and exit with status 2; usage
errors exit 2 as well. Plugins named with ``--plugin`` are loaded before the help is written, so a
plugin's layers, models and datasets appear in ``--help`` too.
"""
from __future__ import annotations

import sys
from importlib import import_module
from pkgutil import iter_modules
from typing import Any, Callable

import typer
from rich.console import Console
from rich.markup import escape

from lipbench.errors import UserError
from lipbench.registry import load_plugin

app = typer.Typer(
    name="lipbench",
    help="Benchmark 1-Lipschitz layers under a fixed training-time budget.\n\n"
         "Start with `lipbench layers`, then `lipbench run --budget cpu-2m --layers aol,standard` (on a CPU) or "
         "`lipbench run --budget 2h --layers aol,soc --dataset cifar10` (on a GPU), then `lipbench report`.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
_DYNAMIC_HELP: list[tuple[Any, Callable[[], str]]] = []


def dynamic_help(option: Any, text: Callable[[], str]) -> Any:
    """An option whose help text is computed when the help is shown (after ``--plugin`` loaded its modules)."""
    _DYNAMIC_HELP.append((option, text))
    return option


@app.callback()
def _group() -> None:
    """Benchmark 1-Lipschitz layers under a fixed training-time budget."""


def plugins_in(argv: list[str]) -> list[str]:
    """The values of ``--plugin X`` and ``--plugin=X`` in ``argv``."""
    found = []
    for index, item in enumerate(argv):
        if item == "--plugin" and index + 1 < len(argv):
            found.append(argv[index + 1])
        elif item.startswith("--plugin="):
            found.append(item.split("=", 1)[1])
    return found


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``lipbench`` script: every bad input is one ``error:`` line and exit status 2."""
    arguments = sys.argv[1:] if argv is None else argv
    try:
        for plugin in plugins_in(arguments):
            load_plugin(plugin)
        for option, text in _DYNAMIC_HELP:
            option.help = text()
        code = app(args=arguments, prog_name="lipbench", standalone_mode=False)
    except UserError as error:
        fail(str(error), 2)
    except KeyboardInterrupt:
        fail("interrupted (Ctrl-C)", 130)
    except Exception as error:
        if type(error).__name__ == "Abort":  # the parser's name for a Ctrl-C inside a command
            fail("interrupted (Ctrl-C)", 130)
        if not is_usage_error(error):
            raise
        command = next((item for item in arguments if not item.startswith("-")), "")
        fail(f"{error.format_message()} (see `lipbench {command} --help`)".replace("  ", " "), error.exit_code)
    sys.exit(code if isinstance(code, int) else 0)


def is_usage_error(error: Exception) -> bool:
    """A usage error of the command-line parser (an unknown option, a value of the wrong type)."""
    return callable(getattr(error, "format_message", None)) and isinstance(getattr(error, "exit_code", None), int)


def fail(message: str, code: int) -> None:
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    sys.exit(code)


for _module in iter_modules(__path__):
    import_module(f"{__name__}.{_module.name}")
