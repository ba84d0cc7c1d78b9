"""unlearn-audit: did the model really forget, or is the knowledge only hidden?

Stages (each usable alone): data -> models -> unlearn -> quantize -> evaluate -> experiment.
"""

__version__ = "0.1.0"

import logging as _logging
import os as _os

if not _os.environ.get("UNLEARN_AUDIT_VERBOSE"):  # before anything imports transformers' Trainer (-> peft ->
    # bitsandbytes, whose CPU backend warns of optional kernels at import); -v restores it (utils/quiet.py)
    _logging.getLogger("bitsandbytes").setLevel(_logging.ERROR)
