"""The offset cross-entropy (Prach & Lampert, ECCV 2022, arXiv:2208.03160), the comparison paper's loss.

    loss = T * CE((z - offset * onehot(y)) / T, y)

Subtracting ``offset`` from the true logit asks for a margin of at least ``offset`` before the loss
relaxes; the temperature T sets how sharply. Prach et al. use offset sqrt(2) * 2 * 36/255, T = 1/4.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from lipbench.losses import LossContext, register_loss


def offset_logits(logits: Tensor, labels: Tensor, offset: float) -> Tensor:
    return logits - offset * F.one_hot(labels, logits.shape[-1]).to(logits.dtype)


@register_loss("offset-ce", "cross-entropy after lowering the true logit by offset, at temperature (Prach et al.)",
               uses=("offset", "temperature"))
def offset_cross_entropy(logits: Tensor, labels: Tensor, context: LossContext) -> Tensor:
    shifted = offset_logits(logits, labels, context.offset)
    return F.cross_entropy(shifted / context.temperature, labels) * context.temperature
