"""Jobs submitted through submitit: on SLURM one job array per wave, at most ``max_parallel`` of it
running (``slurm_array_parallelism``); ``cluster: local`` or ``debug`` runs the same path on this
machine through submitit's own executors. On the node each job runs :func:`run_one` exactly as it
would locally (:class:`ClusterJob`). A preempted or timed-out job is requeued by submitit and resumes
from its training checkpoint.
"""
from __future__ import annotations

import math
import os
import signal
import time
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterator

import yaml

from lipbench.distributed import NPROC_VARIABLE
from lipbench.errors import UserError
from lipbench.executors.process import EventTail, run_one
from lipbench.jobfolder import (EVENTS_NAME, WRITTEN_BY_JOB, Status, failure_record, job_folder, lock_holder,
                                read_record, release_lock, time_limit, write_record)
from lipbench.settings import JobConfig
from lipbench.sweep import Watch

SUBMITIT_FOLDER = "slurm"  # OUT/slurm/<job id>/: submitit's pickles and logs
POLL_SECONDS = 0.5
DEFAULT_ARRAY_PARALLELISM = 256  # submitit's default


@dataclass(frozen=True)
class SlurmSettings:
    """Where and how submitted jobs run: ``--slurm-config FILE`` (YAML), overridden by ``--slurm key=value``."""

    cluster: str = "slurm"  # or "local" / "debug": submitit's executors on this machine (trying a setup, tests)
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    gpus_per_job: int | None = None  # default: --nproc
    cpus_per_job: int | None = None  # default: the cluster's
    mem_gb: float | None = None  # default: the cluster's
    time_margin_min: int = 10  # asked for beyond the job's own limit (budget x 1.25 + 10 min)
    max_requeues: int = 3  # times a job may time out and be requeued (preemptions do not count)
    setup: tuple[str, ...] = ()  # shell lines before the job, e.g. "source ~/venv/bin/activate"
    sbatch: dict[str, Any] = field(default_factory=dict)  # any other sbatch option, e.g. {"exclude": "node7"}

    def executor_parameters(self, minutes: int, nproc: int, max_parallel: int) -> dict[str, Any]:
        """submitit.AutoExecutor parameters (None: not set, the cluster's default)."""
        return dict(name="lipbench", timeout_min=minutes, nodes=1, tasks_per_node=1,
                    gpus_per_node=nproc if self.gpus_per_job is None else self.gpus_per_job,
                    cpus_per_task=self.cpus_per_job, mem_gb=self.mem_gb, slurm_partition=self.partition,
                    slurm_account=self.account, slurm_qos=self.qos, slurm_constraint=self.constraint,
                    slurm_array_parallelism=max_parallel, slurm_setup=list(self.setup) or None,
                    slurm_additional_parameters=dict(self.sbatch) or None)


def load_slurm_settings(path: Path | None, overrides: dict[str, Any]) -> SlurmSettings:
    """Settings from a YAML file of ``key: value`` lines, then ``overrides``; a clear error for unknown keys."""
    values: dict[str, Any] = {}
    if path is not None:
        try:
            values = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as error:
            raise UserError(f"cannot read --slurm-config {path}: {error.strerror}") from None
        except yaml.YAMLError as error:
            raise UserError(f"--slurm-config {path} is not valid YAML: {str(error).splitlines()[0]}") from None
        if not isinstance(values, dict):
            raise UserError(f"--slurm-config {path} must be a mapping of settings (key: value lines)")
    values = {**values, **overrides}
    known = [f.name for f in fields(SlurmSettings)]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise UserError(f"unknown SLURM setting {', '.join(map(repr, unknown))}; known: {', '.join(known)}")
    if values.get("cluster", "slurm") not in ("slurm", "local", "debug"):
        raise UserError(f"SLURM setting cluster must be slurm, local or debug, not {values['cluster']!r}")
    values["setup"] = tuple(values.get("setup") or ())
    return SlurmSettings(**values)


def require_submitit() -> Any:
    try:
        import submitit
    except ImportError:
        raise UserError("--executor slurm needs submitit: pip install 'lipbench[slurm]'") from None
    return submitit


@contextmanager
def ignored_by_children(signum: int) -> Iterator[None]:
    """Ignore ``signum`` while the block runs, here and in the processes started meanwhile (an ignored
    signal stays ignored across exec). SLURM sends a preempted job SIGTERM, then the signal on which
    submitit checkpoints and requeues it; the training process must live until then, not die first
    and leave a ``crashed`` record behind."""
    previous = signal.signal(signum, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signum, previous)


def parent_of(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])
    except (OSError, ValueError, IndexError):
        return None


@dataclass(frozen=True)
class ClusterJob:
    """One job as submitit runs it on its node: ``run_one`` in a child process, as locally.

    Preempted or out of time, submitit calls :meth:`checkpoint`: the training process stops and the
    job is requeued; its next run resumes from ``JOB_DIR/checkpoint.pt``.
    """

    out: Path
    config: JobConfig
    nproc: int = 1
    replace: bool = False

    def __call__(self) -> dict[str, Any]:
        env = {NPROC_VARIABLE: str(self.nproc)} if self.nproc > 1 else None
        with ignored_by_children(signal.SIGTERM):
            return run_one(self.out, self.config, lambda event: None, env, self.replace)

    def checkpoint(self) -> Any:
        """Stop the training process (our child; SIGKILL, it ignores SIGTERM) and free its lock for the rerun."""
        from submitit.helpers import DelayedSubmission

        folder = job_folder(self.out, self.config.job_id)
        pid = lock_holder(folder)
        if pid is not None and parent_of(pid) == os.getpid():
            with suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)  # the job leads its own process group (replicas included)
            release_lock(folder)
        return DelayedSubmission(self)


def cluster_record(out: Path, job: JobConfig, handle: Any) -> dict[str, Any]:
    """What a submitted job left: the record its run returned; or, when the cluster ended it early
    (cancelled, killed, its node lost, out of requeues), an ``interrupted`` record, which a rerun resumes."""
    try:
        return handle.result()
    except Exception as error:  # submitit's UncompletedJobError or FailedJobError
        folder = job_folder(out, job.job_id)
        record = read_record(folder)
        if record is not None and record.get("status") in WRITTEN_BY_JOB:
            return record
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        record = failure_record(job, Status.INTERRUPTED, f"cluster job {handle.job_id} ended first ({reason}); "
                                "run the sweep again to resume it")
        write_record(folder, record)
        return record


@dataclass
class Submitted:
    """A submitted job, followed through the events its run appends to the results folder."""

    job: JobConfig
    handle: Any
    tail: EventTail
    started: bool = False

    def poll(self, out: Path, watch: Watch) -> dict[str, Any] | None:
        """Pass on the job's new events; its record once it is over, else None."""
        done = self.handle.done()
        events = self.tail.read()
        if (events or done) and not self.started:
            watch.started(self.job)
            self.started = True
        for event in events:
            watch.event(self.job, event)
        if not done:
            return None
        record = cluster_record(out, self.job, self.handle)
        watch.finished(self.job, record)
        return record


class SubmititExecutor:
    """Jobs submitted through submitit: on SLURM one job array per wave with at most ``max_parallel``
    running at once; on submitit's local and debug executors, at most ``max_parallel`` submitted at once."""

    def __init__(self, settings: SlurmSettings, max_parallel: int, nproc: int = 1,
                 announce: Callable[[str], None] = print, replace: bool = False):
        self.submitit = require_submitit()
        self.settings, self.max_parallel, self.nproc, self.announce = settings, max_parallel, nproc, announce
        self.replace = replace

    def submit(self, out: Path, jobs: list[JobConfig]) -> list[Any]:
        """Submit ``jobs`` as one array, with the time limit of the longest plus the margin."""
        out = out.resolve()  # the node's working directory may differ
        minutes = math.ceil(max(map(time_limit, jobs)) / 60) + self.settings.time_margin_min
        executor = self.submitit.AutoExecutor(folder=out / SUBMITIT_FOLDER / "%j", cluster=self.settings.cluster,
                                              slurm_max_num_timeout=self.settings.max_requeues,
                                              local_max_num_timeout=self.settings.max_requeues)
        executor.update_parameters(**self.settings.executor_parameters(minutes, self.nproc, self.max_parallel))
        handles = executor.submit_array([ClusterJob(out, job, self.nproc, self.replace) for job in jobs])
        self.announce(f"submitted {len(jobs)} job(s) to {self.settings.cluster} ({handles[0].job_id.split('_')[0]}"
                      f"{'...' if len(handles) > 1 else ''}), {minutes} min each; logs in {out / SUBMITIT_FOLDER}")
        return handles

    def run(self, out: Path, jobs: list[JobConfig], watch: Watch) -> list[dict[str, Any]]:
        window = len(jobs) if self.settings.cluster == "slurm" else self.max_parallel
        records: list[dict[str, Any]] = [{} for _ in jobs]
        queued, running = list(enumerate(jobs)), {}
        try:
            while queued or running:
                room = window - len(running)
                if room > 0 and queued:
                    batch, queued = queued[:room], queued[room:]
                    handles = self.submit(out, [job for _, job in batch])
                    for (index, job), handle in zip(batch, handles):
                        running[index] = Submitted(job, handle, EventTail(job_folder(out, job.job_id) / EVENTS_NAME))
                for index, submitted in list(running.items()):
                    record = submitted.poll(out, watch)
                    if record is not None:
                        records[index] = record
                        del running[index]
                if running:
                    time.sleep(POLL_SECONDS)
        except KeyboardInterrupt:
            if self.settings.cluster == "slurm":
                self.announce("stopped following the sweep; its submitted jobs go on on the cluster (scancel stops "
                              "them) and write their records into the results folder")
            raise
        return records
