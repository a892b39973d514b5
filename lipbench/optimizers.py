"""The optimizer a job trains with: SGD, Adam or NAdam, optionally inside Lookahead.

``make_optimizer`` builds what the settings name (``optimizer``, ``lookahead_steps``), or hands them to
the method's own ``optimizer`` hook (LipNeXt's manifold optimizer, which runs the same methods and
its own Lookahead on the orthogonal group). Adam is AdamW (decoupled weight decay); SGD and NAdam add
the decay to the gradient, as ``torch.optim.SGD`` and ``torch.optim.NAdam`` (which the papers' code uses) do.

Lookahead (Zhang et al., NeurIPS 2019) keeps a slow copy φ of the weights θ; every k steps of the
inner optimizer, φ <- φ + α (θ - φ) and θ <- φ. The slow copies are saved with the optimizer's state,
so checkpoints carry them and the peak memory counts them. Param groups marked ``orthogonal`` are left
to the inner optimizer, whose manifold Lookahead keeps their slow weights orthogonal.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lipbench.registry import LayerMethod, OptimizerSettings
from lipbench.settings import TrainSettings


class Lookahead:
    """``inner`` with slow weights: every ``steps`` inner steps they move ``alpha`` toward the fast ones,
    which restart from them. Its param groups are the inner optimizer's own (a schedule writes both)."""

    def __init__(self, inner: torch.optim.Optimizer, steps: int, alpha: float):
        self.inner, self.steps, self.alpha, self.counter = inner, steps, alpha, 0
        self.param_groups = inner.param_groups
        self.fast = [p for group in self.param_groups if not group.get("orthogonal") for p in group["params"]]
        self.slow = [p.detach().clone() for p in self.fast]

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = self.inner.step(closure)
        self.counter += 1
        if self.counter % self.steps == 0:
            for fast, slow in zip(self.fast, self.slow):
                slow.lerp_(fast, self.alpha)
                fast.copy_(slow)
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.inner.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"inner": self.inner.state_dict(), "counter": self.counter, "slow": self.slow}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.inner.load_state_dict(state_dict["inner"])
        self.counter = state_dict["counter"]
        for slow, saved in zip(self.slow, state_dict["slow"]):
            slow.copy_(saved)


def euclidean_optimizer(parameters: Any, method: str, lr: float, momentum: float = 0.0, weight_decay: float = 0.0,
                        nesterov: bool = False) -> torch.optim.Optimizer:
    """``torch.optim``'s SGD (momentum), AdamW or NAdam on ``parameters``."""
    if method == "sgd":
        return torch.optim.SGD(parameters, lr=lr, momentum=momentum, weight_decay=weight_decay,
                               nesterov=nesterov and momentum > 0)
    if method == "adam":
        return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)
    return torch.optim.NAdam(parameters, lr=lr, weight_decay=weight_decay)


def make_optimizer(model: nn.Module, method: LayerMethod, settings: TrainSettings,
                   steps_per_epoch: int, total_steps: int) -> torch.optim.Optimizer | Lookahead:
    """The settings' optimizer for ``model`` (the method's hook where it has one), with Lookahead when asked."""
    if method.optimizer is not None:
        inner = method.optimizer(model, OptimizerSettings(
            settings.lr, settings.momentum, settings.weight_decay, steps_per_epoch, total_steps,
            settings.optimizer, settings.lookahead_steps, settings.lookahead_alpha))
    else:
        inner = euclidean_optimizer(model.parameters(), settings.optimizer, settings.lr, settings.momentum,
                                    settings.weight_decay, settings.nesterov)
    if not settings.lookahead_steps:
        return inner
    return Lookahead(inner, settings.lookahead_steps, settings.lookahead_alpha)
