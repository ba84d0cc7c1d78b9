"""The causal-LM training core below `finetune`, the relearning attacks and `unlearn`: HF Trainer with
the precision modes (pure bf16 without an fp32 master, fp32, mixed), per-epoch checkpoints, resume,
divergence stops and atomic model folders. Plain NLL training on texts (`train_on_texts`) is all that
`finetune` and relearning need; `unlearn` adds its forget loss and regularizer on top (`CoreTrainer`).
Nothing here imports `unlearn/`.
"""

from .core import TrainSettings, train_on_texts

__all__ = ["TrainSettings", "train_on_texts"]
