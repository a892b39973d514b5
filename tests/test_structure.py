"""The shape of the code, checked on its import graph (read from the source with ast, nothing is run).

Data flows one way, along the steps cli -> plan -> sweep -> job -> train -> certify -> record ->
report. The record step's format and its atomic I/O (``lipbench.jobfolder``) is what every step reads
and writes, so, like the registries, settings, math and data, it is a foundation that imports no step.
* No import cycle.
* Between steps, imports go forward only (no step reaches back into one before it; it gets that
  step's output as plain data). Only the three drivers (the CLI, the sweep that starts job processes,
  and the job process) import steps after the next one; any other step imports at most the next one.
* A foundation imports no step; no module outside the CLI imports the CLI; CLI commands import no
  other command (shared pieces live in ``lipbench.cli.common``).
* No layer imports another layer (``layers/_*.py`` hold shared helpers) or a model family.
* No function-level import of lipbench: plugins load through ``importlib`` in the registry.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import lipbench

PACKAGE = Path(lipbench.__file__).resolve().parent
LAYERS = PACKAGE.parent / "layers"
STEPS = [("cli", ("lipbench.cli", "lipbench.__main__")), ("plan", ("lipbench.plan",)), ("sweep", ("lipbench.sweep", "lipbench.executors")),
         ("job", ("lipbench.job",)), ("train", ("lipbench.train",)), ("certify", ("lipbench.certify", "lipbench.audit")),
         ("record", ()), ("report", ("lipbench.report",))]
DRIVERS = {"cli", "sweep", "job"}


def module_files() -> dict[str, Path]:
    files = {}
    for root, prefix in ((PACKAGE, "lipbench"), (LAYERS, "lipbench.layers")):
        for path in root.rglob("*.py"):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            files[".".join([prefix, *parts])] = path
    return files


MODULES = module_files()


def resolve(name: str) -> str | None:
    """The lipbench module an import names (``from a.b import c`` names a.b.c when that is a module)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports(module: str) -> list[tuple[str, int, bool]]:
    """(imported lipbench module, line, at module level) for every import statement of ``module``."""
    tree = ast.parse(MODULES[module].read_text())
    top_level = {id(node) for node in tree.body}
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{alias.name}" for alias in node.names] or [base]
        for name in names:
            target = resolve(name) if name.startswith("lipbench") else None
            if target and target != module:
                found.append((target, node.lineno, id(node) in top_level))
    return found


def step_of(module: str) -> str | None:
    for step, prefixes in STEPS:
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return step
    return None


RANK = {step: index for index, (step, _) in enumerate(STEPS)}


def test_there_is_no_import_cycle():
    graph = {module: {target for target, _, _ in imports(module)} for module in MODULES}
    state: dict[str, int] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(target):] + [target])
                                     if target in path else f"{module} -> {target}")
            if target not in state:
                visit(target, path + [target])
        state[module] = 2

    for module in sorted(MODULES):
        if module not in state:
            visit(module, [module])


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_follow_the_data_path(module):
    source = step_of(module)
    for target, line, _ in imports(module):
        target_step = step_of(target)
        where = f"{MODULES[module].name}:{line} imports {target}"
        if source is None:
            assert target_step is None, f"{where}: a foundation imports the {target_step} step"
            continue
        if target_step is None or target_step == source:
            continue
        assert RANK[target_step] > RANK[source], f"{where}: the {source} step reaches back into {target_step}"
        assert source in DRIVERS or RANK[target_step] == RANK[source] + 1, \
            f"{where}: {source} skips ahead to {target_step} (only the drivers {sorted(DRIVERS)} may)"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_only_the_cli_imports_the_cli_and_commands_import_no_command(module):
    for target, line, _ in imports(module):
        if not target.startswith("lipbench.cli") or module == "lipbench.__main__":
            continue
        assert module.startswith("lipbench.cli"), f"{module}:{line} imports the CLI module {target}"
        assert target in ("lipbench.cli", "lipbench.cli.common") or module == "lipbench.cli", \
            f"{module}:{line} imports the command module {target}; share it through lipbench.cli.common"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_function_level_lipbench_import(module):
    late = [(target, line) for target, line, top in imports(module) if not top]
    assert not late, f"{module} imports {late} inside a function or class"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("lipbench.layers.")))
def test_no_layer_imports_another_layer_or_a_model(module):
    for target, line, _ in imports(module):
        other_layer = target.startswith("lipbench.layers.") and not target.rpartition(".")[2].startswith("_")
        assert not other_layer, f"{module}:{line} imports the layer {target}; share code through layers/_*.py"
        assert not target.startswith("lipbench.models"), f"{module}:{line} imports the model family {target}"
        assert step_of(target) is None, f"{module}:{line} imports the {step_of(target)} step ({target})"


def test_the_executors_do_not_pull_in_training():
    check = "import lipbench.executors, sys; assert 'lipbench.train' not in sys.modules, sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", check], check=True, timeout=120)


def test_no_module_is_over_about_400_lines():
    long = {module: n for module, path in MODULES.items() if (n := len(path.read_text().splitlines())) > 420}
    assert not long, f"split these along their responsibilities: {long}"
