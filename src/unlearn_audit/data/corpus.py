"""The `Corpus`: forget / retain / holdout texts and the MUSE evaluation sets, read lazily from disk.

On-disk layout (the MUSE layout, used for real MUSE data and for the built-in world alike)::

    raw/{forget,retain,holdout}.json          lists of training texts
    knowmem/{forget_qa,retain_qa,forget_qa_icl,retain_qa_icl}.json   lists of {question, answer}
    knowmem/forget_qa_paraphrased.json        optional: the forget questions reworded, item for item
    knowmem/{forget,retain}_qa_validation.json, verbmem/forget_validation.json
                                              optional: a validation split (items of people unlearned with
                                              the forget set, retain questions KnowMem_r does not ask) that
                                              a schedule rule reads instead of the reported items
    verbmem/forget.json                       list of {prompt, gt}
    knowmem/holdout_qa.json, verbmem/holdout.json, tofu/holdout.json, knowmem/holdout_qa_paraphrased.json
                                              optional: the forget sets' kind of item about entities no
                                              model trained on (the built-in world writes them): the floor
                                              of `audit --control none`
    privleak/{forget,retain,holdout}.json     lists of texts
    corpus.json                               name, seed, counts, content hash (optional for MUSE)

and, for the other benchmarks (docs/benchmarks.md)::

    tofu/{forget,retain,real_authors,world_facts}.json   TOFU items: {question, answer,
                                              paraphrased_answer, perturbed_answer: [...]} (forget and
                                              retain needed; real_authors and world_facts, TOFU's other
                                              utility sets, have no paraphrased answer)
    wmdp/forget/<subject>.json                4-choice items {question, choices: [4], answer: index}
    wmdp/utility/<subject>.json               the same, for utility (MMLU on WMDP)

Parts are only read when asked for, so a folder that lacks some raw files (the MUSE copies in
../shared) works for evaluation and fails, with a one-line error naming the file, only when a
missing part is needed.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..utils.io import atomic_dir, atomic_write_json, read_json, sha256_files, sha256_json

RAW_SPLITS = ("forget", "retain", "holdout")
HOLDOUT_ITEMS = {"knowmem/forget_qa.json": "knowmem/holdout_qa.json", "verbmem/forget.json": "verbmem/holdout.json",
                 "tofu/forget.json": "tofu/holdout.json"}  # a forget set's items -> the same kind about holdout entities
FORGET_VARIANTS = {"knowmem/forget_qa_paraphrased.json": "knowmem/holdout_qa_paraphrased.json"}  # other forms
QA_SPLITS = ("forget", "retain")
TOFU_SPLITS = ("forget", "retain", "real_authors", "world_facts", "holdout")
TOFU_FIELDS = ("question", "answer", "paraphrased_answer", "perturbed_answer")
TOFU_UNPARAPHRASED = ("real_authors", "world_facts")  # their truth ratio compares the answer itself
MC_GROUPS = ("forget", "utility")
VALIDATION_PARTS = ("knowmem/forget_qa_validation.json", "knowmem/retain_qa_validation.json",
                    "verbmem/forget_validation.json")
MC_CHOICES = 4
HUB_ALIASES = {"muse-news": "muse-bench/MUSE-News", "muse-books": "muse-bench/MUSE-Books",
               "tofu-forget01": "locuslab/TOFU", "tofu-forget05": "locuslab/TOFU", "tofu-forget10": "locuslab/TOFU",
               "wmdp": "cais/wmdp"}


@dataclass(frozen=True)
class QA:
    """One knowledge-memorization item."""

    question: str
    answer: str


class Corpus:
    """A corpus folder in the MUSE layout; every accessor validates what it returns."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise UserError(f"corpus folder not found: {self.root} (create one with `unlearn-audit world --out DIR`)")

    def __repr__(self) -> str:
        return f"Corpus({str(self.root)!r})"

    @classmethod
    def open(cls, spec: str | Path) -> Corpus:
        """Open a corpus by folder path, or by hub alias (`muse-news`, `muse-books`, `tofu-forget01/05/10`,
        `wmdp`) when a network exists."""
        if isinstance(spec, str) and spec in HUB_ALIASES:
            from .hub import download_muse, download_tofu, download_wmdp

            if spec.startswith("tofu-"):
                return cls(download_tofu(spec))
            return cls(download_wmdp(spec) if spec == "wmdp" else download_muse(spec, HUB_ALIASES[spec]))
        return cls(spec)

    # ---------------------------------------------------------------- metadata
    @functools.cached_property
    def info(self) -> dict:
        """`corpus.json` if present, else a description derived from the files (real MUSE folders)."""
        path = self.root / "corpus.json"
        if path.is_file():
            info = read_json(path, "corpus description")
            if not isinstance(info, dict):
                raise UserError(f"{path} must hold a JSON object")
            return info
        return {"name": self.root.name, "content_hash": self.content_hash}

    @property
    def name(self) -> str:
        return str(self.info.get("name", self.root.name))

    @functools.cached_property
    def content_hash(self) -> str:
        """Hash of every JSON part of the corpus (not corpus.json itself)."""
        if (self.root / "corpus.json").is_file() and self.info.get("content_hash"):
            return str(self.info["content_hash"])
        files = [p for p in self.root.rglob("*.json") if p.name != "corpus.json"]
        return sha256_files(files, self.root)

    # ---------------------------------------------------------------- accessors
    def raw(self, split: str) -> list[str]:
        """Training texts of a split (forget / retain / holdout)."""
        _check_split(split, RAW_SPLITS, "raw")
        return self._texts(f"raw/{split}.json")

    def privleak(self, split: str) -> list[str]:
        """Texts scored by the membership-inference metric."""
        _check_split(split, RAW_SPLITS, "privleak")
        return self._texts(f"privleak/{split}.json")

    def knowmem(self, split: str) -> list[QA]:
        """Questions probing knowledge of a split (forget / retain)."""
        _check_split(split, QA_SPLITS, "knowmem")
        return self._qa(f"knowmem/{split}_qa.json")

    def knowmem_icl(self, split: str) -> list[QA]:
        """Few-shot examples put in front of every KnowMem question of that split."""
        _check_split(split, QA_SPLITS, "knowmem")
        return self._qa(f"knowmem/{split}_qa_icl.json")

    def knowmem_paraphrased(self) -> list[QA] | None:
        """The forget questions reworded, item for item (the built-in world writes them), or None."""
        if not (self.root / "knowmem" / "forget_qa_paraphrased.json").is_file():
            return None
        items = self._qa("knowmem/forget_qa_paraphrased.json")
        if len(items) != len(self.knowmem("forget")):
            raise UserError(f"{self.root}/knowmem/forget_qa_paraphrased.json holds {len(items)} questions; "
                            f"forget_qa.json {len(self.knowmem('forget'))}: they must match item for item")
        return items

    def holdout_items(self) -> dict[str, str]:
        """{forget part: its holdout counterpart} for the counterparts this corpus holds (HOLDOUT_ITEMS) in
        the forget part's form (TOFU's holdout configs lack the perturbed answers its scores read)."""
        return {forget: held for forget, held in HOLDOUT_ITEMS.items() if (self.root / held).is_file()
                and (held != "tofu/holdout.json" or all("perturbed_answer" in it for it in self.tofu("holdout")))}

    def holdout_view(self, folder: Path) -> Corpus:
        """A copy of the corpus whose forget items are its holdout items (where it holds them): the forget
        metrics computed on it score what a model knows of entities it never saw."""
        swapped = self.holdout_items()
        if "knowmem/forget_qa.json" in swapped:  # the reworded questions follow, or go where there are none
            swapped.update({v: h for v, h in FORGET_VARIANTS.items() if (self.root / h).is_file()})
        dropped = {*swapped, *(FORGET_VARIANTS if "knowmem/forget_qa.json" in swapped else ())}
        files = {str(p.relative_to(self.root)): read_json(p) for p in sorted(self.root.rglob("*.json"))
                 if p.name != "corpus.json" and str(p.relative_to(self.root)) not in dropped}
        files.update({forget: read_json(self.root / held) for forget, held in swapped.items()})
        return write_corpus(folder / sha256_json(files)[:12], files, self.name)

    def has_validation(self) -> bool:
        return all((self.root / rel).is_file() for rel in VALIDATION_PARTS)

    def knowmem_validation(self, split: str) -> list[QA]:
        """Validation questions of a split (forget / retain): never the reported ones."""
        _check_split(split, QA_SPLITS, "knowmem")
        self.require_validation()
        return self._qa(f"knowmem/{split}_qa_validation.json")

    def verbmem_validation(self) -> list[dict[str, str]]:
        """Validation passages of people unlearned with the forget set (never the reported ones)."""
        self.require_validation()
        return self._records("verbmem/forget_validation.json", ("prompt", "gt"))

    def require_validation(self) -> None:
        if not self.has_validation():
            raise UserError(f"{self.root} has no validation split ({', '.join(VALIDATION_PARTS)}), which a schedule "
                            "rule reads; the built-in world writes one with --validation-share (e.g. 0.05)")

    def verbmem(self) -> list[dict[str, str]]:
        """Prompt/continuation pairs from the forget set for verbatim memorization."""
        return self._records("verbmem/forget.json", ("prompt", "gt"))

    def tofu_splits(self) -> list[str]:
        """The TOFU sets present (forget and retain are required by the TOFU benchmark)."""
        return [s for s in TOFU_SPLITS if (self.root / "tofu" / f"{s}.json").is_file()]

    def tofu(self, split: str) -> list[dict]:
        """TOFU items of a set: question, answer, paraphrased answer and one or more perturbed answers."""
        _check_split(split, TOFU_SPLITS, "tofu")
        rel = f"tofu/{split}.json"
        rows = self._list(rel)
        fields = [f for f in TOFU_FIELDS if not (split in TOFU_UNPARAPHRASED and f == "paraphrased_answer")]
        if split == "holdout" and not all(isinstance(it, dict) and "perturbed_answer" in it for it in rows):
            fields = ["question", "answer"]  # TOFU's holdout configs: what the membership attacks read
        for i, item in enumerate(rows):
            if not isinstance(item, dict):
                raise UserError(f"{self.root / rel}: item {i} must be an object with fields {', '.join(fields)}")
            for f in fields:
                if f not in item:
                    what = (" (TOFU's truth ratio needs the *_perturbed sets: forget10_perturbed, retain_perturbed, ...)"
                            if f in ("paraphrased_answer", "perturbed_answer") else "")
                    raise UserError(f"{self.root / rel}: item {i} lacks the field '{f}'{what}")
            perturbed = item.get("perturbed_answer", ["-"])  # absent only where `fields` does not ask for it
            if not (isinstance(perturbed, list) and perturbed and all(isinstance(x, str) for x in perturbed)):
                raise UserError(f"{self.root / rel}: item {i} field 'perturbed_answer' must be a non-empty list of strings")
            texts = [f for f in fields if f != "perturbed_answer"]
            if not all(isinstance(item[f], str) for f in texts):
                raise UserError(f"{self.root / rel}: item {i}: {', '.join(texts)} must be strings")
        return rows

    def mc_subjects(self, group: str) -> list[str]:
        """Subjects of a multiple-choice group (WMDP: forget = bio, cyber, ...; utility = mmlu)."""
        _check_split(group, MC_GROUPS, "wmdp")
        return sorted(p.stem for p in (self.root / "wmdp" / group).glob("*.json"))

    def mc(self, group: str, subject: str) -> list[dict]:
        """4-choice items {question, choices, answer (index)} of one subject."""
        rel = f"wmdp/{group}/{subject}.json"
        rows = self._list(rel)
        for i, item in enumerate(rows):
            if not (isinstance(item, dict) and isinstance(item.get("question"), str)):
                raise UserError(f"{self.root / rel}: item {i} must be an object with a string 'question'")
            choices = item.get("choices")
            if not (isinstance(choices, list) and all(isinstance(c, str) for c in choices)):
                raise UserError(f"{self.root / rel}: item {i} field 'choices' must be a list of strings")
            if len(choices) != MC_CHOICES:
                raise UserError(f"{self.root / rel}: item {i} has {len(choices)} choices; WMDP-style items have "
                                f"exactly {MC_CHOICES}")
            answer = item.get("answer")
            if not (isinstance(answer, int) and not isinstance(answer, bool) and 0 <= answer < MC_CHOICES):
                raise UserError(f"{self.root / rel}: item {i} field 'answer' must be the index (0-3) of the right choice")
        return rows

    # ---------------------------------------------------------------- validation
    def _load(self, rel: str):
        return read_json(self.root / rel, f"corpus part {rel}")

    def _list(self, rel: str) -> list:
        data = self._load(rel)
        if not isinstance(data, list):
            raise UserError(f"{self.root / rel}: expected a JSON list, found {type(data).__name__}")
        if not data:
            raise UserError(f"{self.root / rel}: the list is empty; this split needs at least one item")
        return data

    def _texts(self, rel: str) -> list[str]:
        data = self._list(rel)
        for i, item in enumerate(data):
            if isinstance(item, dict) and isinstance(item.get("text"), str):
                data[i] = item["text"]  # MUSE hub exports sometimes wrap texts as {"text": ...}
            elif not isinstance(item, str):
                raise UserError(f"{self.root / rel}: item {i} must be a string, found {type(item).__name__}")
        return data

    def _records(self, rel: str, fields: tuple[str, ...]) -> list[dict[str, str]]:
        data = self._list(rel)
        for i, item in enumerate(data):
            if not isinstance(item, dict):
                raise UserError(f"{self.root / rel}: item {i} must be an object with fields {', '.join(fields)}")
            for f in fields:
                if f not in item:
                    raise UserError(f"{self.root / rel}: item {i} lacks the field '{f}'")
                if not isinstance(item[f], str):
                    raise UserError(f"{self.root / rel}: item {i} field '{f}' must be a string")
        return [{f: item[f] for f in fields} for item in data]

    def _qa(self, rel: str) -> list[QA]:
        return [QA(r["question"], r["answer"]) for r in self._records(rel, ("question", "answer"))]


def _check_split(split: str, allowed: tuple[str, ...], part: str) -> None:
    if split not in allowed:
        raise UserError(f"unknown {part} split '{split}'; choose one of {', '.join(allowed)}")


def write_corpus(folder: Path, files: dict[str, object], name: str) -> Corpus:
    """Write a derived corpus (relearning texts, a held-out part, fine-tuning data) once, atomically;
    later calls with the same folder reuse it."""
    if not (folder / "corpus.json").is_file():
        with atomic_dir(folder) as tmp:
            for rel, content in files.items():
                atomic_write_json(tmp / rel, content)
            atomic_write_json(tmp / "corpus.json", {"name": name, "content_hash": sha256_json(files)})
    return Corpus(folder)
