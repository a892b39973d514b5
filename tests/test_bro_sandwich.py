"""BRO's block reflector and the Sandwich layer: their math on small shapes, exactly (float64)."""
from __future__ import annotations

import pytest
import torch

import lipbench
from lipbench.audit import audit_model
from lipbench.audit.bounds import sound_layer_bound
from lipbench.bounds import operator_matrix, singular_values
from lipbench.datasets.synthetic import make_synthetic
from lipbench.fourier import transfer_matrices
from lipbench.layers.bro import block_reflector
from lipbench.models.convnet import ConvNet
from lipbench.registry import get_method

CHANNELS, RANK, SIZE = 8, 4, (6, 6)


def kernels() -> dict[str, torch.Tensor]:
    """V kernels (c, r, 3, 3): random, rank-deficient, near-singular V^H V, rank = c/2 and c - 1."""
    torch.manual_seed(0)
    random = torch.randn(CHANNELS, RANK, 3, 3, dtype=torch.float64)
    duplicated, near = random.clone(), random.clone()
    duplicated[:, 1] = duplicated[:, 0]
    near[:, 1] = near[:, 0] + 1e-6 * torch.randn(CHANNELS, 3, 3, dtype=torch.float64)
    zero_column = random.clone()
    zero_column[:, 0] = 0
    return {"random": random, "rank-deficient": duplicated, "near-singular": near, "zero column": zero_column,
            "rank c-1": torch.randn(CHANNELS, CHANNELS - 1, 3, 3, dtype=torch.float64)}


@pytest.mark.parametrize("case", list(kernels()))
@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-12), (torch.float32, 5e-6)])
def test_reflector_is_unitary_and_hermitian_at_every_frequency(case, dtype, tolerance):
    v = transfer_matrices(kernels()[case].to(dtype), SIZE)
    w = block_reflector(v, CHANNELS, CHANNELS).to(torch.complex128)
    eye = torch.eye(CHANNELS, dtype=w.dtype)
    assert (w @ w.mH - eye).abs().max() < tolerance
    assert (w - w.mH).abs().max() < tolerance
    if case in ("random", "near-singular"):  # eigenvalue -1 on range(V) (dimension r), +1 off it
        eigenvalues = torch.linalg.eigvalsh(w)
        assert ((eigenvalues < 0).sum(-1) == RANK).all()


def test_reflector_of_full_rank_v_is_minus_identity_on_its_range():
    torch.manual_seed(1)
    v = torch.randn(CHANNELS, RANK, dtype=torch.float64)
    w = block_reflector(v, CHANNELS, CHANNELS)
    assert torch.allclose(w @ v, -v, atol=1e-12)
    complement = torch.linalg.svd(v.T).Vh[RANK:].T  # orthogonal to range(V)
    assert torch.allclose(w @ complement, complement, atol=1e-12)


@pytest.mark.parametrize("in_channels, out_channels, stride", [(4, 4, 1), (4, 8, 1), (8, 4, 1), (4, 4, 2), (2, 8, 2)])
def test_bro_conv_jacobian_is_exactly_orthogonal(in_channels, out_channels, stride):
    torch.manual_seed(0)
    layer = lipbench.create_layer("bro", "conv", in_channels, out_channels, 3, stride).double()
    with torch.no_grad():
        layer.weight.normal_()  # far from the identity init
    shape = (in_channels, 6, 6)
    with torch.no_grad():
        values = singular_values(operator_matrix(lambda x: layer(x) - layer(torch.zeros_like(x)), shape))
    assert values.numel() == min(in_channels * 36, out_channels * 36 // stride ** 2)
    assert float(values.max()) < 1 + 1e-12 and float(values.min()) > 1 - 1e-12  # an isometry or a co-isometry
    assert layer.singular_value_range(shape) == pytest.approx((1.0, 1.0), abs=1e-12)


def test_bro_linear_is_semi_orthogonal():
    torch.manual_seed(0)
    for n_in, n_out in ((16, 16), (16, 8), (8, 16)):
        layer = lipbench.create_layer("bro", "linear", n_in, n_out).double()
        weight = layer.orthogonal_weight()
        gram = weight @ weight.T if n_out <= n_in else weight.T @ weight
        assert torch.allclose(gram, torch.eye(min(n_in, n_out), dtype=torch.float64), atol=1e-12)


def test_bro_rank_is_an_option_and_refused_when_degenerate():
    layer = lipbench.create_layer("bro", "conv", 8, 8, 3, 1, rank_ratio=0.25)
    assert layer.weight.shape[:2] == (8, 2)
    with pytest.raises(ValueError, match="rank"):
        lipbench.create_layer("bro", "conv", 8, 8, 3, 1, rank_ratio=1.0)


def sandwich(kind: str, n_in: int, n_out: int, kernel: int | None = 3) -> torch.nn.Module:
    torch.manual_seed(0)
    layer = lipbench.create_layer("sandwich", kind, n_in, n_out, kernel if kind == "conv" else None).double()
    with torch.no_grad():  # a sandwich far from init: large psi spread, large alpha
        layer.psi.normal_(0, 2)
        layer.alpha.mul_(5)
        layer.bias.normal_()
    return layer


@pytest.mark.parametrize("kind, n_in, n_out, shape", [("conv", 4, 4, (4, 5, 5)), ("conv", 4, 6, (4, 5, 5)),
                                                      ("linear", 12, 6, (12,)), ("linear", 6, 12, (6,))])
def test_sandwich_with_its_relu_is_one_lipschitz(kind, n_in, n_out, shape):
    layer = sandwich(kind, n_in, n_out)
    bound = layer.lipschitz_bound(shape)
    assert bound == pytest.approx(1.0, abs=1e-12)
    torch.manual_seed(1)
    largest = 0.0
    for _ in range(2):  # exact Jacobians at random points (ReLU pattern fixed near each)
        x = torch.randn(*shape, dtype=torch.float64)
        jacobian = torch.autograd.functional.jacobian(lambda z: layer(z[None])[0], x).reshape(-1, x.numel())
        largest = max(largest, float(torch.linalg.matrix_norm(jacobian, ord=2)))
    assert 0.3 < largest <= bound + 1e-12
    x, y = torch.randn(2, 64, *shape, dtype=torch.float64)
    ratios = (layer(x) - layer(y)).flatten(1).norm(dim=1) / (x - y).flatten(1).norm(dim=1)
    assert float(ratios.max()) <= 1 + 1e-12


def test_without_psi_cancelling_the_bound_would_fail():
    """The bound needs the same Psi on both sides: a mismatched one (psi only inside) exceeds 1."""
    layer = sandwich("linear", 8, 8)
    a, b, scale, bias = layer.sandwich_factors((8,))
    x = torch.randn(256, 8, dtype=torch.float64)
    y = x + 1e-4 * torch.randn_like(x)
    mismatched = lambda z: 2 ** 0.5 * torch.relu(2 ** 0.5 * (z @ b.T) / scale + bias) @ a.conj()  # noqa: E731
    ratios = (mismatched(x) - mismatched(y)).norm(dim=1) / (x - y).norm(dim=1)
    assert float(ratios.max()) > 1.5


@pytest.mark.parametrize("kind, shape", [("conv", (4, 6, 6)), ("linear", (12,))])
def test_audit_proves_the_sandwich_by_its_structure(kind, shape):
    layer = sandwich(kind, shape[0], shape[0] // 2 if kind == "linear" else 4)
    found = sound_layer_bound(layer, shape)
    assert found.proved and found.how.startswith("sandwich")
    assert found.bound == pytest.approx(1.0, abs=1e-9)

    class Doubled(type(layer)):
        def forward(self, x):
            return 2 * super().forward(x)

    doubled = Doubled.__new__(Doubled)
    doubled.__dict__ = dict(layer.__dict__)
    assert not sound_layer_bound(doubled, shape).how.startswith("sandwich")  # factors no longer explain it


@pytest.mark.parametrize("name", ["bro", "sandwich"])
def test_a_trained_convnet_passes_the_audit(name):
    data = make_synthetic(n_train=128, n_test=64)
    torch.manual_seed(0)
    model = ConvNet(get_method(name), 4, data.in_shape, data.n_classes)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    for start in range(0, 128, 64):
        loss = torch.nn.functional.cross_entropy(model(data.x_train[start:start + 64]), data.y_train[start:start + 64])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    result = audit_model(model, get_method(name), data, {"lipschitz_bound": float(model.lipschitz_bound())},
                         torch.device("cpu"), samples=2, steps=5, eval_points=32, lower_points=2, lower_steps=2,
                         dense_limit=256)
    assert result["sound_bound_proved"] and result["violations"] == 0 and result["passed"]
    assert result["sound_bound"] <= 1 + 1e-5
