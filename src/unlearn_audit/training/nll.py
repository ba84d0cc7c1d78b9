"""The causal-LM negative log-likelihood, the loss every training in the toolkit starts from (plain
fine-tuning, relearning, and the unlearning losses built on token log-probs). Label -100 marks padding
(no loss); all reductions happen in float32.
"""

from __future__ import annotations

import torch

IGNORE = -100


def shifted(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Align logits at position t with the label at t+1 (causal LM), as HF's loss does."""
    return logits[:, :-1, :].float(), labels[:, 1:]


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p(y_t | y_<t) per position, mask of real positions); padded positions hold 0."""
    logits, labels = shifted(logits, labels)
    mask = labels != IGNORE
    safe = labels.clamp(min=0)
    picked = logits.gather(-1, safe.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    return picked * mask, mask


def mean_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """NLL averaged over all real tokens of the batch (HF's causal-LM loss)."""
    lp, mask = token_logprobs(logits, labels)
    return -lp.sum() / mask.sum().clamp(min=1)
