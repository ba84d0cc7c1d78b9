"""TOFU (Maini et al. 2024, locuslab/TOFU) computed as open-unlearning computes it (src/evals/metrics/:
memorization.py, privacy.py, utility.py; docs/benchmarks.md has every formula and where we differ).

Per item, with the prompt built from the question by the template ("Question: {q}\nAnswer: " then the
answer, open-unlearning's phi-1.5 form, or the chat template) and an answer a (EOS appended where
`tofu_eos` says so, as open-unlearning's templates do), L(a) = mean negative log-likelihood of a's tokens
(cut from the encoding of the whole text: `split_continuation`):
    probability       p(a) = exp(-L(a))                            (length-normalised)
    normalised prob.  p(a) / (p(a) + sum_j p(wrong_j) + 1e-10)     (real_authors, world_facts)
    ROUGE             ROUGE-L recall of the greedy answer against a, Porter stemmer
    truth ratio       tr = exp(-mean_j L(perturbed_j)) / (exp(-L(correct)) + 1e-10)
                      correct = the paraphrased answer (forget, retain) or the answer (real_authors,
                      world_facts): wrong over right, so a model that knows the fact has tr < 1
    exact memorization   share of answer tokens (EOS excluded) that are the greedy choice, teacher-forced
    extraction strength  1 - k/N with k the first position from which every greedy choice is right
                         (k = N - 1 where none is: open-unlearning's floor of 1/N)
Aggregates: probability, ROUGE, EM, ES: means; forget truth ratio: mean(min(tr, 1/(tr + 1e-10)))
("closer to 1 better"); utility truth ratios: mean(max(0, 1 - tr)) ("true better");
    forget quality = scipy.stats.ks_2samp(tr on forget, the retain model's tr on forget).pvalue
    model utility  = scipy.stats.hmean over the utility sets present (retain, real_authors,
                     world_facts) of (probability [normalised off retain], ROUGE, truth ratio)
Scales: the knowledge metrics (forget probability, ROUGE, EM, ES) x100 like MUSE's; truth ratio, forget
quality and model utility as TOFU reports them (0-1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..data.corpus import TOFU_UNPARAPHRASED
from ..data.synthetic import WORLD_NAME
from ..errors import UserError
from ..models.generation import greedy_generate, shared_prompt_logprobs
from ..utils.io import read_json
from . import mia
from .benchmark import Benchmark, Metric, register_benchmark
from .knowmem import STOP_WORDS, cut_answer
from .muse import take
from .rouge import rouge_l_recall_stemmed

EPS = 1e-10  # open-unlearning's guard in the truth ratio and the normalised probability
TEMPLATES = ("qa", "chat")
UTILITY_SETS = ("retain", "real_authors", "world_facts")


@dataclass
class RetainTruthRatios:
    """The retain (retrained) model's per-item truth ratios on the forget set: forget quality's reference;
    and, where membership-inference attacks are asked for, its AUC of each and its LOSS of every answer
    (mia_reference), as `muse.MuseReference` holds them."""

    values: list[float]
    source: str
    mia_control: dict[str, float] = field(default_factory=dict)
    mia_control_source: str = "measured on the retrained model"
    reference_loss: dict[str, list[float]] | None = None


# ------------------------------------------------------------------------------------------- formulas
def probability(losses) -> np.ndarray:
    return np.exp(-np.asarray(losses, dtype=float))


def truth_ratio(correct_loss, perturbed_losses) -> np.ndarray:
    """Per item: geometric mean of the perturbed answers' normalised probabilities over the correct one's."""
    perturbed = np.asarray([np.mean(x) for x in perturbed_losses], dtype=float)
    return np.exp(-perturbed) / (np.exp(-np.asarray(correct_loss, dtype=float)) + EPS)


def forget_truth_ratio(tr) -> float:
    """'closer to 1 better': mean(min(tr, 1/tr)); 1 = the model cannot tell the fact from its perturbations."""
    tr = np.asarray(tr, dtype=float)
    return float(np.mean(np.minimum(tr, 1 / (tr + EPS))))


def utility_truth_ratio(tr) -> float:
    """'true better': mean(max(0, 1 - tr)); 1 = the model always prefers the true answer by far."""
    return float(np.mean(np.maximum(0.0, 1 - np.asarray(tr, dtype=float))))


def normalised_probability(answer_loss, perturbed_losses) -> np.ndarray:
    """p(answer) / (p(answer) + sum of the wrong options' p): real_authors' and world_facts' probability."""
    right = probability(answer_loss)
    wrong = np.asarray([probability(x).sum() for x in perturbed_losses])
    return right / (right + wrong + EPS)


def forget_quality(tr, reference_tr) -> float:
    """p-value of the two-sample Kolmogorov-Smirnov test between the two models' forget truth ratios."""
    from scipy.stats import ks_2samp

    return float(ks_2samp(np.asarray(tr, dtype=float), np.asarray(reference_tr, dtype=float)).pvalue)


def harmonic_mean(values: list[float]) -> float:
    """scipy's harmonic mean (0 when any value is 0, as open-unlearning's model utility)."""
    from scipy.stats import hmean

    return float(hmean(np.asarray(values, dtype=float)))


def exact_memorization(hits) -> float:
    hits = np.asarray(hits, dtype=bool)
    return float(hits.mean()) if hits.size else float("nan")


def extraction_strength(hits) -> float:
    """1 - k/N, k the smallest index from which every greedy choice matches (open-unlearning's loop)."""
    hits = np.asarray(hits, dtype=bool)
    n = hits.size
    if n == 0:
        return float("nan")
    k = n - 1
    for start in range(n):
        if hits[start:].all():
            k = start
            break
    return 1 - k / n


# ------------------------------------------------------------------------------------------- prompts
def uses_eos(cfg, corpus) -> bool:
    """open-unlearning scores the answer with EOS after it; the built-in world never trains an EOS after
    an answer (its QA texts go on with the next question), so there `auto` leaves it out."""
    return cfg.tofu_eos == "yes" or (cfg.tofu_eos == "auto" and corpus.name != WORLD_NAME)


def build_prompt(tokenizer, question: str, template: str) -> str:
    """The text before the answer: open-unlearning's phi-1.5 form, or the tokenizer's chat template (its
    BOS left to the tokenizer, which adds it when encoding)."""
    if template == "qa":
        return f"Question: {question}\nAnswer: "
    if not getattr(tokenizer, "chat_template", None):
        raise UserError("--tofu-template chat needs a tokenizer with a chat template; use qa")
    text = tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                         add_generation_prompt=True)
    bos = tokenizer.bos_token
    return text[len(bos):] if bos and text.startswith(bos) else text


# ------------------------------------------------------------------------------------------- per-set work
def teacher_forced(model, tokenizer, items: list[dict], split: str, cfg, eos: str, show: bool) -> dict:
    """Per item: L(answer), L(correct), L(perturbed_j), and the greedy hits on the answer's tokens. Each
    distinct (prompt, text) is scored once (on the unparaphrased sets the correct answer is the answer), and
    a question's prompt is encoded once for all its answers (`shared_prompt_logprobs`)."""
    prompts = [build_prompt(tokenizer, it["question"], cfg.tofu_template) for it in items]
    correct_field = "answer" if split in TOFU_UNPARAPHRASED else "paraphrased_answer"
    pairs: dict[tuple[str, str], int] = {}
    slots = []
    for i, (prompt, it) in enumerate(zip(prompts, items)):
        for role, text in [("answer", it["answer"]), ("correct", it[correct_field]),
                           *(("perturbed", t) for t in it["perturbed_answer"])]:
            slots.append((i, role, pairs.setdefault((prompt, text + eos), len(pairs))))
    hits: list = []
    with tqdm(total=len(pairs), desc=f"tofu {split}", disable=not show, leave=False) as bar:
        lps, truncated = shared_prompt_logprobs(model, tokenizer, list(pairs), cfg.batch_size, bar.update, hits)
    out = {"answer_loss": [0.0] * len(items), "correct_loss": [0.0] * len(items),
           "perturbed_loss": [[] for _ in items], "hits": [None] * len(items), "truncated": truncated}
    for i, role, k in slots:
        lp, hit = lps[k], hits[k]
        loss = float(-lp.mean()) if lp.size else math.inf
        if role == "perturbed":
            out["perturbed_loss"][i].append(loss)
        else:
            out[f"{role}_loss"][i] = loss
        if role == "answer":
            out["hits"][i] = hit[:-1] if eos and hit.size > 1 else hit
    return out


def generated(model, tokenizer, items: list[dict], split: str, cfg, heal: bool, show: bool) -> list[str]:
    """Greedy answers (stopped at the next question on the qa template), stripped; `heal`: the prompt's
    trailing space is left for the model to write (`greedy_generate`; the built-in world's default)."""
    prompts = [build_prompt(tokenizer, it["question"], cfg.tofu_template) for it in items]
    stops = STOP_WORDS if cfg.tofu_template == "qa" else ()
    with tqdm(total=len(prompts), desc=f"tofu {split} generation", disable=not show, leave=False) as bar:
        outputs, _ = greedy_generate(model, tokenizer, prompts, cfg.tofu_max_new_tokens, stop_strings=stops,
                                     batch_size=cfg.batch_size, progress=bar.update, heal_space=heal)
    return [(cut_answer(o) if stops else o).strip() for o in outputs]


def memo(model, key: tuple, compute):
    """Per-model memory of per-set work: several metrics read the same forget-set pass (kept on the model
    object, so it goes with it)."""
    store = model.__dict__.setdefault("_unlearn_audit_tofu", {})
    if key not in store:
        store[key] = compute()
    return store[key]


class SetScores:
    """Everything measured on one TOFU set for one model, computed on first use."""

    def __init__(self, model, tokenizer, corpus, split: str, cfg, show: bool):
        self.model, self.tok, self.split, self.cfg, self.show = model, tokenizer, split, cfg, show
        self.items = take(corpus.tofu(split), cfg.limit)
        self.eos = (tokenizer.eos_token or "") if uses_eos(cfg, corpus) else ""
        self.heal = cfg.heals(corpus)
        self.key = (split, cfg.tofu_template, self.eos, self.heal, cfg.limit, cfg.tofu_max_new_tokens)

    @property
    def forced(self) -> dict:
        return memo(self.model, ("forced", *self.key), lambda: teacher_forced(
            self.model, self.tok, self.items, self.split, self.cfg, self.eos, self.show))

    @property
    def answers(self) -> list[str]:
        return memo(self.model, ("generated", *self.key), lambda: generated(
            self.model, self.tok, self.items, self.split, self.cfg, self.heal, self.show))

    def truth_ratios(self) -> np.ndarray:
        return truth_ratio(self.forced["correct_loss"], self.forced["perturbed_loss"])

    def probabilities(self) -> np.ndarray:
        f = self.forced
        if self.split in TOFU_UNPARAPHRASED:
            return normalised_probability(f["answer_loss"], f["perturbed_loss"])
        return probability(f["answer_loss"])

    def rouges(self) -> list[float]:
        return [rouge_l_recall_stemmed(it["answer"], a) for it, a in zip(self.items, self.answers)]

    def log(self, **columns) -> list[dict]:
        """Per-item rows: the question and answer with the given per-item values."""
        return [{"index": i, "question": it["question"], "answer": it["answer"],
                 **{k: (float(v[i]) if isinstance(v[i], (float, np.floating)) else v[i]) for k, v in columns.items()}}
                for i, it in enumerate(self.items)]


def mia_items(tokenizer, corpus, cfg) -> dict[str, list[tuple[str, str]]]:
    """What the membership-inference attacks score on TOFU (open-unlearning's TOFU_MIA: QADataset, labels
    on the answer): each forget and holdout question's prompt and its answer (with EOS where the other
    TOFU scores append it)."""
    eos = (tokenizer.eos_token or "") if uses_eos(cfg, corpus) else ""
    return {split: [(build_prompt(tokenizer, it["question"], cfg.tofu_template), it["answer"] + eos)
                    for it in take(corpus.tofu(split), cfg.limit)] for split in mia.SPLITS}


# ------------------------------------------------------------------------------------------- the benchmark
def reference_from_log(path: str, n_items: int | None = None) -> RetainTruthRatios:
    """The retain model's forget truth ratios from open-unlearning's TOFU_EVAL.json
    (`forget_truth_ratio.value_by_index[i].score`), in place of a retain model."""
    data = read_json(path, "open-unlearning retain log")
    try:
        by_index = data["forget_truth_ratio"]["value_by_index"]
        values = [float(by_index[k]["score"]) for k in sorted(by_index, key=int)]
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{path}: not an open-unlearning TOFU log (needs forget_truth_ratio.value_by_index[i].score)") from None
    if n_items is not None and len(values) != n_items:
        raise UserError(f"{path} holds truth ratios of {len(values)} forget items; the forget set here has {n_items}")
    return RetainTruthRatios(values, f"open-unlearning retain log {path}")


@register_benchmark
class Tofu(Benchmark):
    name = "tofu"
    title = "TOFU"
    source = "Maini et al. 2024, TOFU: A Task of Fictitious Unlearning for LLMs; as open-unlearning computes it"
    parts = "tofu"
    specs = {"forget_quality": Metric("Forget quality", "reference", fraction=True),
             "model_utility": Metric("Model utility", "keep", fraction=True), "forget_prob": Metric("Prob_f", "down"),
             "forget_rouge": Metric("ROUGE_f", "down"), "forget_truth_ratio": Metric("Truth ratio_f", "up", fraction=True),
             "extraction_strength": Metric("ES_f", "down"), "exact_memorization": Metric("EM_f", "down"),
             **{name: Metric(f"{label} AUC", "down", fraction=True, optional=True) for name, label in zip(
                 mia.MIA_METRICS, ("LOSS", "zlib", "Min-K%", "Min-K%++", "Reference", "GradNorm"))}}
    knowledge = ("forget_rouge", "forget_prob")
    utility = "model_utility"
    reference_metric = "forget_quality"
    forget_items = {"forget_rouge": "tofu/forget.json", "forget_prob": "tofu/forget.json"}

    def present(self, corpus) -> bool:
        return {"forget", "retain"} <= set(corpus.tofu_splits())

    def check(self, corpus, metrics: list[str]) -> None:
        for split in corpus.tofu_splits():
            corpus.tofu(split)
        missing = [s for s in ("forget", "retain") if s not in corpus.tofu_splits()]
        if missing:
            raise UserError(f"{corpus.root}/tofu lacks {', '.join(f'{s}.json' for s in missing)}")
        asked = [m for m in metrics if m in mia.MIA_METRICS]
        if asked and "holdout" not in corpus.tofu_splits():
            raise UserError(f"{asked[0]} compares the forget answers with answers about authors no model was "
                            f"trained on, but {corpus.root}/tofu/holdout.json does not exist (TOFU's holdout01/05/10; "
                            "the built-in world writes it)")

    def check_setup(self, metrics, reference_model: bool, scheme: str) -> None:
        mia.check_request(metrics, reference_model, scheme)

    def check_model(self, model, metrics) -> None:
        mia.check_model(model, metrics)

    def wants_reference(self, metrics) -> bool:
        return "forget_quality" in metrics or any(m in mia.MIA_METRICS for m in metrics)

    def run_metric(self, name, model, tokenizer, corpus, cfg, ref, show):
        if name in mia.MIA_METRICS:
            return mia.run_attack(name, model, tokenizer, mia_items(tokenizer, corpus, cfg), cfg.batch_size, ref, show)
        if name == "model_utility":
            return self.model_utility(model, tokenizer, corpus, cfg, show)
        forget = SetScores(model, tokenizer, corpus, "forget", cfg, show)
        if name in ("forget_truth_ratio", "forget_quality"):
            tr = forget.truth_ratios()
            rows = forget.log(truth_ratio=tr, paraphrased_loss=forget.forced["correct_loss"],
                              perturbed_loss=forget.forced["perturbed_loss"])
            if name == "forget_truth_ratio":
                return forget_truth_ratio(tr), {"truncated": forget.forced["truncated"]}, {"log.json": rows}
            extra = {"truth_ratios": [float(x) for x in tr], "reference": ref.source if ref else None}
            if ref is None:
                extra["reference"] = "none: forget quality needs the retain model (--retrained) or its log"
                return None, extra, {"log.json": rows}
            if len(ref.values) != len(tr):
                raise UserError(f"the reference holds {len(ref.values)} forget truth ratios; this forget set has {len(tr)}")
            return forget_quality(tr, ref.values), extra, {"log.json": rows}
        if name == "forget_prob":
            p = forget.probabilities()
            return 100 * float(np.mean(p)), {}, {"log.json": forget.log(prob=p, avg_loss=forget.forced["answer_loss"])}
        if name == "forget_rouge":
            r = forget.rouges()
            return 100 * float(np.mean(r)), {}, {"log.json": forget.log(generation=forget.answers, rougeL_recall=r)}
        hits = forget.forced["hits"]
        fn = exact_memorization if name == "exact_memorization" else extraction_strength
        values = [fn(h) for h in hits]
        return 100 * float(np.nanmean(values)), {}, {"log.json": forget.log(**{name: values})}

    def model_utility(self, model, tokenizer, corpus, cfg, show):
        """The harmonic mean of (probability, ROUGE, truth ratio) over the utility sets present."""
        parts, logs = {}, {}
        for split in (s for s in UTILITY_SETS if s in corpus.tofu_splits()):
            scores = SetScores(model, tokenizer, corpus, split, cfg, show)
            p, r, tr = scores.probabilities(), scores.rouges(), scores.truth_ratios()
            parts[split] = {"probability": float(np.mean(p)), "rouge": float(np.mean(r)),
                            "truth_ratio": utility_truth_ratio(tr)}
            logs[f"{split}_log.json"] = scores.log(prob=p, generation=scores.answers, rougeL_recall=r, truth_ratio=tr)
        value = harmonic_mean([v for part in parts.values() for v in part.values()])
        return value, {"parts": parts}, {**logs, "agg.json": parts}

    def retain_answers(self, eval_dir, tokenizer, cfg):
        path = Path(eval_dir) / "model_utility" / "retain_log.json"
        if not path.is_file():
            return None
        return [{"prompt": build_prompt(tokenizer, r["question"], cfg.tofu_template), "answer": r["generation"],
                 "gold": r["answer"]} for r in read_json(path)]

    def reference(self, model, tokenizer, corpus, cfg, show):
        tr = SetScores(model, tokenizer, corpus, "forget", cfg, show).truth_ratios()
        control = {}
        if any(m in mia.MIA_METRICS for m in cfg.metrics):
            control = mia.control_side(model, tokenizer, mia_items(tokenizer, corpus, cfg), cfg.metrics, cfg.batch_size,
                                       show)
        return RetainTruthRatios([float(x) for x in tr], "measured on the retrained model", **control)

    def reference_from(self, details: dict):
        d, control = details.get("forget_quality"), mia.control_aucs(details)
        if not d and not control:
            return None
        return RetainTruthRatios(d["truth_ratios"] if d else [], "measured on the retrained model", control,
                                 reference_loss=mia.reference_losses(details))

    def reference_value(self):
        return 1.0
