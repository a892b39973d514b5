"""The results folder on disk: every file a job leaves, how it is written, and how it is read back.

Layout under a results folder ``OUT``::

    jobs/<job_id>/config.json         the job's configuration (plain JSON, never code)
    jobs/<job_id>/record.json         its result, written atomically, also for failures
    jobs/<job_id>/events.jsonl        time-stamped training and evaluation points, appended by every attempt
    jobs/<job_id>/stdout.log          the job process's output
    jobs/<job_id>/model.pt            the trained weights (``checkpoint.pt`` while training); tensors only
    jobs/<job_id>/running.lock        "host pid" of the process running the job now
    jobs/<job_id>/earlier/<time>.json a record a forced rerun replaced (nothing is ever deleted)
    sweeps/<time>-<hash>/sweep.json   what a sweep asked for, its job ids, the environment
    calibration.json                  measured seconds per training step, for planning

Writes are atomic (a temporary file in the same folder, fsync, rename), so a crash, a Ctrl-C or
``kill -9`` leaves the old file or the new one, never half of one; a failed write removes its
temporary file and raises :class:`WriteError`, one line saying what could not be written and why.
Readers never trust a file: JSON only (never pickle, never code), checked, and a corrupt file is
reported and skipped.
"""
from __future__ import annotations

import errno
import json
import math
import os
import socket
import tempfile
import time
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Any, Iterable

import torch

from lipbench.errors import UserError
from lipbench.settings import JobConfig

CONFIG_NAME, RECORD_NAME, EVENTS_NAME, LOG_NAME = "config.json", "record.json", "events.jsonl", "stdout.log"
MODEL_NAME, CHECKPOINT_NAME, LOCK_NAME, RENDEZVOUS_NAME = "model.pt", "checkpoint.pt", "running.lock", "rendezvous"
EARLIER_FOLDER = "earlier"
# How a job process (python -m lipbench.job) tells its parent what happened, besides its record.
LOCKED_EXIT = 75  # another process runs this job now
DONE_EXIT = 76  # another sweep finished this job meanwhile
WRITE_FAILED_EXIT = 74  # the record could not be written (full disk, read-only folder)
TIMEOUT_EXIT = 77  # the job's own deadline passed (it recorded a timeout)
ATTEMPT_VARIABLE = "LIPBENCH_ATTEMPT"  # a token the parent gives each attempt; the record carries it back
REPLACE_VARIABLE = "LIPBENCH_REPLACE"  # "1": run even when finished (--force); the old record goes to earlier/
THREADS_VARIABLE = "LIPBENCH_THREADS"  # the job's share of CPU threads, when a sweep runs several jobs at once
FOREIGN_LOCK_STALE_S = 1800  # a lock from another host whose job logged nothing for this long is stale


class Status(str, Enum):
    """How a job ended. Every job that was started ends as a record with one of these."""

    OK = "ok"
    NAN = "nan"  # the loss diverged
    OOM = "oom"  # out of memory
    ERROR = "error"  # any other exception in the job (its traceback is in stdout.log)
    TIMEOUT = "timeout"  # ran past its time limit (budget x 1.25 + 10 minutes)
    CRASHED = "crashed"  # the job process died without a record (segfault, kill -9)
    INTERRUPTED = "interrupted"  # Ctrl-C, or the cluster ended it: a rerun runs it again

    def __str__(self) -> str:
        return self.value


FINISHED = frozenset(status.value for status in Status if status is not Status.INTERRUPTED)  # a rerun skips these
WRITTEN_BY_JOB = frozenset({Status.OK.value, Status.NAN.value, Status.OOM.value, Status.ERROR.value,
                            Status.TIMEOUT.value})


class WriteError(UserError):
    """A file lipbench must write could not be written (read-only folder, full disk, ...)."""


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def job_folder(out: Path, job_id: str) -> Path:
    return Path(out) / "jobs" / job_id


def time_limit(config: JobConfig) -> float:
    """Wall-clock seconds after which a job is stopped: its budget plus room for loading and certifying."""
    return config.budget_s * 1.25 + 600


# --- writing -------------------------------------------------------------------------------------


def why(error: OSError) -> str:
    """An OSError in a few words a user can act on."""
    reasons = {errno.ENOSPC: "no space left on the device; free some space and run again",
               errno.EDQUOT: "the disk quota is exceeded; free some space and run again",
               errno.EROFS: "the file system is read-only; choose another folder (--out)",
               errno.EACCES: "permission denied; choose a folder you can write to (--out)",
               errno.EPERM: "permission denied; choose a folder you can write to (--out)"}
    return reasons.get(error.errno, error.strerror or str(error))


def make_folder(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise WriteError(f"cannot create {path}: {why(error)}") from None
    return path


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically; on failure remove the temporary file and raise WriteError."""
    make_folder(path.parent)
    temporary = None
    try:
        with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False,
                                         encoding="utf-8") as stream:
            temporary = stream.name
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except OSError as error:
        if temporary is not None:
            Path(temporary).unlink(missing_ok=True)
        raise WriteError(f"cannot write {path}: {why(error)}") from None


def write_json_atomic(path: Path, document: Any) -> None:
    """``document`` as JSON (NaN and infinity as null), atomically."""
    write_text_atomic(path, json.dumps(finite_or_none(document), indent=2, sort_keys=True, default=jsonable))


def jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (set, tuple, frozenset)):
        return list(value)
    if isinstance(value, Enum):
        return value.value
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"cannot record {type(value).__name__}")


def finite_or_none(value: Any) -> Any:
    """NaN and infinity are not JSON: None (shown as '-' in reports), recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: finite_or_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(item) for item in value]
    return value


def save_tensors(path: Path, state: Any) -> None:
    """``torch.save`` of tensors and plain containers, atomically (the partial file is removed on failure)."""
    make_folder(path.parent)
    partial = path.with_name(f".{path.name}.partial")
    try:
        torch.save(state, partial)
        os.replace(partial, path)
    except OSError as error:
        partial.unlink(missing_ok=True)
        raise WriteError(f"cannot write {path}: {why(error)}") from None


def load_tensors(path: Path) -> Any:
    """What :func:`save_tensors` wrote, loaded with ``weights_only=True``: tensors and plain containers,
    never code. Anything else (a corrupt or crafted file) is a UserError naming the file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, EOFError, ... for bad files
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"{path} cannot be loaded safely as tensors ({reason[:160]}); it is corrupt or was not "
                        "written by lipbench: delete it (a checkpoint: the job then trains from scratch)") from None


def write_config(folder: Path, config: JobConfig) -> None:
    write_json_atomic(folder / CONFIG_NAME, vars(config))


def write_record(folder: Path, record: dict[str, Any]) -> None:
    write_json_atomic(folder / RECORD_NAME, record)


def keep_earlier_record(folder: Path) -> None:
    """Before a forced rerun: copy the job's record to ``earlier/`` so that no result is ever lost."""
    record = read_record(folder)
    if record is not None:
        stamp = str(record.get("finished_at") or now_iso()).replace(":", "")
        write_json_atomic(folder / EARLIER_FOLDER / f"{stamp}.json", record)


def failure_record(config: JobConfig, status: Status, error: str, **fields: Any) -> dict[str, Any]:
    """The record of a job that failed before (or without) writing its own."""
    return {**vars(config), "job_id": config.job_id, "status": status.value, "error": error,
            "finished_at": now_iso(), **fields}


def write_audit(folder: Path, audit: dict[str, Any]) -> dict[str, Any]:
    """Fold an audit into the job's record (under ``audit``); returns the new record."""
    record = read_json(folder / RECORD_NAME)
    record = {**record, "audit": audit}
    write_record(folder, record)
    return record


# --- reading -------------------------------------------------------------------------------------


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``, or a UserError naming the file and what is wrong with it."""
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise UserError(f"cannot read {path}: {error}") from None
    if not isinstance(document, dict):
        raise UserError(f"{path} is not a JSON object")
    return document


def read_record(folder: Path) -> dict[str, Any] | None:
    """The job's record, or None when it has none or an unreadable one."""
    try:
        record = read_json(folder / RECORD_NAME)
    except UserError:
        return None
    return record if "status" in record else None


def read_status(folder: Path) -> str | None:
    return (read_record(folder) or {}).get("status")


def read_config(folder: Path) -> JobConfig:
    """The job's configuration, checked; a UserError names the folder and what is missing."""
    return JobConfig.from_dict(read_json(folder / CONFIG_NAME), str(folder / CONFIG_NAME))


def read_records(folders: Iterable[Path]) -> tuple[list[dict[str, Any]], list[str]]:
    """All records under ``folders`` (recursively), and one problem line per unreadable file."""
    records, problems = [], []
    for folder in folders:
        for path in sorted(Path(folder).rglob(RECORD_NAME)):
            if path.parent.name == EARLIER_FOLDER:
                continue
            try:
                record = read_json(path)
                if "status" not in record:
                    raise UserError(f"{path} is not a lipbench record (it has no status)")
            except UserError as error:
                problems.append(f"skipped {error}")
                continue
            record["record_path"] = str(path)
            records.append(record)
    return records, problems


# --- the lock: one process runs a job at a time ------------------------------------------------------


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_lock(folder: Path) -> tuple[str, int] | None:
    """(host, pid) written in the job's lock, or None; a bare pid (older locks) means this host."""
    try:
        text = (folder / LOCK_NAME).read_text().strip()
    except OSError:
        return None
    host, _, pid = text.rpartition(" ")
    return (host or socket.gethostname(), int(pid)) if pid.isdigit() and int(pid) > 0 else None


def lock_holder(folder: Path) -> int | None:
    """The pid of a live process on this host holding the job's lock, if any."""
    lock = read_lock(folder)
    return lock[1] if lock and lock[0] == socket.gethostname() and pid_alive(lock[1]) else None


def lock_is_live(folder: Path) -> bool:
    """Someone runs this job now: a live local holder, or (on a shared filesystem) a holder on another host
    whose job wrote its event log or lock within ``FOREIGN_LOCK_STALE_S`` (its pid cannot be checked from here)."""
    lock = read_lock(folder)
    if lock is None:
        return False
    if lock[0] == socket.gethostname():
        return pid_alive(lock[1])
    touched = [path.stat().st_mtime for path in (folder / LOCK_NAME, folder / EVENTS_NAME) if path.exists()]
    return bool(touched) and time.time() - max(touched) < FOREIGN_LOCK_STALE_S


def acquire_lock(folder: Path) -> bool:
    """Take the job's lock ("host pid"), replacing a stale one; False if a live process holds it."""
    path = folder / LOCK_NAME
    for _ in range(2):
        try:
            descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            if lock_is_live(folder):
                return False
            path.unlink(missing_ok=True)  # stale: its process is gone (crash, kill -9)
            continue
        except OSError as error:
            raise WriteError(f"cannot create {path}: {why(error)}") from None
        with os.fdopen(descriptor, "w") as stream:
            stream.write(f"{socket.gethostname()} {os.getpid()}")
        return True
    return False


def release_lock(folder: Path) -> None:
    (folder / LOCK_NAME).unlink(missing_ok=True)
