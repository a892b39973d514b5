"""EMMA, the efficient margin maximization loss (Hu et al., "Unlocking Deterministic Robustness
Certification on ImageNet", NeurIPS 2023, arXiv:2301.12549).

With logits shifted so that the true one is 0 (y_j = z_j - z_y) and K_j the Lipschitz constant of
z_j - z_y (``context.pair_lipschitz[y, j]``), every other logit is raised by the most the certificate
allows an ε-perturbation to raise it, scaled down for points far from the boundary:

    y'_j = y_j + c_j ε K_j,   c_j = clip(-y_j / (ε K_j), 0.01, 1), with no gradient through c_j,

and the loss is CE(y', y). A point whose margin to class j exceeds ε K_j is certified against j and gets
c_j < 1: its push shrinks, so training spends its capacity on the uncertified pairs. The shift by z_y
changes no cross-entropy; c_j follows the authors' code (clip range, no gradient).
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from lipbench.losses import LossContext, register_loss

SCALE_RANGE = (0.01, 1.0)


def emma_logits(logits: Tensor, labels: Tensor, context: LossContext) -> Tensor:
    """y' above: the logits as the worst ε-perturbation the certificate admits would leave them."""
    shifted = logits - logits.gather(1, labels[:, None])
    push = (context.epsilon * context.pair_lipschitz[labels].to(logits.dtype)).scatter(1, labels[:, None], 0.0)
    scale = (-shifted / push.clamp_min(1e-8)).clamp(*SCALE_RANGE).detach()
    return shifted + scale * push


@register_loss("emma", "EMMA: each other logit raised by its certified worst case at the ramped radius "
               "(Hu et al. 2023)", uses=("loss_eps", "eps_start", "eps_end", "eps_ramp"))
def emma(logits: Tensor, labels: Tensor, context: LossContext) -> Tensor:
    return F.cross_entropy(emma_logits(logits, labels, context), labels)
