"""The measuring process of ``lipbench speed`` and ``lipbench check``: time each layer's training step
and eval forward against a plain convolution of the same shape, alternating the two, in this process.

Run by path (``runpy``), with a JSON request on stdin and a JSON report as the last line of stdout, so
that the parent can put another revision's ``lipbench`` first on ``PYTHONPATH`` and measure it with
this same timing code. That is why this file imports nothing of lipbench but its public API
(``create_layer``, ``load_plugin``, ``__version__``), which every revision has.
"""
from __future__ import annotations

import gc
import json
import math
import sys
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn

import lipbench

STEPS = ("train", "eval")
SGD_LR, SGD_MOMENTUM = 1e-4, 0.9  # a small lr: hundreds of timed steps leave the weights where they were


@dataclass(frozen=True)
class Workload:
    """The input a layer is timed on: (batch, channels, size, size) for conv, (batch, channels) for linear."""

    kind: str = "conv"
    batch: int = 64
    channels: int = 64
    size: int = 16
    kernel: int = 3

    def describe(self) -> str:
        if self.kind == "linear":
            return f"linear b{self.batch} f{self.channels}"
        return f"conv b{self.batch} c{self.channels} {self.size}x{self.size} k{self.kernel}"


DEFAULT_SHAPE = {"cpu": Workload(), "cuda": Workload("conv", 256, 128, 32, 3)}
CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}  # cpu: this process's CPU time


@dataclass(frozen=True)
class Timing:
    """How one process times a step: ``pairs`` A/B block pairs of about ``block_ms`` each."""

    pairs: int = 30
    block_ms: float = 2.0
    warmup_ms: float = 100.0
    threads: int = 1
    clock: str = "cpu"


DEFAULT_CLOCK = {"cpu": "cpu", "cuda": "wall"}


@dataclass(frozen=True)
class Config:
    """Everything a measurement depends on besides the code: shape, dtype, device class, timing."""

    shape: Workload
    dtype: str = "float32"
    device: str = "cpu"
    timing: Timing = Timing()


def config_from_dict(data: dict) -> Config:
    return Config(shape=Workload(**data["shape"]), dtype=data["dtype"], device=data["device"],
                  timing=Timing(**data["timing"]))


def reference_module(shape: Workload) -> nn.Module:
    """The plain layer every method is timed against: nn.Conv2d ('same' zero padding) or nn.Linear."""
    if shape.kind == "linear":
        return nn.Linear(shape.channels, shape.channels)
    return nn.Conv2d(shape.channels, shape.channels, shape.kernel, padding=shape.kernel // 2)


def make_step(step: str, module: nn.Module, inputs: Tensor) -> Callable[[], None]:
    """A closure running one ``train`` or ``eval`` step of ``module`` on ``inputs``."""
    if step == "eval":
        module.eval()

        def eval_step() -> None:
            with torch.no_grad():
                module(inputs)
        return eval_step
    module.train()
    inputs = inputs.detach().requires_grad_(True)  # a layer inside a network passes gradients on
    with torch.no_grad():
        grad_output = torch.randn_like(module(inputs))
    parameters = [parameter for parameter in module.parameters() if parameter.requires_grad]
    momenta = [torch.zeros_like(parameter) for parameter in parameters]

    def train_step() -> None:
        for tensor in (inputs, *parameters):
            tensor.grad = None
        module(inputs).backward(grad_output)
        sgd_step(parameters, momenta)
    return train_step


@torch.no_grad()
def sgd_step(parameters: list[Tensor], momenta: list[Tensor]) -> None:
    """The update of torch.optim.SGD(lr=SGD_LR, momentum=SGD_MOMENTUM) on its per-tensor path.

    Written out because building a torch optimizer imports torch._dynamo: about 2.5 s of CPU in
    every fresh measuring process.
    """
    for parameter, momentum in zip(parameters, momenta):
        if parameter.grad is not None:  # as torch's SGD, skip a parameter the step did not reach
            momentum.mul_(SGD_MOMENTUM).add_(parameter.grad)
            parameter.add_(momentum, alpha=-SGD_LR)


def timed_block(step: Callable[[], None], repeats: int, synchronize: Callable[[], None],
                clock: Callable[[], float]) -> float:
    """Seconds per step over ``repeats`` back-to-back steps."""
    synchronize()
    start = clock()
    for _ in range(repeats):
        step()
    synchronize()
    return (clock() - start) / repeats


def warm_up(step: Callable[[], None], synchronize: Callable[[], None], clock: Callable[[], float],
            seconds: float) -> float:
    """Run ``step`` at least 3 times and for about ``seconds``; return its fastest single run."""
    fastest, spent, runs = math.inf, 0.0, 0
    while runs < 3 or spent < seconds:
        elapsed = timed_block(step, 1, synchronize, clock)
        fastest, spent, runs = min(fastest, elapsed), spent + elapsed, runs + 1
    return fastest


def interleaved(layer_step: Callable[[], None], reference_step: Callable[[], None], timing: Timing,
                synchronize: Callable[[], None]) -> dict[str, float]:
    """Median ratio of per-step times over ``timing.pairs`` alternating blocks, and the median times."""
    block, clock = timing.block_ms / 1e3, CLOCKS[timing.clock]
    repeats = [max(1, round(block / warm_up(step, synchronize, clock, timing.warmup_ms / 2e3)))
               for step in (layer_step, reference_step)]
    layer_times, reference_times = [], []
    gc.disable()  # a collection inside one block of a pair would bias that pair
    try:
        for _ in range(timing.pairs):
            layer_times.append(timed_block(layer_step, repeats[0], synchronize, clock))
            reference_times.append(timed_block(reference_step, repeats[1], synchronize, clock))
    finally:
        gc.enable()
    ratios = np.array(layer_times) / np.array(reference_times)
    return {"ratio": float(np.median(ratios)), "layer_ms": float(np.median(layer_times)) * 1e3,
            "reference_ms": float(np.median(reference_times)) * 1e3}


def build_layer(name: str, shape: Workload) -> nn.Module:
    """Layer ``name`` at ``shape``, stride 1; a ValueError when the method does not offer that shape."""
    torch.manual_seed(0)
    if shape.kind == "linear":
        return lipbench.create_layer(name, "linear", shape.channels, shape.channels)
    return lipbench.create_layer(name, "conv", shape.channels, shape.channels, shape.kernel, 1)


def time_layer(layer: nn.Module, config: Config) -> dict[str, dict[str, float]]:
    """Both steps of ``layer`` against the reference, in this process."""
    shape, device, dtype = config.shape, torch.device(config.device), getattr(torch, config.dtype)
    batch_shape = (shape.batch, shape.channels) if shape.kind == "linear" else \
        (shape.batch, shape.channels, shape.size, shape.size)
    inputs = torch.randn(batch_shape).to(device, dtype)
    layer, reference = layer.to(device, dtype), reference_module(shape).to(device, dtype)
    synchronize = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    return {step: interleaved(make_step(step, layer, inputs), make_step(step, reference, inputs),
                              config.timing, synchronize)
            for step in STEPS}


def worker_measure(request: dict) -> dict:
    """One worker process: load plugins, time every requested layer, report plain data."""
    config = config_from_dict(request["config"])
    torch.set_num_threads(config.timing.threads)
    for plugin in request["plugins"]:
        lipbench.load_plugin(plugin)
    layers, skipped, errors = {}, {}, {}
    for name in request["layers"]:
        try:
            layer = build_layer(name, config.shape)
        except ValueError as error:  # as in the conformance suite: the method refuses this shape
            skipped[name] = str(error)
            continue
        try:
            layers[name] = time_layer(layer, config)
        except Exception as error:  # reported per layer: one layer that cannot run spoils no other
            errors[name] = f"{type(error).__name__}: {error}"
    return {"layers": layers, "skipped": skipped, "errors": errors, "lipbench_version": lipbench.__version__}


if __name__ == "__main__":
    print(json.dumps(worker_measure(json.loads(sys.stdin.read()))))
