"""The measured columns of a report, declared once: name, format, which value is best, where shown."""
from __future__ import annotations

from dataclasses import dataclass

from lipbench.radii import RADII

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
    *(Metric(radius.key, f"CRA {radius.label} %", radius.latex, f"{radius.key}_pct", "percent", "max", TERMINAL,
             latex_group=CRA_GROUP) for radius in RADII),
    Metric("train_throughput", "train img/s", "Train (img/s)", "train_throughput_img_s", "rate", "max", TERMINAL),
    Metric("infer_throughput", "infer img/s", "Infer (img/s)", "infer_throughput_img_s", "rate", "max", PAPER),
    Metric("input_throughput", "input img/s", "Input (img/s)", "input_throughput_img_s", "rate", optional=True),
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
                                                "batch_size", "train_seconds", "n_test"]


ACCURACIES = ["clean_acc", *(radius.key for radius in RADII)]
