"""Executors: where the jobs of a sweep run. All of them fill the same results folder
(``OUT/jobs/<id>/...``, see :mod:`lipbench.runner`), so resume and report work the same on a laptop,
a workstation and a cluster.

* :class:`LocalExecutor`: each job is a child process of this one (``runner.run_one``), up to one per
  worker at once; each worker has its own environment, which pins its jobs to its own GPU(s)
  through ``CUDA_VISIBLE_DEVICES``.
* :class:`SubmititExecutor`: each job is submitted through submitit. On SLURM a wave of jobs is one
  job array, at most ``max_parallel`` of it running (``slurm_array_parallelism``). On the node the
  job runs ``runner.run_one`` exactly as locally (:class:`ClusterJob`). A preempted or timed-out job
  is requeued by submitit and resumes from its training checkpoint. ``cluster: local`` or ``debug``
  runs the same path on this machine through submitit's own executors.

:func:`run_sweep` drives either one, then runs the retries the policy asks for (another seed after
a NaN, half the batch after an out-of-memory error) as a further wave, until none is left.
"""
from __future__ import annotations

import ctypes
import math
import os
import signal
import threading
import time
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, fields
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

import torch
import yaml

from lipbench.distributed import NPROC_VARIABLE
from lipbench.errors import UserError
from lipbench.job import EVENTS_NAME, LOCK_NAME, lock_holder, now_iso
from lipbench.plan import JobConfig
from lipbench.records import RECORD_NAME, write_json_atomic
from lipbench.runner import (EventTail, Observer, RetryPolicy, existing_record, job_dir, remember_calibration,
                             retry_for, run_one, time_limit)

SUBMITIT_FOLDER = "slurm"  # OUT/slurm/<job id>/: submitit's pickles and logs
POLL_SECONDS = 0.5
WRITTEN_BY_JOB = ("ok", "nan", "oom", "error")  # statuses only the job process itself records
DEFAULT_ARRAY_PARALLELISM = 256  # submitit's default


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


class Executor(Protocol):
    def run(self, out: Path, jobs: list[JobConfig], watch: Watch) -> list[dict[str, Any]]:
        """Run ``jobs`` into ``out``; their records, in order."""


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


def visible_gpus(device: str) -> list[str]:
    """The GPUs jobs may be pinned to: none unless the jobs choose their device themselves (auto, cuda)."""
    if device not in ("auto", "cuda") or not torch.cuda.is_available():
        return []
    count = torch.cuda.device_count()
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        return [str(index) for index in range(count)]
    return [name.strip() for name in listed.split(",") if name.strip()][:count]


def worker_environments(workers: int, nproc: int, gpus: list[str]) -> tuple[dict[str, str], ...]:
    """Each worker's environment: its own group of ``nproc`` GPUs (groups taken in turn when there are
    more workers than groups), and ``nproc`` for the job process."""
    common = {NPROC_VARIABLE: str(nproc)} if nproc > 1 else {}
    if not gpus:
        return tuple(dict(common) for _ in range(workers))
    groups = [gpus[start:start + nproc] for start in range(0, len(gpus) - nproc + 1, nproc)]
    return tuple({**common, "CUDA_VISIBLE_DEVICES": ",".join(groups[index % len(groups)])}
                 for index in range(workers))


@dataclass(frozen=True)
class LocalExecutor:
    """Jobs as child processes of this one, one per worker at a time; ``environments``: one per worker."""

    environments: tuple[dict[str, str], ...] = ({},)

    def run(self, out: Path, jobs: list[JobConfig], watch: Watch) -> list[dict[str, Any]]:
        if len(self.environments) == 1:  # in this thread, where Ctrl-C stops the job as it always did
            return [self.run_job(out, job, watch, self.environments[0]) for job in jobs]
        return self.run_parallel(out, jobs, watch)

    @staticmethod
    def run_job(out: Path, job: JobConfig, watch: Watch, env: dict[str, str]) -> dict[str, Any]:
        watch.started(job)
        record = run_one(out, job, partial(watch.event, job), env or None)
        watch.finished(job, record)
        return record

    def run_parallel(self, out: Path, jobs: list[JobConfig], watch: Watch) -> list[dict[str, Any]]:
        """One thread per worker takes the next job until none is left. On Ctrl-C the running jobs are
        stopped and recorded as interrupted, and no further job starts."""
        records: list[dict[str, Any]] = [{} for _ in jobs]
        queue, lock, stopping, errors = iter(enumerate(jobs)), threading.Lock(), threading.Event(), []

        def work(env: dict[str, str]) -> None:
            try:
                while not stopping.is_set():
                    with lock:
                        item = next(queue, None)
                    if item is None:
                        return
                    index, job = item
                    records[index] = self.run_job(out, job, watch, env)
            except KeyboardInterrupt:  # raised here by interrupt() below
                return
            except BaseException as error:  # the sweep stops; the error is raised in the main thread
                errors.append(error)
                stopping.set()

        workers = [threading.Thread(target=work, args=(env,), name=f"lipbench-worker-{index}", daemon=True)
                   for index, env in enumerate(self.environments[:len(jobs)])]
        for worker in workers:
            worker.start()
        try:
            wait_for(workers)
        except KeyboardInterrupt:
            stopping.set()
            for worker in workers:
                interrupt(worker)
            wait_for(workers)
            raise
        if errors:
            raise errors[0]
        return records


def wait_for(threads: list[threading.Thread]) -> None:
    """Wait until ``threads`` end. Not with Thread.join: Ctrl-C during a join can mark the thread as
    stopped while it still runs (seen on CPython 3.11), and its job would be left running."""
    while any(thread.is_alive() for thread in threads):
        time.sleep(POLL_SECONDS)


def interrupt(thread: threading.Thread) -> None:
    """Raise KeyboardInterrupt inside ``thread``, as Ctrl-C does in the main thread: ``runner.run_one``
    there stops its job's process and records it as ``interrupted``, as in a sequential sweep."""
    if thread.ident is not None and thread.is_alive():
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(KeyboardInterrupt))


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

    def __call__(self) -> dict[str, Any]:
        env = {NPROC_VARIABLE: str(self.nproc)} if self.nproc > 1 else None
        with ignored_by_children(signal.SIGTERM):
            return run_one(self.out, self.config, lambda event: None, env)

    def checkpoint(self) -> Any:
        """Stop the training process (our child; SIGKILL, it ignores SIGTERM) and free its lock for the rerun."""
        from submitit.helpers import DelayedSubmission

        folder = job_dir(self.out, self.config)
        pid = lock_holder(folder)
        if pid is not None and parent_of(pid) == os.getpid():
            with suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)  # the job leads its own process group (replicas included)
            (folder / LOCK_NAME).unlink(missing_ok=True)
        return DelayedSubmission(self)


def outcome(out: Path, job: JobConfig, handle: Any) -> dict[str, Any]:
    """What a submitted job left: the record its run returned; or, when the cluster ended it early
    (cancelled, killed, its node lost, out of requeues), an ``interrupted`` record, which a rerun resumes."""
    try:
        return handle.result()
    except Exception as error:  # submitit's UncompletedJobError or FailedJobError
        record = existing_record(out, job)
        if record is not None and record.get("status") in WRITTEN_BY_JOB:
            return record
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        record = {**vars(job), "job_id": job.job_id, "status": "interrupted", "finished_at": now_iso(),
                  "error": f"cluster job {handle.job_id} ended first ({reason}); run the sweep again to resume it"}
        write_json_atomic(job_dir(out, job) / RECORD_NAME, record)
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
        record = outcome(out, self.job, self.handle)
        watch.finished(self.job, record)
        return record


class SubmititExecutor:
    """Jobs submitted through submitit: on SLURM one job array per wave with at most ``max_parallel``
    running at once; on submitit's local and debug executors, at most ``max_parallel`` submitted at once."""

    def __init__(self, settings: SlurmSettings, max_parallel: int, nproc: int = 1,
                 announce: Callable[[str], None] = print):
        self.submitit = require_submitit()
        self.settings, self.max_parallel, self.nproc, self.announce = settings, max_parallel, nproc, announce

    def submit(self, out: Path, jobs: list[JobConfig]) -> list[Any]:
        """Submit ``jobs`` as one array, with the time limit of the longest plus the margin."""
        out = out.resolve()  # the node's working directory may differ
        minutes = math.ceil(max(map(time_limit, jobs)) / 60) + self.settings.time_margin_min
        executor = self.submitit.AutoExecutor(folder=out / SUBMITIT_FOLDER / "%j", cluster=self.settings.cluster,
                                              slurm_max_num_timeout=self.settings.max_requeues,
                                              local_max_num_timeout=self.settings.max_requeues)
        executor.update_parameters(**self.settings.executor_parameters(minutes, self.nproc, self.max_parallel))
        handles = executor.submit_array([ClusterJob(out, job, self.nproc) for job in jobs])
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
                        running[index] = Submitted(job, handle, EventTail(job_dir(out, job) / EVENTS_NAME))
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


def create_executor(kind: str, device: str, nproc: int = 1, max_parallel: int | None = None,
                    slurm: SlurmSettings | None = None,
                    announce: Callable[[str], None] = print) -> LocalExecutor | SubmititExecutor:
    """The executor ``lipbench run --executor KIND`` asks for, checked."""
    if nproc < 1:
        raise UserError(f"--nproc must be at least 1, not {nproc}")
    if max_parallel is not None and max_parallel < 1:
        raise UserError(f"--max-parallel must be at least 1, not {max_parallel}")
    if kind == "local":
        gpus = visible_gpus(device)
        if gpus and nproc > len(gpus):
            raise UserError(f"--nproc {nproc} needs {nproc} GPUs per job, but {len(gpus)} are visible")
        return LocalExecutor(worker_environments(max_parallel or max(1, len(gpus) // nproc), nproc, gpus))
    if kind == "slurm":
        return SubmititExecutor(slurm or SlurmSettings(), max_parallel or DEFAULT_ARRAY_PARALLELISM, nproc, announce)
    raise UserError(f"--executor must be local or slurm, not {kind!r}")
