"""What a GPU would get wrong, proved on the CPU: host reads inside training steps, throughput from
synchronized whole steps, memory above the start of a phase, TF32 as one explicit setting, epoch mode,
the paper's momentum cycle, and augmentation drawn (and resumed) on the data's device."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest
import torch
from torch.overrides import TorchFunctionMode

import lipbench
from lipbench.batches import InMemoryBatches
from lipbench.budget import load_budget
from lipbench.certify import certify_and_measure
from lipbench.datasets.synthetic import make_synthetic
from lipbench.plan import expand
from lipbench.schedules import one_cycle_lr, one_cycle_momentum
from lipbench.settings import TrainSettings
from lipbench.train import TrainStep, make_optimizer, schedule, train
from small_models import smallest_model

CPU = torch.device("cpu")
HOST_READS = {"item", "__float__", "__int__", "__bool__", "__index__", "tolist", "numpy", "cpu",
              "nonzero", "masked_select", "unique", "unique_consecutive", "bincount"}


class HostReads(TorchFunctionMode):
    """Counts what would make a GPU wait for the host: reading a value back, or an output of data-dependent size."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        boolean_index = name in ("__getitem__", "__setitem__") and any(
            isinstance(a, torch.Tensor) and a.dtype == torch.bool for a in (args[1:2] if len(args) > 1 else ()))
        if name in HOST_READS or boolean_index or (name == "repeat_interleave" and "output_size" not in (kwargs or {})
                                                   and isinstance(args[1] if len(args) > 1 else None, torch.Tensor)):
            self.seen.append(name)
        return func(*args, **(kwargs or {}))


def small_model(name: str, precision: str = "fp32"):
    method = lipbench.get_method(name)
    data = make_synthetic(n_train=64, n_test=32, n_classes=4, size=16)
    model = smallest_model(name, data.in_shape, data.n_classes)
    settings = TrainSettings(budget_s=120, batch_size=16, lr=0.01, augment=True, precision=precision, max_steps=4)
    return method, data, model, settings


@pytest.mark.parametrize("name", lipbench.list_layers())
def test_training_steps_read_nothing_back_from_the_device(name):
    method, data, model, settings = small_model(name)
    batches = InMemoryBatches(data, settings.batch_size, settings.augment, seed=0)
    optimizer = make_optimizer(model, method, settings, batches.per_epoch, 100)
    step = TrainStep(model, model, method, optimizer, settings, CPU)
    model.train()
    for warm_up in range(2):  # lazy initialization may look at the data once
        step(*batches.next())
    with HostReads() as reads:
        for index in range(3):
            schedule(optimizer, settings, index / 10)
            step(*batches.next())
    assert reads.seen == [], f"{name}: {len(reads.seen) / 3:.1f} host reads per step: {sorted(set(reads.seen))}"


def test_recorded_throughput_is_images_over_synchronized_whole_steps():
    data = make_synthetic(n_train=512, n_test=64)
    model = lipbench.create_model("aol", "XS", data.in_shape, data.n_classes)
    settings = TrainSettings(budget_s=600, batch_size=64, augment=True, max_steps=30)  # data drawing is not free
    first: list[float] = []
    report = train(model, lipbench.get_method("aol"), data, settings, CPU,
                   on_event=lambda event: first.append(time.perf_counter()) if event.get("step") == 1 else None)
    ended = time.perf_counter()
    independent = (report.steps - 1) * settings.batch_size / (ended - first[0])
    assert report.steps == 30 and report.images == 29 * 64
    assert report.train_throughput == pytest.approx(independent, rel=0.10)


PHASE_MEMORY = """
import torch
from lipbench.device import PeakMemory
resident = torch.ones(300 * 2**20 // 4)  # a dataset already in memory: not part of training's peak
with PeakMemory(torch.device("cpu")) as memory:
    temporary = torch.ones(150 * 2**20 // 4)
    del temporary
assert resident.sum() > 0
print(memory.counter, memory.peak_mb)
"""


def test_peak_memory_counts_the_phase_above_its_start_not_what_was_there():
    # a fresh process, as a job is: in this one, memory freed by earlier tests may be reused without growing
    result = subprocess.run([sys.executable, "-c", PHASE_MEMORY], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    counter, peak = result.stdout.split()
    assert counter == "process_peak_rss_above_start"
    assert 140 <= float(peak) <= 280, peak


def test_tf32_is_one_explicit_setting_and_certificates_are_strict_fp32(monkeypatch):
    seen = {}
    data = make_synthetic(n_train=64, n_test=32)
    model = lipbench.create_model("aol", "XS", data.in_shape, data.n_classes)
    original = TrainStep.__call__

    def spy(self, x, y, epsilon):
        seen["training"] = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        return original(self, x, y, epsilon)

    monkeypatch.setattr(TrainStep, "__call__", spy)
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    for tf32 in (True, False):
        train(model, lipbench.get_method("aol"), data, TrainSettings(budget_s=60, batch_size=16, max_steps=2, tf32=tf32), CPU)
        assert seen["training"] == (tf32, tf32)
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        original_certificate = lipbench.certify.certificate

        def checked(model, method):
            seen["certificate"] = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
            return original_certificate(model, method)

        monkeypatch.setattr(lipbench.certify, "certificate", checked)
        certify_and_measure(model, lipbench.get_method("aol"), data, 32, CPU)
        assert seen["certificate"] == (False, False)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_epoch_mode_trains_exactly_the_epochs_and_says_so():
    data = make_synthetic(n_train=96, n_test=32)
    model = lipbench.create_model("aol", "XS", data.in_shape, data.n_classes)
    report = train(model, lipbench.get_method("aol"), data, TrainSettings(budget_s=600, batch_size=16, epochs=2), CPU)
    assert report.steps == 2 * 6 and report.stopped_by == "epochs" and report.bounded_by == "epochs"


def test_paper_presets_train_the_papers_epochs_with_plain_cycled_momentum():
    jobs = expand(["aol", "soc"], ["XS", "M"], ["cifar10"], [load_budget("paper-24h")], [0], {})
    epochs = {(job.layer, job.size): job.epochs for job in jobs}
    assert epochs == {("aol", "XS"): 10044, ("aol", "M"): 4404, ("soc", "XS"): 4452, ("soc", "M"): 2412}
    assert all(not job.nesterov and job.momentum_cycle for job in jobs)
    with pytest.raises(lipbench.UserError, match="aol@L"):
        expand(["aol"], ["L"], ["cifar10"], [load_budget("paper-24h")], [0], {})
    (wall_clock,) = expand(["aol"], ["XS"], ["cifar10"], [load_budget("2h")], [0], {})
    assert wall_clock.epochs == 0 and wall_clock.lr == pytest.approx(0.05729)


def test_momentum_cycles_against_the_lr_as_in_the_papers_code():
    assert one_cycle_momentum(0.0) == pytest.approx(0.95) and one_cycle_momentum(0.3) == pytest.approx(0.85)
    assert one_cycle_momentum(1.0) == pytest.approx(0.95)
    assert one_cycle_lr(0.3, 0.1) == pytest.approx(0.1) and one_cycle_momentum(0.65) == pytest.approx(0.9)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1, momentum=0.9)
    schedule(optimizer, TrainSettings(budget_s=1, lr=0.1, momentum_cycle=True), 0.3)
    assert optimizer.param_groups[0]["momentum"] == pytest.approx(0.85)


def test_augmentation_is_drawn_on_the_datas_device_and_resumes_exactly():
    data = make_synthetic(n_train=64, n_test=8)
    first = InMemoryBatches(data, 16, augment=True, seed=3)
    assert first.generator.device == data.x_train.device
    for _ in range(5):
        first.next()
    state = first.state_dict()
    expected = [first.next() for _ in range(6)]
    resumed = InMemoryBatches(data, 16, augment=True, seed=99)
    resumed.load_state_dict(state)
    for (x, y), (x_resumed, y_resumed) in zip(expected, (resumed.next() for _ in range(6))):
        assert torch.equal(x, x_resumed) and torch.equal(y, y_resumed)
