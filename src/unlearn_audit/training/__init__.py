"""The causal-LM training core below `finetune`, the tiny models, the relearning attacks and `unlearn`:
HF Trainer with the precision modes (pure bf16 without an fp32 master, fp32, mixed), per-epoch checkpoints, resume,
divergence stops and atomic model folders. Plain NLL training on texts (`train_on_texts`) is all that
`finetune` and relearning need; `unlearn` adds its forget loss and regularizer on top (`CoreTrainer`).
Nothing here imports `unlearn/`. The core (and with it transformers' Trainer) is imported on first use, so
that the options' modules (`bf16`, `lora`, `schedule`) stay light.
"""

__all__ = ["TrainSettings", "train_on_texts"]


def __getattr__(name: str):
    if name in __all__:
        from . import core

        return getattr(core, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
