"""Faithfulness fixes found by training lipbench's layers side by side with their reference code.

SOC: the paper's zero-padded variant (``padding=zero``) and the reference's schedule of the
spectral-norm estimate (many power iterations at every REESTIMATE_EVERY-th training step).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import lipbench
from lipbench.bounds import operator_matrix, singular_values
from lipbench.errors import UserError
from lipbench.layers.soc import INIT_ITERATIONS, REESTIMATE_EVERY, norm_reshapings
from lipbench.fourier import skew_kernel


def zero_soc(channels: int = 6, out_channels: int | None = None):
    torch.manual_seed(0)
    return lipbench.create_layer("soc", "conv", channels, out_channels or channels, 3, 1, padding="zero").double()


@pytest.mark.parametrize("in_channels, out_channels", [(6, 6), (4, 6), (6, 4)])
def test_zero_padded_soc_is_the_series_of_zero_padded_convolutions(in_channels, out_channels):
    soc = zero_soc(in_channels, out_channels)
    x = torch.randn(3, in_channels, 5, 7, dtype=torch.float64)
    for training in (True, False):
        soc.train(training)
        with torch.no_grad():
            output = soc(x)
        generator = soc.generator().detach()
        term = F.pad(x, (0, 0, 0, 0, 0, generator.shape[0] - in_channels))
        series = term.clone()
        for j in range(1, soc.degree() + 1):
            term = F.conv2d(term, generator, padding=1) / j
            series = series + term
        torch.testing.assert_close(output, series[:, :out_channels] + soc.bias[:, None, None])


def test_zero_padded_soc_is_orthogonal_within_its_sound_bound():
    soc = zero_soc(6)
    shape = (6, 5, 5)
    for training in (True, False):
        soc.train(training)
        tail = soc.lipschitz_bound(shape) - 1
        with torch.no_grad():
            sigma = singular_values(operator_matrix(lambda x: soc(x) - soc.bias[:, None, None], shape))
        assert float((sigma - 1).abs().max()) <= tail
        assert float(sigma.max()) <= 1 + tail
        assert tail < (2e-2 if training else 1e-7)


def test_zero_padded_generator_is_exactly_skew_symmetric():
    soc = zero_soc(4)
    shape = (4, 5, 5)
    with torch.no_grad():
        generator = soc.generator()
        matrix = operator_matrix(lambda x: F.conv2d(x, generator, padding=1), shape)
    torch.testing.assert_close(matrix.T, -matrix, rtol=0, atol=1e-14)


def test_soc_padding_option_is_checked():
    with pytest.raises(UserError, match="padding=zero"):
        lipbench.create_layer("soc", "conv", 4, 4, 3, 1, padding="reflect")


@pytest.mark.parametrize("padding", ["circular", "zero"])
def test_soc_reestimates_the_norm_at_every_reestimation_step(padding):
    soc = lipbench.create_layer("soc", "conv", 6, 6, 3, 1, padding=padding).double().train()
    x = torch.randn(2, 6, 5, 5, dtype=torch.float64)
    with torch.no_grad():
        soc(x)  # the first training step
        soc.weight.copy_(torch.randn_like(soc.weight))
        soc.training_steps = REESTIMATE_EVERY
        soc(x)
    by_rows, by_channels = norm_reshapings(skew_kernel(soc.weight))
    exact = min(torch.linalg.matrix_norm(by_rows, 2), torch.linalg.matrix_norm(by_channels, 2))
    estimate = min((by_rows @ soc.rows_vector).norm(), (by_channels @ soc.channels_vector).norm())
    assert INIT_ITERATIONS >= 50
    torch.testing.assert_close(estimate, exact, rtol=1e-3, atol=0)
    assert soc.training_steps == REESTIMATE_EVERY + 1
