"""LipSDP (lipbench.lipsdp), the mlp family and liploop: verified bounds against brute force, rejected
certificates, ADMM reaching its target, and the one-line message without cvxpy."""
from __future__ import annotations

import builtins
import math

import numpy as np
import pytest
import torch

import lipbench
from lipbench import lipsdp
from lipbench.errors import UserError
from lipbench.registry import OptimizerSettings


def tiny_weights(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((6, 2)), rng.standard_normal((6, 6)) / 2, rng.standard_normal((1, 6))]


def relu_network(weights: list[np.ndarray], points: np.ndarray) -> np.ndarray:
    biases = np.random.default_rng(1).standard_normal(sum(w.shape[0] for w in weights[:-1]))
    x, start = points, 0
    for w in weights[:-1]:
        x = np.maximum(x @ w.T + biases[start:start + w.shape[0]], 0)
        start += w.shape[0]
    return x @ weights[-1].T


def brute_force_lipschitz(weights: list[np.ndarray]) -> float:
    """max over a fine grid of the 2-D input of the gradient norm: the exact constant of a piecewise-linear
    map on the grid's linear regions (each region's gradient, by finite differences inside it)."""
    grid = np.linspace(-4, 4, 401)
    points = np.stack(np.meshgrid(grid, grid), -1).reshape(-1, 2)
    step = 1e-7
    values = relu_network(weights, points)[:, 0]
    gradient = np.stack([(relu_network(weights, points + step * e)[:, 0] - values) / step for e in np.eye(2)], -1)
    return float(np.linalg.norm(gradient, axis=1).max())


def test_verified_bound_lies_between_the_exact_constant_and_the_product_of_norms():
    pytest.importorskip("cvxpy")
    weights = tiny_weights()
    certificate = lipsdp.solve(weights)
    assert certificate is not None
    exact = brute_force_lipschitz(weights)
    assert exact * (1 - 1e-6) <= certificate.bound <= lipsdp.product_of_norms(weights)
    assert certificate.bound < 0.8 * lipsdp.product_of_norms(weights)  # LipSDP is much tighter here
    assert certificate.min_eigenvalue >= certificate.tolerance > 0


def test_a_perturbed_certificate_is_rejected_or_inflated():
    pytest.importorskip("cvxpy")
    weights = tiny_weights()
    certificate = lipsdp.solve(weights)
    arrays = lipsdp.as_float64(weights)
    schur = (lipsdp.hidden_blocks(arrays, certificate.multipliers)
             - lipsdp.input_coupling(arrays, certificate.multipliers) / (0.9 * certificate.rho))
    assert np.linalg.eigvalsh(schur)[0] < 0  # rho shrunk by 10 %: the LMI is not PSD, no proof there
    last = [lam.copy() for lam in certificate.multipliers]
    last[-1][:] = 0  # T_l = 0 makes the last block -W_l^T W_l: no rho proves anything
    assert lipsdp.verify(weights, last) is None
    again = lipsdp.verify(weights, certificate.multipliers)
    assert certificate.bound * (1 - 1e-3) <= again.bound <= certificate.bound * (1 + 1e-9)  # its own proof stands


def test_lipsdp_of_a_one_layer_relu_net_with_orthogonal_weights():
    weights = [np.eye(3), np.eye(3)]  # relu(x): exactly 1-Lipschitz; rho >= lambda^2 / (2 lambda - 1), least at 1
    certificate = lipsdp.verify(weights, [np.ones(3)])
    assert certificate.bound == pytest.approx(1.0, rel=1e-5) and certificate.bound >= 1.0
    assert lipsdp.verify(weights, [np.full(3, 2.0)]).bound == pytest.approx(math.sqrt(4 / 3), rel=1e-5)


def test_mlp_family_sizes_and_certificates_for_several_methods():
    for name in ("standard", "aol", "rslmi"):
        model = lipbench.create_model(name, "1x16", (1, 4, 4), 3, model="mlp").double()
        assert [tuple(layer.weight.shape) for layer in model.dense] == [(16, 16), (3, 16)]
        assert model.lipsdp_layers() is not None
        x = torch.randn(5, 1, 4, 4, dtype=torch.float64)
        assert model(x).shape == (5, 3)
    assert lipbench.create_model("standard", "L", (1, 28, 28), 10, model="mlp").dense[1].weight.shape == (1000, 1000)
    with pytest.raises(UserError, match="no size"):
        lipbench.create_model("standard", "wide", (1, 28, 28), 10, model="mlp")


def test_lipsdp_of_an_aol_mlp_uses_its_rescaled_weights():
    pytest.importorskip("cvxpy")
    torch.manual_seed(0)
    model = lipbench.create_model("aol", "1x8", (4,), 2, model="mlp")
    certificate = lipsdp.model_certificate(model)
    assert certificate is not None and certificate.bound <= model.lipschitz_bound() * (1 + 1e-6)
    assert lipsdp.audit_fields(model)["lipsdp_bound"] == pytest.approx(certificate.bound, rel=1e-6)


def test_admm_drives_the_residual_down_and_the_bound_to_the_target():
    pytest.importorskip("cvxpy")
    torch.manual_seed(0)
    model = lipbench.create_model("liploop", "1x8", (2,), 1, target=1.0, interval=5)
    optimizer = lipbench.get_method("liploop").optimizer(model, OptimizerSettings(0.01, 0.9, 0.0, 10, 10))
    generator = torch.Generator().manual_seed(1)
    for _ in range(300):  # fit y = 3 x_0, a 3-Lipschitz target, under L = 1
        x = torch.randn(64, 2, generator=generator)
        loss = (model(x)[:, 0] - 3 * x[:, 0]).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    certificate = lipbench.get_method("liploop").certificate(model)
    assert certificate["admm_residual"] < 0.02
    assert 0.9 <= certificate["lipsdp_bound"] <= 1.05  # pulled up by the loss, held at the target
    assert certificate["lipschitz_bound"] <= certificate["lipschitz_bound_product_of_norms"]


def test_without_cvxpy_liploop_and_the_audit_say_how_to_install(monkeypatch):
    real_import = builtins.__import__

    def no_cvxpy(name, *args, **kwargs):
        if name == "cvxpy" or name.startswith("cvxpy."):
            raise ImportError("no cvxpy")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_cvxpy)
    with pytest.raises(UserError, match=r"pip install -e '\.\[sdp\]'") as error:
        lipbench.create_model("liploop", "1x8", (2,), 1)
    assert "\n" not in str(error.value)
    model = lipbench.create_model("standard", "1x8", (2,), 2, model="mlp")
    fields = lipsdp.audit_fields(model)
    assert "pip install -e '.[sdp]'" in fields["lipsdp_skipped"] and "lipsdp_bound" not in fields
    assert math.isfinite(model.lipschitz_bound())  # everything else works
