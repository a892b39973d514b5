"""RS-LMI: the sketched penalty, and a certificate that does not trust the sketch."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import lipbench
from lipbench.bounds import operator_matrix, singular_values
from lipbench.layers.rslmi import orthonormal_sketch, psd_violation, sketched_layers, sketched_lmi
from lipbench.registry import create_model


@torch.no_grad()
def exact_norm(layer, input_shape) -> float:
    return float(singular_values(operator_matrix(layer.weight_map, input_shape)).max())


def dense_layer_with_spectrum(spectrum: torch.Tensor, **options):
    """An RS-LMI dense layer whose weight has the given singular values (float64)."""
    n = len(spectrum)
    layer = lipbench.create_layer("rslmi", "linear", n, n, **options).double()
    left, _, right = torch.linalg.svd(torch.randn(n, n, dtype=torch.float64))
    with torch.no_grad():
        layer.weight.copy_(left @ torch.diag(spectrum.double()) @ right.T)
    return layer


@pytest.mark.parametrize("channels, size, kernel, stride, slack", [
    (4, 8, 3, 1, 1.1), (3, 6, 3, 1, 1.1), (4, 8, 1, 1, 1.0), (4, 8, 3, 2, 2.0),
])
def test_sound_conv_bound_brackets_the_exact_norm(channels, size, kernel, stride, slack):
    torch.manual_seed(0)
    layer = lipbench.create_layer("rslmi", "conv", channels, channels, kernel, stride).double()
    with torch.no_grad():
        layer.weight.normal_()
    shape = (channels, size, size)
    exact = exact_norm(layer, shape)
    assert exact * (1 - 1e-9) <= layer.lipschitz_bound(shape) <= slack * exact * (1 + 1e-9)
    assert 0.999 * exact <= layer.power_iteration_norm(shape) <= exact * (1 + 1e-9)


def test_sound_dense_bound_is_the_exact_norm():
    torch.manual_seed(0)
    layer = lipbench.create_layer("rslmi", "linear", 16, 8).double()
    with torch.no_grad():
        layer.weight.normal_()
    assert layer.lipschitz_bound((16,)) == pytest.approx(exact_norm(layer, (16,)), rel=1e-9)


@pytest.mark.parametrize("tau_over_sigma_max_squared", [0.9, 0.99, 1.01, 1.1])
@torch.no_grad()
def test_full_sketch_is_the_exact_constraint(tau_over_sigma_max_squared):
    """m = n: Q^T (tau I - W^T W) Q has the eigenvalues of tau I - W^T W; a raw S has its inertia."""
    torch.manual_seed(0)
    layer = lipbench.create_layer("rslmi", "conv", 2, 2, 3, 1).double()
    shape = (2, 4, 4)
    with torch.no_grad():
        layer.weight.normal_()
    matrix = operator_matrix(layer.weight_map, shape)
    tau = torch.tensor(tau_over_sigma_max_squared * float(singular_values(matrix).max()) ** 2, dtype=torch.float64)
    exact = torch.linalg.eigvalsh(tau * torch.eye(matrix.shape[1], dtype=torch.float64) - matrix.T @ matrix)

    basis = orthonormal_sketch(shape, 10**6, layer.weight)
    assert basis.shape == (32, *shape)
    sketched = torch.linalg.eigvalsh(sketched_lmi(layer.weight_map, basis, tau))
    torch.testing.assert_close(sketched, exact, rtol=1e-9, atol=1e-9)

    raw = torch.randn(32, *shape, dtype=torch.float64)
    raw_min = float(torch.linalg.eigvalsh(sketched_lmi(layer.weight_map, raw, tau)).min())
    feasible = tau_over_sigma_max_squared >= 1
    assert (raw_min >= 0) == feasible == (float(exact.min()) >= 0)
    assert (float(psd_violation(sketched_lmi(layer.weight_map, basis, tau))) == 0) == feasible


def sigma_max_after_penalty_only_training(size: int, sketch_dim: int, steps: int) -> float:
    """Minimise the RS-LMI penalty alone (tau = 1 fixed) from a weight with singular values 0.2 ... 3."""
    torch.manual_seed(0)
    layer = dense_layer_with_spectrum(torch.linspace(0.2, 3.0, size), sketch_dim=sketch_dim, tau_weight=0.0)
    layer.log_tau.requires_grad_(False)
    optimizer = torch.optim.Adam([layer.weight], lr=0.02)
    for _ in range(steps):
        optimizer.zero_grad()
        layer.constraint_loss(psd_violation(layer.sketched_constraint((size,)))).backward()
        optimizer.step()
    return exact_norm(layer, (size,))


def test_full_sketch_penalty_drives_sigma_max_to_sqrt_tau():
    assert sigma_max_after_penalty_only_training(size=16, sketch_dim=16, steps=200) == pytest.approx(1.0, abs=0.02)


def test_small_sketch_leaves_sigma_max_above_sqrt_tau():
    """m << n: the penalty sees random directions only, so sigma_max drops from 3 but stalls above sqrt(tau) = 1."""
    assert 1.1 < sigma_max_after_penalty_only_training(size=32, sketch_dim=4, steps=150) < 2.0


def test_extra_loss_of_the_benchmark_model():
    torch.manual_seed(0)
    model = create_model("rslmi", "XS", (1, 8, 8), 10, sketch_dim=8, penalty_weight=5, tau_weight=0.5)
    layers = model.method_layers()
    loss = lipbench.get_method("rslmi").extra_loss(model)
    loss.backward()
    assert loss.item() == pytest.approx(0.5 * len(layers), rel=1e-5)  # tau = 1 and W feasible at init
    assert all(layer.log_tau.grad is not None and layer.weight.grad is not None for layer in layers)
    assert sketched_layers(model) is sketched_layers(model)  # traced once, not every step


class TinyNet(nn.Sequential):
    """The two things a certificate needs of a model: ``in_shape`` and ``method_layers()``."""

    in_shape = (2, 6, 6)

    def __init__(self, **options):
        conv = lipbench.create_layer("rslmi", "conv", 2, 2, 3, 1, **options)
        dense = lipbench.create_layer("rslmi", "linear", 72, 72, **options)
        super().__init__(conv, nn.Flatten(), dense)

    def method_layers(self):
        return [self[0], self[2]]


def test_certificate_is_sound_and_reports_the_claim():
    torch.manual_seed(0)
    model = TinyNet(sketch_dim=8, penalty_weight=5, tau_weight=0.5).double()
    conv, dense = model.method_layers()
    with torch.no_grad():
        conv.log_tau.fill_(math.log(0.25))  # claims sqrt(tau) = 0.5 for a conv of norm 1 (Dirac)
        dense.weight.mul_(3.0)  # norm 3, still claimed 1
    certificate = lipbench.get_method("rslmi").certificate(model)
    exact = exact_norm(conv, (2, 6, 6)) * exact_norm(dense, (72,))
    assert certificate["lipschitz_bound"] == pytest.approx(3.0, rel=1e-5)
    assert certificate["lipschitz_bound"] >= exact * (1 - 1e-9)
    assert certificate["lipschitz_bound_claimed"] == pytest.approx(0.5)
    assert certificate["claim_exceeded"] is True
    assert certificate["sound_over_claimed"] == pytest.approx(6.0, rel=1e-5)
    assert certificate["worst_layer_norm_over_sqrt_tau"] == pytest.approx(3.0, rel=1e-5)
    assert certificate["layers_violating_claim"] == 2
    assert certificate["sound_over_power_iteration"] == pytest.approx(1.0, abs=1e-3)
    assert (certificate["sketch_dim"], certificate["penalty_weight"], certificate["tau_weight"]) == (8, 5.0, 0.5)

    with torch.no_grad():
        conv.log_tau.fill_(math.log(4.0))
        dense.log_tau.fill_(math.log(16.0))  # claims 2 * 4 = 8 >= the sound 3
    certificate = lipbench.get_method("rslmi").certificate(model)
    assert certificate["lipschitz_bound_claimed"] == pytest.approx(8.0)
    assert certificate["claim_exceeded"] is False
    assert certificate["layers_violating_claim"] == 0


def test_settings_are_validated():
    with pytest.raises(ValueError, match="sketch_dim"):
        lipbench.create_layer("rslmi", "linear", 4, 4, sketch_dim=0)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_diverged_weights_give_a_nan_penalty_not_a_lapack_error(bad):
    """A non-finite sketched matrix (diverged weights) must surface as a NaN loss, which training reports."""
    matrix = torch.eye(4)
    matrix[1, 2] = matrix[2, 1] = bad
    assert torch.isnan(psd_violation(matrix))
    assert float(psd_violation(-torch.eye(4))) == pytest.approx(4.0)
