"""One job in a child process (``python -m lipbench.job``), watched until it ends, and always recorded.

The child writes its own record. When it cannot (it crashed, was killed, ran past its time limit,
or Ctrl-C stopped it), the record is written here, with the status saying why; a record the child
left from an earlier attempt is never mistaken for this one's (each attempt carries a token).
A finished record is never lost: before a failure record replaces it, it is kept in ``earlier/``.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Callable

from lipbench.jobfolder import (ATTEMPT_VARIABLE, DONE_EXIT, EVENTS_NAME, FINISHED, LOCKED_EXIT, LOG_NAME,
                                REPLACE_VARIABLE, WRITE_FAILED_EXIT, Status, WriteError, failure_record,
                                keep_earlier_record, lock_is_live, make_folder, read_record, time_limit, why,
                                write_config, write_record)
from lipbench.settings import JobConfig
from lipbench.sweep import RUNNING_ELSEWHERE

POLL_SECONDS = 0.5
GRACE_S = 60  # the child stops itself at its time limit; the parent stops it this much later


class EventTail:
    """Reads the events a running job appends, line by line, from where the file ended when it started."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = path.stat().st_size if path.exists() else 0

    def read(self) -> list[dict[str, Any]]:
        try:
            with open(self.path) as stream:
                stream.seek(self.offset)
                text = stream.read()
        except OSError:
            return []
        complete, _, _ = text.rpartition("\n")
        self.offset += len(complete.encode()) + (1 if complete else 0)
        events = []
        for line in complete.splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
        return events


def running_elsewhere(config: JobConfig) -> dict[str, Any]:
    return {**vars(config), "job_id": config.job_id, "status": RUNNING_ELSEWHERE}


def run_one(out: Path, config: JobConfig, on_event: Callable[[dict[str, Any]], None],
            env: dict[str, str] | None = None, replace: bool = False) -> dict[str, Any]:
    """Run ``config`` in a child process; returns its record (written by the child or, failing that, here).

    ``env``: variables set for the child on top of this process's environment (e.g. ``CUDA_VISIBLE_DEVICES``).
    ``replace``: run it even when it has a finished record (``--force``); that record is kept in ``earlier/``.
    """
    folder = make_folder(out / "jobs" / config.job_id)
    if lock_is_live(folder):
        return running_elsewhere(config)
    existing = read_record(folder)
    if existing is not None and existing.get("status") in FINISHED and not replace:
        return existing  # another sweep finished it after this one was planned
    write_config(folder, config)
    attempt = uuid.uuid4().hex
    child_env = {**os.environ, **(env or {}), ATTEMPT_VARIABLE: attempt, REPLACE_VARIABLE: "1" if replace else "0"}
    command = [sys.executable, "-m", "lipbench.job", str(folder), *(f"--plugin={p}" for p in config.plugins)]
    tail = EventTail(folder / EVENTS_NAME)
    started = time.monotonic()
    try:
        log = open(folder / LOG_NAME, "a")
    except OSError as error:
        raise WriteError(f"cannot write {folder / LOG_NAME}: {why(error)}") from None
    with log:
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=child_env)
        status = None
        try:
            while child.poll() is None:
                for event in tail.read():
                    on_event(event)
                if time.monotonic() - started > time_limit(config) + GRACE_S:
                    stop(child)
                    status = Status.TIMEOUT
                time.sleep(POLL_SECONDS)
        except KeyboardInterrupt:
            stop(child)
            record_failure(folder, config, Status.INTERRUPTED, attempt, child.returncode)
            raise
        finally:
            for event in tail.read():
                on_event(event)
    if child.returncode == LOCKED_EXIT:  # another sweep started the same job a moment before us
        return running_elsewhere(config)
    record = read_record(folder)
    if child.returncode == DONE_EXIT and record is not None:
        return record
    if record is not None and record.get("attempt") == attempt and status is None:
        return record
    if child.returncode == WRITE_FAILED_EXIT:
        status = Status.CRASHED
    return record_failure(folder, config, status or Status.CRASHED, attempt, child.returncode)


def record_failure(folder: Path, config: JobConfig, status: Status, attempt: str,
                   returncode: int | None) -> dict[str, Any]:
    """The record of an attempt that left none of its own; a finished record of an earlier attempt is
    kept in ``earlier/`` first. Raises WriteError when the folder cannot take it."""
    reasons = {Status.TIMEOUT: f"killed after the time limit of {time_limit(config) + GRACE_S:.0f} s",
               Status.INTERRUPTED: "interrupted by the user (Ctrl-C); run the sweep again to resume it",
               Status.CRASHED: f"the job process ended with code {returncode} and left no record; "
                               f"see {LOG_NAME}"}
    current = read_record(folder)
    if current is not None and current.get("attempt") == attempt and current.get("status") in FINISHED:
        return current  # the job recorded itself after all (its own timeout record)
    if current is not None and current.get("status") in FINISHED:
        keep_earlier_record(folder)
    record = failure_record(config, status, reasons[status], attempt=attempt)
    write_record(folder, record)
    return record


def stop(child: subprocess.Popen) -> None:
    """Stop the job's whole process group: SIGTERM, then SIGKILL."""
    try:
        os.killpg(child.pid, signal.SIGTERM)
        child.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
    except ProcessLookupError:
        pass
