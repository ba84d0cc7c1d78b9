"""The causal-LM negative log-likelihood, the loss every training in the toolkit starts from (plain
fine-tuning, relearning, and the unlearning losses built on token log-probs). Label -100 marks padding
(no loss); all reductions happen in float32. `chunked_mean_nll` is the same loss for models whose full
logits would not fit (a 262k vocabulary): the output head runs a chunk of positions at a time.
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


def chunked_mean_nll(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                     chunk: int) -> torch.Tensor:
    """`mean_nll` of the model's logits without ever holding them whole: the decoder's last hidden states
    go through the output head (and the final logit soft-capping, where the family has one: Gemma 2)
    `chunk` scored positions at a time under activation checkpointing, so the forward and the backward
    pass each hold one chunk's (positions x vocabulary) logits instead of the batch's. The sum runs in
    another order than `mean_nll`'s: equal to float32 rounding, not bit for bit."""
    from torch.utils.checkpoint import checkpoint

    hidden = model.get_decoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    wanted = labels[:, 1:] != IGNORE
    states, targets = hidden[:, :-1][wanted], labels[:, 1:][wanted]
    head, cap = model.get_output_embeddings(), getattr(model.config, "final_logit_softcapping", None)

    def chunk_nll(h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = head(h).float()
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return (torch.logsumexp(logits, dim=-1) - logits.gather(-1, y.unsqueeze(-1)).squeeze(-1)).sum()

    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, len(targets), chunk):
        total = total + checkpoint(chunk_nll, states[start:start + chunk], targets[start:start + chunk],
                                   use_reentrant=False)
    return total / max(len(targets), 1)
