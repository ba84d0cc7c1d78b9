"""SimNPO (Fan et al. 2024, "Simplicity prevails: rethinking negative preference optimization for LLM
unlearning", arXiv 2410.07163, Eq. 4): NPO without the reference model, with length normalisation,

    L_SimNPO = -(2/beta) * E_x[ log sigmoid( -(beta/|y|) * log p_theta(y|x) - gamma ) ],

|y| the number of (non-padding) tokens, `--simnpo-beta` (default 2.5) and `--simnpo-gamma` (default 0,
the margin). Registered as a forget loss, so `simnpo`, `simnpo_gdr` and `simnpo_klr` all exist.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .losses import token_logprobs
from .methods import Batch, register_forget_loss


@dataclass
class SimNPOOptions:
    simnpo_beta: float = field(default=2.5, metadata={"help": "SimNPO inverse temperature"})
    simnpo_gamma: float = field(default=0.0, metadata={"help": "SimNPO reward margin"})


def simnpo_loss(logits: torch.Tensor, labels: torch.Tensor, beta: float, gamma: float) -> torch.Tensor:
    lp, mask = token_logprobs(logits, labels)
    mean_lp = lp.sum(-1) / mask.sum(-1).clamp(min=1)
    return -(2.0 / beta) * F.logsigmoid(-beta * mean_lp - gamma).mean()


@register_forget_loss("simnpo", needs_ref=False, options=SimNPOOptions)
def _simnpo(batch: Batch, cfg) -> torch.Tensor:
    return simnpo_loss(batch.forget_logits, batch.labels("forget"), cfg.simnpo_beta, cfg.simnpo_gamma)
