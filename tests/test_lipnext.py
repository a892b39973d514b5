"""LipNeXt (layers/lipnext.py): shift, β-Abs, L2 pooling, block and network gains, certificate, training hooks."""
from __future__ import annotations

import math

import pytest
import torch

import lipbench
from lipbench.bounds import operator_matrix, singular_values
from lipbench.errors import UserError
from lipbench.models.convnet import ConvNet
from lipbench.layers.lipnext import (BetaAbs, LipNeXt, LipNeXtBlock, OrthogonalLinear, ShiftedMixing, SpatialShift,
                                     certify, l2_pool, make_config, orthogonal_parameters, parse_size,
                                     shift_group_size)
from lipbench.registry import OptimizerSettings

TOLERANCE = 1e-5


def jacobian_singular_values(function, point: torch.Tensor) -> torch.Tensor:
    matrix = torch.autograd.functional.jacobian(lambda x: function(x[None])[0], point)
    return singular_values(matrix.reshape(-1, point.numel()))


def randomize_translations(module: torch.nn.Module, seed: int = 0) -> None:
    """Non-zero positional embeddings and biases, so that β-Abs sees both signs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if name.endswith("position") or name.endswith("bias"):
                parameter.copy_(torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))


@pytest.mark.parametrize("channels, alpha, expected", [(16, 1 / 16, 1), (64, 1 / 16, 4), (8, 1 / 16, 1),
                                                       (4, 1 / 16, 1), (100, 0.07, 7), (16, 0.0, 0), (12, 0.25, 3)])
def test_shift_group_sizes(channels, alpha, expected):
    assert shift_group_size(channels, alpha) == expected


@pytest.mark.parametrize("alpha", [0.0, 1 / 16, 1 / 8, 0.25])
def test_shift_is_a_permutation(alpha):
    shape = (16, 5, 4)
    matrix = operator_matrix(SpatialShift(alpha), shape)
    assert torch.equal(matrix.sum(dim=0), torch.ones(matrix.shape[1], dtype=matrix.dtype))
    assert torch.equal(matrix.sum(dim=1), torch.ones(matrix.shape[0], dtype=matrix.dtype))
    assert set(matrix.unique().tolist()) <= {0.0, 1.0}
    moved = int((matrix.diagonal() == 0).sum())
    assert moved == 4 * shift_group_size(16, alpha) * 5 * 4  # every shifted pixel moves (H, W > 2)
    x = torch.randn(3, *shape, dtype=torch.float64)
    shifted = SpatialShift(alpha)(x)
    assert torch.equal(shifted.flatten(1).sort(dim=1).values, x.flatten(1).sort(dim=1).values)  # norm kept exactly


def test_shift_directions():
    x = torch.arange(5 * 4, dtype=torch.float64).reshape(1, 1, 5, 4).repeat(1, 8, 1, 1)
    shifted = SpatialShift(1 / 8)(x)
    torch.testing.assert_close(shifted[0, 0], x[0, 0].roll(-1, 0))
    torch.testing.assert_close(shifted[0, 1], x[0, 1].roll(1, 0))
    torch.testing.assert_close(shifted[0, 2], x[0, 2].roll(-1, 1))
    torch.testing.assert_close(shifted[0, 3], x[0, 3].roll(1, 1))
    torch.testing.assert_close(shifted[0, 4:], x[0, 4:])


def test_beta_abs_and_l2_pool_are_1_lipschitz():
    generator = torch.Generator().manual_seed(0)
    x, y = (torch.randn(64, 8, 3, 3, generator=generator, dtype=torch.float64) for _ in range(2))
    activation = BetaAbs(0.75)
    assert (activation(x)[:, :6] >= 0).all() and torch.equal(activation(x)[:, 6:], x[:, 6:])
    for function in (activation, l2_pool):
        distance_in = (x - y).flatten(1).norm(dim=1)
        distance_out = (function(x) - function(y)).flatten(1).norm(dim=1)
        assert (distance_out <= distance_in * (1 + 1e-12)).all()
    torch.testing.assert_close(l2_pool(x).norm(dim=1), x.flatten(1).norm(dim=1))  # pooling keeps the norm


@pytest.mark.parametrize("in_features, out_features", [(6, 6), (4, 9), (9, 4)])
def test_semi_orthogonal_projection_has_unit_singular_values(in_features, out_features):
    torch.manual_seed(0)
    layer = OrthogonalLinear(in_features, out_features, bias=False).double()  # initialized in float32
    with torch.no_grad():
        sigma = singular_values(operator_matrix(layer, (in_features,)))
    assert len(sigma) == min(in_features, out_features)
    torch.testing.assert_close(sigma, torch.ones_like(sigma), rtol=0, atol=1e-6)
    assert layer.lipschitz_bound() == pytest.approx(float(sigma.max()), abs=1e-12)


@pytest.mark.parametrize("alpha", [0.0, 1 / 8, 1 / 4])
def test_block_jacobian_is_orthogonal(alpha):
    torch.manual_seed(0)
    block = LipNeXtBlock(8, alpha=alpha, image_size=(4, 3)).double()
    randomize_translations(block)
    generator = torch.Generator().manual_seed(1)
    for _ in range(2):
        sigma = jacobian_singular_values(block, torch.randn(8, 4, 3, generator=generator, dtype=torch.float64))
        assert sigma.max() <= block.lipschitz_bound() * (1 + 1e-12)
        assert sigma.max() <= 1 + TOLERANCE and sigma.min() >= 1 - TOLERANCE


def small_network(in_shape=(1, 6, 6), **options) -> LipNeXt:
    torch.manual_seed(0)
    config = make_config("L2W16", patch_size=4, alpha=1 / 8, **options)
    return LipNeXt(config, in_shape, 10).double()


@pytest.mark.parametrize("in_shape", [(1, 6, 6), (3, 8, 8)])
def test_network_gain_is_at_most_its_certificate(in_shape):
    network = small_network(in_shape)
    randomize_translations(network)
    certificate = certify(network)
    assert certificate["lipschitz_bound"] == pytest.approx(1.0, abs=1e-5)
    assert certificate["orthogonality_error"] < 1e-6
    generator = torch.Generator().manual_seed(2)
    for _ in range(2):
        sigma = jacobian_singular_values(network, torch.randn(*in_shape, generator=generator, dtype=torch.float64))
        assert sigma.max() <= certificate["lipschitz_bound"] * (1 + TOLERANCE)


def train_steps(network: torch.nn.Module, steps: int, lr: float, bf16: bool = False, steps_per_epoch: int = 100,
                **_: object) -> None:
    method = lipbench.get_method("lipnext")
    optimizer = method.optimizer(network, OptimizerSettings(lr, 0.9, 5e-4, steps_per_epoch, steps))
    generator = torch.Generator().manual_seed(3)
    parameter = next(network.parameters())
    for _ in range(steps):
        x = torch.randn(16, *network.in_shape, generator=generator).to(parameter.dtype)
        labels = torch.randint(0, 10, (16,), generator=generator)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(network(x).float(), labels)
        assert math.isfinite(loss.item())
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_certificate_after_optimizer_steps():
    network = small_network()
    train_steps(network, 30, lr=0.01, steps_per_epoch=20)
    certificate = certify(network)
    assert 0 < certificate["orthogonality_error"] < 1e-5
    assert 1.0 <= certificate["lipschitz_bound"] <= math.sqrt(1 + certificate["orthogonality_error"]) ** 20
    generator = torch.Generator().manual_seed(4)
    sigma = jacobian_singular_values(network, torch.randn(1, 6, 6, generator=generator, dtype=torch.float64))
    assert sigma.max() <= certificate["lipschitz_bound"] * (1 + TOLERANCE)


def test_bf16_autocast_training_stays_finite_and_on_the_manifold():
    errors = {}
    for bf16 in (False, True):
        network = small_network().float()
        train_steps(network, 5, lr=0.01, bf16=bf16)
        assert all(torch.isfinite(p).all() and p.dtype == torch.float32 for p in network.parameters())
        errors[bf16] = certify(network)["orthogonality_error"]
    assert errors[True] < 1e-5 and errors[True] < 2 * errors[False]  # bf16 compute, no extra drift


def test_optimizer_hook_groups_orthogonal_and_other_parameters():
    network = small_network()
    optimizer = lipbench.get_method("lipnext").optimizer(
        network, OptimizerSettings(0.1, 0.9, 5e-4, 50, 500, method="adam", lookahead_steps=3))
    orthogonal, others = optimizer.param_groups
    assert orthogonal["orthogonal"] and not others["orthogonal"]
    assert {id(p) for p in orthogonal["params"]} == {id(p) for p in orthogonal_parameters(network)}
    assert len(orthogonal["params"]) == 1 + 2 * 2 + 1  # stem, R and M per block, head
    assert orthogonal["weight_decay"] == 0 and others["weight_decay"] == 5e-4
    assert orthogonal["retraction_interval"] == 50 and orthogonal["lookahead_steps"] == 3  # one epoch < 100 steps
    assert orthogonal["method"] == others["method"] == "adam"
    long_epochs = lipbench.get_method("lipnext").optimizer(network, OptimizerSettings(0.1, 0.9, 0.0, 5000, 50000))
    assert long_epochs.param_groups[0]["retraction_interval"] == 100


@pytest.mark.parametrize("in_shape", [(1, 28, 28), (3, 32, 32)])
def test_model_builds_for_benchmark_inputs(in_shape):
    model = lipbench.create_model("lipnext", "XS", in_shape, 10, alpha="0")
    assert model.config.alpha == 0.0 and model.config.depth == 4 and model.config.width == 64
    assert model(torch.zeros(2, *in_shape)).shape == (2, 10)


def test_paper_sizes_build_without_memory():
    assert parse_size("L32W1024") == (32, 1024) and parse_size("S") == (8, 128)
    with torch.device("meta"):
        model = lipbench.create_model("lipnext", "L32W2048", (3, 32, 32), 1000)
    matrices = sum(p.numel() for p in orthogonal_parameters(model))
    assert matrices == 2 * 32 * 2048 ** 2 + 2048 ** 2 + 2048 ** 2  # blocks, stem (48 -> 2048), head
    assert set(lipbench.registry.model_family("lipnext").sizes) >= {"XS", "S", "L32W1024", "L32W2048"}


def test_bad_options_fail_clearly():
    with pytest.raises(UserError, match="unknown lipnext options"):
        lipbench.create_model("lipnext", "XS", (1, 28, 28), 10, gamma=1)
    with pytest.raises(UserError, match="size"):
        lipbench.create_model("lipnext", "XXL", (1, 28, 28), 10)
    with pytest.raises(ValueError, match="alpha"):
        lipbench.create_model("lipnext", "XS", (1, 28, 28), 10, alpha=0.5)


def test_registered_layers():
    assert isinstance(lipbench.create_layer("lipnext", "conv", 16, 16, 3, 1), LipNeXtBlock)
    assert isinstance(lipbench.create_layer("lipnext-shift", "conv", 16, 16, 3, 1), ShiftedMixing)
    assert isinstance(lipbench.create_layer("lipnext-shift", "conv", 16, 32, 1, 1), OrthogonalLinear)
    assert isinstance(lipbench.create_layer("lipnext-orth", "linear", 16, 8), OrthogonalLinear)
    with pytest.raises(ValueError, match="kernel_size"):
        lipbench.create_layer("lipnext", "conv", 16, 16, 1, 1)
    with pytest.raises(ValueError, match="kernel_size"):
        lipbench.create_layer("lipnext-orth", "conv", 16, 16, 3, 1)
    with pytest.raises(ValueError, match="width"):
        lipbench.create_layer("lipnext", "conv", 16, 32, 3, 1)


def test_convnet_of_shifted_mixing_trains_on_the_manifold():
    torch.manual_seed(0)
    model = ConvNet(lipbench.get_method("lipnext-shift"), 4, (1, 8, 8), 10).double()
    train_steps(model, 3, lr=0.01)
    certificate = lipbench.get_method("lipnext-shift").certificate(model)
    assert certificate["orthogonality_error"] < 1e-5
    assert certificate["lipschitz_bound"] == pytest.approx(1.0, abs=1e-4)
