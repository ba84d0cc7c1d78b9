"""Quantization: our RTN (the paper's object of study), library backends, and the weight-bin analysis."""

from .backends import (
    QuantizeOptions,
    apply_rtn,
    calibration_for,
    model_at,
    quantize_to_folder,
    quantized_model,
    save_quantized,
)
from .rtn import RTNScheme, fake_quantize, parse_rtn, quantize
from .schemes import Scheme, parse_scheme

__all__ = ["RTNScheme", "Scheme", "QuantizeOptions", "parse_rtn", "parse_scheme", "quantize", "fake_quantize",
           "apply_rtn", "calibration_for", "model_at", "quantize_to_folder", "quantized_model", "save_quantized"]
