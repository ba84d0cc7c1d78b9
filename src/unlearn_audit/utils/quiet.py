"""Library chatter stays quiet unless the user asks for it (`-v`).

Every process of a run calls `quiet_libraries()` (the CLI and each grid worker); `-v` sets
UNLEARN_AUDIT_VERBOSE so spawned workers show what the main process shows."""

from __future__ import annotations

import os
import warnings

VERBOSE_ENV = "UNLEARN_AUDIT_VERBOSE"


def set_verbose(verbose: bool) -> None:
    if verbose:
        os.environ[VERBOSE_ENV] = "1"
        import logging

        logging.getLogger("bitsandbytes").setLevel(logging.NOTSET)  # quietened at package import
    else:
        os.environ.pop(VERBOSE_ENV, None)


def verbose() -> bool:
    """Whether the user asked for library output (`-v`)."""
    return bool(os.environ.get(VERBOSE_ENV))


def quiet_libraries() -> None:
    """Silence library warnings (deprecations of transformers, torch, bitsandbytes, ...) and chatty
    logs, unless verbose; the offline hub probes only cost time here."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if os.environ.get(VERBOSE_ENV):
        return
    warnings.filterwarnings("ignore")  # our own messages go through logging and one-line errors
    import logging

    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # its CPU backend warns of optional kernels at import
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass
