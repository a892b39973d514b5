"""The leaderboard's statistics: 95% intervals of the accuracies, ranges over seeds of throughput and memory,
ranked groups at CRA 36/255 (``lipbench.stats``), and the papers' numbers (``lipbench.references``).

The board carries for each row the per-seed CRA 36/255 (``cra_36_by_seed``) while the groups are computed;
``add_groups`` drops it, so that no file holds a dictionary.
"""
from __future__ import annotations

from typing import Any

import pandas as pd

from lipbench.radii import RANKING
from lipbench.references import paper_columns
from lipbench.report.metrics import ACCURACIES, METRICS
from lipbench.stats import accuracy_interval, group_labels, seed_range, tied_with_best

RANGED_KINDS = {"rate", "megabytes"}  # machine measurements: the lowest and highest value over seeds
BY_SEED = f"{RANKING.key}_by_seed"


def interval_columns(ok: pd.DataFrame, n_test: float) -> dict[str, Any]:
    """For the ok runs of one row: ``<metric>_ci_low``/``_ci_high`` per accuracy (percent), ``ci_method``
    ("t" over seeds, "wilson" for one run), ``<metric>_seed_min``/``_seed_max`` for throughput and memory,
    and the per-seed CRA 36/255 for the groups."""
    size = int(n_test) if pd.notna(n_test) and n_test > 0 else None
    columns: dict[str, Any] = {"ci_method": ""}
    for key in ACCURACIES:
        interval = accuracy_interval((ok[key].dropna() * 100.0).tolist(), size)
        columns[f"{key}_ci_low"], columns[f"{key}_ci_high"] = interval.low, interval.high
        columns["ci_method"] = columns["ci_method"] or interval.method
    for metric in METRICS:
        if metric.kind in RANGED_KINDS:
            spread = seed_range(ok[metric.key].dropna().tolist())
            columns[f"{metric.key}_seed_min"], columns[f"{metric.key}_seed_max"] = spread.low, spread.high
    seeds = ok.dropna(subset=["seed", RANKING.key])
    columns[BY_SEED] = {int(s): 100.0 * float(v) for s, v in zip(seeds["seed"], seeds[RANKING.key])}
    return columns


def add_groups(board: pd.DataFrame) -> pd.DataFrame:
    """``group`` (the rank range at CRA 36/255 within a dataset and budget, "" for a failed row) and
    ``tied_with_best``; the per-seed values leave the board."""
    board = board.assign(group="", tied_with_best=False)
    for _, rows in board.groupby(["dataset", "extra", "budget"], sort=False):
        values, sizes = rows[BY_SEED].tolist(), [None if pd.isna(n) else int(n) for n in rows["n_test"]]
        board.loc[rows.index, "group"] = group_labels(values, sizes)
        board.loc[rows.index, "tied_with_best"] = tied_with_best(values, sizes)
    return board.drop(columns=[BY_SEED])


def add_paper_columns(board: pd.DataFrame) -> pd.DataFrame:
    """The papers' numbers where a row's setting matches a references entry: ``paper``, ``paper_source``,
    ``paper_<metric>`` and ``paper_diff_<metric>`` (lipbench minus paper, in points)."""
    papers = pd.DataFrame([paper_columns(row) for _, row in board.iterrows()], index=board.index)
    return pd.concat([board, papers], axis=1)


def one_seed_rankings(board: pd.DataFrame) -> list[str]:
    """One line per dataset and budget whose ranking rests on a single seed per row."""
    lines = []
    for (dataset, _, budget), rows in board[board[RANKING.key].notna()].groupby(["dataset", "extra", "budget"],
                                                                               sort=False):
        if len(rows) >= 2 and (rows["ok_seeds"] <= 1).any():
            single = int((rows["ok_seeds"] <= 1).sum())
            lines.append(f"{dataset}, budget {budget}: the ranking rests on one seed for {single} of {len(rows)} rows; "
                         "their intervals cover only the test set, not the variation between training runs "
                         "(run with --seeds 3 for seed intervals and paired tests)")
    return lines
