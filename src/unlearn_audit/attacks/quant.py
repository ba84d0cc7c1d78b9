"""`quant:SCHEME`: the deployed model is quantized (RTN, bitsandbytes, GPTQ, AWQ, HQQ; see quantize/).

Source: Zhang et al., "Catastrophic failure of LLM unlearning via quantization" (ICLR 2025): 4-bit
quantization of models unlearned with small learning rates restores most of the forgotten knowledge.
"""

from __future__ import annotations

from ..errors import UserError
from ..quantize import model_at, parse_scheme
from ..quantize.backends import check_installed
from .registry import Attack, AttackFamily, Context, Param, register_attack


@register_attack
class Quant(AttackFamily):
    family = "quant"
    params = [Param("scheme", str, positional=True, rule="a scheme such as rtn-int4-g128 or bnb-nf4")]
    usage = "quant:SCHEME, e.g. quant:rtn-int4-g128, quant:bnb-nf4, quant:gptq-int4-g128"
    source = "Zhang et al., ICLR 2025 (arXiv 2410.16454)"

    @classmethod
    def validate(cls, attack: Attack) -> None:
        parse_scheme(attack.params["scheme"])

    @classmethod
    def bins_scheme(cls, attack: Attack) -> str | None:
        s = parse_scheme(attack.params["scheme"])
        return s.name if s.analysable and not s.name.endswith("-tensor") else None

    @classmethod
    def missing(cls, attack: Attack) -> str | None:
        try:
            check_installed(parse_scheme(attack.params["scheme"]).family)
        except UserError as exc:
            return str(exc)
        return None

    @classmethod
    def load(cls, spec: str, attack: Attack, ctx: Context):
        return model_at(spec, attack.params["scheme"], ctx.load, dtype=ctx.dtype, device=ctx.device,
                        tokenizer=ctx.tokenizer, corpus=ctx.corpus)
