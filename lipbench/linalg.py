"""Matrix math shared by the layers and the optimizers: one home for each piece.

* :func:`power_iteration`: power iteration on AᵀA from a persistent vector (CPL, SOC, LiResNet).
* :func:`skew`, :func:`taylor_polynomial`, :func:`taylor_tail_bound`: the truncated exponential of a
  (skew) matrix and a sound bound of what the truncation leaves out (SOC, LipNeXt's FastExp).
* :func:`orthonormalize`: the polar factor U of W = U P by the Björck–Bowie / Newton–Schulz
  iteration W <- (3 W - W W^H W) / 2. It maps every singular value s to s (3 - s²) / 2, which
  converges to 1 for s in (0, √3) and never exceeds 1 on [0, √3]; the start is scaled by an upper
  bound of s_max, so in exact arithmetic every iterate has norm <= 1 (BCOP, LOT).
* :func:`cayley_transform`, :func:`skew_cayley`: the (semi-)unitary Cayley transform (Cayley, Sandwich).
* :func:`polar`, :func:`orthogonality_error`: the nearest orthogonal matrix and the distance to it.
* :func:`orthogonal_init`, :func:`dirac_or_orthogonal_init`: the initializations the papers use.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor, nn


def power_iteration(apply: Callable[[Tensor], Tensor], adjoint: Callable[[Tensor], Tensor],
                    vector: Tensor, steps: int) -> Tensor:
    """``steps`` power-iteration steps on AᵀA from ``vector`` (without grad): the unit-norm iterate.

    ‖A v‖ for the returned v is a lower bound of ‖A‖ that never decreases from step to step. It runs
    outside autocast and returns the vector in its own dtype, so a buffer holding it keeps its dtype
    when a bf16 training step calls it.
    """
    dtype = vector.dtype
    with torch.no_grad(), torch.autocast(vector.device.type, enabled=False):
        for _ in range(steps):
            vector = adjoint(apply(vector)).to(dtype)
            vector = vector / vector.norm().clamp_min(torch.finfo(dtype).tiny)
    return vector


def skew(matrix: Tensor) -> Tensor:
    """(B - Bᵀ) / 2 of a batch (..., n, n)."""
    return (matrix - matrix.mT) / 2


def taylor_polynomial(matrices: Tensor, degree: int) -> Tensor:
    """Σ_{j<=degree} A^j / j! for a batch (..., n, n), by Horner's scheme (degree - 1 products).

    Written as U_d = A / d! + I / (d-1)!, U_j = A U_(j+1) + I / (j-1)!, so that U_1 is the sum and
    each step adds to the diagonal only (no full-size scaling or addition).
    """
    if degree < 1:
        raise ValueError(f"a Taylor polynomial needs degree >= 1, not {degree}")
    result = matrices / math.factorial(degree)
    result.diagonal(dim1=-2, dim2=-1).add_(1 / math.factorial(degree - 1))
    for j in range(degree - 1, 0, -1):
        result = matrices @ result
        result.diagonal(dim1=-2, dim2=-1).add_(1 / math.factorial(j - 1))
    return result


def taylor_tail_bound(norm: float, terms: int) -> float:
    """An upper bound of Σ_{j>=terms} norm^j / j!, which bounds ‖exp(A) - Σ_{j<terms} A^j / j!‖ for
    ‖A‖ = ``norm`` in any submultiplicative norm.

    The terms are summed until they are negligible and their ratio norm / (j + 1) is below 1, the
    rest bounded by a geometric series; the factor 1 + 1e-13 covers the round-off of the float64 sum.
    """
    term, total, j = norm ** terms / math.factorial(terms), 0.0, terms
    while norm >= j + 1 or term > 1e-17 * total:
        total, j = total + term, j + 1
        term *= norm / j
    return (total + term / (1 - norm / (j + 1))) * (1 + 1e-13)


def gram_norm_bound(gram: Tensor) -> Tensor:
    """Upper bound of the largest eigenvalue of PSD Hermitian matrices (..., n, n), keeping dims.

    The smaller of the Frobenius norm and the largest absolute row sum (Gershgorin); the latter is
    tight for nearly orthogonal weights, whose Gram matrix is nearly diagonal.
    """
    frobenius = torch.linalg.matrix_norm(gram, keepdim=True)
    row_sum = gram.abs().sum(dim=-1, keepdim=True).amax(dim=-2, keepdim=True)
    return torch.minimum(frobenius, row_sum)


def orthonormalize(matrix: Tensor, iterations: int) -> Tensor:
    """Approximate polar factor of a batch (..., m, n) of real or complex matrices.

    Orthonormal rows if m <= n, orthonormal columns otherwise. Written as Björck–Bowie's iteration on
    the smaller Gram matrix; it produces exactly the iterates Z_k W of LOT's coupled Newton–Schulz
    iteration Z_k -> (W W^H)^(-1/2) started from the same scaling.
    """
    if matrix.shape[-2] > matrix.shape[-1]:
        return orthonormalize(matrix.mH, iterations).mH
    batch = matrix.reshape(-1, *matrix.shape[-2:])
    gram = batch @ batch.mH
    scale = gram_norm_bound(gram).clamp_min(torch.finfo(gram.real.dtype).tiny)
    batch, gram = batch / scale.sqrt(), gram / scale
    for step in range(iterations):
        if step:
            gram = batch @ batch.mH
        batch = torch.baddbmm(batch, gram, batch, beta=1.5, alpha=-0.5)
    return batch.reshape(matrix.shape)


def invert(matrix: Tensor) -> Tensor:
    """Batched inverse without ``linalg.inv``'s error check, which makes it many times slower on CPU."""
    return torch.linalg.inv_ex(matrix).inverse


def skew_cayley(skew_matrix: Tensor) -> Tensor:
    """Unitary Cayley transform (I + S)^-1 (I - S) = 2 (I + S)^-1 - I of skew-Hermitian S (batched)."""
    eye = torch.eye(skew_matrix.shape[-1], dtype=skew_matrix.dtype, device=skew_matrix.device)
    return 2 * invert(eye + skew_matrix) - eye


def cayley_transform(matrix: Tensor) -> Tensor:
    """Semi-unitary Cayley transform of a batch (..., m, n) of matrices (Trockman & Kolter 2021).

    For m >= n, split W = [U; V] (U: n x n) and set A = U - U^H + V^H V. Then
    Q = [(I + A)^-1 (I - A); -2 V (I + A)^-1] has Q^H Q = I exactly; I + A is invertible because its
    Hermitian part I + V^H V is positive definite. Square W: the classical Cayley transform of the
    skew part. Wide W: the transpose of the tall case.
    """
    rows, cols = matrix.shape[-2:]
    if rows < cols:
        return cayley_transform(matrix.mH).mH
    top, bottom = matrix[..., :cols, :], matrix[..., cols:, :]
    if rows == cols:
        return skew_cayley(top - top.mH)
    eye = torch.eye(cols, dtype=matrix.dtype, device=matrix.device)
    inverse = invert(eye + top - top.mH + bottom.mH @ bottom)
    return torch.cat((2 * inverse - eye, -2 * bottom @ inverse), dim=-2)


def polar(matrix: Tensor) -> Tensor:
    """The orthogonal factor U Vᵀ of the SVD (the nearest orthogonal matrix in Frobenius norm), batched.

    Computed in float64: a float32 SVD leaves its factors only ~d·2^-24 from orthogonal.
    """
    left, _, right = torch.linalg.svd(matrix.to(torch.float64))
    return (left @ right).to(matrix.dtype)


def orthogonality_error(matrix: Tensor) -> float:
    """‖XᵀX - I‖_2 in float64. A matrix with error e has ‖X‖_2 = sqrt(1 + e) at most."""
    x = matrix.detach().to(torch.float64)
    gram = x.mT @ x
    return float(torch.linalg.matrix_norm(gram - torch.eye(x.shape[-1], dtype=x.dtype, device=x.device), ord=2))


def orthogonal_init(layer: nn.Conv2d | nn.Linear) -> None:
    """Orthogonal weight (rows of the flattened kernel orthonormal) and zero bias."""
    nn.init.orthogonal_(layer.weight)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


def dirac_or_orthogonal_init(layer: nn.Conv2d | nn.Linear) -> None:
    """The identity (Dirac) kernel for square k x k convolutions, else orthogonal; zero bias."""
    weight = layer.weight
    if weight.dim() == 4 and weight.shape[-1] > 1 and weight.shape[0] == weight.shape[1]:
        nn.init.dirac_(weight)
        if layer.bias is not None:
            nn.init.zeros_(layer.bias)
    else:
        orthogonal_init(layer)
