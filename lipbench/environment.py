"""Where a result was measured: versions, commit, device, and the numeric settings that change results."""
from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

from lipbench.version import __version__


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


def fingerprint(device: torch.device) -> dict[str, Any]:
    """Versions, commit, device, and (on CUDA) the GPU's name and the CUDA and cuDNN versions."""
    found = {
        "lipbench_version": __version__,
        "git_commit": git_commit(),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "device": device.type,
        "device_name": device_name(device),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        found.update(cuda_version=torch.version.cuda, cudnn_version=torch.backends.cudnn.version(),
                     gpu_count=torch.cuda.device_count())
    return found
