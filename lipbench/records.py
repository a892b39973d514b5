"""Result records: written atomically, read defensively.

A record is one JSON file per job. It is written to a temporary file in the same folder,
flushed to disk and renamed over the target, so a crash, a Ctrl-C or ``kill -9`` leaves either
the old file or the new one, never half of one. Readers skip (and report) corrupt files.
"""
from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Iterable

import torch

RECORD_NAME = "record.json"
STATUSES = ("ok", "nan", "oom", "timeout", "error", "crashed", "interrupted")


def write_json_atomic(path: Path, document: Any) -> None:
    """Write ``document`` as JSON to ``path`` atomically (temp file + fsync + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(document, indent=2, sort_keys=True, default=_jsonable)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as stream:
        stream.write(text)
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(stream.name, path)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (set, tuple)):
        return list(value)
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"cannot record {type(value).__name__}")


def clean_numbers(record: dict[str, Any]) -> dict[str, Any]:
    """NaN and infinity are not JSON: record them as None (shown as '-' in reports)."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}


def read_records(folders: Iterable[Path]) -> tuple[list[dict[str, Any]], list[str]]:
    """All records under ``folders`` (recursively), and one problem line per unreadable file."""
    records, problems = [], []
    for folder in folders:
        for path in sorted(Path(folder).rglob(RECORD_NAME)):
            try:
                record = json.loads(path.read_text())
                if not isinstance(record, dict) or "status" not in record:
                    raise ValueError("not a lipbench record")
            except (OSError, ValueError) as error:
                problems.append(f"skipped {path}: {error}")
                continue
            record["record_path"] = str(path)
            records.append(record)
    return records, problems


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str | None:
    """The commit of the lipbench source tree, when it is a git checkout."""
    source = Path(__file__).resolve().parent
    try:
        result = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None


def environment(device: torch.device) -> dict[str, Any]:
    """Where a result was measured: versions, commit, device."""
    from lipbench import __version__

    return {
        "lipbench_version": __version__,
        "git_commit": git_commit(),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "device": device.type,
        "device_name": device_name(device),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
