"""The audit: sound per-layer bounds on known operators, a planted bug found, a correct layer cleared."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lipbench.audit import audit_model
from lipbench.audit.bounds import sound_layer_bound
from lipbench.bounds import conv_norm, dense_norm
from lipbench.datasets.synthetic import make_synthetic
from lipbench.job import run_job
from lipbench.models.convnet import ConvNet
from lipbench.registry import create_model
from lipbench.settings import JobConfig
from lipbench.registry import get_method, load_plugin, unregister_layer

BROKEN = Path(__file__).parent / "plugins" / "broken_layer.py"
QUICK = dict(samples=4, steps=20, eval_points=128, lower_points=4, lower_steps=4, dense_limit=256)
pytestmark = pytest.mark.filterwarnings("ignore:plugin .* failed to load")  # test-broken loaded twice


@pytest.fixture(scope="module")
def broken_layer():
    load_plugin(str(BROKEN))
    yield "test-broken"
    unregister_layer("test-broken")  # never seen by the conformance suite, which it would fail


@pytest.fixture(scope="module")
def data():
    return make_synthetic(n_train=256, n_test=128)


def small_convnet(layer, data, head_bias=0.0):
    """A width-4 ConvNet (the XS layout at a quarter of the width); head_bias lifts class 0's logit so
    that some test points are certified without training (deterministic)."""
    torch.manual_seed(0)
    model = ConvNet(get_method(layer), 4, data.in_shape, data.n_classes)
    with torch.no_grad():
        model.method_layers()[-1].bias[0] = head_bias
    return model


def audit(model, layer, data, record):
    return audit_model(model, get_method(layer), data, record, torch.device("cpu"), **QUICK)


def test_dense_layer_gets_its_exact_norm():
    torch.manual_seed(0)
    layer = nn.Linear(6, 5)
    found = sound_layer_bound(layer, (6,))
    assert found.how.startswith("impulse") and found.proved
    assert found.bound == pytest.approx(dense_norm(layer.weight), rel=1e-12)


def test_circular_convolution_gets_its_exact_fft_norm():
    torch.manual_seed(0)
    layer = nn.Conv2d(3, 4, 3, padding=1, padding_mode="circular")
    found = sound_layer_bound(layer, (3, 8, 8), dense_limit=16)
    exact = sound_layer_bound(layer, (3, 8, 8), dense_limit=1000)
    assert found.how.startswith("fft circular") and exact.how.startswith("impulse")
    assert found.bound == pytest.approx(conv_norm(layer.weight, (8, 8), "circular"), rel=1e-9)
    assert found.bound == pytest.approx(exact.bound, rel=1e-9)


def test_zero_padded_convolution_gets_a_sound_bound():
    torch.manual_seed(0)
    layer = nn.Conv2d(3, 3, 5, padding=2)
    found = sound_layer_bound(layer, (3, 8, 8), dense_limit=16)
    exact = sound_layer_bound(layer, (3, 8, 8), dense_limit=1000).bound
    assert found.how.startswith("fft zero-padded 5x5")
    assert found.bound == pytest.approx(conv_norm(layer.weight, (8, 8), "zeros"), rel=1e-9)
    assert exact <= found.bound * (1 + 1e-12) and found.bound <= 1.6 * exact


class PixelScaling(nn.Module):
    """Linear, but not a convolution (each pixel has its own gain), with a false claim of 1."""

    def __init__(self):
        super().__init__()
        self.gain = nn.Parameter(torch.ones(1, 8, 8))
        with torch.no_grad():
            self.gain[0, 3, 5] = 3.0

    def forward(self, x):
        return x * self.gain

    def lipschitz_bound(self, input_shape):
        return 1.0


def test_layers_the_audit_cannot_bound_are_never_assumed_one_lipschitz():
    unknown = sound_layer_bound(nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), nn.Tanh()), (2, 8, 8))
    assert unknown.bound == math.inf and not unknown.proved
    too_big = sound_layer_bound(PixelScaling(), (2, 8, 8), dense_limit=16)  # probes reject both convolutions
    assert too_big.bound == 1.0 and not too_big.proved and too_big.how.startswith("own")  # trusted, and says so
    small = sound_layer_bound(PixelScaling(), (2, 8, 8))
    assert small.bound == pytest.approx(3.0, rel=1e-12) and small.proved  # the impulse response exposes the claim


class Residual(nn.Module):
    """x - W_out^T ReLU(W x + b) with W_out = 2 W / ||W||^2 on a part of the hidden channels (CPL/SLL-like)."""

    def __init__(self, scale):
        super().__init__()
        torch.manual_seed(1)
        self.weight = nn.Parameter(torch.randn(4, 4, 3, 3))
        self.bias = nn.Parameter(torch.randn(4))
        self.scale = scale

    def output_weight(self, size):
        per_channel = torch.tensor([1.0, 1.0, 0.5, 0.0], dtype=self.weight.dtype)[:, None, None, None]
        return self.scale * per_channel * self.weight

    def forward(self, x):
        hidden = F.relu(F.conv2d(x, self.weight, self.bias, padding=1))
        return x - F.conv_transpose2d(hidden, self.output_weight(x.shape[2:]), padding=1)


@pytest.mark.parametrize("gain", [1.0, 3.0])  # 2/||W||^2 (1-Lipschitz) and 3x too large
def test_residual_layers_are_bounded_by_their_structure(gain):
    layer = Residual(1.0).double()
    layer.scale = gain * 2 / conv_norm(layer.weight, (6, 6), "zeros") ** 2
    found = sound_layer_bound(layer, (4, 6, 6))
    assert found.how.startswith("residual") and found.proved
    x = torch.randn(4, 6, 6, dtype=torch.float64)
    jacobian = torch.autograd.functional.jacobian(lambda v: layer(v[None])[0], x).reshape(144, 144)
    assert float(torch.linalg.matrix_norm(jacobian, 2)) <= found.bound * (1 + 1e-12)
    assert (found.bound == pytest.approx(1.0)) == (gain == 1.0)


def test_audit_finds_the_planted_bug(broken_layer, data):
    model = small_convnet(broken_layer, data, head_bias=0.6)
    result = audit(model, broken_layer, data, {"lipschitz_bound": 1.0})
    assert result["claimed_bound"] == 1.0
    assert result["sound_bound"] == pytest.approx(1.1 ** 27, rel=1e-4)  # every layer exactly 1.1 at init
    assert result["lower_bound"] > 1.5
    assert result["violations"] > 0 and not result["passed"] and result["verdict"] == "violated"
    for point in result["violation_points"]:
        assert point["certified_radius"] > point["eps"] >= point["perturbation_norm"] * (1 - 1e-6)
        assert point["adversarial_margin"] <= 0
    assert all(row["bound"] == pytest.approx(1.1, rel=1e-5) for row in result["layers"])


def test_audit_clears_a_correct_layer(data):
    model = small_convnet("aol", data, head_bias=0.6)
    result = audit(model, "aol", data, {"lipschitz_bound": 1.0, "cra_36": 0.5, "cra_72": 0.4, "cra_108": 0.1,
                                        "cra_255": 0.0})
    tolerance = get_method("aol").tolerance
    assert sum(result["attacked"].values()) > 0  # certified points were attacked ...
    assert result["violations"] == 0  # ... and held
    assert result["lower_bound"] <= result["sound_bound"] <= 1 + tolerance
    assert result["lower_bound"] > 0.1 and result["sound_bound_proved"] and result["passed"]
    assert result["cra_sound"] == result["cra_recorded"]  # sound bound <= 1: the recorded certificates stand


def test_attacks_break_an_understated_certificate(data):
    model = small_convnet("aol", data)
    result = audit(model, "aol", data, {"lipschitz_bound": 0.05})  # a 1-Lipschitz model certified as 0.05
    assert result["violations"] > 0 and result["verdict"] == "violated"
    assert result["cra_sound_source"].startswith("recomputed")  # sound bound > the certificate's


@pytest.fixture(scope="module")
def broken_job(broken_layer, tmp_path_factory):
    config = JobConfig(layer="test-broken", size="XS", dataset="synthetic", budget="2s", budget_s=2.0,
                       batch_size=16, device="cpu", plugins=(str(BROKEN),))
    job_dir = tmp_path_factory.mktemp("jobs") / config.job_id
    job_dir.mkdir()
    (job_dir / "config.json").write_text(json.dumps({**vars(config), "plugins": list(config.plugins)}))
    assert run_job(config, job_dir)["status"] == "ok"
    return job_dir


def test_cli_audits_a_job_writes_its_record_and_exits_1(broken_job):
    result = subprocess.run([sys.executable, "-m", "lipbench", "audit", str(broken_job), "--json",
                             "--samples", "2", "--steps", "10", "--eval-points", "64", "--lower-points", "2",
                             "--lower-steps", "2", "--plugin", str(BROKEN)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 1, result.stderr
    assert "above its declared" in result.stderr  # training may shrink the product, never a layer's gain
    audit = json.loads(result.stdout)
    record = json.loads((broken_job / "record.json").read_text())
    assert record["status"] == "ok" and record["audit"] == {key: audit[key] for key in record["audit"]}
    for key in ("sound_bound", "lower_bound", "violations", "cra_sound", "seconds"):
        assert key in record["audit"]
    assert record["audit"]["verdict"] == "claim exceeded" and record["audit"]["claimed_bound"] == 1.0
    assert max(layer["bound"] for layer in record["audit"]["layers"]) > 1.05


def test_cli_user_errors_are_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "lipbench", "audit", str(tmp_path / "nope")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "does not exist" in result.stderr and "Traceback" not in result.stderr


def test_run_with_audit_records_it_and_the_report_flags_the_failure(tmp_path):
    common = ["--budget", "2s", "--layers", "test-broken", "--plugin", str(BROKEN), "--dataset", "synthetic",
              "--batch-size", "16", "--out", str(tmp_path)]
    first = subprocess.run([sys.executable, "-m", "lipbench", "run", *common], capture_output=True, text=True,
                           timeout=600)
    assert first.returncode == 0, first.stderr
    (record_path,) = tmp_path.glob("jobs/*/record.json")
    assert "audit" not in json.loads(record_path.read_text())
    again = subprocess.run([sys.executable, "-m", "lipbench", "run", *common, "--audit"], capture_output=True,
                           text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert "1 already done" in again.stdout and "auditing" in again.stdout  # audited without retraining
    audit = json.loads(record_path.read_text())["audit"]
    assert audit["verdict"] == "claim exceeded" and audit["violations"] == 0
    assert "FAILED" in (tmp_path / "report" / "leaderboard.md").read_text()


def test_lipnext_is_proved_layer_by_layer(data):
    """LipNeXt lists its linear maps: stem and head by impulse response, each block's shifted mixing as
    a circular convolution, all exact; so the model's certificate is proved, not taken on trust."""
    torch.manual_seed(0)
    model = create_model("lipnext", "L2W16", data.in_shape, data.n_classes)
    result = audit(model, "lipnext", data, {"lipschitz_bound": model.lipschitz_bound()})
    assert [row["how"] for row in result["layers"]] == ["impulse: exact"] * 4
    mixing, shape = model.blocks[0].mixing, (16, *model.blocks[0].position.shape[-2:])
    assert sound_layer_bound(mixing, shape, dense_limit=16).how == "fft circular: exact"  # wider models' path
    assert result["sound_bound_proved"] and result["verdict"] == "ok" and result["violations"] == 0
    assert result["lower_bound"] <= result["sound_bound"] == pytest.approx(1.0, abs=1e-5)
    for row in result["layers"]:
        assert row["bound"] == pytest.approx(row["declared"], rel=1e-6)


def test_a_claim_the_certificate_did_not_use_is_a_finding_not_a_failure(data):
    """RS-LMI-like: the method claims L = 0.5, the certificate used the sound 1 (AOL's): every certificate stands."""
    model = small_convnet("aol", data, head_bias=0.6)
    result = audit(model, "aol", data, {"lipschitz_bound": 1.0, "lipschitz_bound_claimed": 0.5})
    assert result["passed"] and result["verdict"] == "ok" and result["violations"] == 0
    assert result["claimed_bound"] == 0.5 and "exceeds the method's claim 0.5" in result["findings"][0]
    understated = audit(model, "aol", data, {"lipschitz_bound": 0.5, "lipschitz_bound_claimed": 0.5})
    assert not understated["passed"] and "exceeds the claimed 0.5" in understated["problems"][0]
