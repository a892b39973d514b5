"""Report: leaderboard tables and comparison plots from any number of results folders.

Records are grouped by (dataset, budget, layer, size); seeds are aggregated as mean ± std.
Failed runs stay in the table as rows with their status. Accuracies are in percent.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from lipbench.records import read_records  # noqa: E402

ACCURACY_COLUMNS = ["clean_acc", "cra_36", "cra_72", "cra_108", "cra_255"]
MEASURE_COLUMNS = ["train_throughput", "infer_throughput", "peak_memory_mb", "params", "lipschitz_bound",
                   "epochs_done", "train_seconds"]
GROUP = ["dataset", "budget", "layer", "size"]
HEADERS = {"clean_acc": "clean %", "cra_36": "CRA 36/255 %", "cra_72": "CRA 72/255 %", "cra_108": "CRA 108/255 %",
           "cra_255": "CRA 1 %", "train_throughput": "train img/s", "infer_throughput": "infer img/s",
           "peak_memory_mb": "peak MB", "params": "params", "lipschitz_bound": "L bound",
           "epochs_done": "epochs", "train_seconds": "train s"}


def load_results(folders: Iterable[Path]) -> tuple[pd.DataFrame, list[str]]:
    """One row per record (all statuses), and the problems met while reading."""
    records, problems = read_records(folders)
    frame = pd.DataFrame.from_records(records)
    for column in GROUP + ["status", "seed"] + ACCURACY_COLUMNS + MEASURE_COLUMNS:
        if column not in frame:
            frame[column] = np.nan
    frame[ACCURACY_COLUMNS + MEASURE_COLUMNS] = frame[ACCURACY_COLUMNS + MEASURE_COLUMNS].apply(
        pd.to_numeric, errors="coerce")
    return frame, problems


def leaderboard(frame: pd.DataFrame) -> pd.DataFrame:
    """Aggregate seeds per (dataset, budget, layer, size); rank by CRA at 36/255 within dataset and budget."""
    rows = []
    for key, group in frame.groupby(GROUP, dropna=False, sort=False):
        ok = group[group["status"] == "ok"]
        row: dict[str, Any] = dict(zip(GROUP, key))
        row["seeds"] = len(group)
        statuses = group["status"].value_counts()
        row["status"] = ", ".join(f"{s}" if n == 1 and len(group) == 1 else f"{n} {s}" for s, n in statuses.items())
        for column in ACCURACY_COLUMNS:
            row[column] = 100 * ok[column].mean() if len(ok) else np.nan
            row[f"{column}_std"] = 100 * ok[column].std() if len(ok) > 1 else np.nan
        for column in MEASURE_COLUMNS:
            row[column] = ok[column].mean() if len(ok) else np.nan
        rows.append(row)
    board = pd.DataFrame(rows)
    if board.empty:
        return board
    board = board.sort_values(["dataset", "budget", "cra_36"], ascending=[True, True, False], na_position="last")
    board.insert(0, "rank", board.groupby(["dataset", "budget"]).cumcount() + 1)
    return board.reset_index(drop=True)


def formatted(board: pd.DataFrame) -> pd.DataFrame:
    """Human-readable cells: mean ± std for accuracies, '-' for missing values."""
    table = board[["rank"] + GROUP + ["seeds", "status"]].copy()
    for column in ACCURACY_COLUMNS:
        table[HEADERS[column]] = [
            "-" if pd.isna(m) else (f"{m:.1f} ± {s:.1f}" if not pd.isna(s) else f"{m:.1f}")
            for m, s in zip(board[column], board[f"{column}_std"])]
    for column in MEASURE_COLUMNS:
        table[HEADERS[column]] = [format_measure(column, v) for v in board[column]]
    return table


def format_measure(column: str, value: float) -> str:
    if pd.isna(value):
        return "-"
    if column == "params":
        return f"{value / 1e6:.2f}M"
    if column == "lipschitz_bound":
        return f"{value:.4g}"
    if column == "epochs_done":
        return f"{value:.1f}"
    return f"{value:,.0f}"


def markdown_table(table: pd.DataFrame) -> str:
    header = "| " + " | ".join(table.columns) + " |"
    rule = "|" + "|".join("---" for _ in table.columns) + "|"
    lines = ["| " + " | ".join(str(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join([header, rule, *lines]) + "\n"


def plot_cra_vs_throughput(board: pd.DataFrame, path: Path) -> Path:
    """CRA at 36/255 against training throughput (log scale), one marker per layer and size."""
    figure, axes = plt.subplots(figsize=(6.5, 4.5), dpi=150)
    shown = board.dropna(subset=["cra_36", "train_throughput"])
    for layer, group in shown.groupby("layer"):
        axes.scatter(group["train_throughput"], group["cra_36"], s=40, label=layer)
        for _, row in group.iterrows():
            axes.annotate(f"{row['size']}", (row["train_throughput"], row["cra_36"]), textcoords="offset points",
                          xytext=(4, 3), fontsize=7)
    axes.set_xscale("log")
    axes.set_xlabel("training throughput (images/s, log scale)")
    axes.set_ylabel("certified robust accuracy at ε = 36/255 (%)")
    titles = sorted({f"{d}, budget {b}" for d, b in zip(shown["dataset"], shown["budget"])})
    axes.set_title("; ".join(titles) if len(titles) <= 2 else "CRA vs training throughput", fontsize=9)
    axes.grid(True, which="both", alpha=0.3)
    if len(shown):
        axes.legend(fontsize=8, frameon=False, loc="best")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def write_report(folders: list[Path], out: Path) -> tuple[pd.DataFrame, list[Path], list[str]]:
    """Write leaderboard.md / leaderboard.csv and the plots into ``out``; returns the table, files, problems."""
    frame, problems = load_results(folders)
    board = leaderboard(frame)
    out.mkdir(parents=True, exist_ok=True)
    if board.empty:
        return board, [], problems
    table = formatted(board)
    files = [out / "leaderboard.md", out / "leaderboard.csv"]
    files[0].write_text(markdown_table(table))
    board.to_csv(files[1], index=False)
    files.append(plot_cra_vs_throughput(board, out / "cra_vs_throughput.png"))
    return board, files, problems
