"""Lip-Loop: ADMM training under the loop-transformed LipSDP constraint (Abdeen, Kekatos & Jin, arXiv:2506.23977).

A whole-network method for the ReLU MLPs of ``lipbench.models.mlp`` (its layers are plain dense layers;
the constraint couples all of them). Loop transformation: ReLU = (v + psi(v)) / 2 with psi = |v| in the
sector [-1, 1]; per neuron dv^2 - dpsi^2 = 4 dphi (dv - dphi) >= 0, so with multipliers T_k = diag(lambda_k)
the network is L-Lipschitz if the LipSDP matrix (:mod:`lipbench.lipsdp`) at rho = L^2 is PSD:
    M(W, lambda) = [[L^2 I, -W_0^T T_1, 0 ...], [-T_1 W_0, 2 T_1, -W_1^T T_2 ...], ..., 2 T_l - W_l^T W_l] >= 0.
For fixed multipliers M is affine in the hidden weights and concave in the last, for fixed weights affine
in lambda. ADMM on  min loss(W)  s.t.  M(W, lambda) = P, P >= 0  (scaled dual Y, penalty ``rho``):
    W-step (every training step, SGD or Adam): loss(W) + rho/2 |M(W, lambda) - P + Y|_F^2;
    SDP step (every ``interval`` steps): (lambda, P) = argmin_{lambda >= 0, P >= 0} |M(W, lambda) - P + Y|_F^2;
    dual step: Y <- Y + M(W, lambda) - P.
At a fixed point with M = P the constraint holds at the target L. The certificate never relies on that:
it is the verified LipSDP bound of the trained weights (free multipliers, float64, :func:`lipbench.lipsdp.verify`),
or the product of exact layer norms when that is smaller; ``target`` is recorded as the method's claim.

Choices the paper leaves open. Only the letter's abstract could be consulted here (its Lip-Loop section
was not retrievable), so the splitting above is lipbench's reading of "loop transformation, convex
admissibility condition, ADMM between weight steps and an SDP": the loop-transformed constraint is the
LipSDP LMI itself (the sector change leaves its feasible set unchanged, see lipbench.lipsdp), and its
bilinearity in (W, lambda) is split by ADMM so that each step is convex. The rest:
* the SDP step is solved by ``inner_steps`` rounds of block coordinate descent, exactly per block: P is the
  projection of M + Y on the PSD cone (one eigendecomposition, float64), lambda the non-negative
  least-squares fit, which decouples per neuron (each lambda_i touches its own diagonal entry and the row
  of its incoming weights) into lambda_i = max(0, <B_i, P - Y - M_0> / |B_i|^2). The step is a convex
  problem; warm-started from the last lambda, a few rounds approach its minimiser (ADMM tolerates inexact
  steps). They run on the weights' device and read nothing back; a generic solver (cvxpy) on an
  (n_0 + N)-square PSD variable would need the host and far longer.
* the full input dimension is kept in M (784 + hidden units for Fashion-MNIST), so each training step's
  penalty costs one (n_0 + N)^2 matrix; multipliers start at 1 (feasible for orthogonal weights at L = 1),
  P at the projection of M, Y at 0; defaults rho = 10, target = 1, interval = 20, inner_steps = 3.
* the SDP step runs inside the optimizer's step (the ``optimizer`` hook, like LipNeXt's retraction), so it
  counts against the budget as training time; the loop re-plans every few percent of the run from
  synchronized windows of whole steps, so the plan absorbs the SDP steps' share.
* biases are free (they do not enter the Lipschitz constant).

Approximation and its error: none in the certificate (verified in float64). Training meets the target only
as far as ADMM has converged: the relative residual |M - P|_F / |M|_F of the last SDP step is recorded
(``admm_residual``), and a verified bound above ``target`` is reported by the audit as a finding.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any
from weakref import WeakKeyDictionary

import torch
from torch import Tensor, nn

from lipbench import lipsdp
from lipbench.layers._unconstrained import UNCONSTRAINED_PROTOCOL, BoundedLinear
from lipbench.optimizers import euclidean_optimizer
from lipbench.registry import OptimizerSettings, register_layer

@dataclass(frozen=True)
class LoopSettings:
    """The ADMM's settings (recorded with every certificate)."""

    rho: float = 10.0
    target: float = 1.0
    interval: int = 20
    inner_steps: int = 3

    def __post_init__(self) -> None:
        if self.rho <= 0 or self.target <= 0 or self.interval < 1 or self.inner_steps < 1:
            raise ValueError("liploop needs rho > 0, target > 0, interval >= 1 and inner_steps >= 1")


class LipLoopLinear(BoundedLinear):
    """A plain dense layer (orthogonal init, exact norm) that carries the network's ADMM settings."""

    def __init__(self, in_features: int, out_features: int, settings: LoopSettings):
        super().__init__(in_features, out_features)
        self.settings = settings


def chain_of(model: nn.Module) -> list[LipLoopLinear]:
    chain = getattr(model, "lipsdp_layers", None)
    layers = chain() if callable(chain) else None
    if not layers or not all(isinstance(layer, LipLoopLinear) for layer in layers):
        raise ValueError("liploop trains ReLU MLPs built from liploop layers only (the mlp model family)")
    return layers


def assemble(blocks: list[list[Tensor | None]], sizes: list[int], like: Tensor) -> Tensor:
    """A block matrix from a grid of blocks (None: zeros)."""
    return torch.cat([torch.cat([like.new_zeros(rows, columns) if block is None else block
                                 for block, columns in zip(row, sizes)], dim=1)
                      for row, rows in zip(blocks, sizes)], dim=0)


class ADMMState:
    """lambda, P and Y of the ADMM (module doc) for one network, on its weights' device."""

    def __init__(self, weights: list[Tensor], settings: LoopSettings):
        self.weights, self.settings = weights, settings
        self.sizes = [weights[0].shape[1]] + [w.shape[0] for w in weights[:-1]]
        like = weights[0].detach()
        self.multipliers = [like.new_ones(size) for size in self.sizes[1:]]
        with torch.no_grad():
            self.slack = psd_projection(self.matrix())
        self.dual = torch.zeros_like(self.slack)
        self.residual = like.new_zeros(())

    def matrix(self, multipliers: list[Tensor] | None = None) -> Tensor:
        """M(W, lambda) over (z_0, ..., z_l), in the weights' dtype (with their gradients)."""
        lams = self.multipliers if multipliers is None else multipliers
        count = len(self.sizes)
        blocks: list[list[Tensor | None]] = [[None] * count for _ in range(count)]
        blocks[0][0] = self.settings.target ** 2 * torch.eye(self.sizes[0], dtype=lams[0].dtype, device=lams[0].device)
        for k, lam in enumerate(lams, start=1):
            blocks[k][k] = 2 * torch.diag(lam)
            blocks[k][k - 1] = -lam[:, None] * self.weights[k - 1]
            blocks[k - 1][k] = blocks[k][k - 1].T
        last = self.weights[-1]
        blocks[-1][-1] = blocks[-1][-1] - last.T @ last
        return assemble(blocks, self.sizes, lams[0])

    def penalty(self) -> Tensor:
        """rho/2 |M(W, lambda) - P + Y|_F^2, the W-step's augmented term."""
        return self.settings.rho / 2 * (self.matrix() - self.slack + self.dual).pow(2).sum()

    @torch.no_grad()
    def update(self) -> None:
        """The SDP step on (lambda, P), then the dual step (module doc); nothing is read on the host."""
        zeros = [torch.zeros_like(lam) for lam in self.multipliers]
        for _ in range(self.settings.inner_steps):
            self.slack = psd_projection(self.matrix() + self.dual)
            self.multipliers = self.fit_multipliers(self.slack - self.dual - self.matrix(zeros))
        constraint = self.matrix()
        self.dual += constraint - self.slack
        self.residual = (constraint - self.slack).norm() / constraint.norm()

    def fit_multipliers(self, target: Tensor) -> list[Tensor]:
        """argmin_{lambda >= 0} |sum_i lambda_i B_i - target|_F, one neuron at a time (module doc)."""
        symmetric = (target + target.T) / 2
        offsets = [sum(self.sizes[:k]) for k in range(len(self.sizes) + 1)]
        fitted = []
        for k in range(1, len(self.sizes)):
            rows = slice(offsets[k], offsets[k + 1])
            incoming = self.weights[k - 1].detach()
            cross = symmetric[rows, offsets[k - 1]:offsets[k]]
            numerator = 2 * symmetric[rows, rows].diagonal() - 2 * (incoming * cross).sum(dim=1)
            fitted.append((numerator / (4 + 2 * incoming.pow(2).sum(dim=1))).clamp_min(0))
        return fitted

    def state_dict(self) -> dict[str, Any]:
        return {"multipliers": self.multipliers, "slack": self.slack, "dual": self.dual}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.multipliers, self.slack, self.dual = list(state["multipliers"]), state["slack"], state["dual"]


def psd_projection(matrix: Tensor) -> Tensor:
    """The nearest PSD matrix in Frobenius norm (eigenvalues clipped at 0), computed in float64."""
    values, vectors = torch.linalg.eigh(((matrix + matrix.T) / 2).double())
    return ((vectors * values.clamp_min(0)) @ vectors.T).to(matrix.dtype)


class ADMMOptimizer:
    """SGD or Adam on the task loss plus the ADMM penalty; the SDP and dual steps every ``interval`` steps.

    The training loop writes the lr into ``param_groups`` (those of the inner optimizer).
    """

    def __init__(self, model: nn.Module, inner: torch.optim.Optimizer, settings: LoopSettings):
        self.inner, self.settings, self.steps = inner, settings, 0
        self.weights = [layer.weight for layer in chain_of(model)]
        self.admm = ADMMState(self.weights, settings)
        ADMM_STATES[model] = self.admm

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.inner.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.inner.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        with torch.enable_grad():
            gradients = torch.autograd.grad(self.admm.penalty(), self.weights)
        for weight, gradient in zip(self.weights, gradients):
            weight.grad = gradient if weight.grad is None else weight.grad + gradient
        self.inner.step()
        self.steps += 1
        if self.steps % self.settings.interval == 0:
            self.admm.update()

    def state_dict(self) -> dict[str, Any]:
        return {"inner": self.inner.state_dict(), "steps": self.steps, "admm": self.admm.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state["inner"])
        self.steps = int(state["steps"])
        self.admm.load_state_dict(state["admm"])


ADMM_STATES: WeakKeyDictionary[nn.Module, ADMMState] = WeakKeyDictionary()  # the certificate reports the residual


def liploop_optimizer(model: nn.Module, settings: OptimizerSettings) -> ADMMOptimizer:
    """The training settings' optimizer (``--optimizer``) on the weights, with the ADMM around it."""
    inner = euclidean_optimizer(model.parameters(), settings.method, settings.lr, settings.momentum,
                                settings.weight_decay)
    return ADMMOptimizer(model, inner, chain_of(model)[0].settings)


def liploop_certificate(model: nn.Module) -> dict:
    """The verified LipSDP bound of the trained weights (or the product of norms, if smaller or unverified)."""
    layers = chain_of(model)
    weights = [layer.weight for layer in layers]
    product = lipsdp.product_of_norms(weights)
    verified = lipsdp.solve(weights)
    state = ADMM_STATES.get(model)
    fields = verified.summary() if verified else {"lipsdp_skipped": "the SDP solver's answer could not be verified"}
    bound = min(product, verified.bound) if verified else product
    return {"lipschitz_bound": bound, "lipschitz_bound_claimed": layers[0].settings.target,
            "lipschitz_bound_product_of_norms": product, **fields,
            "admm_residual": None if state is None else float(state.residual),
            **{f"admm_{key}": value for key, value in asdict(layers[0].settings).items()}}


@register_layer("liploop", family="lmi", padding="zero", exact=True, bound=float("inf"), kinds=("linear",),
                model="mlp", protocol=UNCONSTRAINED_PROTOCOL, optimizer=liploop_optimizer,
                certificate=liploop_certificate,
                description="Lip-Loop (Abdeen et al. 2025): ADMM on the LipSDP constraint; certificate = verified LipSDP")
def build_liploop(kind: str, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                  rho: float = LoopSettings.rho, target: float = LoopSettings.target,
                  interval: int = LoopSettings.interval, inner_steps: int = LoopSettings.inner_steps) -> nn.Module:
    lipsdp.require_cvxpy("liploop (its certificate is a LipSDP bound)")
    settings = LoopSettings(float(rho), float(target), int(interval), int(inner_steps))
    return LipLoopLinear(in_channels, out_channels, settings)
