"""The audit's control: what a model that never saw the forget set would score, the floor every retained
share is measured above (`scoring.share`: (u - c) / (t - c)).

Three forms (`audit --control`):
- `MODEL` (alias `--retrained MODEL`): the retrained model, trained like the target without the forget
  set: the floor the field uses (MUSE, TOFU), under every attack the same attack on it.
- `base:MODEL`: the model before fine-tuning (what a company that unlearns a customer's data usually still
  has). It never saw the forget set, nor the retain set: its floor sits at or below the retrained model's,
  so the retained shares it gives are at least as strict.
- `none`: no second model. The floor of each knowledge metric is the target's own score on items of the
  same kind about entities no model trained on (the corpus' holdout items: `Corpus.holdout_items`), under
  the same attack; for multiple choice it is chance; PrivLeak's reference AUC is the ideal 0.5 (or MUSE's
  published constant). A metric without holdout items has the floor 0 (every point counts as retained).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..data.corpus import HOLDOUT_ITEMS
from ..errors import UserError
from ..models.loading import model_vocab_size
from ..models.spec import LoadOptions, ModelSpec

KINDS = ("retrained", "base", "none")
BASE_PREFIX = "base:"
MEANING = {
    "retrained": "the retrained model: what a model trained without the forget set knows",
    "base": "the model before fine-tuning: what a model that saw neither the forget nor the retain set knows "
            "(a floor at or below the retrained model's: stricter shares)",
    "none": "no control model: the floor is the target's own score on held-out items of the same kind "
            "(chance for multiple choice)",
}


@dataclass(frozen=True)
class Control:
    """The control of an audit: its kind (KINDS) and, for 'retrained' and 'base', the model."""

    kind: str
    model: ModelSpec | None = None
    implicit: bool = False  # 'none' because no flag named a control

    @property
    def role(self) -> str | None:
        """The role its model is evaluated under (the run folder's evals/<role>/), None without a model."""
        return None if self.model is None else self.kind

    @property
    def meaning(self) -> str:
        return MEANING[self.kind]

    @property
    def against(self) -> str:
        """What every share of the verdict line is measured against, in a few words."""
        return {"retrained": "against the retrained model", "base": "against the base model (before fine-tuning)",
                "none": "against the target's own score on held-out items (no control model)"}[self.kind]

    def describe(self) -> str:
        """One line: which control, and what that means for every share beside it."""
        what = f"{self.kind} `{self.model}`" if self.model is not None else "none"
        said = " (no --control given)" if self.implicit else ""
        return f"control: {what}{said}: {self.meaning}"

    def record(self) -> dict:
        return {"kind": self.kind, "model": None if self.model is None else str(self.model),
                "implicit": self.implicit, "meaning": self.meaning}


def parse_control(control: str | None, retrained: str | None = None, opts: LoadOptions | None = None) -> Control:
    """`--control MODEL | base:MODEL | none`, or `--retrained MODEL` (its alias); neither: none (implicit)."""
    if control is not None and retrained is not None:
        raise UserError("give the control once: --control MODEL (or base:MODEL or none), or its alias --retrained MODEL")
    text = control if control is not None else retrained
    if text is None:
        return Control("none", implicit=True)
    text = str(text).strip()
    if text == "none":
        return Control("none")
    if text.startswith(BASE_PREFIX):
        name = text[len(BASE_PREFIX):]
        if not name:
            raise UserError("--control base: needs the model before fine-tuning, e.g. base:HuggingFaceTB/SmolLM2-135M")
        return Control("base", ModelSpec.of(name, opts))
    if not text:
        raise UserError("--control is empty: give MODEL, base:MODEL or none")
    return Control("retrained", ModelSpec.of(text, opts))


def check_control(control: Control, target: ModelSpec) -> None:
    """Refuse, before any model is loaded, a base model whose vocabulary is not the target's (the target
    was fine-tuned from its base, so a base of another vocabulary is another model)."""
    if control.kind != "base":
        return
    base, tuned = model_vocab_size(control.model), model_vocab_size(target)
    if base is not None and tuned is not None and base != tuned:
        raise UserError(f"--control base:{control.model} has a vocabulary of {base} tokens, the target {tuned}: "
                        "the base must be the model the target was fine-tuned from")


def floor_sources(control: Control, corpus, bench, knowledge) -> dict[str, str]:
    """Without a control model, where each knowledge metric's floor comes from: 'holdout' (the target on the
    corpus' holdout items), 'chance' (multiple choice) or 'zero'. An explicit `--control none` refuses a
    metric left at zero (one line, before any model is loaded); the implicit one says so instead."""
    if control.kind != "none":
        return {}
    held = corpus.holdout_items()
    sources = {m: "holdout" if bench.forget_items.get(m) in held else
               "chance" if bench.chance(corpus, m) is not None else "zero" for m in knowledge}
    missing = [m for m, source in sources.items() if source == "zero"]
    if missing and not control.implicit:
        files = sorted({HOLDOUT_ITEMS.get(bench.forget_items.get(m, ""), "?") for m in missing})
        raise UserError(f"--control none needs held-out items for {', '.join(bench.label(m) for m in missing)} "
                        f"({', '.join(files)} in {corpus.root}; the built-in world writes them): give them, or a "
                        "control model (--control MODEL or base:MODEL)")
    return sources


def floor_words(sources: dict[str, str], bench) -> str:
    """What the no-control floor of each knowledge metric is, in words (the audit's start line and report)."""
    words = {"holdout": "the target on held-out items", "chance": "chance", "zero": "0, no held-out items: every "
             "point counts as retained"}
    return "; ".join(f"{bench.label(m)}: {words[s]}" for m, s in sources.items())
