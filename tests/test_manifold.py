"""The Riemannian optimizer of lipbench.manifold: FastExp's error, drift, retraction, lookahead, Euclidean parity."""
from __future__ import annotations

import pytest
import torch

from lipbench.linalg import orthogonality_error, polar, skew, taylor_polynomial, taylor_tail_bound
from lipbench.manifold import (RiemannianOptimizer, TAYLOR_ORDERS, fast_exp, squarings, taylor_order,
                               tangent_projection, with_tangent_gradient)


def random_skew(size: int, norm: float, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    matrix = skew(torch.randn(size, size, generator=generator, dtype=torch.float64))
    return matrix * (norm / torch.linalg.matrix_norm(matrix))


def random_orthogonal(size: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(size, size, generator=generator, dtype=torch.float64))[0].to(dtype)


@pytest.mark.parametrize("norm, order", [(0.01, 2), (0.0499, 2), (0.0501, 3), (0.2499, 3), (0.2501, 4), (0.999, 4)])
def test_fast_exp_is_within_its_truncation_error(norm, order):
    matrix = random_skew(16, norm)
    assert taylor_order(norm) == order
    exact = torch.linalg.matrix_exp(matrix)
    approximate = fast_exp(matrix)
    error = float(torch.linalg.matrix_norm(approximate - exact))
    torch.testing.assert_close(approximate, taylor_polynomial(matrix, order), rtol=1e-15, atol=1e-15)
    assert error <= taylor_tail_bound(norm, order + 1) + 1e-14
    assert error >= taylor_tail_bound(norm, order + 1) / 100  # the stated order, not a higher one


@pytest.mark.parametrize("norm", [1.0, 1.5, 3.0, 7.9])
def test_fast_exp_scales_and_squares_large_steps(norm):
    matrix = random_skew(16, norm)
    halvings = int(squarings(torch.tensor(norm)))
    assert 2 ** (halvings - 1) <= norm < 2 ** halvings and norm / 2 ** halvings < 1
    error = float(torch.linalg.matrix_norm(fast_exp(matrix) - torch.linalg.matrix_exp(matrix)))
    scaled_tail = taylor_tail_bound(norm / 2 ** halvings, 5)
    assert error <= 2 ** halvings * scaled_tail * (1 + scaled_tail) ** (2 ** halvings) + 1e-12


def test_fast_exp_decides_each_matrix_of_a_batch_on_its_own():
    batch = torch.stack([random_skew(8, norm, seed) for seed, norm in enumerate((0.01, 0.2, 0.9, 2.5))])
    together = fast_exp(batch)
    for matrix, result in zip(batch, together):
        torch.testing.assert_close(result, fast_exp(matrix), rtol=1e-13, atol=1e-13)


def test_threshold_errors_are_as_documented():
    tails = [taylor_tail_bound(below, order + 1) for below, order in TAYLOR_ORDERS]
    assert tails[0] < 2.2e-5 and tails[1] < 2.2e-4 and tails[2] < 1.1e-2


def test_truncated_series_orthogonality_error_leading_terms():
    matrix = random_skew(16, 0.04)
    fourth = torch.linalg.matrix_power(matrix, 4)
    expected_order2 = float(torch.linalg.matrix_norm(fourth / 4, ord=2))
    assert orthogonality_error(taylor_polynomial(matrix, 2)) == pytest.approx(expected_order2, rel=1e-6)
    expected_order3 = float(torch.linalg.matrix_norm(fourth / 12, ord=2))
    assert orthogonality_error(taylor_polynomial(matrix, 3)) == pytest.approx(expected_order3, rel=1e-2)


def test_polar_is_the_nearest_orthogonal_matrix():
    x = random_orthogonal(12)
    noisy = x + 1e-3 * torch.randn(12, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    retracted = polar(noisy)
    assert orthogonality_error(retracted) < 1e-13
    assert torch.linalg.matrix_norm(retracted - noisy) <= torch.linalg.matrix_norm(x - noisy)


def procrustes_run(steps: int, lr: float, retraction_interval: int, method: str = "sgd", size: int = 32,
                   lookahead_steps: int = 0) -> tuple[list[float], torch.Tensor, torch.Tensor]:
    """Fit an orthogonal X to a target rotation T by least squares, in float32; orthogonality error per step."""
    x = torch.nn.Parameter(random_orthogonal(size, seed=1, dtype=torch.float32))
    target = random_orthogonal(size, seed=2, dtype=torch.float32)
    optimizer = RiemannianOptimizer([x], lr=lr, method=method, orthogonal=True, momentum=0.9,
                                    retraction_interval=retraction_interval, lookahead_steps=lookahead_steps)
    errors = []
    for _ in range(steps):
        loss = (x - target).pow(2).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        errors.append(orthogonality_error(x))
    return errors, x.detach(), target


@pytest.mark.parametrize("method", ["sgd", "adam"])
def test_thousand_steps_with_retraction_stay_orthogonal(method):
    errors, x, target = procrustes_run(1000, 1e-3, retraction_interval=100, method=method)
    assert errors[-1] < 1e-6  # step 1000 is a retraction step
    assert max(errors) < 2e-5  # drift between retractions (order-2 FastExp gains ‖ηU‖⁴/4 a step)
    assert torch.linalg.matrix_norm(x - target) < 0.5 * torch.linalg.matrix_norm(random_orthogonal(32, 1) -
                                                                                random_orthogonal(32, 2))


def test_drift_without_retraction_accumulates():
    errors, _, _ = procrustes_run(1000, 1e-3, retraction_interval=0, method="adam")
    assert errors[-1] > 1e-5 and errors[-1] > errors[99]


def test_riemannian_descent_reaches_the_target():
    _, x, target = procrustes_run(300, 0.05, retraction_interval=50)
    assert torch.linalg.matrix_norm(x - target) < 1e-3


def test_lookahead_with_one_step_and_alpha_one_is_the_plain_step():
    _, x_plain, _ = procrustes_run(20, 0.01, 0)
    x = torch.nn.Parameter(random_orthogonal(32, seed=1, dtype=torch.float32))
    target = random_orthogonal(32, seed=2, dtype=torch.float32)
    optimizer = RiemannianOptimizer([x], lr=0.01, orthogonal=True, lookahead_steps=1, lookahead_alpha=1.0)
    for _ in range(20):
        optimizer.zero_grad()
        (x - target).pow(2).sum().backward()
        optimizer.step()
    torch.testing.assert_close(x.detach(), x_plain, rtol=0, atol=1e-6)


def test_lookahead_moves_slow_weights_half_way_every_k_steps():
    k = 4
    errors, _, target = procrustes_run(4 * k, 0.01, retraction_interval=0, lookahead_steps=k)
    assert max(errors) < 1e-5
    x_parameter = torch.nn.Parameter(random_orthogonal(32, seed=1, dtype=torch.float64))
    optimizer = RiemannianOptimizer([x_parameter], lr=0.01, orthogonal=True, lookahead_steps=k, momentum=0.0)
    start = x_parameter.detach().clone()
    tangents = []
    for step in range(k):
        optimizer.zero_grad()
        (x_parameter - target.double()).pow(2).sum().backward()
        tangents.append(-0.01 * skew(x_parameter.detach().mT @ x_parameter.grad))
        optimizer.step()
    expected = start @ fast_exp(0.5 * sum(tangents))
    torch.testing.assert_close(x_parameter.detach(), expected, rtol=0, atol=1e-12)
    assert torch.equal(optimizer.state[x_parameter]["slow"], x_parameter.detach())


@pytest.mark.parametrize("method, reference", [
    ("sgd", lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("adam", lambda params: torch.optim.AdamW(params, lr=0.01, weight_decay=0.01)),
])
def test_euclidean_parameters_follow_torch_optimizers(method, reference):
    generator = torch.Generator().manual_seed(0)
    start = torch.randn(5, 3, generator=generator)
    ours, theirs = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    lr = 0.1 if method == "sgd" else 0.01
    optimizers = [RiemannianOptimizer([ours], lr=lr, method=method, momentum=0.9, nesterov=True, weight_decay=0.01),
                  reference([theirs])]
    for _ in range(10):
        data = torch.randn(4, 5, generator=generator)
        for parameter, optimizer in zip((ours, theirs), optimizers):
            optimizer.zero_grad()
            (data @ parameter).pow(3).mean().backward()
            optimizer.step()
    torch.testing.assert_close(ours.detach(), theirs.detach(), rtol=1e-6, atol=1e-6)


def test_learning_rate_is_read_from_the_param_group_each_step():
    x = torch.nn.Parameter(random_orthogonal(8, dtype=torch.float32))
    optimizer = RiemannianOptimizer([x], lr=0.1, orthogonal=True)
    optimizer.param_groups[0]["lr"] = 0.0
    before = x.detach().clone()
    x.sum().backward()
    optimizer.step()
    torch.testing.assert_close(x.detach(), before, rtol=0, atol=1e-7)


def test_invalid_groups_fail_clearly():
    square = torch.nn.Parameter(torch.eye(4))
    with pytest.raises(ValueError, match="weight decay"):
        RiemannianOptimizer([square], orthogonal=True, weight_decay=0.1)
    with pytest.raises(ValueError, match="square"):
        RiemannianOptimizer([torch.nn.Parameter(torch.zeros(4, 3))], orthogonal=True)
    with pytest.raises(ValueError, match="method"):
        RiemannianOptimizer([square], method="lbfgs")
    half = torch.nn.Parameter(torch.eye(4, dtype=torch.bfloat16))
    optimizer = RiemannianOptimizer([half], orthogonal=True)
    half.grad = torch.ones_like(half)
    with pytest.raises(ValueError, match="float32"):
        optimizer.step()


def test_tangent_gradient_projects_and_keeps_plain_sgd_near_the_manifold():
    x = torch.nn.Parameter(random_orthogonal(8, seed=4))
    data = torch.randn(16, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    loss = (data @ with_tangent_gradient(x)).pow(3).sum()
    loss.backward()
    euclidean = torch.autograd.grad((data @ x).pow(3).sum(), x)[0]
    torch.testing.assert_close(x.grad, tangent_projection(x.detach(), euclidean))
    sigma_before = torch.linalg.svdvals(x.detach())
    with torch.no_grad():
        x -= 1e-3 * x.grad
    sigma = torch.linalg.svdvals(x.detach())
    assert sigma.min() >= 1 - 1e-12 and sigma.max() - 1 < 1e-3 * float(torch.linalg.matrix_norm(x.grad, ord=2)) ** 2
    assert torch.allclose(sigma_before, torch.ones(8, dtype=torch.float64))


def test_state_dict_round_trips():
    x = torch.nn.Parameter(random_orthogonal(6, dtype=torch.float32))
    optimizer = RiemannianOptimizer([x], lr=0.01, orthogonal=True, method="adam", lookahead_steps=2)
    x.sum().backward()
    optimizer.step()
    restored = RiemannianOptimizer([x], lr=0.01, orthogonal=True, method="adam", lookahead_steps=2)
    restored.load_state_dict(optimizer.state_dict())
    state = restored.state[x]
    assert state["step"] == 1 and state["adam_step"] == 1 and "slow" in state
