"""Run a benchmark's metrics (MUSE by default; TOFU, WMDP: `benchmark.py`) on one model and write
per-item logs, one folder per metric.

Output folder layout (on MUSE, MUSE's own, so existing tooling can re-score it)::

    verbmem_f/{log.json,agg.json}  knowmem_f/{log.json,agg.json}  knowmem_r/{log.json,agg.json}
    privleak/{log.json,auc.json}   metrics.json (written last, by the caller)

A finished metric is recorded in `progress.json` with the model/corpus/config it was computed for, so
an interrupted evaluation resumes without redoing finished metrics.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..data.corpus import Corpus
from ..data.synthetic import WORLD_NAME
from ..errors import UserError
from ..utils.environment import environment
from ..utils.io import atomic_write_json, read_json, sha256_json
from .benchmark import Benchmark, benchmark_names, get_benchmark
from .knowmem import evaluate_knowmem
from .muse import METRICS, take
from .privleak import DEFAULT_AUC_KEY, PRIVLEAK_SCOPES, SPLITS, key_needs

log = logging.getLogger(__name__)


PROMPT_SPACE = ("auto", "keep", "heal")
VERBMEM_LENGTHS = ("muse", "reference")
MC_ENGINES = ("builtin", "lm-eval")


def heals_prompt_space(corpus: Corpus, choice: str = "auto") -> bool:
    """Whether generation drops a prompt's trailing whitespace token (see `greedy_generate`): MUSE's
    corpora keep their exact prompts (parity with the paper); the built-in world heals by default."""
    return choice == "heal" or (choice == "auto" and corpus.name == WORLD_NAME)


@dataclass
class EvalConfig:
    """What to evaluate and how (shared by `eval`, `audit` and the experiment grid)."""

    metrics: list[str] = field(default_factory=lambda: list(METRICS))
    benchmark: str = field(default="muse", metadata={"help": "muse, tofu or wmdp (docs/benchmarks.md)"})
    limit: int | None = None
    batch_size: int | None = None
    privleak_key: str = DEFAULT_AUC_KEY
    agg_key: str = "mean_rougeL"
    prompt_space: str = field(default="auto", metadata={
        "help": "a prompt's trailing space: keep (MUSE's exact prompts), heal (the model writes it, joined to "
                "the next word as in training: right for byte-level BPE tokenizers), auto (heal on the built-in "
                "world, keep elsewhere)", "choices": list(PROMPT_SPACE)})
    verbmem_length: str = field(default="muse", metadata={
        "help": "VerbMem continuation length: muse (128 new tokens) or reference (as many tokens as a ground "
                "truth shorter than 128 has, the parity MUSE has on its own corpora; faster)",
        "choices": list(VERBMEM_LENGTHS)})
    privleak_scope: str = field(default="muse", metadata={
        "help": "texts PrivLeak scores: muse (MUSE's whole log: forget, retain and holdout texts and their "
                "lowercased copies, every AUC of auc.json) or metric (only what the PrivLeak key compares; same "
                "PrivLeak, a third of the work)", "choices": list(PRIVLEAK_SCOPES)})
    tofu_template: str = field(default="qa", metadata={
        "help": "TOFU prompt: qa ('Question: ...\\nAnswer: ...', open-unlearning's phi-1.5 form) or chat (the "
                "tokenizer's chat template: Llama-2/3 chat models)", "choices": ["qa", "chat"]})
    tofu_eos: str = field(default="auto", metadata={
        "help": "TOFU: score the answer with EOS after it (open-unlearning does): yes, no, auto (no on the built-in "
                "world, whose texts never end an answer with EOS; yes elsewhere)", "choices": ["auto", "yes", "no"]})
    tofu_max_new_tokens: int = field(default=200, metadata={
        "help": "TOFU: greedy answer length for ROUGE (open-unlearning's default 200)"})
    mc_engine: str = field(default="builtin", metadata={
        "help": "WMDP: builtin (our batched log-likelihood scoring) or lm-eval (lm-evaluation-harness, with the "
                "loaded model object; the [lm-eval] extra)", "choices": list(MC_ENGINES)})

    BENCHMARK_OPTIONS = {"tofu": ("tofu_template", "tofu_eos", "tofu_max_new_tokens"), "wmdp": ("mc_engine",)}

    @property
    def bench(self) -> Benchmark:
        return get_benchmark(self.benchmark)

    def for_benchmark(self, name: str) -> EvalConfig:
        """This config on benchmark `name`; the default MUSE metric list becomes that benchmark's own."""
        from dataclasses import replace

        metrics = list(get_benchmark(name).metrics) if self.metrics == list(METRICS) else list(self.metrics)
        return replace(self, benchmark=name, metrics=metrics)

    def key_fields(self) -> dict:
        """The settings a stored evaluation must match: the options of other benchmarks are left out (and
        on MUSE the benchmark name, so evaluations stored before benchmarks existed still resume)."""
        fields = asdict(self)
        for name, options in self.BENCHMARK_OPTIONS.items():
            if name != self.benchmark:
                for option in options:
                    fields.pop(option)
        if self.benchmark == "muse":
            fields.pop("benchmark")
        return fields

    def validate(self) -> None:
        if self.benchmark not in benchmark_names():
            raise UserError(f"unknown benchmark '{self.benchmark}'; choose one of {', '.join(benchmark_names())}")
        known = self.bench.known_metrics
        unknown = [m for m in self.metrics if m not in known]
        if unknown or not self.metrics:
            raise UserError(f"unknown metric(s) {', '.join(unknown) or '(none given)'} for {self.bench.title}; "
                            f"choose from {', '.join(known)}")
        if self.tofu_max_new_tokens < 1:
            raise UserError("--tofu-max-new-tokens must be at least 1")
        if self.tofu_template not in ("qa", "chat") or self.tofu_eos not in ("auto", "yes", "no"):
            raise UserError("--tofu-template must be qa or chat, --tofu-eos auto, yes or no")
        if self.mc_engine not in MC_ENGINES:
            raise UserError(f"--mc-engine must be one of {', '.join(MC_ENGINES)}")
        if self.limit is not None and self.limit < 1:
            raise UserError("--limit must be at least 1")
        if self.prompt_space not in PROMPT_SPACE:
            raise UserError(f"--prompt-space must be one of {', '.join(PROMPT_SPACE)}")
        if self.verbmem_length not in VERBMEM_LENGTHS:
            raise UserError(f"--verbmem-length must be one of {', '.join(VERBMEM_LENGTHS)}")
        if self.privleak_scope not in PRIVLEAK_SCOPES:
            raise UserError(f"--privleak-scope must be one of {', '.join(PRIVLEAK_SCOPES)}")
        try:
            key_needs(self.privleak_key)
        except ValueError:
            raise UserError(f"privleak key {self.privleak_key!r} is not an AUC key such as {DEFAULT_AUC_KEY} "
                            f"(split_split_score; splits {', '.join(SPLITS)})") from None

    def heals(self, corpus: Corpus) -> bool:
        return heals_prompt_space(corpus, self.prompt_space)


def check_corpus(corpus: Corpus, cfg: EvalConfig) -> None:
    """Validate the settings and parse every corpus part the metrics will read, before any model work."""
    cfg.validate()
    cfg.bench.check(corpus, cfg.metrics)


def evaluate_model(
    model,
    tokenizer,
    corpus: Corpus,
    cfg: EvalConfig,
    ref=None,
    out_dir: str | Path | None = None,
    identity: dict | None = None,
    show: bool = True,
) -> dict:
    """Evaluate `cfg.metrics` of `cfg.benchmark`; with `out_dir`, write logs and resume finished metrics
    from it. `ref`: the retrained model's reference (`Benchmark.reference`), else the benchmark's default."""
    check_corpus(corpus, cfg)
    bench = cfg.bench
    bench.check_model(model, cfg.metrics)
    ref = ref or bench.default_reference(corpus)
    progress = load_progress(out_dir, progress_key(corpus, cfg, ref, identity))
    results: dict = {"metrics": {}, "details": {}, "seconds": {}}
    for name in cfg.metrics:
        if name in progress["done"]:
            done = progress["done"][name]
            log.info("%s already computed in %s; reusing it", name, out_dir)
        else:
            started = time.time()
            value, extra, files = bench.run_metric(name, model, tokenizer, corpus, cfg, ref, show)
            done = {"value": value, "extra": extra, "seconds": round(time.time() - started, 3)}
            if out_dir is not None:
                for fname, content in files.items():
                    atomic_write_json(Path(out_dir) / name / fname, content)
                progress["done"][name] = done
                atomic_write_json(Path(out_dir) / "progress.json", progress)
        results["metrics"][name] = done["value"]
        results["details"][name] = done["extra"]
        results["seconds"][name] = done["seconds"]
    return results


def progress_key(corpus: Corpus, cfg: EvalConfig, ref, identity: dict | None) -> str:
    """What a stored evaluation must match to be reused: model identity, the benchmark's files, settings
    and the retrained model's reference."""
    return sha256_json({"identity": identity or {}, "corpus": cfg.bench.parts_hash(corpus),
                        "config": cfg.key_fields(), "auc_retrain": asdict(ref) if ref is not None else None})


def finished_results(corpus: Corpus, cfg: EvalConfig, ref, out_dir: str | Path | None,
                     identity: dict | None) -> dict | None:
    """The results `evaluate_model` would return when every metric is already stored in `out_dir` (so a
    resumed audit need not even load, quantize or retrain the model), else None."""
    progress = load_progress(out_dir, progress_key(corpus, cfg, ref or cfg.bench.default_reference(corpus), identity))
    if out_dir is None or any(m not in progress["done"] for m in cfg.metrics):
        return None
    done = progress["done"]
    return {"metrics": {m: done[m]["value"] for m in cfg.metrics}, "details": {m: done[m]["extra"] for m in cfg.metrics},
            "seconds": {m: done[m]["seconds"] for m in cfg.metrics}}


def load_progress(out_dir: str | Path | None, key: str) -> dict:
    """Finished metrics of an earlier run with the same model, corpus and config (else none)."""
    fresh = {"key": key, "done": {}}
    if out_dir is None:
        return fresh
    path = Path(out_dir) / "progress.json"
    if not path.is_file():
        return fresh
    try:
        stored = read_json(path)
    except UserError:
        return fresh
    return stored if isinstance(stored, dict) and stored.get("key") == key else fresh


def parse_metrics(text: str | Sequence[str]) -> list[str]:
    """'verbmem_f,knowmem_f' -> ['verbmem_f', 'knowmem_f'] (also accepts a list)."""
    items = text.split(",") if isinstance(text, str) else list(text)
    return [m.strip() for m in items if m.strip()]


def knowmem_evaluator(corpus, tokenizer, limit: int | None = None):
    """Per-epoch KnowMem on the reported items (forget and retain, x100): MUSE's stopping rule."""
    items = {key: (corpus.knowmem(split)[:limit] if limit else corpus.knowmem(split), corpus.knowmem_icl(split))
             for split, key in (("forget", "knowmem_f"), ("retain", "knowmem_r"))}
    return epoch_evaluator(knowmem_scores(items, tokenizer, heals_prompt_space(corpus)))


def validation_evaluator(corpus, tokenizer):
    """Per-epoch VerbMem_f, KnowMem_f and KnowMem_r on the corpus' validation split (x100, keys `val_...`):
    what a schedule rule reads, never the reported items (read once, scored every epoch)."""
    from .verbmem import evaluate_verbmem

    heal = heals_prompt_space(corpus)
    passages = corpus.verbmem_validation()
    knowmem = knowmem_scores({key: (corpus.knowmem_validation(split), corpus.knowmem_icl(split))
                              for split, key in (("forget", "val_knowmem_f"), ("retain", "val_knowmem_r"))},
                             tokenizer, heal)

    def score(net) -> dict[str, float]:
        verbmem = evaluate_verbmem(net, tokenizer, passages, heal_space=heal)[0]["mean_rougeL"] * 100
        return {"val_verbmem_f": verbmem, **knowmem(net)}

    return epoch_evaluator(score)


def knowmem_scores(items: dict, tokenizer, heal: bool):
    """net -> {key: KnowMem x100} for each key's (questions, few-shot examples)."""
    def score(net) -> dict[str, float]:
        return {key: evaluate_knowmem(net, tokenizer, qa, icl, heal_space=heal)[0]["mean_rougeL"] * 100
                for key, (qa, icl) in items.items()}

    return score


def combined_evaluator(*evaluators):
    """One per-epoch evaluator returning every given evaluator's metrics (None ones skipped); None if none."""
    present = [e for e in evaluators if e is not None]
    if not present:
        return None
    return lambda model: {k: v for e in present for k, v in e(model).items()}


def epoch_evaluator(score):
    """`score(net)` on a model in the middle of training: evaluated in eval mode (an exact fp32 copy of a
    bf16 model on CPU, like `eval`), then handed back in the mode it was in."""
    import copy

    import torch

    def evaluate(model) -> dict[str, float]:
        was_training = model.training
        net = model
        if next(model.parameters()).device.type == "cpu" and next(model.parameters()).dtype != torch.float32:
            net = copy.deepcopy(model).float()  # exact upcast: CPU evaluation in fp32 like `eval`
        net.eval()
        out = score(net)
        if was_training:
            model.train()
        return out

    return evaluate


def utility_floor_from(retrained: str, corpus, opts, device: str, limit: int | None = None) -> float:
    """KnowMem_r of the retrained model: MUSE's utility floor for the stopping rule."""
    from ..models.loading import load_model, load_tokenizer

    model = load_model(retrained, "fp32", opts, device)
    return knowmem_evaluator(corpus, load_tokenizer(retrained, opts), limit)(model)["knowmem_r"]


def reference_from_log(bench: Benchmark, path: str | None, corpus: Corpus, cfg: EvalConfig):
    """TOFU's retain-model log (open-unlearning's TOFU_EVAL.json) in place of a retain model, read and
    checked against the forget set before any model is loaded."""
    if path is None:
        return None
    if bench.name != "tofu":
        raise UserError(f"--reference-log is a TOFU retain-model log; this evaluation runs {bench.title}")
    from .tofu import reference_from_log as read_log

    return read_log(path, len(take(corpus.tofu("forget"), cfg.limit)))


def evaluate_to_folder(model_path, corpus: Corpus, cfg: EvalConfig, out: str | Path, scheme: str, dtype: str,
                       device: str, opts, qopts, retrained: str | None = None, show: bool = True,
                       reference_log: str | None = None, runtime: str = "torch") -> dict:
    """`eval`: the model at `model_path` (quantized with `scheme`) on `corpus`, per-item logs under `out`
    and metrics.json beside them (with a retrained model, the scores relative to it: MUSE's PrivLeak
    against its AUC, TOFU's forget quality against its truth ratios). `runtime` 'llama.cpp' runs the
    model in llama.cpp itself (quantize/llamacpp.py; its GGUF files are kept in `out`/llama.cpp); the
    retrained model's reference is computed in torch."""
    from .. import __version__
    from ..models.loading import load_model, load_tokenizer, merged_adapter, model_fingerprint
    from ..quantize import model_at

    check_corpus(corpus, cfg)  # before any model is loaded
    bench = cfg.bench
    bench.check_setup(cfg.metrics, bool(retrained), scheme)
    out = Path(out)
    started = time.time()
    ref = reference_from_log(bench, reference_log, corpus, cfg)
    if retrained and ref is None and bench.wants_reference(cfg.metrics):
        ret = load_model(retrained, dtype, opts, device)
        ref = bench.reference(ret, load_tokenizer(retrained, opts), corpus, cfg, show)
        del ret
    tok = load_tokenizer(model_path, opts)
    fingerprint = model_fingerprint(model_path, opts.revision)
    if runtime == "llama.cpp":
        from ..quantize.llamacpp import runtime_model

        model = runtime_model(model_path, scheme, out / "llama.cpp", fingerprint=fingerprint, corpus=corpus)
    else:
        model = model_at(model_path, scheme, opts, qopts, dtype, device, tok, corpus)
    adapter = merged_adapter(model)
    identity = {"model": fingerprint, "scheme": scheme, "dtype": dtype,
                **({"adapter": adapter["merged_in"]} if adapter else {}),
                **({"runtime": runtime} if runtime != "torch" else {})}
    res = evaluate_model(model, tok, corpus, cfg, ref, out, identity=identity, show=show)
    record = {"model": str(model_path), "scheme": scheme, "corpus": corpus.name, "benchmark": bench.name,
              **res["metrics"],
              "details": res["details"], "model_hash": identity["model"], "corpus_hash": corpus.content_hash,
              "retrained": str(retrained) if retrained else None, "reference_log": reference_log,
              "revision": opts.revision, "tokenizer": opts.tokenizer, "adapter": adapter,
              "quantization": getattr(model, "quantization_record", None),
              "runtime": getattr(model, "runtime_record", None),
              "seconds": {**res["seconds"], "total": round(time.time() - started, 3)},
              "unlearn_audit_version": __version__, "environment": environment()}
    atomic_write_json(out / "metrics.json", record)
    return record
