"""`steer:orthogonalize[:layer=L]`: project out of the weights the direction along which forget prompts
differ from retain prompts, then measure every metric again (Łucki et al. 2024, "An adversarial
perspective on machine unlearning for AI safety", arXiv 2409.18025, after the refusal-direction ablation
of Arditi et al. 2024, arXiv 2406.11717).

The direction d (unit length) is the difference of the mean last-token hidden states after block L of
the model under attack on its forget and its retain questions ("Question: {q}\\nAnswer: "); L = -1 takes
the middle block. Every weight that writes into the residual stream (the token embeddings, and each
block's attention output and MLP down projections: Llama-style `o_proj`, `down_proj`) is replaced by
(I - d dᵀ) W, so no layer can write along d any more. Unlearning that steers forget prompts along one
direction (RMU's random-vector push) loses its grip; knowledge that is gone stays gone. Each model (the
unlearned one, the target, the retrained control) is orthogonalized along its own direction.
"""

from __future__ import annotations

import torch

from ..errors import UserError
from ..models.generation import encode_documents
from .probe import hidden_states, prompt_of
from .registry import Attack, AttackFamily, Context, Param, register_attack

WRITERS = ("o_proj", "down_proj")  # Llama, Mistral, Qwen, SmolLM2 blocks


def separating_direction(model, tokenizer, corpus, layer: int, limit: int = 200) -> torch.Tensor:
    """Unit vector from the mean retain-question state to the mean forget-question state after block `layer`."""
    means = []
    for split in ("forget", "retain"):
        prompts = [prompt_of({"question": q.question}) for q in corpus.knowmem(split)[:limit]]
        states = hidden_states(model, tokenizer, encode_documents(tokenizer, prompts))
        means.append(torch.stack([s[layer] for s in states]).mean(0))
    d = (means[0] - means[1]).double()
    if d.norm() == 0:
        raise UserError("steer:orthogonalize: forget and retain questions give the same mean state; nothing to project")
    return d / d.norm()


@torch.no_grad()
def orthogonalize(model, d: torch.Tensor) -> int:
    """W <- (I - d dᵀ) W for every residual-stream writer (and its bias); returns how many were changed."""
    writers = [m for name, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and name.split(".")[-1] in WRITERS]
    if not writers:
        raise UserError(f"steer:orthogonalize knows Llama-style blocks ({', '.join(WRITERS)}); this model has none")
    embed = model.get_input_embeddings().weight
    dd = d.to(embed.device, torch.float64)
    embed.copy_((embed.double() - (embed.double() @ dd)[:, None] * dd[None, :]).to(embed.dtype))
    for m in writers:
        w = m.weight.double()
        m.weight.copy_((w - dd[:, None] * (dd @ w)[None, :]).to(m.weight.dtype))
        if m.bias is not None:
            b = m.bias.double()
            m.bias.copy_((b - dd * (dd @ b)).to(m.bias.dtype))
    return len(writers) + 1


@register_attack
class Steer(AttackFamily):
    family = "steer"
    params = [Param("kind", str, positional=True, check=lambda v: v == "orthogonalize", rule="orthogonalize"),
              Param("layer", int, -1, lambda v: v >= -1, "a block index (0 = the first), or -1: the middle one")]
    usage = "steer:orthogonalize[:layer=L]"
    source = ("Łucki et al. 2024, arXiv 2409.18025 (directional ablation against unlearning); Arditi et al. 2024, "
              "arXiv 2406.11717 (weight orthogonalization)")

    @classmethod
    def load(cls, spec: str, attack: Attack, ctx: Context):
        from ..models.loading import load_model, load_tokenizer

        model = load_model(spec, ctx.dtype, ctx.load, ctx.device)
        tokenizer = ctx.tokenizer or load_tokenizer(spec, ctx.load)
        layer = attack.params["layer"]
        layer = model.config.num_hidden_layers // 2 if layer < 0 else layer
        orthogonalize(model, separating_direction(model, tokenizer, ctx.corpus, layer))
        return model
