"""The device a job runs on, measured by its own counters: choosing it, synchronizing, peak memory."""
from __future__ import annotations

import resource
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

from lipbench.errors import UserError


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when torch sees a GPU, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``, checked."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {name}: torch sees no CUDA GPU here; use --device cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"--device {name}: only {torch.cuda.device_count()} CUDA GPU(s) are visible")
    return device


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on ``device`` (a no-op on the CPU, which runs synchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


MIB = 2 ** 20
PROC_STATUS, PROC_CLEAR_REFS = Path("/proc/self/status"), Path("/proc/self/clear_refs")


def resident_kib(field: str) -> int | None:
    """A field of /proc/self/status in KiB (VmRSS: resident now, VmHWM: peak), or None where there is none."""
    try:
        for line in PROC_STATUS.read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def reset_resident_peak() -> bool:
    """Reset this process's peak resident set (Linux: 5 > /proc/self/clear_refs); False where it cannot be."""
    try:
        PROC_CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


class PeakMemory:
    """The peak memory a phase adds above what was in use when it began, by the device's own counter.

    CUDA: the allocator's peak during the phase minus what was allocated at its start (so a dataset
    already on the GPU is not counted). CPU: the process's peak resident set during the phase (reset at
    its start) minus the resident set at its start; where the peak cannot be reset, the growth of the
    lifetime peak, which misses a phase that stays below an earlier peak (its counter says so).
    """

    def __init__(self, device: torch.device):
        self.device, self.peak_mb, self.counter = device, float("nan"), ""

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
            self.counter = "cuda_max_allocated_above_start"
        else:
            reset = reset_resident_peak()
            self.start = (resident_kib("VmRSS") or 0) * 1024 if reset else self.lifetime_peak()
            self.counter = "process_peak_rss_above_start" if reset else "process_peak_rss_growth"
        return self

    def __exit__(self, *exception: Any) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        elif self.counter == "process_peak_rss_above_start":
            peak = (resident_kib("VmHWM") or 0) * 1024
        else:
            peak = self.lifetime_peak()
        self.peak_mb = max(0, peak - self.start) / MIB

    @staticmethod
    def lifetime_peak() -> int:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def strict_fp32() -> Any:
    """TF32 off while the block runs: certificates, evaluation and audits are computed in true fp32
    whatever the training used."""
    return tf32_enabled(False)


@contextmanager
def tf32_enabled(enabled: bool) -> Iterator[None]:
    """TF32 for matmuls and convolutions on (or off) while the block runs, restored after: one explicit
    setting for every method, where PyTorch's defaults would give convolutions TF32 and matmuls none."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn
