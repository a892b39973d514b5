"""LiResNet's linear residual blocks, Cholesky dense layers and network; AOC's strided orthogonal convs."""
import sys

import pytest
import torch
import torch.nn.functional as F

import lipbench
from lipbench.audit import audit_model
from lipbench.audit.bounds import sound_layer_bound
from lipbench.bounds import conv_norm, operator_matrix, singular_values, strided_circular_conv_norm
from lipbench.datasets.synthetic import make_synthetic
from lipbench.errors import UserError
from lipbench.layers.liresnet import CHOLESKY_REGULARIZATION, CholeskyLinear, LiResConv2d
from lipbench.models.convnet import ConvNet
from lipbench.models.liresnet import parse_size
from lipbench.settings import TrainSettings
from lipbench.train import train

REFERENCE_L12W512_PARAMETERS = 82_944_010  # hukkai/liresnet GloroNet(depth=12, width=512), CIFAR-10
QUICK_AUDIT = dict(samples=2, steps=10, eval_points=32, lower_points=2, lower_steps=2, dense_limit=64)


@torch.no_grad()
def linear_matrix(layer, shape):
    offset = layer(torch.zeros(1, *shape, dtype=torch.float64))
    return operator_matrix(lambda x: layer(x) - offset, shape)


def sigma_max(layer, shape):
    return float(singular_values(linear_matrix(layer, shape)).max())


def gain_within_bound_in_both_modes(model, x, y) -> float:
    """Difference quotients between nearby points within the model's bound, in training and eval mode;
    returns the eval-mode bound."""
    for mode in (True, False):
        model.train(mode)
        bound = model.lipschitz_bound()
        with torch.no_grad():
            ratio = (model(x) - model(y)).norm(dim=1) / (x - y).flatten(1).norm(dim=1)
        assert float(ratio.max()) <= bound * (1 + 1e-9)
    return bound

def test_block_is_x_plus_a_convolution_divided_by_its_norm():
    torch.manual_seed(0)
    block = LiResConv2d(4, 4, 3, residual_scale=0.5).double().eval()
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64)
    kernel = block.weight * block.gain[:, None, None, None]
    with torch.no_grad():
        divisor = float(block.divisor(block.kernel(), (6, 6)))
    expected = (x + 0.5 * F.conv2d(x, kernel, padding=1)) / divisor + block.bias[:, None, None]
    torch.testing.assert_close(block(x), expected, rtol=1e-12, atol=1e-12)
    exact = sigma_max(block, (4, 6, 6))
    assert exact <= 1 + 1e-12 and divisor >= conv_norm(block.kernel(), (6, 6))  # eval: 1-Lipschitz by proof


def test_block_bound_holds_when_power_iteration_has_not_converged():
    """A large random W and a fresh (unconverged) power vector: the training-mode estimate falls short of
    ||K||, the layer is expansive and says by how much; in eval mode it is 1-Lipschitz regardless."""
    torch.manual_seed(1)
    block = LiResConv2d(4, 4, 3).double()
    with torch.no_grad():
        block.weight.normal_(0, 1.0)
        block.power_vector.normal_().div_(block.power_vector.norm())
    block.train()
    shape = (4, 6, 6)
    kernel_norm = sigma_max(lambda x: F.conv2d(x, block.kernel(), padding=1), shape)
    estimate = float(block.estimate(block.kernel()).detach())
    assert estimate < 0.9 * kernel_norm  # not converged: the test exercises the short estimate
    declared = block.lipschitz_bound(shape)
    assert declared > 1.1
    with torch.no_grad():
        trained_gain = sigma_max(block, shape)  # the forward advances u; the bound taken before still holds
    assert trained_gain <= declared * (1 + 1e-12)
    block.eval()
    assert sigma_max(block, shape) <= block.lipschitz_bound(shape) * (1 + 1e-12) <= 1 + 1e-12
    assert block.lipschitz_bound(shape) > 0.95  # and tight: the bound is the norm's, not a loose one


@pytest.mark.parametrize("stride, kernel_size, padding", [(2, 3, 1), (2, 5, 2), (2, 2, 0), (3, 3, 1)])
def test_strided_norm_is_exact_on_polyphase_components(stride, kernel_size, padding):
    torch.manual_seed(2)
    kernel = torch.randn(3, 2, kernel_size, kernel_size, dtype=torch.float64)
    size = 6 * stride // 2 if stride == 2 else 9
    circular = lambda x: F.conv2d(F.pad(x, (padding,) * 4, mode="circular"), kernel, stride=stride)  # noqa: E731
    exact = sigma_max(circular, (2, size, size))
    assert strided_circular_conv_norm(kernel, stride, padding, size, size) == pytest.approx(exact, rel=1e-10)
    stem = LiResConv2d(2, 3, kernel_size, stride=stride) if kernel_size % 2 else None
    if stem is not None:  # the zero-padded stem's sound bound sits above its exact norm
        stem = stem.double().eval()
        with torch.no_grad():
            stem.weight.copy_(kernel)
        zero_padded = sigma_max(lambda x: F.conv2d(x, kernel, stride=stride, padding=padding), (2, size, size))
        assert zero_padded <= stem.norm_bound((size, size)) * (1 + 1e-12) < conv_norm(kernel, (size, size))


@pytest.mark.parametrize("in_features, out_features", [(8, 8), (12, 5), (5, 12)])
def test_cholesky_dense_layer_is_nearly_orthogonal_and_below_one(in_features, out_features):
    torch.manual_seed(3)
    layer = CholeskyLinear(in_features, out_features, residual_scale=0.7).double().eval()
    with torch.no_grad():
        layer.free.normal_()
    values = singular_values(layer.orthogonal_weight())
    free = layer.free * layer.gain[:, None]
    if in_features == out_features:
        free = torch.eye(in_features, dtype=free.dtype) + 0.7 * free
    gram_values = singular_values(free).square()
    regularization = CHOLESKY_REGULARIZATION * gram_values.mean()  # the mean of the Gram diagonal
    expected = (gram_values / (gram_values + regularization)).sqrt()
    torch.testing.assert_close(values.sort().values, expected.sort().values, rtol=1e-9, atol=1e-12)
    assert float(values.max()) < 1 and float(values.min()) > 0.9
    assert layer.lipschitz_bound(()) == pytest.approx(float(values.max()), rel=1e-12)


def test_paper_sizes_and_parameter_count():
    assert parse_size("XS") == (4, 32, 256, 2) and parse_size("L12W512") == (12, 512, 2048, 8)
    with torch.device("meta"):
        model = lipbench.create_model("liresnet", "L12W512", (3, 32, 32), 10)
    count = sum(p.numel() for p in model.parameters())
    assert abs(count - REFERENCE_L12W512_PARAMETERS) <= 1e-4 * REFERENCE_L12W512_PARAMETERS
    assert lipbench.registry.model_family("liresnet").sizes[:4] == ("XS", "S", "M", "L")
    with pytest.raises(UserError, match="unknown liresnet options"):
        lipbench.create_model("liresnet", "XS", (1, 28, 28), 10, gamma=1)
    with torch.device("meta"):
        imagenet = lipbench.create_model("liresnet", "L12W588", (3, 224, 224), 1000)
    assert imagenet.stem[1].downscale_factor == 14  # the reference's patch stem, 588 = 3 * 14^2


def tiny_liresnet(data):
    torch.manual_seed(0)
    return lipbench.create_model("liresnet", "L2W8", data.in_shape, data.n_classes, neck_width=32, dense_layers=1)


def test_network_gain_is_at_most_its_certificate_in_training_and_eval():
    data = make_synthetic(n_train=8, n_test=8, n_classes=4, size=16)
    model = tiny_liresnet(data).double()
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(8, *data.in_shape, generator=generator, dtype=torch.float64)
    y = x + 0.05 * torch.randn(x.shape, generator=generator, dtype=torch.float64)
    bound = gain_within_bound_in_both_modes(model, x, y)
    assert bound <= 1 + 1e-9


def test_audit_of_a_trained_liresnet_proves_every_layer():
    torch.manual_seed(0)
    data = make_synthetic(n_train=128, n_test=64, n_classes=4, size=16)
    model = tiny_liresnet(data)
    method = lipbench.get_method("liresnet")
    train(model, method, data, TrainSettings(budget_s=60, batch_size=32, lr=0.05, max_steps=4), torch.device("cpu"))
    model.eval()
    result = audit_model(model, method, data, {"lipschitz_bound": model.lipschitz_bound()}, torch.device("cpu"),
                         **QUICK_AUDIT)
    assert result["violations"] == 0 and result["sound_bound_proved"] and result["passed"]
    assert all(row["proved"] for row in result["layers"])
    assert result["layers"][0]["how"].startswith("stride 2 polyphase")  # the stem
    assert result["lower_bound"] <= result["sound_bound"] <= 1 + 1e-6


def test_aoc_is_orthogonal_at_stride_2_and_the_audit_proves_it():
    pytest.importorskip("orthogonium")
    torch.manual_seed(5)
    layer = lipbench.create_layer("aoc", "conv", 4, 16, 3, 2).double().eval()  # 4 x 8 x 8 -> 16 x 4 x 4: square
    values = singular_values(linear_matrix(layer, (4, 8, 8)))
    assert values.numel() == 256 and float(values.min()) >= 1 - 1e-6 and float(values.max()) <= 1 + 1e-6
    assert layer.lipschitz_bound((4, 8, 8)) == pytest.approx(float(values.max()), rel=1e-9)
    audited = sound_layer_bound(layer, (4, 8, 8), dense_limit=16)
    assert audited.how == "stride 2 polyphase, fft circular: exact" and audited.proved
    assert audited.bound == pytest.approx(float(values.max()), rel=1e-9)


def test_aoc_convnet_audit_has_no_violations():
    pytest.importorskip("orthogonium")
    torch.manual_seed(0)
    data = make_synthetic(n_train=128, n_test=64, n_classes=4, size=16)
    method = lipbench.get_method("aoc")
    model = ConvNet(method, 4, data.in_shape, data.n_classes)  # the XS layout at a quarter of the width
    train(model, method, data, TrainSettings(budget_s=60, batch_size=32, lr=0.05, max_steps=4), torch.device("cpu"))
    model.eval()
    result = audit_model(model, method, data, {"lipschitz_bound": model.lipschitz_bound()}, torch.device("cpu"),
                         **QUICK_AUDIT)
    assert result["violations"] == 0 and result["sound_bound_proved"] and result["passed"]
    assert 1 - 1e-6 <= result["sound_bound"] <= model.lipschitz_bound()  # float64 vs the float32 kernels


def test_aoc_without_orthogonium_says_how_to_install(monkeypatch):
    for name in ["orthogonium", *(n for n in sys.modules if n.startswith("orthogonium."))]:
        monkeypatch.setitem(sys.modules, name, None)  # makes `import orthogonium...` fail
    with pytest.raises(UserError, match=r"pip install -e '\.\[orthogonium\]'"):
        lipbench.create_layer("aoc", "conv", 4, 4, 3, 1)
    assert "aoc" in lipbench.list_layers()


@pytest.mark.parametrize("name", ["liresnet", "aoc"])
def test_common_convnet_of_each_layer_is_bounded_by_its_certificate(name):
    if name == "aoc":
        pytest.importorskip("orthogonium")
    torch.manual_seed(0)
    model = ConvNet(lipbench.get_method(name), 4, (1, 16, 16), 4).double()
    generator = torch.Generator().manual_seed(6)
    x = torch.randn(8, 1, 16, 16, generator=generator, dtype=torch.float64)
    y = x + 0.05 * torch.randn(x.shape, generator=generator, dtype=torch.float64)
    bound = gain_within_bound_in_both_modes(model, x, y)
    assert bound <= 1 + 1e-9  # eval mode: 1-Lipschitz by proof
