"""BCOP, Cayley and LOT beyond the conformance suite: the shared math, semi-orthogonal shapes,
sound bounds when the iterations have not converged, and the ConvNet."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import lipbench
from lipbench.bounds import circular_conv_norm, operator_matrix, singular_values
from lipbench.layers.bcop import BCOPConv2d, block_orthogonal_kernel, rank_half_projectors, times_two_tap
from lipbench.layers.lot import LOTConv2d
from lipbench.models.convnet import ConvNet
from lipbench.caching import eval_cached_per_shape
from lipbench.fourier import adjoint_kernel, circular_pad, extreme_singular_values, fourier_conv, transfer_matrices
from lipbench.linalg import cayley_transform, gram_norm_bound, orthonormalize, skew_cayley

METHODS = ["bcop", "cayley", "lot"]
DOUBLE = dict(dtype=torch.float64)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small tensors: a second thread only adds synchronisation, which costs seconds per test on a busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def gram_error(matrix: torch.Tensor) -> float:
    """max |Q Q^H - I| over the smaller side: 0 for (semi-)unitary matrices."""
    small = matrix if matrix.shape[-2] <= matrix.shape[-1] else matrix.mH
    eye = torch.eye(small.shape[-2], dtype=small.dtype)
    return float((small @ small.mH - eye).abs().max())


def layer_singular_values(layer: torch.nn.Module, input_shape: tuple[int, ...]) -> torch.Tensor:
    zero = torch.zeros(1, *input_shape, **DOUBLE)
    with torch.no_grad():
        return singular_values(operator_matrix(lambda x: layer(x) - layer(zero), input_shape))


# ---- shared math -------------------------------------------------------------------------------

def test_gram_norm_bound_bounds_the_largest_eigenvalue_and_is_tight_for_orthogonal():
    weights = torch.randn(20, 6, 9, generator=generator(), **DOUBLE)
    gram = weights @ weights.mT
    assert (torch.linalg.eigvalsh(gram)[:, -1:, None] <= gram_norm_bound(gram) * (1 + 1e-12)).all()
    orthogonal = torch.linalg.qr(torch.randn(7, 7, generator=generator(), **DOUBLE)).Q * 3
    assert gram_norm_bound(orthogonal @ orthogonal.T).item() == pytest.approx(9, rel=1e-12)


@pytest.mark.parametrize("shape, dtype", [((5, 5), torch.float64), ((3, 7), torch.float64),
                                          ((8, 7, 3), torch.float64), ((6, 4, 4), torch.complex128)])
def test_orthonormalize_converges_to_the_polar_factor(shape, dtype):
    matrix = torch.randn(*shape, generator=generator(), dtype=dtype)
    result = orthonormalize(matrix, 40)
    assert gram_error(result) < 1e-13
    u, _, vh = torch.linalg.svd(matrix, full_matrices=False)
    torch.testing.assert_close(result, u @ vh, rtol=0, atol=1e-12)


def test_orthonormalize_maps_singular_values_from_below_and_never_above_one():
    u = torch.linalg.qr(torch.randn(4, 4, generator=generator(1), **DOUBLE)).Q
    v = torch.linalg.qr(torch.randn(4, 4, generator=generator(2), **DOUBLE)).Q
    spectrum = torch.tensor([2.0, 1.0, 0.1, 0.001], **DOUBLE)
    matrix = u @ torch.diag(spectrum) @ v.T
    expected = spectrum / gram_norm_bound(matrix @ matrix.T).sqrt().squeeze()  # the scaled start
    for _ in range(5):
        expected = expected * (3 - expected ** 2) / 2
    result = torch.linalg.svdvals(orthonormalize(matrix, 5))
    torch.testing.assert_close(result, expected, rtol=1e-12, atol=0)
    assert result.max() <= 1 and result.min() < 0.01  # not converged, but never expansive


def test_orthonormalize_equals_lots_coupled_newton_schulz_iterates():
    matrix = torch.randn(9, 5, 7, generator=generator(), dtype=torch.complex128)
    gram = matrix @ matrix.mH
    scale = gram_norm_bound(gram)
    eye = torch.eye(5, dtype=matrix.dtype)
    y, z = gram / scale, eye.expand_as(gram)
    for _ in range(4):
        t = 1.5 * eye - 0.5 * z @ y
        y, z = y @ t, t @ z
    torch.testing.assert_close(orthonormalize(matrix, 4), z @ matrix / scale.sqrt(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("shape, dtype", [((6, 6), torch.float64), ((7, 3), torch.float64),
                                          ((3, 7), torch.float64), ((10, 5, 4), torch.complex128)])
def test_cayley_transform_is_semi_unitary(shape, dtype):
    assert gram_error(cayley_transform(torch.randn(*shape, generator=generator(), dtype=dtype))) < 1e-13


def test_cayley_transform_of_a_square_matrix_is_the_classical_one():
    matrix = torch.randn(5, 5, generator=generator(), **DOUBLE)
    skew = matrix - matrix.T
    eye = torch.eye(5, **DOUBLE)
    torch.testing.assert_close(cayley_transform(matrix), torch.linalg.solve(eye + skew, eye - skew))
    torch.testing.assert_close(skew_cayley(skew), torch.linalg.solve(eye + skew, eye - skew))


@pytest.mark.parametrize("kernel_size, size", [(3, (8, 6)), (5, (7, 9)), (1, (4, 4)), (5, (3, 3))])
def test_fourier_conv_equals_a_circular_conv2d(kernel_size, size):
    kernel = torch.randn(5, 3, kernel_size, kernel_size, generator=generator(), **DOUBLE)
    x = torch.randn(2, 3, *size, generator=generator(1), **DOUBLE)
    pad = kernel_size // 2
    tiled = x.repeat(1, 1, 3, 3)  # a kernel larger than the input wraps around more than once
    expected = F.conv2d(F.pad(tiled, [pad] * 4, mode="circular"), kernel)[..., :size[0], :size[1]]
    torch.testing.assert_close(fourier_conv(x, transfer_matrices(kernel, size)), expected)


def test_extreme_singular_values_of_transfer_matrices_are_the_conv_norm():
    kernel = torch.randn(4, 6, 3, 3, generator=generator(), **DOUBLE)
    low, high = extreme_singular_values(transfer_matrices(kernel, (5, 8)))
    assert high == pytest.approx(circular_conv_norm(kernel, 5, 8), rel=1e-12) and 0 < low < high


def test_adjoint_kernel_conjugate_transposes_the_transfer_matrices():
    kernel = torch.randn(4, 6, 3, 5, generator=generator(), **DOUBLE)
    torch.testing.assert_close(transfer_matrices(adjoint_kernel(kernel), (7, 8)), transfer_matrices(kernel, (7, 8)).mH)


@pytest.mark.parametrize("pad, size", [(1, (5, 7)), (2, (4, 3)), (1, (1, 3))])
def test_circular_pad_matches_torch_forward_and_backward(pad, size):
    x = torch.randn(2, 3, *size, generator=generator(), **DOUBLE, requires_grad=True)
    expected = F.pad(x, [pad] * 4, mode="circular")
    torch.testing.assert_close(circular_pad(x, pad), expected)
    grad = torch.randn(expected.shape, generator=generator(1), **DOUBLE)
    torch.testing.assert_close(torch.autograd.grad(circular_pad(x, pad), x, grad)[0],
                               torch.autograd.grad(expected, x, grad)[0])


def test_eval_cached_per_shape_memoizes_per_shape_until_a_parameter_changes():
    calls = []

    class Probe(torch.nn.Linear):
        @eval_cached_per_shape
        def value(self, shape):
            calls.append(shape)
            return self.weight.sum() * shape[0]

    probe = Probe(2, 2).eval()
    first = probe.value((3,))
    assert probe.value((3,)) is first and not first.requires_grad
    probe.value((4,))
    assert calls == [(3,), (4,)]
    with torch.no_grad():
        probe.weight.add_(1.0)
    assert probe.value((3,)) == pytest.approx(float(first) + 12)
    probe.train()
    assert probe.value((3,)).requires_grad and len(calls) == 4


# ---- BCOP's kernel -----------------------------------------------------------------------------

def test_times_two_tap_multiplies_kernel_polynomials():
    kernel = torch.randn(2, 1, 3, 3, generator=generator(), **DOUBLE)
    projector = torch.randn(3, 3, generator=generator(1), **DOUBLE)
    result = times_two_tap(kernel, projector, axis=0)
    eye = torch.eye(3, **DOUBLE)
    expected = torch.stack([kernel[0] @ projector, kernel[1] @ projector + kernel[0] @ (eye - projector),
                            kernel[1] @ (eye - projector)])
    torch.testing.assert_close(result, expected)


@pytest.mark.parametrize("kernel_size", [3, 5])
def test_block_orthogonal_kernel_is_unitary_at_every_frequency(kernel_size):
    channels = 6
    orthogonal = orthonormalize(torch.randn(channels, channels, generator=generator(), **DOUBLE), 60)
    factors = torch.randn(2 * (kernel_size - 1), channels, channels // 2, generator=generator(1), **DOUBLE)
    rows, columns = rank_half_projectors(factors, 60).chunk(2)
    kernel = block_orthogonal_kernel(orthogonal, rows, columns)
    assert kernel.shape == (channels, channels, kernel_size, kernel_size)
    assert gram_error(transfer_matrices(kernel, (7, 5))) < 1e-12


# ---- layers ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("in_channels, out_channels", [(4, 6), (6, 4)])
def test_conv_with_different_channel_counts_is_semi_orthogonal(name, in_channels, out_channels):
    torch.manual_seed(0)
    layer = lipbench.create_layer(name, "conv", in_channels, out_channels, 3, 1).double()
    sigma = layer_singular_values(layer, (in_channels, 5, 5))
    assert (sigma - 1).abs().max() < 1e-10
    assert layer.lipschitz_bound((in_channels, 5, 5)) == pytest.approx(1, abs=1e-10)


def test_unconverged_lot_is_contractive_and_its_bound_is_its_exact_norm():
    torch.manual_seed(0)
    layer = LOTConv2d(6, 6, 3, iterations=2).double().eval()
    with torch.no_grad():
        layer.weight.normal_()
    sigma = layer_singular_values(layer, (6, 6, 6))
    assert sigma.min() < 0.5  # far from orthogonal after two iterations ...
    low, bound = layer.singular_value_range((6, 6, 6))
    assert float(sigma.max()) == pytest.approx(bound, rel=1e-10) and bound <= 1  # ... but the bound is exact
    assert float(sigma.min()) == pytest.approx(low, rel=1e-10)  # and the certificate records how far


def test_bcop_bound_is_the_exact_norm_of_an_unconverged_kernel():
    torch.manual_seed(0)
    layer = BCOPConv2d(6, 6, 3, iterations=1).double().eval()
    with torch.no_grad():
        layer.orthogonal.normal_()
    sigma = layer_singular_values(layer, (6, 5, 5))
    assert float(sigma.max()) == pytest.approx(layer.lipschitz_bound((6, 5, 5)), rel=1e-10)


def test_cayley_scale_is_a_trained_parameter_from_construction():
    layer = lipbench.create_layer("cayley", "conv", 4, 4, 3, 1)
    assert any(parameter is layer.alpha for parameter in layer.parameters())
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    before = layer.alpha.detach().clone()
    layer(torch.randn(2, 4, 6, 6)).pow(3).sum().backward()  # a loss not invariant to the scale
    optimizer.step()
    assert layer.alpha.grad is not None and not torch.equal(layer.alpha.detach(), before)


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("kernel_size", [3, 1])
def test_weights_are_orthogonalized_in_full_precision_under_autocast(name, kernel_size):
    torch.manual_seed(0)
    layer = lipbench.create_layer(name, "conv", 8, 8, kernel_size, 1)
    expected = layer.operator_matrices((8, 6, 6))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(layer.operator_matrices((8, 6, 6)), expected, rtol=0, atol=0)


@pytest.mark.parametrize("name", METHODS)
def test_unsupported_kernel_sizes_and_strides_fail_at_construction(name):
    with pytest.raises(ValueError, match="kernel_size"):
        lipbench.create_layer(name, "conv", 4, 4, 2, 1)
    with pytest.raises(ValueError, match="stride"):
        lipbench.get_method(name).build("conv", 4, 4, 1, stride=2)


@pytest.mark.parametrize("name", METHODS)
def test_a_narrow_convnet_trains_and_certifies(name):
    """The ConvNet's layout (k = 3 from 32x32 to 4x4, 1x1 at 2x2, a dense head) at width 4;
    the sizes XS to L only widen it and cost minutes per step here."""
    torch.manual_seed(0)
    model = ConvNet(lipbench.get_method(name), 4, (1, 28, 28), 10)
    loss = F.cross_entropy(model(torch.randn(2, 1, 28, 28)), torch.tensor([3, 7]))
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    certificate = lipbench.get_method(name).certificate(model)
    assert certificate["lipschitz_bound"] == pytest.approx(model.lipschitz_bound(), rel=1e-12)
    assert certificate["lipschitz_bound"] == pytest.approx(1, abs=1e-4)  # 27 layers, float32 round-off
    assert certificate["orthogonality_error"] < 1e-5
