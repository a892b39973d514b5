"""Drawing helpers the plots share: one color per method and marker per size, panels, log ticks, points
with error bars."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator  # noqa: E402

from lipbench.jobfolder import WriteError, why  # noqa: E402
from lipbench.report.board import method_label, size_position  # noqa: E402

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


def show_nothing(axes: plt.Axes, message: str) -> None:
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


def label_axes(axes: plt.Axes, title: str, xlabel: str, ylabel: str) -> None:
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
        label_axes(axes, f"{dataset}, budget {budget}", xlabel, ylabel)
    styles.legend(figure, [method_label(r) for _, r in shown.iterrows()], shown["size"])
    figure.tight_layout()
    return figure


def placeholder(message: str) -> plt.Figure:
    figure = plt.figure(figsize=(6.0, 1.2))
    figure.text(0.5, 0.5, message, ha="center", va="center", color="0.3", wrap=True)
    return figure


def save_figure(figure: Any, path: Path) -> None:
    try:
        figure.savefig(path, bbox_inches="tight")
    except OSError as error:
        raise WriteError(f"cannot write {path}: {why(error)}") from None
