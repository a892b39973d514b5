"""DDP on CPU (gloo): identical weights on every rank, the same result as one process, an agreed stop."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lipbench.train
from lipbench.datasets.synthetic import make_synthetic
from lipbench.distributed import World, check_batch_sizes, launch
from lipbench.errors import UserError
from lipbench.registry import create_model
from lipbench.registry import get_method
from lipbench.train import TrainSettings, train

# Averaging two half-batch gradients sums in another order than one full batch: a gentle learning rate and a
# short run keep that float noise from growing past the tolerance below.
SETTINGS = TrainSettings(budget_s=0.3, batch_size=16, lr=0.01)
TICKS = (0.010, 0.013)  # fake seconds per clock reading on rank 0 and rank 1: rank 1 runs out of time first


class FakeClock:
    """A clock that advances a fixed tick per reading, so that the loop's plan depends on no real timing."""

    def __init__(self, tick: float):
        self.tick, self.now = tick, 0.0

    def perf_counter(self) -> float:
        self.now += self.tick
        return self.now


def train_lipnext(tick: float, world: World | None = None):
    lipbench.train.time = FakeClock(tick)  # this process's training loop only
    torch.manual_seed(0)
    data = make_synthetic(n_train=256, n_test=16)
    model = create_model("lipnext", "XS", data.in_shape, data.n_classes)
    report = train(model, get_method("lipnext"), data, SETTINGS, torch.device("cpu"), seed=0, world=world)
    return model, report


def replica(folder: Path, world: World) -> None:
    world.join(torch.device("cpu"))
    try:
        model, report = train_lipnext(TICKS[world.rank], world)
    finally:
        world.leave()
    torch.save({"state": model.state_dict(), "steps": report.steps, "images": report.images,
                "loss": report.final_loss}, folder / f"rank{world.rank}.pt")


def test_two_ranks_stay_identical_agree_when_to_stop_and_match_one_process(tmp_path, monkeypatch):
    launch(2, tmp_path / "rendezvous", replica, tmp_path)
    first, second = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    assert first["steps"] == second["steps"] > 7  # past calibration and a re-plan, stopped together
    for name, value in first["state"].items():  # the orthogonal weights of the manifold step included
        assert torch.equal(value, second["state"][name]), name

    monkeypatch.setattr(lipbench.train, "time", FakeClock(TICKS[1]))
    single, report = train_lipnext(TICKS[1])
    assert report.steps == first["steps"] and report.images == first["images"]  # global images
    for name, value in single.state_dict().items():
        assert torch.allclose(first["state"][name], value, atol=1e-5), name
    assert first["loss"] == pytest.approx(report.final_loss, rel=1e-4)


def test_one_process_world_is_the_identity():
    world, x, y = World(), torch.randn(4, 1, 2, 2), torch.arange(4)
    model = torch.nn.Linear(2, 2)
    assert world.wrap(model) is model and world.shard(x, y) == (x, y)
    assert world.least(7) == 7
    assert world.mean(torch.tensor(2.5)) == 2.5 and world.join(torch.device("cpu")) == torch.device("cpu")


def test_a_batch_that_does_not_split_evenly_is_refused():
    check_batch_sizes([16, 32], 4)
    with pytest.raises(UserError, match="multiples of 3"):
        check_batch_sizes([16, 32], 3)
    with pytest.raises(ValueError):
        World(rank=0, size=3).shard(torch.zeros(16), torch.zeros(16))


def test_nproc_2_trains_one_job_and_rank_0_records_it(tmp_path):
    out = tmp_path / "results"
    result = subprocess.run([sys.executable, "-m", "lipbench", "run", "--nproc", "2", "--budget", "2s", "--layers",
                             "lipnext", "--dataset", "synthetic", "--batch-size", "16", "--no-save-model", "--out",
                             str(out)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    (record_path,) = out.glob("jobs/*/record.json")
    record = json.loads(record_path.read_text())
    assert record["status"] == "ok", record.get("error")
    assert record["world_size"] == 2 and record["steps"] >= 1 and record["cra_36"] is not None
    assert not (record_path.parent / "running.lock").exists()
