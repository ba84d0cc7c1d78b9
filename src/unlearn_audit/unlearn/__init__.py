"""Unlearning: GA, NPO and their GDR/KLR-regularized variants, SURE masking, one HF Trainer."""

from .methods import method_names, register_forget_loss, register_regularizer, resolve_method
from .trainer import UnlearnConfig, unlearn

__all__ = ["UnlearnConfig", "unlearn", "method_names", "resolve_method", "register_forget_loss",
           "register_regularizer"]
