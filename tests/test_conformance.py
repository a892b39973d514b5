"""The conformance suite: every registered layer (built-in or plugin) proves its promises here.

* Exact operator norm: the Jacobian (exact, by automatic differentiation at two points, for
  nonlinear layers too) on small shapes has sigma_max <= the declared bound x (1 + tolerance), at
  initialization and after 20 SGD steps at a large learning rate that push the gain up.
* Orthogonal methods: sigma_min >= 1 - tolerance as well (square layers, stride 1).
* Eval output equals a recomputation from the current parameters (no stale cache).
* state_dict round-trips; float64 works; output shapes are right; unsupported options fail
  at construction with ValueError.
* Every model family (and every method in its own family) builds a CertifiableModel whose
  certificate bounds the difference quotients of random pairs of points.
"""
from __future__ import annotations

import math

import pytest
import torch

import lipbench
from lipbench.bounds import singular_values
from lipbench.certify import certificate, certify_and_measure
from lipbench.datasets.synthetic import make_synthetic
from lipbench.settings import TrainSettings
from lipbench.train import train
from lipbench.errors import UserError
from small_models import skip_without_extra, smallest_model
from lipbench.contracts import CertifiableModel, layer_bound

CONV_CASES = [  # (channels, image size, kernel size, stride)
    (4, 8, 3, 1),
    (8, 6, 3, 1),
    (4, 8, 1, 1),
    (4, 8, 3, 2),
]
LINEAR_CASES = [(16, 16), (16, 8)]
TRAIN_STEPS, TRAIN_LR = 20, 0.1


def cases():
    for name in lipbench.list_layers():
        method = lipbench.get_method(name)
        if "conv" in method.kinds:
            for channels, size, kernel, stride in CONV_CASES:
                if stride in method.strides:
                    yield pytest.param(name, "conv", (channels, channels, kernel, stride), (channels, size, size),
                                       id=f"{name}-conv-c{channels}-s{size}-k{kernel}-st{stride}")
        if "linear" in method.kinds:
            for n_in, n_out in LINEAR_CASES:
                yield pytest.param(name, "linear", (n_in, n_out, None, None), (n_in,),
                                   id=f"{name}-linear-{n_in}to{n_out}")


def build(name, kind, arguments):
    torch.manual_seed(0)
    in_channels, out_channels, kernel, stride = arguments
    try:
        layer = lipbench.create_layer(name, kind, in_channels, out_channels, kernel, stride)
    except ValueError as error:  # an unsupported option must fail here, clearly
        assert str(error), "construction errors must say what is unsupported"
        pytest.skip(f"{name} does not support {kind} {arguments}: {error}")
    except UserError as error:  # an optional dependency that is not installed
        skip_without_extra(error)
    return layer.double()


def jacobian(layer, point):
    return torch.autograd.functional.jacobian(lambda x: layer(x[None])[0], point).reshape(-1, point.numel())


def check_gain(layer, name, input_shape):
    method = lipbench.get_method(name)
    bound = layer_bound(layer, input_shape, method.bound)
    tolerance = 1e-5 if method.exact else method.tolerance
    generator = torch.Generator().manual_seed(1)
    for _ in range(2):  # nonlinear layers (CPL, SLL) have a different Jacobian at every point
        point = torch.randn(*input_shape, generator=generator, dtype=torch.float64)
        matrix = jacobian(layer, point)
        sigma = singular_values(matrix)
        assert sigma.max() <= bound * (1 + tolerance), f"sigma_max {sigma.max():.8f} > bound {bound:.8f}"
        if method.orthogonal and matrix.shape[0] == matrix.shape[1]:
            assert sigma.min() >= 1 - tolerance, f"orthogonal layer has sigma_min {sigma.min():.8f}"


def push_gain_up(layer, input_shape):
    optimizer = torch.optim.SGD(layer.parameters(), lr=TRAIN_LR)
    generator = torch.Generator().manual_seed(2)
    layer.train()
    for _ in range(TRAIN_STEPS):
        x = torch.randn(8, *input_shape, generator=generator, dtype=torch.float64)
        loss = -(layer(x).pow(2).sum() / x.pow(2).sum())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def output_shape(kind, arguments, input_shape):
    _, out_channels, _, stride = arguments
    if kind == "linear":
        return (3, out_channels)
    size = math.ceil(input_shape[-1] / stride)
    return (3, out_channels, size, size)


@pytest.mark.parametrize("name, kind, arguments, input_shape", list(cases()))
def test_bound_holds_before_and_after_training(name, kind, arguments, input_shape):
    layer = build(name, kind, arguments)
    layer.eval()
    check_gain(layer, name, input_shape)
    push_gain_up(layer, input_shape)
    layer.eval()
    check_gain(layer, name, input_shape)
    layer.train()
    check_gain(layer, name, input_shape)


@pytest.mark.parametrize("name, kind, arguments, input_shape", list(cases()))
def test_eval_output_is_never_stale(name, kind, arguments, input_shape):
    layer = build(name, kind, arguments)
    x = torch.randn(3, *input_shape, dtype=torch.float64)
    layer.eval()
    before = layer(x)
    assert before.shape == output_shape(kind, arguments, input_shape)
    push_gain_up(layer, input_shape)  # trains, so parameters (and any buffers) change
    layer.eval()
    after = layer(x)
    assert not torch.allclose(before, after), "training steps did not change the eval output: stale cache?"
    fresh = build(name, kind, arguments)
    fresh.load_state_dict(layer.state_dict())  # the state_dict round-trips
    fresh.eval()
    torch.testing.assert_close(fresh(x), after, rtol=1e-9, atol=1e-9)
    with torch.no_grad():  # an in-place update while in eval mode must invalidate the cache too
        for parameter in layer.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    fresh.load_state_dict(layer.state_dict())
    torch.testing.assert_close(layer(x), fresh(x), rtol=1e-9, atol=1e-9)
    assert layer(x).dtype == torch.float64


@pytest.mark.parametrize("name", lipbench.list_layers())
def test_unsupported_options_fail_at_construction(name):
    method = lipbench.get_method(name)
    if "conv" in method.kinds and 3 not in method.strides:
        with pytest.raises(ValueError, match="stride"):
            lipbench.create_layer(name, "conv", 4, 4, 3, 3)
    for kind in set(lipbench.registry.KINDS) - set(method.kinds):
        with pytest.raises(ValueError, match=kind):
            lipbench.create_layer(name, kind, 4, 4, 3, 1)


def model_cases():
    """Every method in its own model family, and every family with one method it takes."""
    cases = {(lipbench.get_method(name).model, name) for name in lipbench.list_layers()}
    for family in lipbench.registry.MODELS.in_order():
        takers = family.methods or [name for name in lipbench.list_layers()
                                    if set(family.kinds) <= set(lipbench.get_method(name).kinds)]
        if takers and not any(model == family.name for model, _ in cases):
            cases.add((family.name, takers[0]))
    return [pytest.param(model, name, id=f"{model}-{name}") for model, name in sorted(cases)]


@pytest.mark.parametrize("model_name, name", model_cases())
def test_every_model_is_certifiable_and_its_bound_holds(model_name, name):
    torch.manual_seed(0)
    in_shape = (1, 16, 16)
    model = smallest_model(name, in_shape, 4, model_name).double().eval()
    assert isinstance(model, CertifiableModel) and tuple(model.in_shape) == in_shape
    layers = model.method_layers()
    submodules = {id(module) for module in model.modules()}
    assert layers and all(id(layer) in submodules for layer in layers)
    method = lipbench.get_method(name)
    bound = certificate(model, method)[0]["lipschitz_bound"]
    assert math.isfinite(bound) and bound > 0
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(16, *in_shape, generator=generator, dtype=torch.float64)
    y = x + 0.05 * torch.randn(x.shape, generator=generator, dtype=torch.float64)
    with torch.no_grad():
        ratios = (model(x) - model(y)).flatten(1).norm(dim=1) / (x - y).flatten(1).norm(dim=1)
    tolerance = 1e-5 if method.exact else method.tolerance
    assert float(ratios.max()) <= bound * (1 + tolerance), f"a pair of points stretches by {float(ratios.max())}"


@pytest.mark.parametrize("name", lipbench.list_layers())
def test_every_method_trains_under_bf16_autocast_and_certifies(name):
    torch.manual_seed(0)
    data = make_synthetic(n_train=64, n_test=32, n_classes=4, size=16)
    method = lipbench.get_method(name)
    model = smallest_model(name, data.in_shape, data.n_classes)
    dtypes = {key: tensor.dtype for key, tensor in model.state_dict().items()}
    settings = TrainSettings(budget_s=300, batch_size=16, lr=0.01, precision="bf16", max_steps=5)
    report = train(model, method, data, settings, torch.device("cpu"))
    assert report.steps == 5
    assert {key: tensor.dtype for key, tensor in model.state_dict().items()} == dtypes, "autocast changed a dtype"
    measured, _ = certify_and_measure(model, method, data, 32, torch.device("cpu"))
    assert math.isfinite(measured["lipschitz_bound"]) and 0 <= measured["cra_36"] <= measured["clean_acc"] <= 1
