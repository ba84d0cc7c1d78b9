"""Pure-bf16 training without bf16 matrix arithmetic: the paper's weight rounding at fp32 speed.

In the paper's regime (pure bf16, no fp32 master copy) what decides which updates survive is that the
weights and the AdamW state are stored in bf16: a step smaller than half a bf16 ulp of the weight is
rounded away. The matrix products themselves are bf16 only because that is fast on GPUs; on CPUs
without bf16 instructions they are 2-8x slower than fp32.

`emulated` arithmetic keeps everything that is stored in bf16 in bf16, and computes the rest in fp32:
  - the model holds bf16 values (in fp32 tensors) and its forward/backward pass runs in fp32;
  - gradients are rounded to bf16 and the update is torch's own AdamW run on bf16 copies of the weights
    with bf16 state (so the optimizer arithmetic, weight decay and rounding are exactly native bf16's);
  - the rounded bf16 weights are copied back after every step.
Both paths step with the same AdamW: torch's per-tensor loop by default (as HF's `adamw_torch`; each
intermediate of the update rounded to bf16), or with `fused_adamw` its fused kernel (as `adamw_torch_fused`:
the update computed in fp32 inside one kernel, the bf16 weight and moments written back). Either way an
update below half a bf16 step of its weight is rounded away, the property the paper's failure rests on,
but they are not the same optimizer: on the tiny models at lr 3e-5 the fused one forgets less (the quick
demo's bf16 runs keep 95-96% instead of 93-94%). The fused step is several times faster on CPUs
(bench/optimizer_step.py); it is an option, off by default (the SmolLM2 demo sets it).
The only difference from `native` is the precision of activations inside the forward/backward pass;
tests/training/test_bf16.py measures its effect on the update (changed weights, update direction, mass
erased by int4) against native bf16.
"""

from __future__ import annotations

import torch

PRECISIONS = ("bf16", "fp32", "mixed")  # training precisions: pure bf16 (no fp32 master), fp32, bf16 autocast
ARITHMETICS = ("auto", "native", "emulated")


def resolve_arithmetic(choice: str, dtype: str) -> str | None:
    """The arithmetic a bf16 run uses: auto = native on CUDA, emulated elsewhere; None for fp32/mixed."""
    if dtype != "bf16":
        return None
    if choice == "auto":
        return "native" if torch.cuda.is_available() else "emulated"
    return choice


def describe(arithmetic: str | None, dtype: str) -> str:
    """One sentence for unlearn.json saying what ran in which precision."""
    if dtype == "fp32":
        return "fp32 weights, gradients, optimizer state and arithmetic"
    if dtype == "mixed":
        return "fp32 master weights and optimizer state; forward/backward under bf16 autocast"
    if arithmetic == "native":
        return "native pure bf16: weights, activations, gradients and AdamW state in bf16, no fp32 master copy"
    return ("emulated pure bf16: weights, gradients and AdamW state in bf16 (torch AdamW on bf16 tensors), "
            "forward/backward in fp32 on the bf16 weights; no fp32 master copy")


def round_to_bf16_(model: torch.nn.Module) -> None:
    """Give an fp32 model exactly the bf16 values native bf16 would load (in place)."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16))


class Bf16StateAdamW(torch.optim.Optimizer):
    """AdamW over fp32 parameters that hold bf16 values, stepping bf16 copies with bf16 state.

    The parameter groups are the fp32 model's (so the Trainer's scheduler, gradient clipping and
    accelerate see ordinary parameters); the step itself is torch's AdamW on bf16 tensors."""

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
                 fused: bool = False):
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay})
        groups = []
        for g in self.param_groups:
            shadows = [p.detach().to(torch.bfloat16) for p in g["params"]]
            groups.append({**{k: v for k, v in g.items() if k != "params"}, "params": shadows})
        self.inner = torch.optim.AdamW(groups, lr=lr, **({"fused": True} if fused else {"foreach": False}))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group, inner in zip(self.param_groups, self.inner.param_groups):
            for key in ("lr", "weight_decay", "betas", "eps"):
                inner[key] = group[key]  # a scheduler writes to the outer groups
            for p, s in zip(group["params"], inner["params"]):
                s.copy_(p)  # exact: p holds a bf16 value (also after a checkpoint is restored)
                s.grad = None if p.grad is None else p.grad.to(torch.bfloat16)
        self.inner.step()
        for group, inner in zip(self.param_groups, self.inner.param_groups):
            for p, s in zip(group["params"], inner["params"]):
                p.copy_(s)
                s.grad = None
        return loss

    def state_dict(self) -> dict:
        return self.inner.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self.inner.load_state_dict(state_dict)
