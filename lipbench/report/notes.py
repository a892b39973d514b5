"""What a reader must know to read a leaderboard right: alerts (certificates that did not hold), notes
(claimed bounds, undertrained rows), how to read each column, and where the runs were measured."""
from __future__ import annotations

import numpy as np
import pandas as pd

from lipbench import references, stats
from lipbench.report.cells import Cell, format_number
from lipbench.report.intervals import one_seed_rankings

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
    return claimed_bounds(board) + undertrained(board) + one_seed_rankings(board)


def value_range(values: pd.Series) -> str:
    low, high = format_number("bound", values.min()), format_number("bound", values.max())
    return low if low == high else f"{low} to {high}"


HOW_TO_READ = [
    ("Rows", "one per dataset, budget, layer and size; seeds are averaged over the runs that finished ok and shown "
             "as the mean with its interval (the files also hold the sample std). Failed runs stay in as rows with their "
             "status (e.g. \"1 ok, 1 nan\"). Rows are ordered by CRA at 36/255 within a dataset and budget and the "
             "# column shows their group (below); bold marks the best value of a column, and at CRA 36/255 every "
             "row tied with the best. Device and extra data are columns where they differ within a table, else "
             "the table's caption says them."),
    ("CRA", "certified robust accuracy at radius ε (L2): a test image counts when it is classified correctly with a "
            "margin above √2·L·ε, where L is the network's sound Lipschitz bound (never a claimed or estimated "
            "one). Where an audit re-checked a run, the audit's sound CRA is used."),
    ("Settings", "where runs of one layer and size differ in a training setting or the device, each setting is its "
                 "own row, labelled by what differs; runs evaluated on a held-out part of the training set "
                 "(holdout) are always labelled."),
    ("Throughput", "training images per second over the synchronized wall time of whole training steps (drawing "
                   "and augmenting the batch included), after the first step (allocation, warm-up); inference images "
                   "per second in eval mode over the full batches after the first, which builds the weight caches "
                   "(its time is recorded apart as cache_seconds)."),
    ("Memory", "the device's own counter: on GPUs the CUDA allocator's peak during training above what was allocated "
               "when training began, so the dataset on the device is not counted (it is recorded apart, "
               "dataset_memory_mb); on CPUs the growth of the process's peak resident memory (RSS) over training. "
               "The inference peak is measured after the gradients are freed. GPU and CPU figures are not "
               "comparable."),
    ("s/epoch", "compute seconds per epoch: images per epoch divided by the training throughput."),
    ("Budget", "wall-clock training time on the device that ran the job; accuracies are after that much training."),
    ("Bounds", "\"L claimed\" is what a method's own certificate states, \"L sound\" the sound bound the CRA uses; "
               "an audit recomputes the sound bound and a lower bound, and a violation means the run's certificate "
               "did not hold."),
]


def how_to_read(runs: pd.DataFrame) -> list[tuple[str, str]]:
    """The explanations, with the memory counters these runs used."""
    counters = ", ".join(sorted({str(c) for c in runs["memory_counter"].dropna()})) or "none recorded"
    return [(term, f"{text} Counters in this report: {counters}." if term == "Memory" else text)
            for term, text in [*HOW_TO_READ, *stats.READING, *references.READING]]


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
