import pytest
import torch

from lipbench.bounds import singular_values
from lipbench.blocks import MaxMin
from lipbench.contracts import count_parameters
from lipbench.registry import create_model


@pytest.mark.parametrize("size, millions", [("XS", 1.57), ("S", 6.28), ("M", 25.1)])
def test_parameter_counts_match_the_paper(size, millions):
    model = create_model("aol", size, (3, 32, 32), 10)
    assert count_parameters(model) / 1e6 == pytest.approx(millions, rel=2e-3)


@pytest.mark.parametrize("in_shape, n_classes", [((1, 28, 28), 10), ((3, 32, 32), 100), ((3, 20, 36), 7)])
def test_any_input_shape_gives_logits(in_shape, n_classes):
    model = create_model("aol", "XS", in_shape, n_classes)
    assert model(torch.rand(2, *in_shape)).shape == (2, n_classes)


def test_maxmin_permutes_values_and_preserves_gradient_norm():
    x = torch.randn(3, 8, 4, 4, requires_grad=True)
    y = MaxMin()(x)
    assert torch.equal(y.sort(dim=1).values, x.sort(dim=1).values)
    with torch.no_grad():  # the inference path computes the same values
        assert torch.equal(MaxMin()(x), y)
    grad = torch.randn_like(y)
    (g,) = torch.autograd.grad(y, x, grad)
    assert g.norm() == pytest.approx(float(grad.norm()), rel=1e-6)


def test_whole_aol_model_is_one_lipschitz_on_random_directions():
    torch.manual_seed(0)
    model = create_model("aol", "XS", (1, 8, 8), 10).double().eval()
    assert model.lipschitz_bound() == 1.0
    x = torch.rand(64, 1, 8, 8, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda v: model(v[None])[0], x[0]).reshape(10, -1)
    assert float(singular_values(jac).max()) <= 1 + 1e-9
    delta = 1e-3 * torch.randn_like(x)
    with torch.no_grad():
        ratios = (model(x + delta) - model(x)).norm(dim=1) / delta.flatten(1).norm(dim=1)
    assert float(ratios.max()) <= 1 + 1e-9


def test_standard_model_bound_is_sound():
    torch.manual_seed(0)
    model = create_model("standard", "XS", (1, 8, 8), 10).double().eval()
    bound = model.lipschitz_bound()
    assert bound > 1 and len(model.method_layers()) == 1 + 5 * 5 + 1
    x = torch.rand(1, 8, 8, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda v: model(v[None])[0], x).reshape(10, -1)
    assert float(singular_values(jac).max()) <= bound
