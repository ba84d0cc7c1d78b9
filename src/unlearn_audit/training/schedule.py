"""The schedule rule: how long unlearning runs, decided by a rule fixed before the run instead of a fixed
epoch count (issue 32). It reads the corpus' *validation* split (items of people unlearned with the
forget set, and retain questions the reported KnowMem_r does not ask), never the reported items.

After every epoch, with u the model's validation scores and t the same scores of the model before
unlearning (evaluated once at the start, on the same items)::

    retained_val = mean over VerbMem_f, KnowMem_f of u / t      (scoring.retained_mean)
    kept_val     = KnowMem_r(u) / KnowMem_r(t)                 (scoring.utility_kept)

Training stops at the first epoch where kept_val < `min_utility_kept` (the utility bound: the epoch kept is
the last one still above it, or the first epoch if none was) or retained_val <= `depth` (the forgetting
reached the asked depth: that epoch is kept), whichever comes first; the utility bound wins a tie. Within
the budget (`epochs` / `max_steps`) neither may happen: then the last epoch is kept and the reason says so.
The same rule serves bf16, fp32 and SURE runs: only the budget and the learning rate are the method's.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..scoring import fmt, retained_mean, utility_kept

VALIDATION_KNOWLEDGE = ("val_verbmem_f", "val_knowmem_f")
VALIDATION_UTILITY = "val_knowmem_r"


@dataclass(frozen=True)
class ScheduleRule:
    """Stop at a depth of forgetting or at a utility bound, read on the validation split."""

    depth: float | None = None
    min_utility_kept: float | None = None

    def __bool__(self) -> bool:
        return self.depth is not None or self.min_utility_kept is not None

    @staticmethod
    def measures(start: dict, metrics: dict) -> tuple[float | None, float | None]:
        """(retained_val, kept_val) of one epoch's validation metrics against the start's."""
        return retained_mean(metrics, start, VALIDATION_KNOWLEDGE), utility_kept(metrics, start, VALIDATION_UTILITY)

    def decide(self, start: dict, epochs: list[dict]) -> tuple[int, str] | None:
        """(epoch to keep, reason) once the rule stops training after the last of `epochs`, else None."""
        last = epochs[-1]
        retained, kept = self.measures(start, last["metrics"])
        if self.min_utility_kept is not None and kept is not None and kept < self.min_utility_kept:
            above = [e["epoch"] for e in epochs
                     if (self.measures(start, e["metrics"])[1] or 0) >= self.min_utility_kept]
            keep = above[-1] if above else last["epoch"]
            return keep, (f"validation utility kept {fmt(kept, pct=True)} fell below {fmt(self.min_utility_kept, pct=True)} "
                          f"at epoch {last['epoch']}; kept epoch {keep}")
        if self.depth is not None and retained is not None and retained <= self.depth:
            return last["epoch"], (f"validation retained {fmt(retained, pct=True)} reached the depth "
                                   f"{fmt(self.depth, pct=True)} at epoch {last['epoch']}")
        return None

    def unmet(self, start: dict, epochs: list[dict]) -> str:
        """Why the last epoch is kept when the budget ran out before the rule stopped training."""
        retained, kept = self.measures(start, epochs[-1]["metrics"])
        return (f"the budget ended before the schedule rule stopped (validation retained {fmt(retained, pct=True)}, "
                f"utility kept {fmt(kept, pct=True)}); kept the last epoch")
