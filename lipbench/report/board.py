"""Runs to the leaderboard: one row per dataset, extra data, budget, layer, size and settings; seeds as mean
and std over the runs that finished ok; ranked by CRA at 36/255 (runs with extra training data apart)."""
from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pandas as pd

from lipbench.radii import RANKING
from lipbench.registry import COMMON_SIZES
from lipbench.report.intervals import add_groups, add_paper_columns, interval_columns
from lipbench.report.metrics import FILES, METRICS, Metric
from lipbench.report.runs import GROUP

def leaderboard(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (dataset, budget, layer, size, variant), seeds as mean and std with 95% intervals; ranked by
    CRA at 36/255, with the ranked ``group`` each row could hold and the papers' numbers where they match."""
    rows = [summarize(group) for _, group in frame.groupby(GROUP, sort=False)] if len(frame) else []
    board = pd.DataFrame(rows)
    if board.empty:
        return board
    board["size_order"] = [size_position(size) for size in board["size"]]
    board = board.sort_values(["dataset", "extra", "budget_s", "budget", RANKING.key, "clean_acc", "layer", "size_order"],
                              ascending=[True, True, True, True, False, False, True, True], na_position="last")
    ranked = board[board[RANKING.key].notna()]  # runs with extra data are ranked among themselves only
    board["rank"] = (ranked.groupby(["dataset", "extra", "budget"]).cumcount() + 1).reindex(board.index).astype(float)
    board = add_paper_columns(add_groups(board))
    columns = ["rank", "group", *[c for c in board.columns if c not in ("rank", "group", "size_order")]]
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
               device=", ".join(sorted({str(d) for d in group["device_name"].dropna()})),
               extra_data=str(first.get("extra") or ""),
               n_test=ok["n_test"].max() if "n_test" in ok else np.nan,
               layer_options=first.get("layer_options"), epochs=first.get("epochs"))
    for metric in METRICS:
        scale = 100.0 if metric.kind == "percent" else 1.0
        values = ok[metric.key].dropna() * scale
        row[metric.key] = values.mean() if len(values) else np.nan
        row[f"{metric.key}_std"] = values.std() if len(values) > 1 else np.nan
    row.update(interval_columns(ok, row["n_test"]))
    return row


def size_position(size: str) -> int:
    return COMMON_SIZES.index(size) if size in COMMON_SIZES else len(COMMON_SIZES)


def method_label(row: pd.Series) -> str:
    return f"{row['layer']} ({row['variant']})" if row["variant"] else str(row["layer"])


def shown_metrics(board: pd.DataFrame, level: int = FILES) -> list[Metric]:
    """The metrics shown at ``level`` (TERMINAL, PAPER or FILES); optional ones only where some run has them."""
    return [m for m in METRICS if m.level <= level and (not m.optional or board[m.key].notna().any())]
