"""Recovery attacks: named, parameterised ways a deployed model may bring forgotten knowledge back.

Each family is one file behind a registry (`registry.py`): `quant` (quantize/), `cast`, `prune`, `noise`
(weight transforms) and `relearn` (the unlearning trainer). `experiment/audit.py` runs them on the
unlearned model and on the retrained control.
"""

from .registry import (
    FAMILIES,
    PRESETS,
    Attack,
    AttackFamily,
    Context,
    as_attack,
    families,
    load_attacked,
    load_in_runtime,
    parse_attack,
    parse_attacks,
    runtime_scheme,
    target_reference,
)

__all__ = ["FAMILIES", "PRESETS", "Attack", "AttackFamily", "Context", "as_attack", "families", "load_attacked",
           "load_in_runtime", "parse_attack", "parse_attacks", "runtime_scheme", "target_reference"]
