import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import lipbench
from lipbench.certify import Certifier, certified_accuracy, margins
from lipbench.data import load_dataset
from lipbench.datasets.synthetic import make_synthetic
from lipbench.registry import create_model
from lipbench.losses import LossContext
from lipbench.losses.offset_ce import offset_cross_entropy
from lipbench.train import TrainSettings, TrainingDiverged, one_cycle_lr, train

PLUGINS = Path(__file__).parent / "plugins"


def test_one_cycle_rises_then_anneals():
    assert one_cycle_lr(0, 1.0) == pytest.approx(0.04)
    assert one_cycle_lr(0.3, 1.0) == pytest.approx(1.0)
    assert one_cycle_lr(1.0, 1.0) < 1e-5
    values = [one_cycle_lr(p / 100, 1.0) for p in range(101)]
    assert values.index(max(values)) == 30


def test_offset_cross_entropy_reduces_to_cross_entropy_and_penalizes_small_margins():
    logits, labels = torch.randn(16, 10), torch.randint(10, (16,))

    def loss(offset, temperature):
        return offset_cross_entropy(logits, labels, LossContext(offset, temperature, 0.0, torch.tensor(2 ** 0.5)))

    assert loss(0.0, 1.0) == pytest.approx(float(F.cross_entropy(logits, labels)))
    assert loss(0.4, 0.25) > loss(0.0, 0.25)


def test_certified_accuracy_uses_margin_over_sqrt2_L():
    logits = torch.tensor([[1.0, 0.0], [0.0, 0.5], [0.3, 0.0]])
    labels = torch.tensor([0, 1, 1])
    margin = margins(logits, labels)
    assert margin.tolist() == pytest.approx([1.0, 0.5, -0.3])
    result = certified_accuracy(Certifier.margin(2.0).radii(logits, labels))  # radii 1/(2 sqrt2) = 0.354, 0.5/(2 sqrt2) = 0.177
    assert result["clean_acc"] == pytest.approx(2 / 3)
    assert result["cra_36"] == pytest.approx(2 / 3)  # 36/255 = 0.141
    assert result["cra_72"] == pytest.approx(1 / 3)  # 72/255 = 0.282
    assert result["cra_255"] == 0


def test_training_honours_the_budget_within_5_percent():
    data = make_synthetic(n_train=512, n_test=64)
    model = create_model("aol", "XS", data.in_shape, data.n_classes)
    budget = 6.0
    report = train(model, lipbench.get_method("aol"), data, TrainSettings(budget_s=budget, batch_size=16),
                   torch.device("cpu"))
    assert budget * 0.85 <= report.train_seconds <= budget * 1.05
    assert report.steps > 10 and report.steps_planned >= report.steps
    assert report.epochs_done == pytest.approx(report.steps / report.steps_per_epoch)
    assert math.isfinite(report.final_loss) and report.train_throughput > 0


@pytest.mark.parametrize("max_steps", [3, 12])  # before and after the plan made from the timed steps
def test_max_steps_caps_the_run(max_steps):
    data = make_synthetic(n_train=256, n_test=64)
    model = create_model("aol", "XS", data.in_shape, data.n_classes)
    report = train(model, lipbench.get_method("aol"), data, TrainSettings(budget_s=60, batch_size=16, max_steps=max_steps),
                   torch.device("cpu"))
    assert report.steps == report.steps_planned == max_steps and report.stopped_by == "max_steps"


def test_divergence_raises():
    lipbench.load_plugin(str(PLUGINS / "nan_layer.py"))
    data = make_synthetic(n_train=256, n_test=64)
    model = create_model("test-nan", "XS", data.in_shape, data.n_classes)
    with pytest.raises(TrainingDiverged, match="step"):
        train(model, lipbench.get_method("test-nan"), data, TrainSettings(budget_s=30, batch_size=16),
              torch.device("cpu"))


def fashion_mnist_or_skip():
    try:
        return load_dataset("fashion-mnist")
    except lipbench.UserError:
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")


def test_aol_learns_real_data_far_above_chance():
    data = fashion_mnist_or_skip()
    torch.manual_seed(0)
    model = create_model("aol", "XS", data.in_shape, data.n_classes)
    # A fixed number of steps, not a wall-clock budget: on a busy 2-core machine 30 s held 18 to 77 steps.
    # The settings are cpu-2m's (batch 32, lr 0.02, offset 0.2); 80 steps give 69.3% clean, 51.7% CRA 36, idle or busy.
    settings = TrainSettings(budget_s=600, batch_size=32, lr=0.02, offset=0.2, max_steps=80)
    report = train(model, lipbench.get_method("aol"), data, settings, torch.device("cpu"))
    assert report.steps == 80 and report.stopped_by == "max_steps"
    model.eval()
    with torch.no_grad():
        mean = data.x_train.mean(dim=(0, 2, 3), keepdim=True)
        result = certified_accuracy(Certifier.margin(1.0).radii(model(data.x_test[:2000] - mean), data.y_test[:2000]))
    assert result["clean_acc"] > 0.6  # chance is 0.1; 2,560 images seen
    assert result["cra_36"] > 0.4
