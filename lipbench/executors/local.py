"""Jobs as child processes of this one: one at a time, or one per worker (thread) with ``--max-parallel``.

Each worker has its own environment: its own GPU(s) through ``CUDA_VISIBLE_DEVICES`` and an even
share of the CPU threads, so parallel jobs neither share a GPU (unless asked) nor fight over cores.
"""
from __future__ import annotations

import ctypes
import os
import threading
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch

from lipbench.distributed import NPROC_VARIABLE
from lipbench.executors.process import run_one
from lipbench.jobfolder import THREADS_VARIABLE
from lipbench.settings import JobConfig
from lipbench.sweep import Watch

POLL_SECONDS = 0.5


def visible_gpus(device: str) -> list[str]:
    """The GPUs jobs may be pinned to: none unless the jobs choose their device themselves (auto, cuda)."""
    if device not in ("auto", "cuda") or not torch.cuda.is_available():
        return []
    count = torch.cuda.device_count()
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        return [str(index) for index in range(count)]
    return [name.strip() for name in listed.split(",") if name.strip()][:count]


def worker_environments(workers: int, nproc: int, gpus: list[str], cpus: int | None = None) -> tuple[dict[str, str], ...]:
    """Each worker's environment: its own group of ``nproc`` GPUs (groups taken in turn when there are
    more workers than groups), ``nproc`` for the job process and, with several workers, an even share of
    the ``cpus`` as threads."""
    common = {NPROC_VARIABLE: str(nproc)} if nproc > 1 else {}
    if workers > 1:
        threads = str(max(1, (cpus or os.cpu_count() or 1) // workers))
        common.update({THREADS_VARIABLE: threads, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads})
    if not gpus:
        return tuple(dict(common) for _ in range(workers))
    groups = [gpus[start:start + nproc] for start in range(0, len(gpus) - nproc + 1, nproc)]
    return tuple({**common, "CUDA_VISIBLE_DEVICES": ",".join(groups[index % len(groups)])}
                 for index in range(workers))


@dataclass(frozen=True)
class LocalExecutor:
    """Jobs as child processes of this one, one per worker at a time; ``environments``: one per worker."""

    environments: tuple[dict[str, str], ...] = ({},)
    replace: bool = False  # run jobs that have a finished record (--force)

    def run(self, out: Path, jobs: list[JobConfig], watch: Watch) -> list[dict[str, Any]]:
        if len(self.environments) == 1:  # in this thread, where Ctrl-C stops the job as it always did
            return [self.run_job(out, job, watch, self.environments[0]) for job in jobs]
        return self.run_parallel(out, jobs, watch)

    def run_job(self, out: Path, job: JobConfig, watch: Watch, env: dict[str, str]) -> dict[str, Any]:
        watch.started(job)
        record = run_one(out, job, partial(watch.event, job), env or None, self.replace)
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
    """Raise KeyboardInterrupt inside ``thread``, as Ctrl-C does in the main thread: ``run_one``
    there stops its job's process and records it as ``interrupted``, as in a sequential sweep."""
    if thread.ident is not None and thread.is_alive():
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(KeyboardInterrupt))
