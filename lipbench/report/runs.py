"""Records to runs: one flat row per record (audits and environment folded in), duplicates dropped,
and the settings that tell runs of one layer and size apart."""
from __future__ import annotations

import json
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from lipbench.jobfolder import read_records
from lipbench.radii import RADII
from lipbench.recipes import DEFAULT_RECIPE, load_recipe, recipe_names
from lipbench.report.metrics import NUMERIC
from lipbench.settings import JobConfig

KEYS = {radius.key for radius in RADII}

GROUP = ["dataset", "extra", "budget", "layer", "size", "variant"]


NOT_SETTINGS = {"layer", "size", "dataset", "budget", "seed", "device", "data_dir", "save_model", "plugins", "retry_of",
                "extra_data", "extra_ratio"}  # extra data has its own column and its own tables


SETTINGS = tuple(f.name for f in fields(JobConfig) if f.name not in NOT_SETTINGS) + ("device_name",)


JOB_DEFAULTS = {f.name: f.default for f in fields(JobConfig) if f.default is not MISSING}


ALWAYS_LABELLED = {"holdout"}  # accuracy on a held-out part of the training set is no test accuracy


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
    row["extra"] = row["extra_data"] = extra_label(record)  # "" for none; absent in older records
    return row


def extra_label(record: dict[str, Any]) -> str:
    """The extra training data of a run, as shown (its file, checksum and share of each batch); '' without."""
    if not record.get("extra_data"):
        return ""
    name = record.get("extra_file") or Path(str(record["extra_data"])).name
    checksum = str(record.get("extra_sha256") or "")[:8]
    return f"{name}{f' {checksum}' if checksum else ''} at {float(record.get('extra_ratio') or 0):.0%}"


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
        if f"cra_{radius}" in KEYS and value is not None:
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
        implied = recipe_settings({s.get("recipe") or DEFAULT_RECIPE for s in settings.values()})
        differing = [key for key in SETTINGS if key not in implied and len({str(s.get(key)) for s in settings.values()}) > 1]
        for index, values in settings.items():
            labelled = [key for key in SETTINGS if key in differing or (key in ALWAYS_LABELLED and values.get(key))
                        or (key == "recipe" and values.get(key, DEFAULT_RECIPE) != DEFAULT_RECIPE)]
            labels[index] = ", ".join(setting_text(key, values.get(key)) for key in labelled)
    return labels.tolist()


def recipe_settings(names: set[str]) -> set[str]:
    """The settings the recipes ``names`` set (a row is labelled by its recipe's name, not by each of them);
    a recipe file not shipped with this lipbench implies nothing."""
    keys: set[str] = set()
    for name in names:
        if name in recipe_names():
            keys |= set(load_recipe(name).settings)
    return keys


def setting_text(key: str, value: Any) -> str:
    """``key=value``; layer options as their own ``name=value`` pairs (``sketch_dim=8``), or ``default options``."""
    if key != "layer_options":
        return f"{key}={value}"
    options = json.loads(value) if isinstance(value, str) else value or {}
    return ", ".join(f"{name}={option}" for name, option in options.items()) or "default options"
