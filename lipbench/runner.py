"""Run planned jobs, each in a fresh process, into a results folder that survives anything.

Layout under the results folder::

    jobs/<job_id>/config.json     the job's configuration
    jobs/<job_id>/record.json     its result, written atomically (also for failures)
    jobs/<job_id>/events.jsonl    time-stamped training and evaluation points
    jobs/<job_id>/stdout.log      the job process's output
    jobs/<job_id>/model.pt        the trained weights
    sweeps/<time>-<hash>/sweep.json   what was asked for, the job ids, the environment

A job whose process dies without a record (killed, segfault) or runs past its time limit gets
a record written by the parent (``crashed`` / ``timeout``). Ctrl-C records the running job as
``interrupted`` and stops the sweep; finished records are never touched again.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from lipbench.job import CONFIG_NAME, EVENTS_NAME, now_iso
from lipbench.plan import JobConfig
from lipbench.records import RECORD_NAME, write_json_atomic

POLL_SECONDS = 0.5
FINISHED = ("ok", "nan", "oom", "error", "timeout", "crashed")


def time_limit(config: JobConfig) -> float:
    """Wall-clock seconds after which a job is killed: the budget plus room for loading and certifying."""
    return config.budget_s * 1.25 + 600


def job_dir(out: Path, config: JobConfig) -> Path:
    return out / "jobs" / config.job_id


def existing_status(out: Path, config: JobConfig) -> str | None:
    """The status of this job's record in ``out``, None if it has none (or an unreadable one)."""
    try:
        return json.loads((job_dir(out, config) / RECORD_NAME).read_text()).get("status")
    except (OSError, ValueError, AttributeError):
        return None


def write_sweep(out: Path, jobs: list[JobConfig], request: dict[str, Any], environment: dict[str, Any]) -> Path:
    ids = [job.job_id for job in jobs]
    digest = hashlib.sha256(" ".join(ids).encode()).hexdigest()[:8]
    folder = out / "sweeps" / f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-{digest}"
    write_json_atomic(folder / "sweep.json", {"request": request, "job_ids": ids, "environment": environment})
    return folder


class EventTail:
    """Reads the events a running job appends, line by line."""

    def __init__(self, path: Path):
        self.path, self.offset = path, 0

    def read(self) -> list[dict[str, Any]]:
        try:
            with open(self.path) as stream:
                stream.seek(self.offset)
                text = stream.read()
        except OSError:
            return []
        complete, _, _ = text.rpartition("\n")
        self.offset += len(complete) + (1 if complete else 0)
        events = []
        for line in complete.splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
        return events


def run_one(out: Path, config: JobConfig, on_event: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Run ``config`` in a child process; returns its record (written by the child or, failing that, here)."""
    folder = job_dir(out, config)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / RECORD_NAME).unlink(missing_ok=True)
    (folder / EVENTS_NAME).unlink(missing_ok=True)
    write_json_atomic(folder / CONFIG_NAME, vars(config))
    tail = EventTail(folder / EVENTS_NAME)
    started = time.monotonic()
    with open(folder / "stdout.log", "w") as log:
        child = subprocess.Popen([sys.executable, "-m", "lipbench.job", str(folder)], stdout=log,
                                 stderr=subprocess.STDOUT, start_new_session=True)
        status = None
        try:
            while child.poll() is None:
                for event in tail.read():
                    on_event(event)
                if time.monotonic() - started > time_limit(config):
                    stop(child)
                    status = "timeout"
                time.sleep(POLL_SECONDS)
        except KeyboardInterrupt:
            stop(child)
            status = "interrupted"
            raise
        finally:
            for event in tail.read():
                on_event(event)
            record = read_or_write_failure(folder, config, status, child.returncode)
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


def read_or_write_failure(folder: Path, config: JobConfig, status: str | None, returncode: int | None) -> dict[str, Any]:
    path = folder / RECORD_NAME
    if status is None:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            status = "crashed"
    reasons = {"timeout": f"killed after the time limit of {time_limit(config):.0f} s",
               "interrupted": "interrupted by the user (Ctrl-C)",
               "crashed": f"the job process ended with code {returncode} and left no record; see stdout.log"}
    record = {**vars(config), "job_id": config.job_id, "status": status, "error": reasons[status],
              "finished_at": now_iso()}
    write_json_atomic(path, record)
    return record
