"""A margin term (after QUAIL, Mishra & Mehreen 2026, arXiv 2601.15538): keep the unlearned model's
log-probabilities of the forget tokens at least a margin m below the target's,

    L_margin = mean over forget tokens t of  max(0, m - (log p_ref(y_t) - log p_theta(y_t)))

added as `--margin-weight` x L_margin to any method; zero once every token is m below the target.
Quantization moves a model's log-probs by some amount; if unlearning moved them further than that,
quantization cannot undo it. So m is derived from the quantization step when not given (`--margin`):
twice the mean |log p_ref(y_t) - log p_Q(ref)(y_t)| over the forget tokens, Q the first `--through`
scheme (default rtn-int4-g128) applied to the target: the log-prob shift the quantizer itself causes.
(QUAIL puts its hinge on logits; this is the same idea on the log-probabilities the MUSE metrics read.)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import UserError
from .losses import token_logprobs
from .methods import Batch
from .qat import FakeQuantized


@dataclass
class MarginOptions:
    margin_weight: float = field(default=0.0, metadata={
        "help": "weight of the margin term keeping forget-token log-probs a margin below the target's (0 = off)"})
    margin: float | None = field(default=None, metadata={
        "help": "that margin in nats (default: twice the log-prob shift the quantizer causes on the target)"})

    def check_margin(self) -> None:
        if self.margin_weight < 0 or (self.margin is not None and self.margin <= 0):
            raise UserError("--margin-weight must be >= 0 and --margin positive")


def margin_loss(logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
    lp, mask = token_logprobs(logits, labels)
    ref_lp, _ = token_logprobs(ref_logits.detach(), labels)
    hinge = torch.relu(margin - (ref_lp - lp)) * mask
    return hinge.sum() / mask.sum().clamp(min=1)


def batch_margin_loss(batch: Batch, margin: float) -> torch.Tensor:
    return margin_loss(batch.forget_logits, batch.forget_ref_logits, batch.labels("forget"), margin)


@torch.no_grad()
def derived_margin(ref_model, scheme, loader, device) -> float:
    """Twice the mean absolute log-prob shift of the forget tokens that quantizing the target causes."""
    quantized = FakeQuantized(ref_model, scheme)
    total, count = 0.0, 0
    for inputs in loader:
        ids = inputs["forget_input_ids"].to(device)
        mask = inputs["forget_attention_mask"].to(device)
        labels = inputs["forget_labels"].to(device)
        lp, real = token_logprobs(ref_model(input_ids=ids, attention_mask=mask).logits, labels)
        lq, _ = token_logprobs(quantized(input_ids=ids, attention_mask=mask).logits, labels)
        total += float(((lp - lq).abs() * real).sum())
        count += int(real.sum())
    return 2 * total / max(count, 1)
