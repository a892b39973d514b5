"""Plots of the intervals, groups and papers' numbers: each draws on a matplotlib Axes it is given.

No pyplot here: the caller owns the figure (the report creates it under the Agg backend and saves it), so
nothing opens a window. Accuracies are in percent, as in the leaderboard.

``plot_cra_intervals(frame, axes)``: one row per method and size, CRA with its interval; the rows tied with
the best are shaded. Columns: ``layer``, ``size``, ``cra_36``, ``cra_36_ci_low``, ``cra_36_ci_high``,
``group`` (the rank range of ``lipbench.stats.group_labels``: rows whose range starts at 1 are tied with the
best), and ``variant`` where runs differ in a setting. Rows are drawn top to bottom in the frame's order.

``plot_reproduced_vs_reported(frame, axes)``: a point per row that matches a paper's setting, the paper's
CRA (x) against lipbench's (y, with its interval), and the diagonal where they agree. Columns: ``layer``,
``size``, ``cra_36``, ``paper_cra_36``, and where known ``cra_36_ci_low``, ``cra_36_ci_high``, ``variant``.

Pass one dataset and budget at a time; ``metric`` picks another accuracy (``clean_acc``, ``cra_72``...).
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.patches import Patch

from lipbench.stats import parse_range_label

POINT_COLOR, SHADE_COLOR, DIAGONAL_COLOR = "#1f77b4", "#ffd27f", "0.5"
LABELS = {"clean_acc": "clean accuracy", "cra_36": "CRA at ε = 36/255", "cra_72": "CRA at ε = 72/255",
          "cra_108": "CRA at ε = 108/255", "cra_255": "CRA at ε = 1"}


def row_label(row: pd.Series) -> str:
    variant = row.get("variant")
    base = f"{row['layer']} {row['size']}"
    return f"{base} ({variant})" if isinstance(variant, str) and variant else base


def interval_errors(rows: pd.DataFrame, metric: str) -> np.ndarray | None:
    """Distances from the value down to the interval's low end and up to its high end (0 where unknown)."""
    low, high = f"{metric}_ci_low", f"{metric}_ci_high"
    if low not in rows or high not in rows:
        return None
    below = (rows[metric] - rows[low]).to_numpy(dtype=float)
    above = (rows[high] - rows[metric]).to_numpy(dtype=float)
    return np.nan_to_num(np.vstack([below, above]).clip(min=0.0))


def tied_with_best(group: object) -> bool:
    ranks = parse_range_label(group) if isinstance(group, str) else None
    return ranks is not None and ranks[0] == 1


def say_empty(axes: Axes, message: str) -> Axes:
    axes.text(0.5, 0.5, message, transform=axes.transAxes, ha="center", va="center", color="0.4")
    axes.set_xticks([])
    axes.set_yticks([])
    return axes


def plot_cra_intervals(frame: pd.DataFrame, axes: Axes, metric: str = "cra_36") -> Axes:
    """CRA (``metric``) per row with its interval as a horizontal bar; rows tied with the best shaded."""
    rows = frame[frame[metric].notna()].reset_index(drop=True)
    if rows.empty:
        return say_empty(axes, f"no finished run has a {LABELS.get(metric, metric)}")
    positions = np.arange(len(rows))
    for position, group in zip(positions, rows.get("group", pd.Series([""] * len(rows)))):
        if tied_with_best(group):
            axes.axhspan(position - 0.5, position + 0.5, color=SHADE_COLOR, alpha=0.5, linewidth=0, zorder=0)
    axes.errorbar(rows[metric], positions, xerr=interval_errors(rows, metric), fmt="o", color=POINT_COLOR,
                  markersize=4, elinewidth=1.2, capsize=2, zorder=2)
    axes.set_yticks(positions, [row_label(row) for _, row in rows.iterrows()])
    axes.set_ylim(len(rows) - 0.5, -0.5)  # the first row on top
    axes.set_xlabel(f"{LABELS.get(metric, metric)} (%), 95% interval")
    axes.grid(True, axis="x", alpha=0.3)
    axes.legend(handles=[Patch(color=SHADE_COLOR, alpha=0.5, label="tied with the best (group from 1)")],
                loc="lower right", frameon=False, fontsize="small")
    return axes


def plot_reproduced_vs_reported(frame: pd.DataFrame, axes: Axes, metric: str = "cra_36") -> Axes:
    """lipbench's ``metric`` (y, with its interval) against the paper's for the same setting (x)."""
    reported = f"paper_{metric}"
    rows = frame[frame[metric].notna() & frame.get(reported, pd.Series(math.nan, index=frame.index)).notna()]
    rows = rows.reset_index(drop=True)
    if rows.empty:
        return say_empty(axes, "no run matches a setting a paper reports")
    axes.errorbar(rows[reported], rows[metric], yerr=interval_errors(rows, metric), fmt="o", color=POINT_COLOR,
                  markersize=4, elinewidth=1.0, capsize=2, zorder=2)
    for _, row in rows.iterrows():
        axes.annotate(row_label(row), (row[reported], row[metric]), xytext=(4, 2), textcoords="offset points",
                      fontsize="x-small")
    bounds = [rows[column] for column in (f"{metric}_ci_low", f"{metric}_ci_high") if column in rows]
    values = pd.concat([rows[reported], rows[metric], *bounds]).dropna()
    margin = max(1.0, 0.05 * float(values.max() - values.min()))
    span = [float(values.min()) - margin, float(values.max()) + margin]
    axes.plot(span, span, color=DIAGONAL_COLOR, linestyle="--", linewidth=0.8, zorder=1, label="same as the paper")
    axes.set_xlim(span)
    axes.set_ylim(span)
    axes.set_aspect("equal", adjustable="box")
    name = LABELS.get(metric, metric)
    axes.set_xlabel(f"{name} reported by the paper (%)")
    axes.set_ylabel(f"{name} reproduced (%)")
    axes.grid(True, alpha=0.3)
    axes.legend(loc="upper left", frameon=False, fontsize="small")
    return axes
