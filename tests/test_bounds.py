import pytest
import torch
import torch.nn.functional as F

from lipbench.bounds import (conv_norm, dense_norm, operator_matrix, power_iteration_norm,
                             singular_values)


def exact_norm(weight, size, padding_mode, stride=1):
    k = weight.shape[-1]

    def conv(x):
        if padding_mode == "circular":
            x = F.pad(x, (k // 2,) * 4, mode="circular")
            return F.conv2d(x, weight, stride=stride)
        return F.conv2d(x, weight, stride=stride, padding=k // 2)

    return float(singular_values(operator_matrix(conv, (weight.shape[1], size, size))).max())


@pytest.mark.parametrize("channels, size, kernel", [(3, 6, 3), (4, 5, 3), (2, 8, 5), (4, 2, 3)])
def test_circular_conv_norm_is_exact(channels, size, kernel):
    weight = torch.randn(channels + 1, channels, kernel, kernel, dtype=torch.float64)
    assert conv_norm(weight, (size, size), "circular") == pytest.approx(exact_norm(weight, size, "circular"), rel=1e-9)


@pytest.mark.parametrize("stride", [1, 2])
def test_zero_padded_bound_is_sound_and_tight(stride):
    torch.manual_seed(0)
    for _ in range(5):
        weight = torch.randn(4, 4, 3, 3, dtype=torch.float64)
        exact = exact_norm(weight, 6, "zeros", stride)
        bound = conv_norm(weight, (6, 6), "zeros")
        assert exact <= bound * (1 + 1e-9)
        if stride == 1:  # a stride only subsamples; the bound ignores it
            assert bound <= 1.6 * exact


def test_dense_norm_and_power_iteration_lower_bound():
    weight = torch.randn(7, 5, dtype=torch.float64)
    exact = float(torch.linalg.svdvals(weight)[0])
    assert dense_norm(weight) == pytest.approx(exact, rel=1e-12)
    lower = power_iteration_norm(lambda x: x @ weight.T, lambda y: y @ weight, (5,), iterations=3)
    assert lower <= exact * (1 + 1e-12)
