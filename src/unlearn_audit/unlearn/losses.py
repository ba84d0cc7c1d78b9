"""Unlearning losses as pure functions of logits (no model calls), with the formulas they implement.

Notation: x = a token sequence, y_t its tokens, p_theta the model being unlearned, p_ref the frozen
target it starts from. Label -100 marks padding (no loss). All reductions happen in float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..training.nll import IGNORE, mean_nll, shifted, token_logprobs  # noqa: F401  (the losses build on them)


def sequence_logprob(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log p(y | x) per sequence: the sum of its token log-probs."""
    lp, _ = token_logprobs(logits, labels)
    return lp.sum(dim=-1)


def ga_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Gradient ascent: L_GA = -NLL(forget) (minimising it raises the forget NLL)."""
    return -mean_nll(logits, labels)


def npo_loss(
    logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor, beta: float = 0.1
) -> torch.Tensor:
    """NPO (Zhang et al. 2024), sequence level:
    L_NPO = -(2/beta) * E_x[ log sigmoid( -beta * (log p_theta(y|x) - log p_ref(y|x)) ) ].
    """
    log_ratio = sequence_logprob(logits, labels) - sequence_logprob(ref_logits, labels).detach()
    return -(2.0 / beta) * F.logsigmoid(-beta * log_ratio).mean()


def gdr_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Gradient descent on retain: L_GDR = NLL(retain); the method adds alpha * L_GDR."""
    return mean_nll(logits, labels)


def klr_loss(logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """KL on retain, forward direction: L_KLR = mean over retain tokens of KL(p_ref || p_theta)
    = sum_v p_ref(v) * (log p_ref(v) - log p_theta(v)); the method adds alpha * L_KLR.
    """
    logits, labels = shifted(logits, labels)
    ref_logits = ref_logits[:, :-1, :].float().detach()
    mask = labels != IGNORE
    ref_lp = F.log_softmax(ref_logits, dim=-1)
    kl = (ref_lp.exp() * (ref_lp - F.log_softmax(logits, dim=-1))).sum(-1)
    return (kl * mask).sum() / mask.sum().clamp(min=1)
