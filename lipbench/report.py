"""Report: leaderboards (Markdown, CSV, LaTeX, HTML) and paper plots (PNG + SVG) from results folders.

Data flows one way: records (one JSON per job) -> ``load_results`` (one row per run, audits
folded in) -> ``leaderboard`` (one row per dataset, budget, layer, size and settings; seeds as
mean ± std over the runs that finished ``ok``) -> tables and plots. Failed runs stay in as rows
with their status. Accuracies are in percent.

Runs count as seeds of one another only when everything but the seed matches: the training
settings (learning rate, batch size, precision, ...) and the device. Where runs of one layer and
size differ in those, each setting gets its own row, labelled by what differs.
"""
from __future__ import annotations

import html
import itertools
import json
import math
from collections import Counter
from dataclasses import MISSING, dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterable

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator  # noqa: E402

from lipbench.plan import JobConfig  # noqa: E402
from lipbench.records import read_records  # noqa: E402

# --- what a record holds -------------------------------------------------------------------------

EPSILONS_255 = {"cra_36": 36, "cra_72": 72, "cra_108": 108, "cra_255": 255}  # radius in units of 1/255
ACCURACIES = ["clean_acc", *EPSILONS_255]
GROUP = ["dataset", "budget", "layer", "size", "variant"]
NOT_SETTINGS = {"layer", "size", "dataset", "budget", "seed", "device", "data_dir", "save_model", "plugins", "retry_of"}
SETTINGS = tuple(f.name for f in fields(JobConfig) if f.name not in NOT_SETTINGS) + ("device_name",)
JOB_DEFAULTS = {f.name: f.default for f in fields(JobConfig) if f.default is not MISSING}
ALWAYS_LABELLED = {"holdout"}  # accuracy on a held-out part of the training set is no test accuracy
KNOWN_SIZES = ("XS", "S", "M", "L")


TERMINAL, PAPER, FILES = 0, 1, 2  # where a column is shown: the terminal, the LaTeX table, every file
SPREAD_KINDS = {"percent", "rate", "megabytes", "seconds"}  # shown as mean ± std over seeds


@dataclass(frozen=True)
class Metric:
    """A measured column: how to name it, format it, which value is best and where it is shown."""

    key: str
    header: str  # Markdown, HTML and terminal
    latex: str
    csv: str  # CSV column, with its unit
    kind: str  # percent, rate, megabytes, seconds, params, epochs, bound, small
    best: str | None = None  # "max" or "min": bold in tables
    level: int = FILES  # TERMINAL columns are shown everywhere, PAPER ones also in LaTeX, FILES only in files
    optional: bool = False  # shown only where some record has it
    latex_group: str = ""  # a header spanning the columns that share it

    @property
    def spread(self) -> bool:
        return self.kind in SPREAD_KINDS


CRA_GROUP = r"CRA (\%) at radius $\varepsilon$"
METRICS = [
    Metric("clean_acc", "clean %", r"Clean (\%)", "clean_acc_pct", "percent", "max", TERMINAL),
    *(Metric(key, f"CRA {name} %", latex, f"{key}_pct", "percent", "max", TERMINAL, latex_group=CRA_GROUP)
      for key, name, latex in (("cra_36", "36/255", r"$\frac{36}{255}$"), ("cra_72", "72/255", r"$\frac{72}{255}$"),
                               ("cra_108", "108/255", r"$\frac{108}{255}$"), ("cra_255", "1", "$1$"))),
    Metric("train_throughput", "train img/s", "Train (img/s)", "train_throughput_img_s", "rate", "max", TERMINAL),
    Metric("infer_throughput", "infer img/s", "Infer (img/s)", "infer_throughput_img_s", "rate", "max", PAPER),
    Metric("peak_memory_mb", "peak MB", "Memory (MB)", "peak_memory_mb", "megabytes", "min", TERMINAL),
    Metric("infer_peak_memory_mb", "infer peak MB", "Infer memory (MB)", "infer_peak_memory_mb", "megabytes", "min"),
    Metric("epoch_seconds", "s/epoch", "s/epoch", "epoch_seconds", "seconds", "min"),
    Metric("params", "params (M)", "Params (M)", "params", "params", level=PAPER),
    Metric("epochs_done", "epochs", "Epochs", "epochs_done", "epochs"),
    Metric("lipschitz_bound", "L sound", "$L$ sound", "lipschitz_bound", "bound", level=PAPER),
    Metric("lipschitz_bound_claimed", "L claimed", "$L$ claimed", "lipschitz_bound_claimed", "bound", level=PAPER,
           optional=True),
    Metric("orthogonality_error", "orth. error", "Orth. error", "orthogonality_error", "small", optional=True),
    Metric("audit_sound_bound", "audit L sound", "Audit $L$ sound", "audit_sound_bound", "bound", level=PAPER,
           optional=True),
    Metric("audit_lower_bound", "audit L lower", "Audit $L$ lower", "audit_lower_bound", "bound", optional=True),
]
NUMERIC = [metric.key for metric in METRICS] + ["budget_s", "seed", "audit_violations", "audit_failed", "steps",
                                                "batch_size", "train_seconds"]

HOW_TO_READ = [
    ("Rows", "one per dataset, budget, layer and size; seeds are averaged over the runs that finished ok and shown "
             "as mean ± sample std. Failed runs stay in as rows with their status (e.g. \"1 ok, 1 nan\"). Rank is by "
             "CRA at 36/255 within a dataset and budget; bold marks the best value of a column."),
    ("CRA", "certified robust accuracy at radius ε (L2): a test image counts when it is classified correctly with a "
            "margin above √2·L·ε, where L is the network's sound Lipschitz bound (never a claimed or estimated "
            "one). Where an audit re-checked a run, the audit's sound CRA is used."),
    ("Settings", "where runs of one layer and size differ in a training setting or the device, each setting is its "
                 "own row, labelled by what differs; runs evaluated on a held-out part of the training set "
                 "(holdout) are always labelled."),
    ("Throughput", "training images per second of compute, excluding the first step (allocation, warm-up) and data "
                   "loading; inference images per second in eval mode, excluding the first batch (weight caching)."),
    ("Memory", "the device's own peak counter: CUDA max allocated on GPUs, the process's peak resident memory (RSS) "
               "on CPUs. The two are not comparable."),
    ("s/epoch", "compute seconds per epoch: images per epoch divided by the training throughput."),
    ("Budget", "wall-clock training time on the device that ran the job; accuracies are after that much training."),
    ("Bounds", "\"L claimed\" is what a method's own certificate states, \"L sound\" the sound bound the CRA uses; "
               "an audit recomputes the sound bound and a lower bound, and a violation means the run's certificate "
               "did not hold."),
]


# --- records to runs to leaderboard ---------------------------------------------------------------

def load_results(folders: Iterable[Path]) -> tuple[pd.DataFrame, list[str]]:
    """One row per run (all statuses, audits folded in), and the problems met while reading."""
    records, problems = read_records(folders)
    records, duplicates = drop_duplicates(records)
    frame = pd.DataFrame([run_row(record) for record in records])
    for column in ["job_id", "status", "memory_counter", "device_name", "settings", "record_path", "audit_problems",
                   *GROUP]:
        if column not in frame:
            frame[column] = None
    for column in NUMERIC:
        frame[column] = pd.to_numeric(frame[column], errors="coerce") if column in frame else np.nan
    for column in ["dataset", "budget", "layer", "size", "status"]:
        frame[column] = frame[column].fillna("?").astype(str)
    frame["variant"] = variant_labels(frame) if len(frame) else []
    return frame, problems + duplicates


def drop_duplicates(records: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """One record per job and device: the same job found twice (a folder passed twice, copied results) is one run."""
    kept: dict[tuple[Any, ...], dict[str, Any]] = {}
    problems = []
    for record in records:
        path = Path(record["record_path"]).resolve()
        key = (record.get("job_id") or str(path), device_of(record))
        previous = kept.get(key)
        if previous is not None and Path(previous["record_path"]).resolve() != path:
            newer = max(previous, record, key=lambda r: str(r.get("finished_at") or ""))
            problems.append(f"job {key[0]} appears twice ({previous['record_path']}, {record['record_path']}); "
                            f"keeping {newer['record_path']}")
            record = newer
        kept[key] = record
    return list(kept.values()), problems


def device_of(record: dict[str, Any]) -> str | None:
    """The device a record was measured on; None for failures recorded by the parent process, which has none."""
    environment = record.get("environment")
    name = environment.get("device_name") if isinstance(environment, dict) else None
    return str(name) if name else None


def run_row(record: dict[str, Any]) -> dict[str, Any]:
    """A record as one flat row: environment and audit folded in.

    Where the audit's CRA (with the sound bound) is below the job's, it replaces it: the job
    certified points it could not prove. Where it is higher (the sound bound is tighter than the
    method's certificate), the job's CRA stays, so that an audit never lifts a method above the
    same run without one.
    """
    row = {key: value for key, value in record.items() if not isinstance(value, (dict, list))}
    environment = record.get("environment") if isinstance(record.get("environment"), dict) else {}
    row.update(device_name=device_of(record), torch_version=environment.get("torch_version"),
               git_commit=environment.get("git_commit"))
    row["layer_options"] = json.dumps(record.get("layer_options") or {}, sort_keys=True)
    settings = {key: row.get(key, JOB_DEFAULTS.get(key)) for key in SETTINGS}  # an absent setting had its default
    row["settings"] = json.dumps(settings, sort_keys=True, default=str)
    audit = record.get("audit")
    if isinstance(audit, dict):
        row["audit_sound_bound"] = audit.get("sound_bound")
        row["audit_lower_bound"] = audit.get("lower_bound")
        row["audit_violations"] = audit.get("violations", 0)
        row["audit_failed"] = float(audit.get("passed") is False or "error" in audit)
        row["audit_problems"] = "; ".join(audit.get("problems", [])) or audit.get("error")
        for key, value in audit_cra(audit.get("cra_sound")).items():  # an audit may lower a CRA, never raise it
            row[f"{key}_job"] = row.get(key)
            row[key] = value if row[f"{key}_job"] is None else min(row[f"{key}_job"], value)
    for key in ("train_throughput", "infer_throughput"):
        if isinstance(row.get(key), (int, float)) and row[key] <= 0:
            row[key] = None  # no step was timed (e.g. the budget ended after the warm-up step): not measured
    row["epoch_seconds"] = epoch_seconds(row)
    return row


def audit_cra(cra_sound: Any) -> dict[str, float]:
    """The audit's CRA per radius, keyed like the record (``cra_36``...), from keys such as 36, '36/255', 'cra_36'."""
    if not isinstance(cra_sound, dict):
        return {}
    found = {}
    for key, value in cra_sound.items():
        text = str(key).lower().removeprefix("cra_").split("/")[0]
        try:
            number = float(text)
        except ValueError:
            continue
        radius = round(number * 255) if number <= 1 else round(number)
        if f"cra_{radius}" in EPSILONS_255 and value is not None:
            found[f"cra_{radius}"] = value
    return found


def epoch_seconds(row: dict[str, Any]) -> float:
    """Compute seconds per epoch: images per epoch over the training throughput (NaN when not known)."""
    try:
        images_per_epoch = float(row["steps"]) / float(row["epochs_done"]) * float(row["batch_size"])
        return images_per_epoch / float(row["train_throughput"])
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return float("nan")


def variant_labels(frame: pd.DataFrame) -> list[str]:
    """Per run, the settings that tell it apart from other runs of its layer and size ('' when none differ)."""
    labels = pd.Series("", index=frame.index, dtype=object)
    for _, cohort in frame.groupby(["dataset", "budget", "layer", "size"], sort=False):
        settings = {index: json.loads(text) for index, text in cohort["settings"].items()}
        devices = {s["device_name"] for s in settings.values() if s["device_name"] is not None}
        only_device = devices.pop() if len(devices) == 1 else None
        for values in settings.values():  # a run that died before it recorded its device ran on the others' one
            values["device_name"] = values["device_name"] or only_device
        differing = [key for key in SETTINGS if len({str(s.get(key)) for s in settings.values()}) > 1]
        for index, values in settings.items():
            labelled = [key for key in SETTINGS if key in differing or (key in ALWAYS_LABELLED and values.get(key))]
            labels[index] = ", ".join(setting_text(key, values.get(key)) for key in labelled)
    return labels.tolist()


def setting_text(key: str, value: Any) -> str:
    """``key=value``; layer options as their own ``name=value`` pairs (``sketch_dim=8``), or ``default options``."""
    if key != "layer_options":
        return f"{key}={value}"
    options = json.loads(value) if isinstance(value, str) else value or {}
    return ", ".join(f"{name}={option}" for name, option in options.items()) or "default options"


def leaderboard(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (dataset, budget, layer, size, variant), seeds as mean and std; ranked by CRA at 36/255."""
    rows = [summarize(group) for _, group in frame.groupby(GROUP, sort=False)] if len(frame) else []
    board = pd.DataFrame(rows)
    if board.empty:
        return board
    board["size_order"] = [size_position(size) for size in board["size"]]
    board = board.sort_values(["dataset", "budget_s", "budget", "cra_36", "clean_acc", "layer", "size_order"],
                              ascending=[True, True, True, False, False, True, True], na_position="last")
    ranked = board[board["cra_36"].notna()]
    board["rank"] = (ranked.groupby(["dataset", "budget"]).cumcount() + 1).reindex(board.index).astype(float)
    columns = ["rank", *[c for c in board.columns if c not in ("rank", "size_order")]]
    return board[columns].reset_index(drop=True)


def summarize(group: pd.DataFrame) -> dict[str, Any]:
    """The seeds of one setting: counts, status summary, mean and std of every metric over the ok runs."""
    first = group.iloc[0]
    ok = group[group["status"] == "ok"]
    counts = sorted(Counter(group["status"]).items(), key=lambda item: (item[0] != "ok", -item[1], item[0]))
    row: dict[str, Any] = {key: first[key] for key in GROUP}
    row.update(budget_s=group["budget_s"].max(), seeds=len(group), ok_seeds=len(ok),
               seed_list=",".join(str(int(s)) for s in sorted(group["seed"].dropna())),
               status=counts[0][0] if len(counts) == 1 else ", ".join(f"{n} {s}" for s, n in counts),
               error="; ".join(sorted({str(e) for e in group.get("error", pd.Series(dtype=object)).dropna() if e})),
               audited=int(group["audit_violations"].notna().sum()),
               violations=int(group["audit_violations"].fillna(0).sum()),
               violating_runs=int((group["audit_violations"].fillna(0) > 0).sum()),
               failed_audits=int(group["audit_failed"].fillna(0).sum()),
               audit_problems="; ".join(sorted({str(p) for p in group["audit_problems"].dropna() if p})),
               n_classes=group["n_classes"].max() if "n_classes" in group else np.nan,
               memory_counter=", ".join(sorted({str(c) for c in group["memory_counter"].dropna()})),
               device=", ".join(sorted({str(d) for d in group["device_name"].dropna()})))
    for metric in METRICS:
        scale = 100.0 if metric.kind == "percent" else 1.0
        values = ok[metric.key].dropna() * scale
        row[metric.key] = values.mean() if len(values) else np.nan
        row[f"{metric.key}_std"] = values.std() if len(values) > 1 else np.nan
    return row


def size_position(size: str) -> int:
    return KNOWN_SIZES.index(size) if size in KNOWN_SIZES else len(KNOWN_SIZES)


def method_label(row: pd.Series) -> str:
    return f"{row['layer']} ({row['variant']})" if row["variant"] else str(row["layer"])


# --- cells and tables ------------------------------------------------------------------------------

def format_number(kind: str, value: Any) -> str:
    if value is None or pd.isna(value):
        return "-"
    if kind == "percent":
        return f"{value:.1f}"
    if kind in ("rate", "megabytes"):
        return f"{value:,.0f}"
    if kind == "seconds":
        return f"{value:.3f}" if value < 1 else f"{value:.2f}" if value < 10 else f"{value:,.1f}"
    if kind == "params":
        return f"{value / 1e6:.2f}"
    if kind == "epochs":
        return f"{value:,.1f}"
    if kind == "bound":
        return f"{value:.4g}"
    if kind == "small":
        return f"{value:.1e}"
    return f"{value:g}"


def format_spread(mean_text: str, std: Any) -> str:
    """The std with as many decimals as its mean ('' when there is none)."""
    if std is None or pd.isna(std) or mean_text == "-":
        return ""
    decimals = len(mean_text.split(".")[1]) if "." in mean_text else 0
    return f"{std:,.{decimals}f}"


@dataclass(frozen=True)
class Cell:
    """One table cell: a value, its spread over seeds, and whether to stress it."""

    text: str = "-"
    spread: str = ""
    bold: bool = False  # the best value of its column
    alert: bool = False  # a failed run or a certificate that did not hold

    def plain(self, separator: str = " ± ") -> str:
        return f"{self.text}{separator}{self.spread}" if self.spread else self.text


@dataclass(frozen=True)
class Column:
    header: str
    latex: str
    numeric: bool = False
    latex_group: str = ""


@dataclass
class BoardTable:
    """The leaderboard of one dataset and budget, ready for any renderer."""

    dataset: str
    budget: str
    columns: list[Column]
    rows: list[list[Cell]] = field(default_factory=list)
    failed: list[bool] = field(default_factory=list)  # no seed finished
    violated: list[bool] = field(default_factory=list)  # an audit found the certificate did not hold

    @property
    def title(self) -> str:
        return f"{self.dataset} · budget {self.budget}"

    @property
    def headers(self) -> list[str]:
        return [column.header for column in self.columns]

    @property
    def numeric(self) -> list[bool]:
        return [column.numeric for column in self.columns]


def shown_metrics(board: pd.DataFrame, level: int = FILES) -> list[Metric]:
    """The metrics shown at ``level`` (TERMINAL, PAPER or FILES); optional ones only where some run has them."""
    return [m for m in METRICS if m.level <= level and (not m.optional or board[m.key].notna().any())]


def board_tables(board: pd.DataFrame, metrics: list[Metric], spread: Iterable[str] | None = None) -> list[BoardTable]:
    """Cells per dataset and budget: rank, layer, size, seeds, status, the metrics (± std for the keys in
    ``spread``; by default for accuracies, throughput, memory and time) and the audit."""
    spread = set(spread) if spread is not None else {m.key for m in metrics if m.spread}
    with_variant, with_audit = bool(board["variant"].astype(bool).any()), bool(board["audited"].any())
    columns = [Column("#", r"\#", True), Column("layer", "Layer"), Column("size", "Size")]
    columns += [Column("settings", "Settings")] if with_variant else []
    columns += [Column("seeds", "Seeds", True), Column("status", "Status")]
    columns += [Column(m.header, m.latex, True, m.latex_group) for m in metrics]
    columns += [Column("audit", "Audit")] if with_audit else []
    tables = []
    for (dataset, budget), rows in board.groupby(["dataset", "budget"], sort=False):
        table = BoardTable(str(dataset), str(budget), columns)
        best = {m.key: best_text(m, rows) for m in metrics if m.best}
        for _, row in rows.iterrows():
            rank = "-" if pd.isna(row["rank"]) else str(int(row["rank"]))
            cells = [Cell(rank), Cell(str(row["layer"])), Cell(str(row["size"]))]
            cells += [Cell(str(row["variant"]))] if with_variant else []
            cells += [Cell(str(row["seeds"])), Cell(str(row["status"]), alert=row["ok_seeds"] < row["seeds"])]
            for metric in metrics:
                text = format_number(metric.kind, row[metric.key])
                std = format_spread(text, row[f"{metric.key}_std"]) if metric.key in spread else ""
                cells.append(Cell(text, std, bold=text != "-" and text == best.get(metric.key)))
            cells += [audit_cell(row)] if with_audit else []
            table.rows.append(cells)
            table.failed.append(bool(row["ok_seeds"] == 0))
            table.violated.append(bool(row["violations"] > 0))
        tables.append(table)
    return tables


def best_text(metric: Metric, rows: pd.DataFrame) -> str | None:
    """The best value of a column as shown (ties after rounding are all best); none among fewer than two."""
    values = rows[metric.key].dropna()
    if len(values) < 2:
        return None
    return format_number(metric.kind, values.max() if metric.best == "max" else values.min())


def audit_cell(row: pd.Series) -> Cell:
    if not row["audited"]:
        return Cell("-")
    if row["violations"]:
        return Cell(f"VIOLATED ({row['violations']})", alert=True, bold=True)
    if row["failed_audits"]:
        return Cell(f"FAILED ({row['failed_audits']})", alert=True, bold=True)
    return Cell("ok" if row["audited"] == row["seeds"] else f"ok ({row['audited']}/{row['seeds']})")


def markdown_table(headers: list[str], rows: list[list[Cell]], numeric: list[bool]) -> str:
    def text(cell: Cell) -> str:
        value = cell.plain().replace("|", "\\|")
        return f"**{value}**" if cell.bold and value != "-" else value

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("--:" if n else ":--" for n in numeric) + "|"]
    lines += ["| " + " | ".join(text(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


LATEX_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$",
                  "≥": r"$\geq$", "ε": r"$\varepsilon$"}


def latex_escape(text: str) -> str:
    return "".join(LATEX_SPECIALS.get(character, character) for character in text)


def latex_cell(cell: Cell, numeric: bool) -> str:
    if cell.text == "-":
        return "--"
    if not numeric:
        return rf"\textbf{{{latex_escape(cell.text)}}}" if cell.bold else latex_escape(cell.text)
    number = cell.text.replace(",", "{,}")
    body = rf"{number} \pm {cell.spread.replace(',', '{,}')}" if cell.spread else number
    return rf"$\mathbf{{{body}}}$" if cell.bold else f"${body}$"


def latex_keeps(column: Column, cells: list[Cell]) -> bool:
    """A paper table drops the rank (rows are in order), and status and seeds where every row has the same."""
    if column.header == "#":
        return False
    if column.header == "status":
        return any(cell.alert for cell in cells)
    if column.header == "seeds":
        return len({cell.text for cell in cells}) > 1
    return True


def latex_header(columns: list[Column]) -> list[str]:
    """One header row, or two where columns share a group (e.g. CRA at each radius), with booktabs rules."""
    if not any(column.latex_group for column in columns):
        return [" & ".join(column.latex for column in columns) + r" \\"]
    groups, rules, position = [], [], 1
    for group, members in itertools.groupby(columns, key=lambda column: column.latex_group):
        width = len(list(members))
        if group:
            groups.append(rf"\multicolumn{{{width}}}{{c}}{{{group}}}")
            rules.append(rf"\cmidrule(lr){{{position}-{position + width - 1}}}")
        else:
            groups += [""] * width
        position += width
    return [" & ".join(groups) + r" \\", " ".join(rules),
            " & ".join(column.latex for column in columns) + r" \\"]


def latex_table(table: BoardTable) -> str:
    """A booktabs tabular of one leaderboard, ready to paste (needs \\usepackage{booktabs})."""
    keep = [i for i, column in enumerate(table.columns) if latex_keeps(column, [row[i] for row in table.rows])]
    columns = [table.columns[i] for i in keep]
    lines = [f"% {latex_escape(table.dataset)}, budget {latex_escape(table.budget)}: "
             "mean $\\pm$ std over seeds, best per column in bold",
             f"\\begin{{tabular}}{{{''.join('r' if c.numeric else 'l' for c in columns)}}}", r"\toprule",
             *latex_header(columns), r"\midrule"]
    lines += [" & ".join(latex_cell(row[i], table.columns[i].numeric) for i in keep) + r" \\" for row in table.rows]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def csv_frame(board: pd.DataFrame) -> pd.DataFrame:
    """The leaderboard with explicit units in column names (accuracies in percent)."""
    names = {}
    for metric in METRICS:
        names[metric.key], names[f"{metric.key}_std"] = metric.csv, f"{metric.csv}_std"
    return board.assign(rank=board["rank"].astype("Int64")).rename(columns=names)


# --- plots -----------------------------------------------------------------------------------------

COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
          "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173"]
SIZE_MARKERS = {"XS": "o", "S": "s", "M": "^", "L": "D"}
OTHER_MARKERS = ["v", "P", "X", "*", "h", "<", ">", "p"]
PLOT_STYLE = {"font.size": 9, "axes.titlesize": 9, "axes.labelsize": 9, "legend.fontsize": 8,
              "xtick.labelsize": 8, "ytick.labelsize": 8, "axes.spines.top": False, "axes.spines.right": False,
              "savefig.dpi": 200, "svg.fonttype": "none", "figure.dpi": 100}
CRA_36_LABEL = "CRA at ε = 36/255 (%)"


class NothingToPlot(Exception):
    """The records hold nothing this plot could show; the message says what it needs."""


@dataclass
class Plot:
    name: str
    caption: str
    files: list[Path] = field(default_factory=list)
    note: str = ""  # why there is nothing to show (the files then only say so)


class Styles:
    """The same color per method and marker per size in every plot."""

    def __init__(self, board: pd.DataFrame):
        methods = sorted({method_label(row) for _, row in board.iterrows()})
        sizes = sorted(set(board["size"]), key=lambda s: (size_position(s), s))
        self.colors = {m: COLORS[i % len(COLORS)] for i, m in enumerate(methods)}
        others = iter(OTHER_MARKERS * (1 + len(sizes) // len(OTHER_MARKERS)))
        self.markers = {s: SIZE_MARKERS.get(s) or next(others) for s in sizes}

    def legend(self, figure: plt.Figure, methods: Iterable[str], sizes: Iterable[str]) -> None:
        """One legend right of the panels: methods by color, then sizes by marker."""
        handles = [Line2D([], [], linestyle="", marker="", label="method")]
        handles += [Patch(facecolor=self.colors[m], label=m) for m in sorted(set(methods))]
        handles += [Line2D([], [], linestyle="", marker="", label=" "),
                    Line2D([], [], linestyle="", marker="", label="size")]
        handles += [Line2D([], [], color="0.3", linestyle="", marker=self.markers[s], label=s)
                    for s in sorted(set(sizes), key=lambda s: (size_position(s), s))]
        legend = figure.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 0.98), frameon=False)
        for text in legend.get_texts():
            if text.get_text() in ("method", "size"):
                text.set_fontweight("bold")


def panels(count: int, columns: int = 3, width: float = 3.6,
           height: float = 2.9) -> tuple[plt.Figure, list[plt.Axes]]:
    """A grid of ``count`` panels, ``columns`` wide at most, each ``width`` x ``height`` inches."""
    columns = max(1, min(columns, count))
    rows = math.ceil(count / columns)
    figure, grid = plt.subplots(rows, columns, figsize=(width * columns, height * rows), squeeze=False)
    axes = list(grid.flat)
    for unused in axes[count:]:
        unused.set_visible(False)
    return figure, axes[:count]


def compact_number(value: float, _position: Any = None) -> str:
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:g}{suffix}"
    return f"{value:g}"


def plain_log_ticks(axis: Any, low: float, high: float) -> None:
    """Readable ticks on a log axis (1, 2, 5 × 10^k, or finer when the range is narrow), as plain numbers."""
    exponents = range(math.floor(math.log10(low)) - 1, math.ceil(math.log10(high)) + 1)
    for mantissas in ((1,), (1, 2, 5), (1, 2, 3, 4, 5, 6, 7, 8, 9), (1, 1.5, 2, 3, 4, 5, 6, 7, 8, 9)):
        ticks = [m * 10.0 ** e for e in exponents for m in mantissas if low <= m * 10.0 ** e <= high]
        if len(ticks) >= 3 and ticks[-1] / ticks[0] >= (high / low) ** 0.5:  # enough ticks, spread over the axis
            break
    if len(ticks) < 2:  # a range narrower than one step of 1..9 x 10^k: three rounded points inside it
        ticks = [float(f"{value:.2g}") for value in np.geomspace(low, high, 5)[1:-1]]
    axis.set_major_locator(FixedLocator(ticks))
    axis.set_major_formatter(FuncFormatter(compact_number))
    axis.set_minor_formatter(NullFormatter())


def finish_log_axes(axes: plt.Axes, x: bool = False, y: bool = False) -> None:
    """Plain-number ticks on the log axes; a range narrower than 3x is widened so points keep off the frame."""
    axes.autoscale_view()
    for on, limits, set_limits, axis in ((x, axes.get_xlim, axes.set_xlim, axes.xaxis),
                                         (y, axes.get_ylim, axes.set_ylim, axes.yaxis)):
        if on:
            low, high = limits()
            if high < 3 * low:
                middle = math.sqrt(low * high)
                low, high = min(low, middle / 1.5), max(high, middle * 1.5)
                set_limits(low, high)
            plain_log_ticks(axis, low, high)


def say_empty(axes: plt.Axes, message: str) -> None:
    axes.text(0.5, 0.5, message, transform=axes.transAxes, ha="center", va="center", color="0.4")
    for axis in (axes.xaxis, axes.yaxis):
        axis.set_major_locator(NullLocator())
        axis.set_minor_locator(NullLocator())


def std_or_zero(value: Any) -> float:
    return 0.0 if value is None or pd.isna(value) else float(value)


def draw_error_bars(axes: plt.Axes, segments: list[list[tuple[float, float]]], colors: list[str]) -> None:
    """All error bars of a panel as one collection (fast, and the same API in every matplotlib)."""
    if segments:
        axes.add_collection(LineCollection(segments, colors=colors, linewidths=0.8, zorder=1))


def draw_points(axes: plt.Axes, rows: pd.DataFrame, x: str, y: str, styles: Styles, errors: bool = True) -> None:
    """A marker per row (color = method, shape = size), with ± std bars on both axes where seeds differ."""
    segments, colors = [], []
    for _, row in rows.iterrows():
        color = styles.colors[method_label(row)]
        dx = std_or_zero(row.get(f"{x}_std")) if errors else 0.0
        dy = std_or_zero(row.get(f"{y}_std")) if errors else 0.0
        if dx:
            segments.append([(max(row[x] - dx, row[x] / 10), row[y]), (row[x] + dx, row[y])])
            colors.append(color)
        if dy:
            segments.append([(row[x], row[y] - dy), (row[x], row[y] + dy)])
            colors.append(color)
    draw_error_bars(axes, segments, colors)
    for size, group in rows.groupby("size", sort=False):
        axes.scatter(group[x], group[y], color=[styles.colors[method_label(r)] for _, r in group.iterrows()],
                     marker=styles.markers[size], s=36, edgecolors="white", linewidths=0.5, zorder=3)
    axes.autoscale_view()


def draw_line(axes: plt.Axes, xs: list[float], ys: list[float], errors: list[float], color: str, marker: str,
              label: str | None = None) -> None:
    axes.plot(xs, ys, color=color, marker=marker, markersize=5, linewidth=1.2, markeredgecolor="white",
              markeredgewidth=0.5, label=label, zorder=2)
    bars = [[(x, y - e), (x, y + e)] for x, y, e in zip(xs, ys, errors) if e]
    draw_error_bars(axes, bars, [color] * len(bars))


def dress(axes: plt.Axes, title: str, xlabel: str, ylabel: str) -> None:
    axes.set_title(title)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.grid(True, which="major", alpha=0.3)


def scatter_panels(board: pd.DataFrame, styles: Styles, x: str, y: str, xlabel: str, ylabel: str,
                   log_x: bool = False) -> plt.Figure:
    """One panel per dataset and budget; a point (± std) per layer and size."""
    shown = board.dropna(subset=[x, y])
    shown = shown[shown[x] > 0] if log_x else shown
    if shown.empty:
        raise NothingToPlot(f"needs finished runs with a measured {x.replace('_', ' ')}")
    keys = list(dict.fromkeys(zip(shown["dataset"], shown["budget"])))
    figure, axes_list = panels(len(keys))
    for axes, (dataset, budget) in zip(axes_list, keys):
        rows = shown[(shown["dataset"] == dataset) & (shown["budget"] == budget)]
        if log_x:
            axes.set_xscale("log")
        draw_points(axes, rows, x, y, styles)
        if log_x:
            finish_log_axes(axes, x=True)
        dress(axes, f"{dataset}, budget {budget}", xlabel, ylabel)
    styles.legend(figure, [method_label(r) for _, r in shown.iterrows()], shown["size"])
    figure.tight_layout()
    return figure


def plot_cra_vs_throughput(board: pd.DataFrame, styles: Styles) -> plt.Figure:
    return scatter_panels(board, styles, "train_throughput", "cra_36", "training throughput (images/s, log scale)",
                          CRA_36_LABEL, log_x=True)


def plot_clean_vs_cra(board: pd.DataFrame, styles: Styles) -> plt.Figure:
    return scatter_panels(board, styles, "clean_acc", "cra_36", "clean accuracy (%)", CRA_36_LABEL)


def plot_cra_vs_budget(board: pd.DataFrame, styles: Styles) -> plt.Figure:
    """CRA at 36/255 over the budgets (ordered by seconds), a line per method through its best size at each
    budget (the marker shows which), a panel per dataset."""
    shown = board.dropna(subset=["cra_36", "budget_s"])
    budgets = shown.groupby("dataset")["budget"].nunique()
    datasets = [d for d in budgets.index if budgets[d] >= 2]
    if not datasets:
        found = ", ".join(dict.fromkeys(shown["budget"])) or "none"
        raise NothingToPlot(f"needs ≥ 2 budgets on one dataset (found: {found})")
    figure, axes_list = panels(len(datasets), columns=2, width=4.2)
    for axes, dataset in zip(axes_list, datasets):
        rows = shown[shown["dataset"] == dataset]
        best = rows.sort_values("cra_36", ascending=False).groupby(["layer", "variant", "budget"], sort=False).head(1)
        axes.set_xscale("log")
        for _, line in best.sort_values("budget_s").groupby(["layer", "variant"], sort=False):
            color = styles.colors[method_label(line.iloc[0])]
            draw_line(axes, line["budget_s"].tolist(), line["cra_36"].tolist(),
                      [std_or_zero(v) for v in line["cra_36_std"]], color, marker="")
            draw_points(axes, line, "budget_s", "cra_36", styles, errors=False)
        ticks = {seconds: " / ".join(dict.fromkeys(names)) for seconds, names in rows.groupby("budget_s")["budget"]}
        axes.set_xticks(list(ticks))
        axes.set_xticklabels(list(ticks.values()))
        axes.xaxis.set_minor_locator(NullLocator())
        axes.set_xlim(min(ticks) / 1.3, max(ticks) * 1.3)
        dress(axes, dataset, "training budget (wall clock, log scale)", CRA_36_LABEL)
    styles.legend(figure, [method_label(r) for _, r in shown.iterrows()], shown["size"])
    figure.tight_layout()
    return figure


def plot_cost_vs_size(board: pd.DataFrame, styles: Styles) -> plt.Figure:
    """Peak memory and seconds per epoch against parameters (log-log), a line per method, a row per dataset."""
    costs = {"peak_memory_mb": ("peak memory (MB, log scale)", "no peak memory recorded"),
             "epoch_seconds": ("compute seconds per epoch (log scale)", "no timed training steps")}
    finished = board.dropna(subset=["params"]).dropna(subset=list(costs), how="all")
    if finished.empty:
        raise NothingToPlot("needs finished runs with parameters, memory and throughput")
    datasets = list(dict.fromkeys(finished["dataset"]))
    figure, axes_list = panels(2 * len(datasets), columns=2, width=4.0)
    for row_index, dataset in enumerate(datasets):
        rows = finished[finished["dataset"] == dataset]
        models = rows.groupby(["layer", "variant", "size"], sort=False)[["params", *costs]].median().reset_index()
        counters = sorted({c for text in rows["memory_counter"] if text for c in str(text).split(", ")})
        for column_index, (column, (label, nothing)) in enumerate(costs.items()):
            axes = axes_list[2 * row_index + column_index]
            axes.set_xscale("log")
            axes.set_yscale("log")
            points = models[(models[column] > 0) & (models["params"] > 0)]
            for _, line in points.groupby(["layer", "variant"], sort=False):
                line = line.sort_values("params")
                axes.plot(line["params"], line[column], color=styles.colors[method_label(line.iloc[0])],
                          linewidth=1.2, zorder=2)
            if points.empty:
                say_empty(axes, nothing)
            else:
                draw_points(axes, points, "params", column, styles, errors=False)
                finish_log_axes(axes, x=True, y=True)
            counter = f" ({', '.join(counters)})" if column == "peak_memory_mb" and counters else ""
            dress(axes, f"{dataset}{counter}", "parameters (log scale)", label)
    styles.legend(figure, [method_label(r) for _, r in finished.iterrows()], finished["size"])
    figure.tight_layout()
    return figure


def plot_cra_vs_epsilon(board: pd.DataFrame, styles: Styles) -> plt.Figure:
    """Accuracy certified at each radius (0 = clean), one curve per method at its best size (by CRA at 36/255)."""
    shown = board.dropna(subset=["cra_36"])
    if shown.empty:
        raise NothingToPlot("needs finished runs")
    keys = list(dict.fromkeys(zip(shown["dataset"], shown["budget"])))
    radii = [0, *EPSILONS_255.values()]
    figure, axes_list = panels(len(keys))
    for axes, (dataset, budget) in zip(axes_list, keys):
        rows = shown[(shown["dataset"] == dataset) & (shown["budget"] == budget)]
        best = rows.sort_values("cra_36", ascending=False).groupby(["layer", "variant"], sort=False).head(1)
        for _, row in best.iterrows():
            draw_line(axes, radii, [row[c] for c in ACCURACIES], [std_or_zero(row[f"{c}_std"]) for c in ACCURACIES],
                      styles.colors[method_label(row)], styles.markers[row["size"]],
                      label=f"{method_label(row)} ({row['size']})")
        axes.set_xticks(radii)
        axes.set_xticklabels(["0", "36", "72", "108", "255"])
        top = axes.get_ylim()[1]
        axes.set_ylim(-0.03 * top, top)  # 0 is a value here: keep its markers inside the frame
        dress(axes, f"{dataset}, budget {budget}", "radius ε (× 1/255; 0 = clean accuracy)", "certified accuracy (%)")
        axes.legend(loc="upper right", frameon=False, title="method (best size)", fontsize=7, title_fontsize=7)
    figure.tight_layout()
    return figure


PLOTS: list[tuple[str, str, Callable[[pd.DataFrame, Styles], plt.Figure]]] = [
    ("cra_vs_throughput", "CRA at 36/255 against training throughput (mean ± std over seeds).",
     plot_cra_vs_throughput),
    ("cra_vs_budget", "CRA at 36/255 as the training budget grows, each method at its best size per budget "
     "(the marker shows which size).", plot_cra_vs_budget),
    ("cost_vs_size", "Peak memory and compute time per epoch against model size.", plot_cost_vs_size),
    ("clean_vs_cra", "Clean accuracy against CRA at 36/255 (mean ± std over seeds).", plot_clean_vs_cra),
    ("cra_vs_epsilon", "Certified accuracy against the radius ε, each method at its best size.", plot_cra_vs_epsilon),
]


def write_plots(board: pd.DataFrame, out: Path) -> list[Plot]:
    """Every plot as PNG and SVG in ``out``. A plot with nothing to show is drawn as its reason (so no picture
    of an earlier report's data stays behind under its name) and carries the reason as its note."""
    plots = []
    styles = Styles(board)
    with plt.rc_context(PLOT_STYLE):
        for name, caption, draw in PLOTS:
            plot = Plot(name, caption)
            try:
                figure = draw(board, styles)
            except NothingToPlot as reason:
                plot.note = str(reason)
                figure = placeholder(f"{caption}\nNothing to show: {reason}.")
            for suffix in ("png", "svg"):
                figure.savefig(out / f"{name}.{suffix}", bbox_inches="tight")
                plot.files.append(out / f"{name}.{suffix}")
            plt.close(figure)
            plots.append(plot)
    return plots


def placeholder(message: str) -> plt.Figure:
    figure = plt.figure(figsize=(6.0, 1.2))
    figure.text(0.5, 0.5, message, ha="center", va="center", color="0.3", wrap=True)
    return figure


# --- pages -----------------------------------------------------------------------------------------

@dataclass
class Report:
    """What ``write_report`` read and wrote."""

    board: pd.DataFrame
    runs: pd.DataFrame
    problems: list[str]
    files: list[Path] = field(default_factory=list)
    plots: list[Plot] = field(default_factory=list)


def violations(board: pd.DataFrame) -> list[str]:
    """One line per leaderboard row whose audit found the certificate did not hold."""
    flagged = board[board["violations"] > 0]
    return [f"{r['layer']} {r['size']} on {r['dataset']}, budget {r['budget']}: the audit found {r['violations']} "
            f"violation(s) in {r['violating_runs']} of {r['audited']} audited runs: their certificate did not hold "
            f"(CRA shown is the audit's sound CRA where it gave one)" for _, r in flagged.iterrows()] + [
        f"{r['layer']} {r['size']} on {r['dataset']}, budget {r['budget']}: {r['failed_audits']} audit(s) failed: "
        f"{r['audit_problems']}" for _, r in board[(board["failed_audits"] > 0) & (board["violations"] == 0)].iterrows()]


def claimed_bounds(board: pd.DataFrame) -> list[str]:
    """One line per layer whose certificate claims a Lipschitz bound other than the sound one the CRA uses."""
    claimed = board.dropna(subset=["lipschitz_bound_claimed", "lipschitz_bound"])
    differing = claimed[~np.isclose(claimed["lipschitz_bound_claimed"], claimed["lipschitz_bound"], rtol=1e-6)]
    return [f"{layer}: claimed L = {value_range(rows['lipschitz_bound_claimed'])}, sound L = "
            f"{value_range(rows['lipschitz_bound'])} in {len(rows)} row(s); the CRA uses the sound bound"
            for layer, rows in differing.groupby("layer")]


def undertrained(board: pd.DataFrame) -> list[str]:
    """One line per row that looks undertrained: clean accuracy under twice chance, or a certificate of L <= 1
    that certifies almost nothing at 36/255 (its margins are tiny), so that nobody reads it as the method's worth."""
    trained = board[board["ok_seeds"] > 0]
    chance = 100.0 / trained["n_classes"]
    near_chance = trained["clean_acc"] < 2 * chance
    uncertified = (trained["lipschitz_bound"] <= 1 + 1e-3) & (trained["cra_36"] < 1.0)
    return [f"{r['layer']} {r['size']} on {r['dataset']}, budget {r['budget']}: {r['clean_acc']:.1f}% clean"
            + (f" (chance {100 / r['n_classes']:.0f}%)" if r["n_classes"] > 0 else "")
            + f", CRA 36 {r['cra_36']:.1f}%: looks undertrained, not a verdict on the method; try a protocol tuned "
            "for short runs (e.g. --budget cpu-2m@TIME) or `lipbench tune`"
            for _, r in trained[near_chance | uncertified].iterrows()]


def notes(board: pd.DataFrame) -> list[str]:
    """What a reader must know to read the leaderboard right, short of an alert."""
    return claimed_bounds(board) + undertrained(board)


def value_range(values: pd.Series) -> str:
    low, high = format_number("bound", values.min()), format_number("bound", values.max())
    return low if low == high else f"{low} to {high}"


ENVIRONMENT = {"device_name": "device", "torch_version": "torch", "git_commit": "lipbench commit",
               "memory_counter": "memory counter"}


def environment_rows(runs: pd.DataFrame) -> list[list[Cell]]:
    """Where the runs were measured (device, torch, commit, memory counter), with the number of runs of each."""
    counts: dict[tuple[str, ...], int] = {}
    for _, run in runs.iterrows():
        key = tuple("-" if pd.isna(run.get(c)) else str(run.get(c))[:40] for c in ENVIRONMENT)
        counts[key] = counts.get(key, 0) + 1
    return [[*map(Cell, key), Cell(str(n))] for key, n in counts.items()]


def environment_table() -> tuple[list[str], list[bool]]:
    return [*ENVIRONMENT.values(), "runs"], [False] * len(ENVIRONMENT) + [True]


def how_to_read(runs: pd.DataFrame) -> list[tuple[str, str]]:
    """The explanations, with the memory counters these runs used."""
    counters = ", ".join(sorted({str(c) for c in runs["memory_counter"].dropna()})) or "none recorded"
    return [(term, f"{text} Counters in this report: {counters}." if term == "Memory" else text)
            for term, text in HOW_TO_READ]


def html_table(headers: list[str], rows: list[list[Cell]], numeric: list[bool],
               row_classes: list[str] | None = None) -> str:
    def cell_html(cell: Cell, is_numeric: bool) -> str:
        text = html.escape(cell.plain())
        text = f"<strong>{text}</strong>" if cell.bold else text
        classes = " ".join(c for c, on in (("num", is_numeric), ("alert", cell.alert)) if on)
        return f'<td class="{classes}">{text}</td>' if classes else f"<td>{text}</td>"

    head = "".join(f'<th class="{"num" if n else ""}">{html.escape(h)}</th>' for h, n in zip(headers, numeric))
    body = []
    for index, row in enumerate(rows):
        css = f' class="{row_classes[index]}"' if row_classes and row_classes[index] else ""
        body.append(f"<tr{css}>" + "".join(cell_html(c, n) for c, n in zip(row, numeric)) + "</tr>")
    return (f'<div class="scroll"><table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n' + "\n".join(body)
            + "\n</tbody>\n</table></div>\n")


PAGE_STYLE = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1200px;
       color: #222; line-height: 1.45; padding: 0 1em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0 1.5em; }
th { border-bottom: 2px solid #444; text-align: left; padding: 0.25em 0.6em; white-space: nowrap; }
td { border-bottom: 1px solid #ddd; padding: 0.2em 0.6em; white-space: nowrap; }
.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.failed td { color: #888; }
tr.violated td { background: #fde8e8; }
.scroll { overflow-x: auto; }
td.alert, .alert { color: #c00; font-weight: bold; }
.box { border-left: 4px solid #c00; background: #fff3f3; padding: 0.5em 1em; }
.note { border-left: 4px solid #c90; background: #fffbe8; padding: 0.5em 1em; }
figure { margin: 1em 0 2em; } figure img { max-width: 100%; } figcaption { font-size: 0.9em; color: #444; }
dt { font-weight: bold; } dd { margin: 0 0 0.6em 1.5em; }
"""


def html_page(report: Report, tables: list[BoardTable], folders: list[Path]) -> str:
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>lipbench report</title>"
             f"\n<style>{PAGE_STYLE}</style>\n</head>\n<body>\n<h1>lipbench report</h1>",
             f"<p>{len(report.runs)} runs from {html.escape(', '.join(map(str, folders)))}, "
             f"written {datetime.now().isoformat(timespec='minutes')}.</p>"]
    alerts = violations(report.board)
    if alerts:
        parts.append('<div class="box"><p class="alert">Certificate violations found by audits:</p><ul>'
                     + "".join(f"<li>{html.escape(a)}</li>" for a in alerts) + "</ul></div>")
    remarks = notes(report.board)
    if remarks:
        parts.append('<div class="note"><p>Notes:</p><ul>'
                     + "".join(f"<li>{html.escape(n)}</li>" for n in remarks) + "</ul></div>")
    if report.problems:
        parts.append('<div class="note"><p>Skipped while reading:</p><ul>'
                     + "".join(f"<li>{html.escape(p)}</li>" for p in report.problems) + "</ul></div>")
    parts.append("<h2>How to read this</h2>\n<dl>" + "".join(
        f"<dt>{html.escape(term)}</dt><dd>{html.escape(text)}</dd>" for term, text in how_to_read(report.runs))
        + "</dl>")
    parts.append("<h2>Leaderboards</h2>")
    for table in tables:
        parts.append(f"<h3>{html.escape(table.title)}</h3>")
        classes = ["violated" if v else "failed" if f else "" for f, v in zip(table.failed, table.violated)]
        parts.append(html_table(table.headers, table.rows, table.numeric, classes))
    parts.append("<h2>Plots</h2>")
    for plot in report.plots:
        if not plot.note:
            png, svg = (f.name for f in plot.files)
            parts.append(f'<figure><img src="{png}" alt="{html.escape(plot.caption)}">'
                         f'<figcaption>{html.escape(plot.caption)} <a href="{svg}">SVG</a></figcaption></figure>')
        else:
            parts.append(f'<p class="note">{html.escape(plot.caption)} Nothing to show: {html.escape(plot.note)}.</p>')
    parts.append("<h2>Environment</h2>")
    headers, numeric = environment_table()
    parts.append(html_table(headers, environment_rows(report.runs), numeric))
    links = ", ".join(f'<a href="{f.name}">{f.name}</a>' for f in report.files if f.suffix in (".csv", ".tex", ".md"))
    parts.append(f"<p>Files: {links}</p>\n</body>\n</html>\n")
    return "\n".join(parts)


def markdown_page(report: Report, tables: list[BoardTable], folders: list[Path]) -> str:
    parts = ["# lipbench report\n", f"{len(report.runs)} runs from {', '.join(map(str, folders))}.\n"]
    alerts = violations(report.board)
    if alerts:
        parts.append("**Certificate violations found by audits:**\n\n" + "".join(f"- **{a}**\n" for a in alerts))
    remarks = notes(report.board)
    if remarks:
        parts.append("Notes:\n\n" + "".join(f"- {n}\n" for n in remarks))
    if report.problems:
        parts.append("Skipped while reading:\n\n" + "".join(f"- {p}\n" for p in report.problems))
    explanations = how_to_read(report.runs)
    parts.append("## How to read this\n\n" + "".join(f"- **{term}**: {text}\n" for term, text in explanations))
    parts.append("## Leaderboards\n")
    parts += [f"### {table.title}\n\n{markdown_table(table.headers, table.rows, table.numeric)}" for table in tables]
    parts.append("## Plots\n")
    for plot in report.plots:
        if not plot.note:
            png, svg = (f.name for f in plot.files)
            parts.append(f"![{plot.caption}]({png})\n\n{plot.caption} ([SVG]({svg}))\n")
        else:
            parts.append(f"{plot.caption} Nothing to show: {plot.note}.\n")
    headers, numeric = environment_table()
    parts.append("## Environment\n\n" + markdown_table(headers, environment_rows(report.runs), numeric))
    return "\n".join(parts)


LATEX_PREAMBLE = ("% lipbench leaderboards, one tabular per dataset and budget. Needs \\usepackage{booktabs}.\n"
                  "% Every column, with units, is in leaderboard.csv.\n\n")


def write_report(folders: list[Path], out: Path) -> Report:
    """Read ``folders`` and write every table, plot and page into ``out``."""
    runs, problems = load_results(folders)
    board = leaderboard(runs)
    report = Report(board, runs, problems)
    out.mkdir(parents=True, exist_ok=True)
    if board.empty:
        return report
    tables, paper = board_tables(board, shown_metrics(board)), shown_metrics(board, PAPER)
    write = {
        "leaderboard.md": "".join(f"## {t.title}\n\n{markdown_table(t.headers, t.rows, t.numeric)}\n" for t in tables),
        "leaderboard.tex": LATEX_PREAMBLE + "\n".join(latex_table(t) for t in board_tables(board, paper)),
    }
    for name, text in write.items():
        (out / name).write_text(text, encoding="utf-8")
        report.files.append(out / name)
    csv_frame(board).to_csv(out / "leaderboard.csv", index=False)
    runs.to_csv(out / "runs.csv", index=False)
    report.files += [out / "leaderboard.csv", out / "runs.csv"]
    report.plots = write_plots(board, out)
    report.files += [f for plot in report.plots for f in plot.files]
    (out / "report.html").write_text(html_page(report, tables, folders), encoding="utf-8")
    (out / "report.md").write_text(markdown_page(report, tables, folders), encoding="utf-8")
    report.files += [out / "report.html", out / "report.md"]
    return report
