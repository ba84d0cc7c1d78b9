"""`relearn:retain` and `relearn:forget-part`: a few fine-tuning steps bring the knowledge back.

- `relearn:retain:steps=S,lr=L`: benign relearning on the retain texts, data the owner may legitimately
  fine-tune on (Hu et al., "Unlearning or obfuscating? Jogging the memory of unlearned LLMs via benign
  relearning", ICLR 2025, arXiv 2406.13356).
- `relearn:forget-part:share=P,steps=S,lr=L`: relearning on a share P of the forget set; the metrics are
  measured on the rest only (Deeb & Roger, "Do unlearning methods remove information from language
  model weights?", arXiv 2410.08827; Lynch et al., "Eight methods to evaluate robust unlearning in LLMs",
  arXiv 2402.16835).
  Items are split by entity where the corpus names them (the built-in world: one person's bios,
  questions and verbatim prompts go to the same side), else item by item; what the relearning texts
  teach about held-out items anyway is measured by the control, the retrained model under the same
  attack.

Training is the training core's plain NLL descent, constant LR, AdamW, `steps` optimizer steps of
`batch` texts; it checkpoints and resumes as unlearning does. `lora=R` relearns through a rank-R LoRA
adapter on every linear layer (alpha 2R), the small-budget relearning attackers do; the attacked model
is then the adapter merged at the precision it trained in.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

from ..data.corpus import Corpus, write_corpus
from ..errors import UserError
from ..models.loading import model_fingerprint
from ..training.core import TRAIN_RECORD, TrainSettings, train_on_texts
from ..utils.io import read_json, sha256_json
from .registry import Attack, AttackFamily, Context, Param, register_attack

FORGET_PARTS = ("knowmem/forget_qa.json", "verbmem/forget.json", "privleak/forget.json")


@register_attack
class Relearn(AttackFamily):
    family = "relearn"
    params = [Param("data", str, positional=True, check=lambda v: v in ("retain", "forget-part"),
                    rule="retain or forget-part"),
              Param("steps", int, 20, lambda v: v >= 1, "a whole number >= 1"),
              Param("lr", float, 1e-5, lambda v: 0 < v < 1, "a learning rate in (0, 1)"),
              Param("batch", int, 4, lambda v: v >= 1, "a whole number >= 1"),
              Param("share", float, 0.1, lambda v: 0 < v < 1, "a share in (0, 1)"),
              Param("seed", int, 0),
              Param("dtype", str, "fp32", lambda v: v in ("fp32", "bf16", "mixed"), "fp32, bf16 or mixed"),
              Param("lora", int, 0, lambda v: v >= 0, "a LoRA rank >= 0 (0: every weight trains)",
                    keyed_at_default=False)]
    usage = ("relearn:retain[:steps=S,lr=L,batch=B,seed=N,dtype=D,lora=R] or "
             "relearn:forget-part[:share=P,steps=S,lr=L,...]")
    source = ("Hu et al., ICLR 2025, arXiv 2406.13356 (benign relearning); Deeb & Roger, arXiv 2410.08827; "
              "Lynch et al., arXiv 2402.16835 (relearning on part of the forget set)")
    trains = True

    @classmethod
    def eval_corpus(cls, attack: Attack, corpus: Corpus, work: Path) -> Corpus:
        """The corpus the attacked models are measured on: the held-out part for forget-part."""
        if attack.params["data"] == "retain":
            return corpus
        return heldout_corpus(corpus, attack, work)

    @classmethod
    def train(cls, spec: str, attack: Attack, ctx: Context, work: Path) -> Path:
        """Fine-tune the model at `spec`; the result is cached under `work` by source model and data."""
        texts = relearn_texts(ctx.corpus, attack)
        out = work / f"model-{model_fingerprint(spec)[:12]}-{sha256_json(texts)[:8]}"
        if (out / TRAIN_RECORD).is_file():
            return out
        p = attack.params
        settings = TrainSettings(learning_rate=p["lr"], max_steps=p["steps"], batch_size=p["batch"],
                                 dtype=p["dtype"], seed=p["seed"], epochs=1,
                                 lora=f"r={p['lora']}" if p["lora"] else None)
        return train_on_texts(spec, texts, settings, out, opts=ctx.load, show=ctx.show, about={"attack": attack.name})


def relearn_texts(corpus: Corpus, attack: Attack) -> list[str]:
    if attack.params["data"] == "retain":
        return corpus.raw("retain")
    return split_forget(corpus, attack.params["share"], attack.params["seed"])[0]


def forget_names(corpus: Corpus) -> list[str]:
    """Names of the forget entities when the corpus records them (the built-in world), else none."""
    path = corpus.root / "world" / "people.json"
    if not path.is_file():
        return []
    return [p["name"] for p in read_json(path, "world people").get("forget", [])]


def split_forget(corpus: Corpus, share: float, seed: int) -> tuple[list[str], dict[str, list]]:
    """(relearning texts, held-out items per forget part): a seeded share of the forget entities (or of
    the items, when the corpus names no entities) goes to relearning, as QA text, prompts with their
    continuations and membership texts; everything else is held out."""
    items = {"knowmem/forget_qa.json": [{"question": q.question, "answer": q.answer} for q in corpus.knowmem("forget")],
             "verbmem/forget.json": corpus.verbmem(),
             "privleak/forget.json": corpus.privleak("forget")}
    names = forget_names(corpus)
    patterns = [(n, re.compile(rf"\b{re.escape(n)}\b")) for n in names]

    def key(part: str, i: int, item) -> str:
        text = item if isinstance(item, str) else " ".join(item.values())
        return next((n for n, pat in patterns if pat.search(text)), f"{part}#{i}")

    keys = {part: [key(part, i, it) for i, it in enumerate(lst)] for part, lst in items.items()}
    pool = sorted({k for ks in keys.values() for k in ks})
    random.Random(seed).shuffle(pool)
    chosen = set(pool[: max(1, round(share * len(pool)))])
    texts: list[str] = []
    heldout: dict[str, list] = {}
    for part, lst in items.items():
        heldout[part] = [it for it, k in zip(lst, keys[part]) if k not in chosen]
        if not heldout[part]:
            raise UserError(f"relearn:forget-part: share {share} leaves no held-out item in {part}; lower share")
        for it, k in zip(lst, keys[part]):
            if k in chosen:
                texts.append(as_text(it))
    return list(dict.fromkeys(texts)), heldout


def as_text(item) -> str:
    """A forget item as training text: QA in the KnowMem format, a prompt with its continuation."""
    if isinstance(item, str):
        return item
    if "question" in item:
        return f"Question: {item['question']}\nAnswer: {item['answer']}"
    return item["prompt"] + item["gt"]


def heldout_corpus(corpus: Corpus, attack: Attack, work: Path) -> Corpus:
    """A copy of the corpus whose forget evaluation sets hold only the held-out items."""
    _, heldout = split_forget(corpus, attack.params["share"], attack.params["seed"])
    files = {str(p.relative_to(corpus.root)): read_json(p) for p in sorted(corpus.root.rglob("*.json"))
             if p.name != "corpus.json" and str(p.relative_to(corpus.root)) not in FORGET_PARTS}
    files.update(heldout)
    return write_corpus(work / "heldout" / sha256_json(files)[:12], files, corpus.name)  # evaluated as its source
