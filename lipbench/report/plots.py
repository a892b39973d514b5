"""The report's plots, registered one per function with its caption, so a new plot is one new function
that appears in every output (report.html, report.md, the PNG and SVG files).

A plot function takes the leaderboard (a DataFrame: one row per dataset, budget, layer, size and
settings; accuracies in percent, ``<metric>_std`` beside each metric) and the shared :class:`Styles`,
and returns a matplotlib Figure, or raises :class:`NothingToPlot` saying what it needs. Register one
with :func:`register_plot` from a plugin (``--plugin``, or the entry-point group ``lipbench.plots``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.ticker import NullLocator

from lipbench.plots_stats import plot_cra_intervals, plot_reproduced_vs_reported
from lipbench.radii import RADII
from lipbench.registry import new_registry
from lipbench.report.board import method_label
from lipbench.report.metrics import ACCURACIES
from lipbench.report.plotting import (CRA_36_LABEL, PLOT_STYLE, NothingToPlot, Plot, Styles, draw_line, draw_points,
                                      finish_log_axes, label_axes, panels, placeholder, save_figure, scatter_panels,
                                      show_nothing, std_or_zero)


@dataclass(frozen=True)
class PlotSpec:
    name: str
    caption: str
    draw: Callable[[pd.DataFrame, Styles], plt.Figure]


PLOTS = new_registry("plot", "report --help")


def register_plot(name: str, caption: str) -> Callable[[Callable[[pd.DataFrame, Styles], plt.Figure]],
                                                        Callable[[pd.DataFrame, Styles], plt.Figure]]:
    """Register ``draw(board, styles) -> Figure`` as plot ``name`` with its ``caption``; returns ``draw`` unchanged.
    Plots appear in the order they were registered."""

    def decorator(draw: Callable[[pd.DataFrame, Styles], plt.Figure]) -> Callable[[pd.DataFrame, Styles], plt.Figure]:
        PLOTS.add(name, PlotSpec(name, caption, draw))
        return draw

    return decorator


@register_plot("cra_vs_throughput", "CRA at 36/255 against training throughput (mean ± std over seeds).")
def plot_cra_vs_throughput(board: pd.DataFrame, styles: Styles) -> plt.Figure:
    return scatter_panels(board, styles, "train_throughput", "cra_36", "training throughput (images/s, log scale)",
                          CRA_36_LABEL, log_x=True)


@register_plot("cra_vs_budget", "CRA at 36/255 as the training budget grows, each method at its best size per budget "
               "(the marker shows which size).")
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
        label_axes(axes, dataset, "training budget (wall clock, log scale)", CRA_36_LABEL)
    styles.legend(figure, [method_label(r) for _, r in shown.iterrows()], shown["size"])
    figure.tight_layout()
    return figure


@register_plot("cost_vs_size", "Peak memory and compute time per epoch against model size.")
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
                show_nothing(axes, nothing)
            else:
                draw_points(axes, points, "params", column, styles, errors=False)
                finish_log_axes(axes, x=True, y=True)
            counter = f" ({', '.join(counters)})" if column == "peak_memory_mb" and counters else ""
            label_axes(axes, f"{dataset}{counter}", "parameters (log scale)", label)
    styles.legend(figure, [method_label(r) for _, r in finished.iterrows()], finished["size"])
    figure.tight_layout()
    return figure


@register_plot("clean_vs_cra", "Clean accuracy against CRA at 36/255 (mean ± std over seeds).")
def plot_clean_vs_cra(board: pd.DataFrame, styles: Styles) -> plt.Figure:
    return scatter_panels(board, styles, "clean_acc", "cra_36", "clean accuracy (%)", CRA_36_LABEL)


@register_plot("cra_vs_epsilon", "Certified accuracy against the radius ε, each method at its best size.")
def plot_cra_vs_epsilon(board: pd.DataFrame, styles: Styles) -> plt.Figure:
    """Accuracy certified at each radius (0 = clean), one curve per method at its best size (by CRA at 36/255)."""
    shown = board.dropna(subset=["cra_36"])
    if shown.empty:
        raise NothingToPlot("needs finished runs")
    keys = list(dict.fromkeys(zip(shown["dataset"], shown["budget"])))
    radii = [0, *(radius.numerator for radius in RADII)]
    figure, axes_list = panels(len(keys))
    for axes, (dataset, budget) in zip(axes_list, keys):
        rows = shown[(shown["dataset"] == dataset) & (shown["budget"] == budget)]
        best = rows.sort_values("cra_36", ascending=False).groupby(["layer", "variant"], sort=False).head(1)
        for _, row in best.iterrows():
            draw_line(axes, radii, [row[c] for c in ACCURACIES], [std_or_zero(row[f"{c}_std"]) for c in ACCURACIES],
                      styles.colors[method_label(row)], styles.markers[row["size"]],
                      label=f"{method_label(row)} ({row['size']})")
        axes.set_xticks(radii)
        axes.set_xticklabels([str(r) for r in radii])
        top = axes.get_ylim()[1]
        axes.set_ylim(-0.03 * top, top)  # 0 is a value here: keep its markers inside the frame
        label_axes(axes, f"{dataset}, budget {budget}", "radius ε (× 1/255; 0 = clean accuracy)", "certified accuracy (%)")
        axes.legend(loc="upper right", frameon=False, title="method (best size)", fontsize=7, title_fontsize=7)
    figure.tight_layout()
    return figure


def settings_panels(board: pd.DataFrame, draw: Callable[[pd.DataFrame, plt.Axes], plt.Axes], height: float,
                    width: float) -> plt.Figure:
    """One panel per dataset and budget of ``board``, drawn by ``draw(rows, axes)``."""
    keys = list(dict.fromkeys(zip(board["dataset"], board["budget"])))
    figure, axes_list = panels(len(keys), columns=2, width=width, height=height)
    for axes, (dataset, budget) in zip(axes_list, keys):
        draw(board[(board["dataset"] == dataset) & (board["budget"] == budget)], axes)
        axes.set_title(f"{dataset}, budget {budget}")
    figure.tight_layout()
    return figure


@register_plot("cra_intervals", "CRA at 36/255 with its 95% interval per method and size; the rows tied with the best "
               "(group from 1) shaded.")
def plot_cra_interval_panels(board: pd.DataFrame, styles: Styles) -> plt.Figure:
    shown = board.dropna(subset=["cra_36"])
    if shown.empty:
        raise NothingToPlot("needs finished runs")
    tallest = int(shown.groupby(["dataset", "budget"]).size().max())
    return settings_panels(shown, plot_cra_intervals, height=1.0 + 0.28 * tallest, width=4.6)


@register_plot("reproduced_vs_reported", "CRA at 36/255 reproduced by lipbench (with its 95% interval) against the "
               "paper's for the same setting; on the dashed line they agree.")
def plot_reproduced_vs_reported_panels(board: pd.DataFrame, styles: Styles) -> plt.Figure:
    matched = board[board["paper_cra_36"].notna() & board["cra_36"].notna()] if "paper_cra_36" in board else board[:0]
    if matched.empty:
        raise NothingToPlot("no row's setting (method, size, dataset, budget) matches a paper's in references/")
    return settings_panels(matched, plot_reproduced_vs_reported, height=3.6, width=3.8)


def write_plots(board: pd.DataFrame, out: Path) -> list[Plot]:
    """Every plot as PNG and SVG in ``out``. A plot with nothing to show is drawn as its reason (so no picture
    of an earlier report's data stays behind under its name) and carries the reason as its note."""
    plots = []
    board = board.assign(dataset=[f"{d} + extra {e}" if e else d for d, e in zip(board["dataset"], board["extra"])]) \
        if "extra" in board else board  # runs with extra training data get panels of their own
    styles = Styles(board)
    with plt.rc_context(PLOT_STYLE):
        for spec in PLOTS.in_order():
            plot = Plot(spec.name, spec.caption)
            try:
                figure = spec.draw(board, styles)
            except NothingToPlot as reason:
                plot.note = str(reason)
                figure = placeholder(f"{spec.caption}\nNothing to show: {reason}.")
            for suffix in ("png", "svg"):
                save_figure(figure, out / f"{spec.name}.{suffix}")
                plot.files.append(out / f"{spec.name}.{suffix}")
            plt.close(figure)
            plots.append(plot)
    return plots
