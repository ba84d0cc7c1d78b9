"""unlearn-audit: did the model really forget, or is the knowledge only hidden?

Stages (each usable alone): data -> models -> unlearn -> quantize -> evaluate -> experiment.
"""

__version__ = "0.1.0"
