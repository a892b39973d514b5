"""The logit-annealing loss of BRONet (Lai et al., ICML 2025, arXiv:2505.15174).

On EMMA's perturbed logits y' (:mod:`lipbench.losses.emma`), an offset cross-entropy whose per-point
terms are weighed by (1 - p)^γ, p = exp(-CE_i) the probability the offset logits give the true class:

    loss = mean_i (1 - p_i)^γ · T · CE((y'_i - offset · onehot) / T)

Points already classified with a large margin (p near 1) contribute little, which anneals the margins
of easy points instead of growing them without end (the paper's argument: a Lipschitz network has a
limited budget of margin to share). The authors' code sets γ = 5, T = 0.75, offset = 2.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lipbench.losses import LossContext, register_loss
from lipbench.losses.emma import emma_logits
from lipbench.losses.offset_ce import offset_logits


@register_loss("logit-annealing", "BRONet's loss: (1 - p)^gamma-weighted offset CE on EMMA's perturbed logits "
               "(Lai et al. 2025)", uses=("loss_eps", "eps_start", "eps_end", "eps_ramp", "offset", "temperature",
                                          "focal_gamma"))
def logit_annealing(logits: Tensor, labels: Tensor, context: LossContext) -> Tensor:
    shifted = offset_logits(emma_logits(logits, labels, context), labels, context.offset) / context.temperature
    per_point = F.cross_entropy(shifted, labels, reduction="none")
    weight = (1 - torch.exp(-per_point)).pow(context.focal_gamma)
    return (weight * per_point).mean() * context.temperature
