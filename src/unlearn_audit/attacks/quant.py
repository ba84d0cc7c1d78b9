"""`quant:SCHEME`: the deployed model is quantized (RTN, bitsandbytes, GPTQ, AWQ, HQQ, llama.cpp's GGUF file
types, FP8 / MXFP4 / NVFP4; see quantize/).

Source: Zhang et al., "Catastrophic failure of LLM unlearning via quantization" (ICLR 2025): 4-bit
quantization of models unlearned with small learning rates restores most of the forgotten knowledge.
"""

from __future__ import annotations

from ..errors import UserError
from ..quantize import model_at, parse_scheme
from ..quantize.backends import check_calibration_part, check_installed
from .registry import Attack, AttackFamily, Context, Param, register_attack


@register_attack
class Quant(AttackFamily):
    family = "quant"
    params = [Param("scheme", str, positional=True, rule="a scheme such as rtn-int4-g128 or bnb-nf4")]
    usage = ("quant:SCHEME, e.g. quant:rtn-int4-g128, quant:bnb-nf4, quant:gptq-int4-g128, quant:gguf-q4_k_m, "
             "quant:gguf-q4_k_m-imatrix-forget, quant:nvfp4")
    source = "Zhang et al., ICLR 2025 (arXiv 2410.16454)"

    @classmethod
    def validate(cls, attack: Attack) -> None:
        parse_scheme(attack.params["scheme"])

    @classmethod
    def bins_scheme(cls, attack: Attack) -> str | None:
        s = parse_scheme(attack.params["scheme"])
        per_tensor_rtn = s.family == "rtn" and s.rtn.granularity == "tensor"  # bins streams rows
        return s.name if s.analysable and not per_tensor_rtn else None

    @classmethod
    def check_corpus(cls, attack: Attack, corpus, bench) -> None:
        """An importance matrix on a corpus part the corpus lacks is refused before any model is loaded."""
        s = parse_scheme(attack.params["scheme"])
        if s.imatrix in ("retain", "forget"):
            check_calibration_part(s, corpus, s.imatrix)

    @classmethod
    def reads_config(cls, attack: Attack) -> bool:
        return parse_scheme(attack.params["scheme"]).family == "gguf"

    @classmethod
    def check_model(cls, attack: Attack, config) -> None:
        """gguf schemes follow llama.cpp's converter: a model it does not know is refused from its config."""
        if config is not None and parse_scheme(attack.params["scheme"]).family == "gguf":
            from ..quantize.gguf import check_llama_style, meta_shapes

            check_llama_style(meta_shapes(config))

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
