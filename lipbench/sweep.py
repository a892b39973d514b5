"""Sweep: run planned jobs on an executor, retry the failures the policy retries, remember step times.

:func:`run_sweep` is the one driver every command uses (``run``, ``tune``): it hands a wave of jobs to
an executor (:mod:`lipbench.executors`: child processes here, or SLURM), then runs the retries the
policy asks for (another seed after a NaN, half the batch after an out-of-memory error) as a further
wave, until none is left. A retry is a new job that names the one it retries. Records are written
by the job processes and, for failures they could not record, by the executors; this module only
reads them. A results folder that cannot be written stops the sweep with a :class:`WriteError`
(one line); the jobs finished before it keep their records, and running the sweep again resumes it.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import threading
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from lipbench.jobfolder import Status, WriteError, make_folder, write_json_atomic
from lipbench.settings import JobConfig

CALIBRATION_NAME = "calibration.json"
RUNNING_ELSEWHERE = "running-elsewhere"  # not a record status: another process holds the job's lock


@dataclass(frozen=True)
class RetryPolicy:
    nan_retries: int = 1  # re-run a diverged job with another seed
    oom_retries: int = 1  # re-run an out-of-memory job at half the batch size


class Observer(Protocol):
    def started(self, job: JobConfig, number: int, total: int) -> None: ...
    def event(self, job: JobConfig, event: dict[str, Any]) -> None: ...
    def finished(self, job: JobConfig, record: dict[str, Any]) -> None: ...


class Executor(Protocol):
    def run(self, out: Path, jobs: list[JobConfig], watch: "Watch") -> list[dict[str, Any]]:
        """Run ``jobs`` into ``out``; their records, in order."""


def retry_for(job: JobConfig, record: dict[str, Any], policy: RetryPolicy, attempt: int) -> JobConfig | None:
    """The job to run next after ``record``, if the policy retries its failure."""
    origin = job.retry_of or job.job_id
    if record["status"] == Status.NAN.value and attempt < policy.nan_retries:
        return replace(job, seed=job.seed + 1000, retry_of=origin)
    if record["status"] == Status.OOM.value and attempt < policy.oom_retries and job.batch_size > 1:
        return replace(job, batch_size=job.batch_size // 2, retry_of=origin)
    return None


class Watch:
    """What the executors report as jobs start, progress and finish, passed on to the sweep's observer:
    numbered as in the sweep, one call at a time (workers are threads), each finished job's measured
    step time remembered for planning."""

    def __init__(self, out: Path, jobs: list[JobConfig], observer: Observer):
        self.out, self.observer, self.total = out, observer, len(jobs)
        self.numbers = {job.job_id: number for number, job in enumerate(jobs, 1)}
        self.lock = threading.Lock()

    def started(self, job: JobConfig) -> None:
        number = self.numbers.get(job.job_id) or self.numbers.get(job.retry_of or "", 0)
        with self.lock:
            self.observer.started(job, number, self.total)

    def event(self, job: JobConfig, event: dict[str, Any]) -> None:
        with self.lock:
            self.observer.event(job, event)

    def finished(self, job: JobConfig, record: dict[str, Any]) -> None:
        with self.lock:
            remember_calibration(self.out, job, record)
            self.observer.finished(job, record)


def run_sweep(out: Path, jobs: list[JobConfig], executor: Executor, observer: Observer,
              policy: RetryPolicy = RetryPolicy()) -> list[dict[str, Any]]:
    """Run ``jobs`` on ``executor``, then the retries ``policy`` asks for, wave after wave; the final records."""
    watch = Watch(out, jobs, observer)
    final: dict[str, dict[str, Any]] = {}
    wave, attempt = list(jobs), 0
    while wave:
        retries = []
        for job, record in zip(wave, executor.run(out, wave, watch)):
            follow = retry_for(job, record, policy, attempt)
            if follow is None:
                final[job.retry_of or job.job_id] = record
            else:
                retries.append(follow)
        wave, attempt = retries, attempt + 1
    return [final[job.job_id] for job in jobs]


# --- what a sweep leaves beside its jobs ----------------------------------------------------------


def calibration_key(job: JobConfig, device_name: str) -> str:
    return f"{job.layer}|{job.size}|{job.dataset}|{job.batch_size}|{job.precision}|{device_name}"


def remember_calibration(out: Path, job: JobConfig, record: dict[str, Any]) -> None:
    """Cache the job's measured step time for planning (dry runs); read-modify-write under a file lock.
    A folder that cannot take it loses only the estimate."""
    step, per_epoch = record.get("step_seconds"), record.get("steps_per_epoch")
    device = (record.get("environment") or {}).get("device_name")
    if not (step and per_epoch and device):
        return
    try:
        with open(make_folder(out) / ".calibration.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            table = read_calibration(out)
            table[calibration_key(job, device)] = {"step_seconds": step, "steps_per_epoch": per_epoch}
            write_json_atomic(out / CALIBRATION_NAME, table)
    except (OSError, WriteError):
        return


def read_calibration(out: Path) -> dict[str, Any]:
    try:
        table = json.loads((out / CALIBRATION_NAME).read_text())
    except (OSError, ValueError):
        return {}
    return table if isinstance(table, dict) else {}


def write_sweep(out: Path, jobs: list[JobConfig], request: dict[str, Any], environment: dict[str, Any]) -> Path:
    """``sweeps/<time>-<hash>/sweep.json``: what was asked for, the job ids, the environment."""
    ids = [job.job_id for job in jobs]
    digest = hashlib.sha256(" ".join(ids).encode()).hexdigest()[:8]
    folder = out / "sweeps" / f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-{digest}"
    write_json_atomic(folder / "sweep.json", {"request": request, "job_ids": ids, "environment": environment})
    return folder
