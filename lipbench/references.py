"""The papers' numbers: ``references/*.yaml`` (installed as ``lipbench.references_data``), loaded, checked and
matched to runs. The file format is described in ``references/README.md``.

A run matches an entry when its method (``layer``), size, dataset and budget are the entry's, its layer options
equal the entry's ``options`` (none by default) and its ``extra_data`` flag (False for every lipbench run
today) equals the entry's. The budget matches by name: a run under ``--budget 2h`` (the preset
``budgets/2h.yaml``, the paper's protocol) matches an entry of budget 2h, while a plain ``7200s`` or another
preset for the same time is another protocol and does not. An entry given in epochs matches a row only
where the row states its ``epochs``. Entries that record a failed run (``failed: true``) are shown by
``lipbench references`` but match nothing: a diverged run is no number to compare with.
"""
from __future__ import annotations

import fnmatch
import json
import math
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from lipbench.budget import parse_duration
from lipbench.data import dataset_names
from lipbench.errors import UserError
from lipbench.radii import EPSILONS
from lipbench.registry import list_layers

ACCURACIES = ("clean_acc", *EPSILONS)  # in percent, as the papers print them and the leaderboard holds them
# Methods the papers report that lipbench does not register (yet): an entry may name them. A method that
# registers later is found by list_layers() as well; its name can then leave this list.
KNOWN_METHODS = ("aoc", "bro", "liresnet", "sandwich")
# Datasets of the papers that lipbench cannot load (yet), besides its own.
PAPER_DATASETS = ("tiny-imagenet", "imagenet")
PAPER_KEYS = {"title", "authors", "venue", "arxiv", "version", "code", "url", "notes"}
SETTING_KEYS = ("method", "size", "dataset", "budget", "epochs", "extra_data", "options")
ENTRY_KEYS = {*SETTING_KEYS, *ACCURACIES, "source", "note", "failed", "corrected", "repository"}
SUPPLEMENT_KEYS = {*ACCURACIES, "source"}
SHIPPED = "lipbench.references_data"
# For the report's "how to read this" (same form as lipbench.report.HOW_TO_READ).
READING = [
    ("Paper", "the number a paper reports for the same method, size, dataset and budget preset (and layer "
              "options), and the row's difference to it (lipbench minus paper, in points); `lipbench references` "
              "lists them with their sources. The papers' budgets were epoch counts measured once on their GPU "
              "(an A100 for Prach et al.), lipbench's are training time on the device that ran the job, so a "
              "difference also reflects the hardware."),
]


@dataclass(frozen=True)
class Paper:
    id: str  # the file name without .yaml, e.g. prach2024
    title: str
    authors: str = ""
    venue: str = ""
    arxiv: str = ""
    version: str = ""
    code: str = ""
    url: str = ""
    notes: str = ""


@dataclass(frozen=True)
class Reference:
    """One setting a paper reports: accuracies in percent as printed, each traceable to its source.

    ``corrected`` holds values the paper (or its authors) later stated as corrections; ``repository``
    holds values the paper does not print but its authors' repository does. Each has its own source.
    """

    paper: Paper
    where: str  # file and entry number, for messages
    method: str
    size: str
    dataset: str
    budget: str | None
    epochs: int | None
    extra_data: bool
    options: dict[str, Any]
    printed: dict[str, float]
    source: str
    corrected: dict[str, float] = field(default_factory=dict)
    corrected_source: str = ""
    repository: dict[str, float] = field(default_factory=dict)
    repository_source: str = ""
    failed: bool = False
    note: str = ""

    def value(self, metric: str) -> float | None:
        """The number to compare with: corrected, else printed, else the repository's; None if none."""
        for values in (self.corrected, self.printed, self.repository):
            if metric in values:
                return values[metric]
        return None

    def source_of(self, metric: str) -> str:
        for values, source in ((self.corrected, self.corrected_source), (self.printed, self.source),
                               (self.repository, self.repository_source)):
            if metric in values:
                return source
        return ""

    @property
    def schedule(self) -> str:
        return self.budget or (f"{self.epochs} ep" if self.epochs else "")


# --- loading and validation ------------------------------------------------------------------------

def shipped_files() -> list[Any]:
    return sorted((p for p in resources.files(SHIPPED).iterdir() if p.name.endswith(".yaml")), key=lambda p: p.name)


@lru_cache(maxsize=1)
def shipped_references() -> tuple[Reference, ...]:
    return tuple(load_references())


def load_references(files: Iterable[Path | Any] | None = None) -> list[Reference]:
    """Every entry of ``files`` (default: the shipped ``references/*.yaml``), validated.

    Raises :class:`UserError` with one line naming the file and entry for a missing source, an unknown
    method or dataset, a malformed number, budget or key, or a setting listed twice in one file.
    """
    methods = set(list_layers()) | set(KNOWN_METHODS)
    references: list[Reference] = []
    for path in shipped_files() if files is None else files:
        references += parse_file(path.name, path.read_text(), methods)
    return references


def parse_file(name: str, text: str, methods: set[str]) -> list[Reference]:
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise UserError(f"references/{name} is not valid YAML: {' '.join(str(error).split())}") from None
    if not isinstance(document, dict) or set(document) != {"paper", "entries"}:
        raise UserError(f"references/{name}: the file must hold exactly the keys 'paper' and 'entries'")
    paper = parse_paper(name, document["paper"])
    if not isinstance(document["entries"], list) or not document["entries"]:
        raise UserError(f"references/{name}: 'entries' must be a non-empty list")
    references, seen = [], {}
    for number, entry in enumerate(document["entries"], start=1):
        reference = parse_entry(paper, f"references/{name}, entry {number}{entry_label(entry)}", entry, methods)
        key = setting_key(reference)
        if key in seen:
            raise UserError(f"{reference.where}: the same setting as entry {seen[key]}")
        seen[key] = number
        references.append(reference)
    return references


def parse_paper(name: str, paper: Any) -> Paper:
    if not isinstance(paper, dict) or not isinstance(paper.get("title"), str) or not paper["title"].strip():
        raise UserError(f"references/{name}: 'paper' needs a title")
    unknown = set(paper) - PAPER_KEYS
    if unknown:
        raise UserError(f"references/{name}: unknown paper key {sorted(unknown)[0]!r} "
                        f"(known: {', '.join(sorted(PAPER_KEYS))})")
    if not (paper.get("arxiv") or paper.get("url")):
        raise UserError(f"references/{name}: 'paper' needs an arxiv id or a url")
    return Paper(id=name.removesuffix(".yaml"), **{key: str(value) for key, value in paper.items()})


def entry_label(entry: Any) -> str:
    """' (aol XS cifar10 2h)' from whatever setting keys the entry has."""
    if not isinstance(entry, dict):
        return ""
    parts = [str(entry[key]) for key in ("method", "size", "dataset", "budget") if entry.get(key) is not None]
    return f" ({' '.join(parts)})" if parts else ""


def parse_entry(paper: Paper, where: str, entry: Any, methods: set[str]) -> Reference:
    if not isinstance(entry, dict):
        raise UserError(f"{where}: an entry must be a mapping of keys to values")
    unknown = set(entry) - ENTRY_KEYS
    if unknown:
        raise UserError(f"{where}: unknown key {sorted(unknown)[0]!r} (known: {', '.join(sorted(ENTRY_KEYS))})")
    for key in ("method", "size", "dataset"):
        if not isinstance(entry.get(key), str) or not entry[key].strip():
            raise UserError(f"{where}: missing {key}")
    if entry["method"] not in methods:
        raise UserError(f"{where}: unknown method {entry['method']!r} (registered or known: "
                        f"{', '.join(sorted(methods))})")
    if entry["dataset"] not in (*dataset_names(), *PAPER_DATASETS):
        raise UserError(f"{where}: unknown dataset {entry['dataset']!r} "
                        f"(known: {', '.join((*dataset_names(), *PAPER_DATASETS))})")
    printed = accuracies(entry, where)
    if not printed:
        raise UserError(f"{where}: no accuracy (give one of {', '.join(ACCURACIES)})")
    corrected, corrected_source = supplement(entry, "corrected", where)
    repository, repository_source = supplement(entry, "repository", where)
    return Reference(paper=paper, where=where, method=entry["method"], size=str(entry["size"]),
                     dataset=entry["dataset"], budget=budget_of(entry.get("budget"), where),
                     epochs=epochs_of(entry.get("epochs"), where), extra_data=flag(entry, "extra_data", where),
                     options=options_of(entry.get("options"), where), printed=printed,
                     source=source_of(entry, where), corrected=corrected, corrected_source=corrected_source,
                     repository=repository, repository_source=repository_source, failed=flag(entry, "failed", where),
                     note=str(entry.get("note") or ""))


def accuracies(values: dict[str, Any], where: str) -> dict[str, float]:
    found = {}
    for key in ACCURACIES:
        if key in values:
            value = values[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100:
                raise UserError(f"{where}: malformed number {key}: {value!r} (a percentage from 0 to 100)")
            found[key] = float(value)
    return found


def source_of(values: dict[str, Any], where: str) -> str:
    source = values.get("source")
    if not isinstance(source, str) or not source.strip():
        raise UserError(f"{where}: missing source (table and page, or repository file)")
    return source.strip()


def supplement(entry: dict[str, Any], key: str, where: str) -> tuple[dict[str, float], str]:
    """The values and source of a ``corrected`` or ``repository`` block ({}, "" when absent)."""
    if key not in entry:
        return {}, ""
    block = entry[key]
    if not isinstance(block, dict) or set(block) - SUPPLEMENT_KEYS:
        raise UserError(f"{where}: '{key}' must map accuracies ({', '.join(ACCURACIES)}) and a source")
    values = accuracies(block, f"{where}, {key}")
    if not values:
        raise UserError(f"{where}, {key}: no accuracy")
    return values, source_of(block, f"{where}, {key}")


def budget_of(value: Any, where: str) -> str | None:
    if value is None:
        return None
    try:
        parse_duration(str(value))
    except UserError:
        raise UserError(f"{where}: malformed budget {value!r} (a duration such as 2h, 10h, 24h)") from None
    return str(value)


def epochs_of(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise UserError(f"{where}: malformed number epochs: {value!r} (a positive integer)")
    return value


def flag(entry: dict[str, Any], key: str, where: str) -> bool:
    value = entry.get(key, False)
    if not isinstance(value, bool):
        raise UserError(f"{where}: {key} must be true or false, not {value!r}")
    return value


def options_of(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UserError(f"{where}: options must map layer or model options to values, e.g. {{kernel_size: 1}}")
    return dict(value)


def setting_key(reference: Reference) -> tuple[Any, ...]:
    return (reference.method, reference.size, reference.dataset, reference.budget, reference.epochs,
            reference.extra_data, json.dumps(reference.options, sort_keys=True))


# --- matching runs -------------------------------------------------------------------------------

def row_setting(row: Mapping[str, Any]) -> dict[str, Any]:
    """The setting of a run or leaderboard row: ``layer`` (or ``method``), ``size``, ``dataset``, ``budget``,
    and where present ``epochs``, ``extra_data`` and ``layer_options`` (a dict or its JSON text)."""
    options = row.get("layer_options") or {}
    if isinstance(options, str):
        options = json.loads(options)
    return {"method": row.get("layer", row.get("method")), "size": row.get("size"), "dataset": row.get("dataset"),
            "budget": row.get("budget"), "epochs": present(row.get("epochs")),
            "extra_data": bool(row.get("extra_data") or False), "options": dict(options)}


def present(value: Any) -> Any:
    """None for a missing value (None or NaN, as pandas gives it)."""
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def matches(reference: Reference, row: Mapping[str, Any]) -> bool:
    setting = row_setting(row)
    schedule = (reference.budget is not None and str(setting["budget"]) == reference.budget) or \
               (reference.epochs is not None and setting["epochs"] is not None and
                int(setting["epochs"]) == reference.epochs)
    return (not reference.failed and schedule and setting["method"] == reference.method
            and str(setting["size"]) == reference.size and setting["dataset"] == reference.dataset
            and setting["extra_data"] == reference.extra_data and setting["options"] == reference.options)


def find_references(row: Mapping[str, Any], references: Iterable[Reference] | None = None) -> list[Reference]:
    """The entries whose setting is the row's (in file-name and entry order)."""
    pool = shipped_references() if references is None else references
    return [reference for reference in pool if matches(reference, row)]


def paper_difference(row: Mapping[str, Any], metric: str = "cra_36",
                     references: Iterable[Reference] | None = None) -> float:
    """The row's ``metric`` (percent) minus the first matching paper's; NaN without a match or either value."""
    found = find_references(row, references)
    reported = found[0].value(metric) if found else None
    measured = present(row.get(metric))
    return math.nan if reported is None or measured is None else float(measured) - reported


def paper_columns(row: Mapping[str, Any], metrics: Iterable[str] = ACCURACIES,
                  references: Iterable[Reference] | None = None) -> dict[str, Any]:
    """The report's paper columns for one row: ``paper`` (its id), ``paper_source`` (of CRA 36, else the entry's),
    ``paper_<metric>`` and ``paper_diff_<metric>`` (row minus paper) per metric; NaN/"" without a match."""
    found = find_references(row, references)
    first = found[0] if found else None
    columns: dict[str, Any] = {"paper": first.paper.id if first else "",
                               "paper_source": (first.source_of("cra_36") or first.source) if first else ""}
    for metric in metrics:
        reported = first.value(metric) if first else None
        measured = present(row.get(metric))
        columns[f"paper_{metric}"] = math.nan if reported is None else reported
        columns[f"paper_diff_{metric}"] = math.nan if reported is None or measured is None else \
            float(measured) - reported
    return columns


# --- filters (lipbench references) ---------------------------------------------------------------

def select(references: Iterable[Reference], methods: str = "*", datasets: str = "*",
           papers: str = "*") -> list[Reference]:
    """The references whose method, dataset and paper match the comma-separated wildcards.

    Every item must match something known (a registered or known method, a dataset lipbench or a paper
    knows, a paper file); otherwise :class:`UserError` names it.
    """
    references = list(references)
    method_names = resolve(methods, sorted(set(list_layers()) | set(KNOWN_METHODS)), "method")
    datasets_chosen = resolve(datasets, [*dataset_names(), *PAPER_DATASETS], "dataset")
    paper_names = resolve(papers, sorted({r.paper.id for r in references}), "paper")
    return [r for r in references if r.method in method_names and r.dataset in datasets_chosen
            and r.paper.id in paper_names]


def resolve(patterns: str, known: list[str], noun: str) -> set[str]:
    names: set[str] = set()
    for item in (p.strip() for p in patterns.split(",") if p.strip()):
        matched = [name for name in known if fnmatch.fnmatchcase(name, item)]
        if not matched:
            raise UserError(f"unknown {noun} {item!r}; known {noun}s: {', '.join(known)}")
        names.update(matched)
    return names
