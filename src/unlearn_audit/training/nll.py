"""The causal-LM negative log-likelihood, the loss every training in the toolkit starts from (plain
fine-tuning, relearning, and the unlearning losses built on token log-probs). Label -100 marks padding
(no loss); all reductions happen in float32. `chunked_mean_nll` is the same loss for models whose full
logits would not fit (a 262k vocabulary): the output head runs a chunk of positions at a time.
"""

from __future__ import annotations

import torch

from ..errors import UserError

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
    of the scored positions go through the output head (and the final logit soft-capping, where the family
    has one) `chunk` positions at a time, and each chunk's gradients are taken at once
    (`LinearCrossEntropy`), as Liger-Kernel's fused linear cross-entropy does. The sum runs in another order
    than `mean_nll`'s: equal to float rounding, not bit for bit."""
    hidden = model.get_decoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    wanted = labels[:, 1:] != IGNORE
    states, targets = hidden[:, :-1][wanted], labels[:, 1:][wanted]
    head = model.get_output_embeddings()
    if getattr(head, "bias", None) is not None:
        raise UserError("--loss-chunk needs an output head without a bias (Llama, Gemma, Qwen, Mistral ...)")
    cap = getattr(model.config, "final_logit_softcapping", None) or 0.0
    return LinearCrossEntropy.apply(states, head.weight, targets, chunk, float(cap)) / max(len(targets), 1)


class LinearCrossEntropy(torch.autograd.Function):
    """sum_i [logsumexp(z_i) - z_i[y_i]] with z_i = cap * tanh(h_i W^T / cap) (z = h W^T without a cap),
    computed `chunk` rows at a time. The gradients are taken chunk by chunk in the forward pass (the loss
    is a scalar, so backward only scales them): dL/dz = softmax(z) - onehot(y), times 1 - tanh^2 through the
    cap; dL/dh = dL/dz W and dL/dW = sum over chunks of dL/dz^T h, accumulated in float32. At most one
    chunk of (rows x vocabulary) values lives at a time, and nothing is recomputed."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk: int, cap: float):
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        for start in range(0, hidden.shape[0], chunk):
            h, y = hidden[start:start + chunk], targets[start:start + chunk]
            z = (h @ weight.T).float()
            bend = None
            if cap:
                t = torch.tanh(z / cap)
                z, bend = t * cap, 1 - t * t
            lse = torch.logsumexp(z, dim=-1)
            total += (lse - z.gather(-1, y.unsqueeze(-1)).squeeze(-1)).sum()
            dz = torch.exp(z - lse.unsqueeze(-1))
            dz[torch.arange(len(y), device=y.device), y] -= 1
            if bend is not None:
                dz *= bend
            grad_hidden[start:start + chunk] = (dz.to(weight.dtype) @ weight).to(hidden.dtype)
            grad_weight += dz.T @ h.float()
        ctx.save_for_backward(grad_hidden, grad_weight.to(weight.dtype))
        return total

    @staticmethod
    def backward(ctx, grad):
        grad_hidden, grad_weight = ctx.saved_tensors
        return grad_hidden * grad.to(grad_hidden.dtype), grad_weight * grad.to(grad_weight.dtype), None, None, None
