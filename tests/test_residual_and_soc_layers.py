"""Method-specific checks of CPL, SLL and SOC beyond the conformance suite."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import lipbench
from lipbench.bounds import conv_norm, dense_norm, operator_matrix, singular_values
from lipbench.layers.aol import aol_scale_conv, aol_scale_dense
from lipbench.layers.sll import sll_diagonal
from lipbench.registry import create_model
from lipbench.fourier import fourier_conv, transfer_matrices, transfer_matrices_by_dft
from lipbench.linalg import power_iteration, taylor_polynomial, taylor_tail_bound


def layer(name: str, kind: str, channels: int, kernel_size: int | None = 3, out_channels: int | None = None):
    torch.manual_seed(0)
    return lipbench.create_layer(name, kind, channels, out_channels or channels, kernel_size, 1).double()


def jacobian_norm(module, point) -> float:
    matrix = torch.autograd.functional.jacobian(lambda x: module(x[None])[0], point)
    return float(singular_values(matrix.reshape(point.numel(), point.numel())).max())


@pytest.mark.parametrize("name", ["cpl", "sll"])
def test_residual_layers_must_be_square(name):
    with pytest.raises(ValueError, match="in_channels .4. must equal out_channels .8."):
        lipbench.create_layer(name, "conv", 4, 8, 3, 1)
    with pytest.raises(ValueError, match="kernel_size"):
        lipbench.create_layer(name, "conv", 4, 4, 2, 1)


def test_power_iteration_converges_to_the_spectral_norm():
    torch.manual_seed(0)
    matrix = torch.randn(12, 7, dtype=torch.float64)
    vector = power_iteration(matrix.mv, matrix.T.mv, torch.randn(7, dtype=torch.float64), 200)
    assert float((matrix @ vector).norm()) == pytest.approx(dense_norm(matrix), rel=1e-10)


def test_cpl_reports_an_under_estimated_sigma_and_eval_is_still_one_lipschitz():
    cpl = layer("cpl", "conv", 4)
    shape = (4, 5, 5)
    with torch.no_grad():  # a constant power vector sees only the zero frequency: a poor estimate
        cpl.power_vector = torch.ones_like(cpl.power_vector) / cpl.power_vector.numel() ** 0.5
    point = torch.randn(shape, dtype=torch.float64)
    cpl.train()
    bounds = [cpl.lipschitz_bound(shape)]
    assert bounds[0] > 1.01, "the estimate should fall short of ||W|| here"
    for _ in range(3):  # each training forward advances u; the Rayleigh quotient never decreases
        assert jacobian_norm(cpl, point) <= bounds[-1] * (1 + 1e-9)
        bounds.append(cpl.lipschitz_bound(shape))
    assert all(later <= earlier * (1 + 1e-12) for earlier, later in zip(bounds, bounds[1:]))
    cpl.eval()
    assert cpl.lipschitz_bound(shape) == 1.0
    assert jacobian_norm(cpl, point) <= 1 + 1e-9


def test_cpl_power_vector_has_a_fixed_shape_and_any_input_size_works():
    cpl = layer("cpl", "conv", 4).eval()
    assert cpl.power_vector.shape == (1, 4, 16, 16)
    for size in (3, 8, 20):
        x = torch.randn(2, 4, size, size, dtype=torch.float64)
        assert cpl(x).shape == x.shape
        assert cpl.lipschitz_bound((4, size, size)) == 1.0
    with torch.no_grad():
        step = 2 / max(float(cpl.apply_weight(cpl.power_vector).norm()), conv_norm(cpl.weight, (8, 8))) ** 2
        assert float(cpl.step_size((8, 8))) == pytest.approx(step, rel=1e-9)


@pytest.mark.parametrize("kind, kernel_size", [("conv", 3), ("conv", 1), ("linear", None)])
def test_sll_with_q_one_is_aol_rescaling(kind, kernel_size):
    sll = layer("sll", kind, 6, kernel_size)
    weight = sll.weight.detach()
    t = sll_diagonal(weight, torch.zeros(6, dtype=torch.float64))
    if kind == "linear":  # AOL rescales the columns of the adjoint map, W^T diag(t^-1/2)
        expected = aol_scale_dense(weight.T)
        assert torch.allclose(weight.T * t.rsqrt(), expected, rtol=1e-9)
    else:
        adjoint = weight.transpose(0, 1).flip(2, 3)
        assert torch.allclose(adjoint * t.rsqrt()[None, :, None, None], aol_scale_conv(adjoint), rtol=1e-9)


def test_sll_learned_q_changes_t_and_keeps_the_hidden_map_non_expansive():
    torch.manual_seed(1)
    weight = torch.randn(5, 5, 3, 3, dtype=torch.float64)
    log_q = torch.randn(5, dtype=torch.float64)
    t = sll_diagonal(weight, log_q)
    assert not torch.allclose(t, sll_diagonal(weight, torch.zeros_like(log_q)))
    for padding_mode in ("zeros", "circular"):  # T^-1/2 W is non-expansive with either padding
        matrix = operator_matrix(
            lambda x: F.conv2d(F.pad(x, (1,) * 4, mode="constant" if padding_mode == "zeros" else padding_mode),
                               weight) * t.rsqrt()[None, :, None, None], (5, 6, 6))
        assert float(singular_values(matrix).max()) <= 1 + 1e-12


@pytest.mark.parametrize("kernel_shape, size", [((5, 4, 3, 3), (6, 8)), ((3, 3, 5, 5), (3, 7)), ((2, 2, 3, 3), (2, 2))])
def test_dft_transfer_matrices_match_the_fft_ones(kernel_shape, size):
    kernel = torch.randn(kernel_shape, dtype=torch.float64)
    torch.testing.assert_close(transfer_matrices_by_dft(kernel, size), transfer_matrices(kernel, size))


@pytest.mark.parametrize("degree", [5, 12])
def test_taylor_polynomial_error_is_within_the_tail_bound(degree):
    torch.manual_seed(0)
    matrix = torch.randn(3, 10, 10, dtype=torch.float64)
    skew = 1.5 * (matrix - matrix.mT) / torch.linalg.matrix_norm(matrix - matrix.mT, ord=2, keepdim=True)
    error = float(torch.linalg.matrix_norm(taylor_polynomial(skew, degree) - torch.linalg.matrix_exp(skew), ord=2).max())
    tail = taylor_tail_bound(1.5, degree + 1)
    exact_tail = math.exp(1.5) - sum(1.5 ** j / math.factorial(j) for j in range(degree + 1))
    assert tail == pytest.approx(exact_tail, rel=1e-6)
    assert error <= tail


def test_taylor_tail_bound_covers_norms_above_the_degree():
    exact = math.exp(9.0) - sum(9.0 ** j / math.factorial(j) for j in range(6))
    assert exact <= taylor_tail_bound(9.0, 6) <= exact * (1 + 1e-12)
    assert taylor_tail_bound(0.0, 6) == 0.0


@pytest.mark.parametrize("in_channels, out_channels", [(6, 6), (4, 6), (6, 4)])
def test_soc_is_the_series_of_circular_convolutions(in_channels, out_channels):
    soc = layer("soc", "conv", in_channels, 3, out_channels)
    x = torch.randn(3, in_channels, 5, 7, dtype=torch.float64)
    for training in (True, False):
        soc.train(training)
        with torch.no_grad():
            output = soc(x)  # in training this advances the normalization first
        generator = soc.generator().detach()
        term = F.pad(x, (0, 0, 0, 0, 0, generator.shape[0] - in_channels))
        series = term.clone()
        for j in range(1, soc.degree() + 1):
            term = F.conv2d(F.pad(term, (1,) * 4, mode="circular"), generator) / j
            series = series + term
        expected = series[:, :out_channels] + soc.bias[:, None, None]
        torch.testing.assert_close(output, expected)
        with torch.no_grad():
            if training:  # batch 3 < 6 channels uses the series on the batch; check the other way
                torch.testing.assert_close(fourier_conv(x, soc.frequency_matrices((5, 7))) + soc.bias[:, None, None],
                                           expected)


@pytest.mark.parametrize("kind, kernel_size, shape", [("conv", 3, (8, 8, 8)), ("conv", 1, (8, 4, 4)), ("linear", None, (8,))])
def test_soc_singular_values_stay_within_the_truncation_bound(kind, kernel_size, shape):
    soc = layer("soc", kind, 8, kernel_size)
    for training in (True, False):
        soc.train(training)
        tail = soc.lipschitz_bound(shape) - 1
        with torch.no_grad():
            sigma = singular_values(operator_matrix(lambda x: soc(x) - soc.bias.view(-1, *[1] * (x.dim() - 2)), shape))
        assert float((sigma - 1).abs().max()) <= tail
        assert tail < (1e-2 if training else 1e-7)


@pytest.mark.parametrize("name", ["cpl", "sll", "soc"])
def test_convnet_trains_and_certifies(name):
    torch.manual_seed(0)
    model = create_model(name, "XS", (1, 28, 28), 10)
    x = torch.randn(4, 1, 28, 28)
    loss = model(x).square().sum()
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    model.eval()
    bound = model.lipschitz_bound()  # CPL's eval sigma covers the sound norm; SOC adds its series tail
    assert bound == 1.0 if name != "soc" else 1.0 < bound < 1 + 1e-6
    assert model(x).shape == (4, 10)
