"""Unlearning: GA, NPO and their GDR/KLR-regularized variants, SURE masking, one HF Trainer.

`unlearn` (the trainer) is imported on first use: reading the options (`UnlearnConfig`) does not load the
training stack."""

from .config import UnlearnConfig
from .methods import method_names, register_forget_loss, register_regularizer, resolve_method

__all__ = ["UnlearnConfig", "unlearn", "method_names", "resolve_method", "register_forget_loss",
           "register_regularizer"]


def __getattr__(name: str):
    if name == "unlearn":
        from .trainer import unlearn

        return unlearn
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
