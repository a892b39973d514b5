"""LipSDP-Neuron (Fazlyab, Robey, Hassani, Morari & Pappas, NeurIPS 2019, arXiv:1906.04893) for ReLU MLPs,
solved by an SDP solver through cvxpy and verified in float64.

Network: z_0 = x, z_k = phi(W_{k-1} z_{k-1} + b_{k-1}) for the hidden layers k = 1..l, y = W_l z_l + b_l,
with phi slope-restricted in [0, 1] coordinate-wise (ReLU). Per neuron, increments satisfy
dphi (dv - dphi) >= 0; weighting those by multipliers T_k = diag(lambda_k) >= 0 and asking
L^2 |dz_0|^2 - |W_l dz_l|^2 - sum_k 2 dz_k^T T_k (W_{k-1} dz_{k-1} - dz_k) >= 0 for all increments gives
the LMI M(rho, lambda) >= 0 with rho = L^2, blocks over (z_0, ..., z_l):
    M[0,0] = rho I,  M[k,k] = 2 T_k (minus W_l^T W_l at k = l),  M[k,k-1] = -T_k W_{k-1}.
If it holds, the network is sqrt(rho)-Lipschitz in L2. (The loop transformation psi = 2 phi - id, sector
[-1, 1], gives the same per-neuron constraint, dv^2 - dpsi^2 = 4 dphi (dv - dphi) >= 0.)

Solving: minimise rho over (rho, lambda >= 0). The input only enters through W_0 dz_0, so W_0 is replaced
by the n_1 x r factor U S of its SVD (r = rank <= n_1): the same feasible set on an LMI of size
r + sum_k n_k instead of n_0 + sum_k n_k (784 inputs cost nothing). A solver's answer is not a proof.

Verification (float64, what the certificate uses): the z_0 block is eliminated exactly by a Schur
complement, M >= 0 iff S = H(lambda) - T_1 W_0 W_0^T T_1 / rho >= 0, H the hidden blocks of M. For the
returned lambda (clipped at 0, scaled up by 1 + 1e-6 4^j until H is positive definite) the smallest rho
is the largest generalised eigenvalue of (T_1 G T_1, H), G = W_0 W_0^T; rho is inflated above it until
numpy.linalg.eigvalsh finds every eigenvalue of S at least ``tol`` = 64 (N + n_0) eps (|H|_F + |C|_F / rho),
N = sum_k n_k, a bound of the round-off in forming S and in the eigenvalues (backward stable, error
O(N eps |S|)). Only a rho that passes that check is returned; L = sqrt(rho).
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from lipbench.bounds import affine_operator_matrix
from lipbench.errors import UserError

INSTALL = "pip install -e '.[sdp]'"
SAFETY = 64.0
LAMBDA_INFLATIONS = 9
RHO_DOUBLINGS = 60
AFFINE_TOLERANCE = 1e-9
SCS_ACCURACY = {"eps_abs": 1e-4, "eps_rel": 1e-4}  # looser than cvxpy's default: verification absorbs the slack


def require_cvxpy(what: str) -> Any:
    """The cvxpy module, or a UserError saying in one line how to install it."""
    try:
        import cvxpy
    except ImportError:
        raise UserError(f"{what} needs the SDP solver extra (cvxpy): {INSTALL}") from None
    return cvxpy


@dataclass(frozen=True)
class LipSDPCertificate:
    """A verified LipSDP bound: ``bound`` = sqrt(rho), with the multipliers and the margin that proved it."""

    bound: float
    rho: float
    multipliers: tuple[np.ndarray, ...]
    min_eigenvalue: float
    tolerance: float
    solver_bound: float | None = None
    solver: str = ""
    solve_seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {"lipsdp_bound": self.bound, "lipsdp_solver_bound": self.solver_bound, "lipsdp_solver": self.solver,
                "lipsdp_min_eigenvalue": self.min_eigenvalue, "lipsdp_tolerance": self.tolerance,
                "lipsdp_seconds": self.solve_seconds}


def as_float64(weights: Sequence[Any]) -> list[np.ndarray]:
    """Weights (tensors or arrays, (out, in)) as float64 arrays; a float32 weight converts exactly."""
    arrays = [np.asarray(w.detach().cpu().double() if hasattr(w, "detach") else w, dtype=np.float64) for w in weights]
    if len(arrays) < 2:
        raise ValueError("LipSDP needs at least one hidden layer (two weight matrices)")
    for before, after in zip(arrays, arrays[1:]):
        if after.shape[1] != before.shape[0]:
            raise ValueError(f"weights do not chain: {before.shape} then {after.shape}")
    return arrays


def hidden_blocks(weights: list[np.ndarray], multipliers: Sequence[np.ndarray]) -> np.ndarray:
    """H(lambda): the blocks of M over the hidden increments (z_1, ..., z_l)."""
    sizes = [w.shape[0] for w in weights[:-1]]
    offsets = np.concatenate(([0], np.cumsum(sizes)))
    matrix = np.zeros((offsets[-1], offsets[-1]))
    for k, lam in enumerate(multipliers):
        rows = slice(offsets[k], offsets[k + 1])
        matrix[rows, rows] = 2 * np.diag(lam)
        if k > 0:
            cross = -lam[:, None] * weights[k]  # -T_{k+1} W_k, rows z_{k+1}, columns z_k
            matrix[rows, offsets[k - 1]:offsets[k]] = cross
            matrix[offsets[k - 1]:offsets[k], rows] = cross.T
    last = slice(offsets[-2], offsets[-1])
    matrix[last, last] -= weights[-1].T @ weights[-1]
    return matrix


def input_coupling(weights: list[np.ndarray], multipliers: Sequence[np.ndarray]) -> np.ndarray:
    """C = T_1 W_0 W_0^T T_1 placed in the z_1 block (the Schur complement subtracts C / rho)."""
    first = multipliers[0][:, None] * weights[0]
    matrix = np.zeros((sum(w.shape[0] for w in weights[:-1]),) * 2)
    n1 = weights[0].shape[0]
    matrix[:n1, :n1] = first @ first.T
    return matrix


def verify(weights: Sequence[Any], multipliers: Sequence[Any], **info: Any) -> LipSDPCertificate | None:
    """The smallest verified L for these multipliers (module doc), or None when no inflation proves one."""
    arrays = as_float64(weights)
    lams = [np.clip(np.asarray(lam, dtype=np.float64), 0, None) for lam in multipliers]
    if [len(lam) for lam in lams] != [w.shape[0] for w in arrays[:-1]]:
        raise ValueError("one multiplier per hidden neuron")
    eps = np.finfo(np.float64).eps
    scale = SAFETY * (sum(w.shape[0] for w in arrays[:-1]) + arrays[0].shape[1]) * eps
    for j in range(LAMBDA_INFLATIONS):
        inflated = [lam * (1 + 1e-6 * 4 ** j) for lam in lams]
        hidden = hidden_blocks(arrays, inflated)
        floor = float(np.linalg.eigvalsh(hidden)[0])
        if floor > 2 * scale * np.linalg.norm(hidden):
            break
    else:
        return None
    coupling = input_coupling(arrays, inflated)
    cholesky = np.linalg.cholesky(hidden)
    whitened = np.linalg.solve(cholesky, np.linalg.solve(cholesky, coupling).T)
    rho = max(float(np.linalg.eigvalsh((whitened + whitened.T) / 2)[-1]), np.finfo(np.float64).tiny)
    tolerance = scale * (np.linalg.norm(hidden) + np.linalg.norm(coupling) / rho)
    rho *= 1 + max(1e-9, 4 * tolerance / floor)
    for _ in range(RHO_DOUBLINGS):
        tolerance = scale * (np.linalg.norm(hidden) + np.linalg.norm(coupling) / rho)
        smallest = float(np.linalg.eigvalsh(hidden - coupling / rho)[0])
        if smallest >= tolerance:
            return LipSDPCertificate(math.sqrt(rho), rho, tuple(inflated), smallest, float(tolerance), **info)
        rho *= 2
    return None


def lmi_coefficients(weights: list[np.ndarray]) -> tuple[Any, np.ndarray, int]:
    """M(rho, lambda) = reshape(A @ [rho, lambda] + c) on the reduced input (module doc): sparse A, dense c."""
    from scipy import sparse  # a dependency of cvxpy, like the solvers

    left, singular, _ = np.linalg.svd(weights[0], full_matrices=False)
    inputs = [left * singular] + weights[1:-1]  # the first is n_1 x r with factor factor^T = W_0 W_0^T
    sizes = [inputs[0].shape[1]] + [w.shape[0] for w in weights[:-1]]
    offsets = np.concatenate(([0], np.cumsum(sizes)))
    size = int(offsets[-1])
    rows, columns, values = [np.arange(sizes[0]) * (size + 1)], [np.zeros(sizes[0], dtype=int)], [np.ones(sizes[0])]
    variable = 1
    for k, matrix in enumerate(inputs, start=1):
        neurons, previous = matrix.shape
        neuron = np.arange(neurons)
        diagonal = (offsets[k] + neuron) * (size + 1)
        below = (offsets[k] + neuron[:, None]) + size * (offsets[k - 1] + np.arange(previous)[None, :])
        above = (offsets[k - 1] + np.arange(previous)[None, :]) + size * (offsets[k] + neuron[:, None])
        rows += [diagonal, below.ravel(), above.ravel()]
        owner = variable + neuron
        columns += [owner, np.repeat(owner, previous), np.repeat(owner, previous)]
        values += [np.full(neurons, 2.0), -matrix.ravel(), -matrix.ravel()]
        variable += neurons
    coefficients = sparse.csc_matrix((np.concatenate(values), (np.concatenate(rows), np.concatenate(columns))),
                                     shape=(size * size, variable))
    constant = np.zeros((size, size))
    constant[offsets[-2]:, offsets[-2]:] = -weights[-1].T @ weights[-1]
    return coefficients, constant.ravel(order="F"), size


def solve(weights: Sequence[Any], solver: str | None = None) -> LipSDPCertificate | None:
    """Minimise rho subject to M(rho, lambda) >= 0 with cvxpy, then :func:`verify` the answer.

    Default solver: SCS (first order; an interior-point solver's KKT system grows as the fourth power of
    the LMI's size, Clarabel needs minutes and gigabytes from a 120 x 120 LMI on); its loose tolerance
    only costs the verification's inflation (``SCS_ACCURACY``).
    """
    cp = require_cvxpy("the LipSDP certificate")
    arrays = as_float64(weights)
    started = time.perf_counter()
    coefficients, constant, size = lmi_coefficients(arrays)
    unknowns = cp.Variable(coefficients.shape[1])
    matrix = cp.reshape(coefficients @ unknowns + constant, (size, size), order="F")
    problem = cp.Problem(cp.Minimize(unknowns[0]), [unknowns >= 0, (matrix + matrix.T) / 2 >> 0])
    chosen = solver or "SCS"
    try:
        problem.solve(solver=chosen, **(SCS_ACCURACY if chosen == "SCS" else {}))
    except cp.error.SolverError:
        return None
    if unknowns.value is None:
        return None
    splits = np.cumsum([w.shape[0] for w in arrays[:-1]])[:-1] + 1
    multipliers = np.split(unknowns.value[1:], splits - 1)
    return verify(arrays, multipliers, solver_bound=math.sqrt(max(float(unknowns.value[0]), 0.0)),
                  solver=chosen, solve_seconds=time.perf_counter() - started)


def product_of_norms(weights: Sequence[Any]) -> float:
    """prod_k |W_k|_2 (exact SVDs): the bound LipSDP is compared with."""
    return math.prod(float(np.linalg.norm(w, 2)) for w in as_float64(weights))


def dense_matrices(layers: Sequence[Any]) -> list[np.ndarray] | None:
    """The float64 matrices of affine layers by impulse response (any parameterization: AOL's rescaled
    weight, a plain weight), or None when a layer is not affine (checked on two random probes)."""
    matrices = []
    for layer in layers:
        probe = copy.deepcopy(layer).double().eval().requires_grad_(False)
        size = getattr(probe, "in_features", None)
        if size is None:
            return None
        with torch.no_grad():
            matrix = affine_operator_matrix(probe, (size,))
            points = torch.randn(2, size, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
            offset = probe(torch.zeros(1, size, dtype=torch.float64))
            if (probe(points) - offset - points @ matrix.T).norm() > AFFINE_TOLERANCE * (1 + points.norm() * matrix.norm()):
                return None
        matrices.append(matrix.numpy())
    return matrices


def model_certificate(model: Any) -> LipSDPCertificate | None:
    """The verified LipSDP certificate of a model that names its ReLU chain (``lipsdp_layers()``), else None."""
    chain = getattr(model, "lipsdp_layers", None)
    layers = chain() if callable(chain) else None
    matrices = dense_matrices(layers) if layers else None
    return solve(matrices) if matrices else None


def audit_fields(model: Any) -> dict[str, Any]:
    """What ``lipbench audit`` records: the verified LipSDP bound, or why there is none ({} if not an MLP)."""
    chain = getattr(model, "lipsdp_layers", None)
    if not callable(chain) or not chain():
        return {}
    try:
        require_cvxpy("the LipSDP bound")
    except UserError as missing:
        return {"lipsdp_skipped": str(missing)}
    found = model_certificate(model)
    return found.summary() if found else {"lipsdp_skipped": "the SDP solver's answer could not be verified"}
