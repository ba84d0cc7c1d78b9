"""MUSE evaluation: VerbMem, KnowMem (forget/retain) and PrivLeak, batched, with MUSE-exact scoring."""

from .privleak import mia_auc, min_k_score
from .rouge import aggregate, rouge

__all__ = ["rouge", "aggregate", "mia_auc", "min_k_score"]
