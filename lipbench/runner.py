"""Run planned jobs, each in a fresh process, into a results folder that survives anything.

Layout under the results folder::

    jobs/<job_id>/config.json     the job's configuration
    jobs/<job_id>/record.json     its result, written atomically (also for failures)
    jobs/<job_id>/events.jsonl    time-stamped training and evaluation points
    jobs/<job_id>/stdout.log      the job process's output
    jobs/<job_id>/model.pt        the trained weights (checkpoint.pt while training)
    sweeps/<time>-<hash>/sweep.json   what was asked for, the job ids, the environment
    calibration.json              measured seconds per training step, per layer/size/dataset/batch/device

A job whose process dies without a record (killed, segfault) or runs past its time limit gets
a record written by the parent (``crashed`` / ``timeout``). Ctrl-C records the running job as
``interrupted`` and stops the sweep; finished records are never touched again. A job that
diverged (``nan``) may be retried with another seed, one out of memory (``oom``) at half the
batch; the retry is a new job that names the one it retries.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Protocol

from lipbench.job import CONFIG_NAME, EVENTS_NAME, LOCKED_EXIT, lock_is_live, now_iso
from lipbench.plan import JobConfig
from lipbench.records import RECORD_NAME, write_json_atomic

POLL_SECONDS = 0.5
FINISHED = ("ok", "nan", "oom", "error", "timeout", "crashed")
CALIBRATION_NAME = "calibration.json"
RUNNING_ELSEWHERE = "running-elsewhere"


@dataclass(frozen=True)
class RetryPolicy:
    nan_retries: int = 1  # re-run a diverged job with another seed
    oom_retries: int = 1  # re-run an out-of-memory job at half the batch size


class Observer(Protocol):
    def started(self, job: JobConfig, number: int, total: int) -> None: ...
    def event(self, job: JobConfig, event: dict[str, Any]) -> None: ...
    def finished(self, job: JobConfig, record: dict[str, Any]) -> None: ...


def retry_for(job: JobConfig, record: dict[str, Any], policy: RetryPolicy, attempt: int) -> JobConfig | None:
    """The job to run next after ``record``, if the policy retries its failure."""
    origin = job.retry_of or job.job_id
    if record["status"] == "nan" and attempt < policy.nan_retries:
        return replace(job, seed=job.seed + 1000, retry_of=origin)
    if record["status"] == "oom" and attempt < policy.oom_retries and job.batch_size > 1:
        return replace(job, batch_size=job.batch_size // 2, retry_of=origin)
    return None


def run_jobs(out: Path, jobs: list[JobConfig], observer: Observer, policy: RetryPolicy = RetryPolicy()
             ) -> list[dict[str, Any]]:
    """Run ``jobs`` one after another (each in its own process), with retries; returns the final records."""
    records = []
    for number, job in enumerate(jobs, 1):
        attempt = 0
        while True:
            observer.started(job, number, len(jobs))
            record = run_one(out, job, lambda event, job=job: observer.event(job, event))
            observer.finished(job, record)
            remember_calibration(out, job, record)
            follow = retry_for(job, record, policy, attempt)
            if follow is None:
                break
            job, attempt = follow, attempt + 1
        records.append(record)
    return records


def calibration_key(job: JobConfig, device_name: str) -> str:
    return f"{job.layer}|{job.size}|{job.dataset}|{job.batch_size}|{job.precision}|{device_name}"


def remember_calibration(out: Path, job: JobConfig, record: dict[str, Any]) -> None:
    """Cache the job's measured step time for planning (dry runs); read-modify-write under a file lock."""
    step, per_epoch = record.get("step_seconds"), record.get("steps_per_epoch")
    device = (record.get("environment") or {}).get("device_name")
    if not (step and per_epoch and device):
        return
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".calibration.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        table = read_calibration(out)
        table[calibration_key(job, device)] = {"step_seconds": step, "steps_per_epoch": per_epoch}
        write_json_atomic(out / CALIBRATION_NAME, table)


def read_calibration(out: Path) -> dict[str, Any]:
    try:
        return json.loads((out / CALIBRATION_NAME).read_text())
    except (OSError, ValueError):
        return {}


def time_limit(config: JobConfig) -> float:
    """Wall-clock seconds after which a job is killed: the budget plus room for loading and certifying."""
    return config.budget_s * 1.25 + 600


def job_dir(out: Path, config: JobConfig) -> Path:
    return out / "jobs" / config.job_id


def existing_record(out: Path, config: JobConfig) -> dict[str, Any] | None:
    """This job's record in ``out``; None if it has none (or an unreadable one)."""
    try:
        record = json.loads((job_dir(out, config) / RECORD_NAME).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def existing_status(out: Path, config: JobConfig) -> str | None:
    return (existing_record(out, config) or {}).get("status")


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


def run_one(out: Path, config: JobConfig, on_event: Callable[[dict[str, Any]], None],
            env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``config`` in a child process; returns its record (written by the child or, failing that, here).

    ``env``: variables set for the child on top of this process's environment (e.g. ``CUDA_VISIBLE_DEVICES``).
    """
    folder = job_dir(out, config)
    if lock_is_live(folder):
        return {**vars(config), "job_id": config.job_id, "status": RUNNING_ELSEWHERE}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / RECORD_NAME).unlink(missing_ok=True)
    (folder / EVENTS_NAME).unlink(missing_ok=True)
    write_json_atomic(folder / CONFIG_NAME, vars(config))
    tail = EventTail(folder / EVENTS_NAME)
    started = time.monotonic()
    with open(folder / "stdout.log", "w") as log:
        child = subprocess.Popen([sys.executable, "-m", "lipbench.job", str(folder)], stdout=log,
                                 stderr=subprocess.STDOUT, start_new_session=True,
                                 env={**os.environ, **env} if env else None)
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
            if child.returncode != LOCKED_EXIT:
                record = read_or_write_failure(folder, config, status, child.returncode)
    if child.returncode == LOCKED_EXIT:  # another sweep started the same job a moment before us
        return {**vars(config), "job_id": config.job_id, "status": RUNNING_ELSEWHERE}
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
