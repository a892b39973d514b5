"""Riemannian optimization on the orthogonal group, as LipNeXt trains its weights.

LipNeXt (Hu, Hu & Fredrikson, ICLR 2026, arXiv:2601.18513) keeps each orthogonal matrix X
(d x d, XᵀX = I) as the parameter itself, with no re-parameterization, and moves it along the
manifold. One step, with G the Euclidean gradient:

    A = skew(XᵀG),  skew(B) = (B - Bᵀ) / 2     (X·A is G projected onto the tangent space at X)
    U = A, or its momentum / Adam moments       (all in the Lie algebra so(d), the same space at every X)
    X <- X · FastExp(-η U)

FastExp truncates the exponential's Taylor series by s = ‖S‖_F: order 2 below 0.05, order 3
below 0.25, order 4 below 1. Its error is the series' tail, ‖FastExp(S) - exp(S)‖_F <= e^s - Σ_{n<=k} s^n / n!
(≈ 2e-5, 2e-4, 1e-2 at the three thresholds). Where the paper calls the exact exponential (s >= 1),
lipbench scales and squares: the order-4 series of S / 2^m, squared m times, with 2^m the power of two
that brings s below 1 (m <= ``MAX_SQUARINGS``). All of it is decided per matrix on the device, with
masks instead of branches: a training step never waits to read a norm.
A truncated series of a skew S is not exactly orthogonal: T_k(S)ᵀT_k(S) - I is S^4/4 for k = 2,
-S^4/12 + O(S^6) for k = 3 and S^6/72 + O(S^8) for k = 4. Those errors and float round-off
accumulate as drift, which two things remove:

* polar retraction ``X <- U Vᵀ`` (from the SVD X = U Σ Vᵀ, the nearest orthogonal matrix) every
  ``retraction_interval`` steps (the lipnext hook: every 100 steps or every epoch, whichever is first);
* nothing else needs to: a certificate must use the exact norms of the actual weights (the drift
  costs tightness, never soundness), see :func:`lipbench.linalg.orthogonality_error`.

Lookahead in the tangent space (``lookahead_steps`` = K > 0): slow weights start at X; after
every K fast steps they move by ``X_slow <- X_slow · FastExp(α Σ_{last K} (-η U))`` (α = 1/2 by
default) and the fast weights restart from them. Summing the K skew steps is the first-order
(Baker-Campbell-Hausdorff) approximation of composing them.

Other parameters get SGD (momentum, optional Nesterov, coupled weight decay: as
``torch.optim.SGD``), AdamW (as ``torch.optim.AdamW``) or NAdam (weight decay coupled into the gradient, as
``torch.optim.NAdam``) in the same optimizer; each param group
says which, and whether it is ``orthogonal``. Weight decay makes no sense on the manifold, so an
orthogonal group must have none. The manifold step runs in the parameter's dtype, which must be
float32 or float64 (bfloat16 cannot hold an orthogonal matrix to better than ~4e-3), and outside
autocast, so bf16 training keeps its weights on the manifold.
"""
from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import Tensor

from lipbench.linalg import polar, skew

TAYLOR_ORDERS = ((0.05, 2), (0.25, 3), (1.0, 4))  # (‖S‖_F below, Taylor order)
MAX_SQUARINGS = 3  # scaling and squaring covers ‖S‖_F < 8; a larger step (a diverging run) keeps order 4's error
METHODS = ("sgd", "adam", "nadam")
MANIFOLD_DTYPES = (torch.float32, torch.float64)


def taylor_order(norm: float) -> int:
    """The Taylor order FastExp uses at Frobenius norm ``norm`` (after scaling, which keeps it below 1)."""
    return next((order for below, order in TAYLOR_ORDERS if norm < below), TAYLOR_ORDERS[-1][1])


def squarings(norms: Tensor) -> Tensor:
    """m per matrix: the number of halvings that bring ‖S‖_F below 1 (0 below 1), at most MAX_SQUARINGS."""
    return (torch.floor(torch.log2(norms.clamp_min(0.5))) + 1).clamp(0, MAX_SQUARINGS)


def fast_exp(matrices: Tensor) -> Tensor:
    """exp(S) for a batch (..., d, d): FastExp per matrix (module doc), chosen on the device."""
    norms = torch.linalg.matrix_norm(matrices, keepdim=True)
    halvings = squarings(norms)
    scaled, small = matrices / 2 ** halvings, norms / 2 ** halvings
    eye = torch.eye(matrices.shape[-1], dtype=matrices.dtype, device=matrices.device)
    square = scaled @ scaled
    cube = square @ scaled
    order_3 = (small >= TAYLOR_ORDERS[0][0]).to(matrices.dtype)
    order_4 = (small >= TAYLOR_ORDERS[1][0]).to(matrices.dtype)
    result = eye + scaled + square / 2 + order_3 * cube / 6 + order_4 * (cube @ scaled) / 24
    for index in range(MAX_SQUARINGS):
        result = torch.where(index < halvings, result @ result, result)
    return result


def tangent_projection(point: Tensor, grad: Tensor) -> Tensor:
    """X skew(XᵀG): the Euclidean gradient G projected onto the tangent space at an orthogonal X."""
    return point @ skew(point.mT @ grad)


class TangentGradient(torch.autograd.Function):
    """The identity, whose backward passes on the tangent projection of the gradient."""

    @staticmethod
    def forward(ctx: Any, point: Tensor) -> Tensor:
        ctx.save_for_backward(point)
        return point.view_as(point)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (point,) = ctx.saved_tensors
        with torch.autocast(grad.device.type, enabled=False):
            return tangent_projection(point, grad.to(point.dtype))


def with_tangent_gradient(point: Tensor) -> Tensor:
    """``point`` itself, but gradients reaching it arrive projected onto the tangent space.

    A first-order optimizer that is not manifold-aware (plain SGD) then moves along the manifold
    to first order: X(I - ηA) with A skew has all singular values sqrt(1 + η²λ²) >= 1, so a step
    drifts by O(η²) and never shrinks a singular value, instead of following the radial part of G.
    """
    return TangentGradient.apply(point)


def momentum_direction(state: dict[str, Any], grad: Tensor, momentum: float, nesterov: bool) -> Tensor:
    """The heavy-ball (or Nesterov) direction of ``torch.optim.SGD`` with dampening 0."""
    if momentum == 0:
        return grad
    buffer = state.get("momentum_buffer")
    if buffer is None:
        buffer = state["momentum_buffer"] = grad.clone()
    else:
        buffer.mul_(momentum).add_(grad)
    return grad.add(buffer, alpha=momentum) if nesterov else buffer


def adam_direction(state: dict[str, Any], grad: Tensor, betas: tuple[float, float], eps: float,
                   nesterov: bool = False) -> Tensor:
    """Adam's bias-corrected m / (sqrt(v) + eps); with ``nesterov``, Dozat's NAdam, whose numerator looks one
    step ahead: β1 m̂ + (1 - β1) g / (1 - β1^t) (torch's NAdam also decays β1 over the steps; this does not).
    On a skew A it is skew again (v is symmetric)."""
    if "exp_avg" not in state:
        state["adam_step"] = 0
        state["exp_avg"] = torch.zeros_like(grad)
        state["exp_avg_sq"] = torch.zeros_like(grad)
    beta1, beta2 = betas
    state["adam_step"] += 1
    step = state["adam_step"]
    state["exp_avg"].lerp_(grad, 1 - beta1)
    state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    denominator = (state["exp_avg_sq"] / (1 - beta2 ** step)).sqrt_().add_(eps)
    numerator = state["exp_avg"] / (1 - beta1 ** step)
    if nesterov:
        numerator = numerator * beta1 + grad * ((1 - beta1) / (1 - beta1 ** step))
    return numerator / denominator


class RiemannianOptimizer(torch.optim.Optimizer):
    """Manifold steps for param groups with ``orthogonal=True``, SGD or AdamW for the others.

    Every group reads its learning rate from ``group["lr"]`` at each step (a scheduler may write it).
    Group settings: ``method`` ("sgd", "adam" or "nadam": the Euclidean optimizer, and the moments kept on
    the skew updates), ``momentum``, ``nesterov``, ``betas``, ``eps``, ``weight_decay``; for
    orthogonal groups also ``retraction_interval`` (polar retraction every that many steps; 0: never),
    ``lookahead_steps`` (K; 0: no lookahead) and ``lookahead_alpha``.
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, method: str = "sgd", momentum: float = 0.9,
                 nesterov: bool = False, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, orthogonal: bool = False, retraction_interval: int = 0,
                 lookahead_steps: int = 0, lookahead_alpha: float = 0.5):
        defaults = dict(lr=lr, method=method, momentum=momentum, nesterov=nesterov, betas=betas, eps=eps,
                        weight_decay=weight_decay, orthogonal=orthogonal, retraction_interval=retraction_interval,
                        lookahead_steps=lookahead_steps, lookahead_alpha=lookahead_alpha)
        super().__init__(params, defaults)  # validates each group through add_param_group

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            parameters = [parameter for parameter in group["params"] if parameter.grad is not None]
            if group["orthogonal"]:
                for same_shape in by_shape(parameters):
                    self.orthogonal_step(same_shape, group)
            else:
                for parameter in parameters:
                    self.euclidean_step(parameter, group)
        return loss

    def euclidean_step(self, parameter: Tensor, group: dict[str, Any]) -> None:
        state, grad, lr, decay = self.state[parameter], parameter.grad, group["lr"], group["weight_decay"]
        if group["method"] == "adam":
            parameter.mul_(1 - lr * decay)
            direction = adam_direction(state, grad, group["betas"], group["eps"])
        elif group["method"] == "nadam":
            direction = adam_direction(state, grad.add(parameter, alpha=decay) if decay else grad, group["betas"],
                                       group["eps"], nesterov=True)
        else:
            direction = momentum_direction(state, grad.add(parameter, alpha=decay) if decay else grad,
                                           group["momentum"], group["nesterov"])
        parameter.add_(direction, alpha=-lr)

    def orthogonal_step(self, parameters: list[Tensor], group: dict[str, Any]) -> None:
        """One manifold step of same-shape matrices at once: their products and exponentials batched."""
        if parameters[0].dtype not in MANIFOLD_DTYPES:
            raise ValueError(f"orthogonal parameters must be float32 or float64 to stay on the manifold, "
                             f"not {parameters[0].dtype}; train in bf16 with torch.autocast instead")
        states = [self.state[parameter] for parameter in parameters]
        with torch.autocast(parameters[0].device.type, enabled=False):
            points = torch.stack(parameters)
            grads = torch.stack([parameter.grad.to(parameter.dtype) for parameter in parameters])
            riemannian = skew(points.mT @ grads)
            if group["method"] != "sgd":
                directions = [adam_direction(state, r, group["betas"], group["eps"], group["method"] == "nadam")
                              for state, r in zip(states, riemannian)]
            else:
                directions = [momentum_direction(state, r, group["momentum"], group["nesterov"])
                              for state, r in zip(states, riemannian)]
            tangents = torch.stack(directions) * -group["lr"]
            step = states[0].get("step", 0) + 1
            for state in states:
                state["step"] = step
            if group["lookahead_steps"]:
                points = self.lookahead(points, tangents, states, step, group)
            else:
                points = points @ fast_exp(tangents)
            if group["retraction_interval"] and step % group["retraction_interval"] == 0:
                points = polar(points)
                if "slow" in states[0]:
                    for state, slow in zip(states, polar(torch.stack([state["slow"] for state in states]))):
                        state["slow"].copy_(slow)
            for parameter, point in zip(parameters, points):
                parameter.copy_(point)

    def lookahead(self, points: Tensor, tangents: Tensor, states: list[dict[str, Any]], step: int,
                  group: dict[str, Any]) -> Tensor:
        """Fast step; every K steps the slow weights move by α Σ tangents and the fast ones restart there."""
        if "slow" not in states[0]:
            for state, point in zip(states, points):
                state["slow"], state["tangent_sum"] = point.clone(), torch.zeros_like(point)
        for state, tangent in zip(states, tangents):
            state["tangent_sum"].add_(tangent)
        if step % group["lookahead_steps"]:
            return points @ fast_exp(tangents)
        slow = torch.stack([state["slow"] for state in states])
        sums = torch.stack([state["tangent_sum"] for state in states])
        slow = slow @ fast_exp(group["lookahead_alpha"] * sums)
        for state, new in zip(states, slow):
            state["slow"].copy_(new)
            state["tangent_sum"].zero_()
        return slow

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        check_group(self.param_groups[-1])


def by_shape(parameters: list[Tensor]) -> list[list[Tensor]]:
    """The parameters grouped by shape, in their order (each group steps as one batch)."""
    groups: dict[tuple[int, ...], list[Tensor]] = {}
    for parameter in parameters:
        groups.setdefault(tuple(parameter.shape), []).append(parameter)
    return list(groups.values())


def check_group(group: dict[str, Any]) -> None:
    if group["method"] not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, not {group['method']!r}")
    if group["orthogonal"]:
        if group["weight_decay"]:
            raise ValueError("weight decay does not apply to orthogonal parameters; give their group weight_decay=0")
        for parameter in group["params"]:
            if parameter.dim() != 2 or parameter.shape[0] != parameter.shape[1]:
                raise ValueError(f"orthogonal parameters must be square matrices, not {tuple(parameter.shape)}")
