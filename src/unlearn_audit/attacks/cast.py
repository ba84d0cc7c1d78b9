"""`cast:bf16` / `cast:fp16`: the model is shipped or served in another 16-bit float format.

Every floating-point weight is rounded to the format (round-to-nearest-even, as `Tensor.to` does) and
the model then runs as the audit runs it (--dtype). An fp32 unlearning update smaller than half a bf16
step of its weight vanishes under `cast:bf16`; bf16 -> fp16 keeps bf16 values except the tiniest
(below fp16's normal range, 6.1e-5) and the largest (above 65504).

Source: the "precision variation" robustness test of zjunlp/unlearn (casting between bf16 and fp16),
and Zhang et al. (ICLR 2025), whose bf16 rounding is the reason small updates sit inside bins.
"""

from __future__ import annotations

from ..quantize import parse_scheme
from ..quantize.backends import apply_cast
from ..quantize.schemes import CAST_DTYPES
from .registry import Attack, AttackFamily, Param, register_attack


@register_attack
class Cast(AttackFamily):
    family = "cast"
    params = [Param("dtype", str, positional=True, check=lambda v: v in CAST_DTYPES, rule="bf16 or fp16")]
    usage = "cast:bf16 or cast:fp16"
    source = "zjunlp/unlearn robustness tests (precision variation); Zhang et al., ICLR 2025"

    @classmethod
    def bins_scheme(cls, attack: Attack) -> str:
        return f"cast-{attack.params['dtype']}"

    @classmethod
    def transform(cls, model, attack: Attack) -> None:
        apply_cast(model, parse_scheme(cls.bins_scheme(attack)))
