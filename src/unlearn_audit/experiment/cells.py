"""What each kind of grid cell does: this is where the stages are wired together."""

from __future__ import annotations

from pathlib import Path

from ..attacks import Context, as_attack, load_in_runtime
from ..data.corpus import Corpus
from ..data.synthetic import WorldConfig, add_benchmark_parts, write_world
from ..evaluate.benchmark import get_benchmark
from ..evaluate.fluency import retain_fluency
from ..evaluate.runner import (
    EvalConfig,
    combined_evaluator,
    evaluate_model,
    heals_prompt_space,
    knowmem_evaluator,
    validation_evaluator,
)
from ..models.loading import load_model, load_tokenizer
from ..models.tiny import TinyRecipe
from ..quantize.bins import analyse, plot
from ..quantize.forecast import first_order_forecast
from ..training.tiny import train_tiny
from ..unlearn.methods import is_wrapper
from ..unlearn.trainer import UnlearnConfig, unlearn
from ..utils.io import atomic_write_json


def run_cell(runner, cell) -> dict:
    """Dispatch on the cell kind; returns the JSON-serialisable result stored in the ledger."""
    return {"corpus": corpus_cell, "model": model_cell, "unlearn": unlearn_cell, "eval": eval_cell,
            "bins": bins_cell}[cell.kind](runner, cell)


def corpus_of(runner, cell_id: str) -> Corpus:
    return Corpus(runner.result(cell_id)["path"])


def corpus_cell(runner, cell) -> dict:
    if "path" in cell.config:
        corpus = Corpus.open(cell.config["path"])
    else:
        from ..config import build_config

        world = build_config(WorldConfig, dict(cell.config["world"]), source="grid world options")
        corpus = Corpus(write_world(world, runner.run_dir / cell.config.get("folder", "corpus")))
    return {"path": str(corpus.root), "name": corpus.name, "content_hash": corpus.content_hash}


def model_cell(runner, cell) -> dict:
    cfg = cell.config
    if "path" in cfg:
        return {"path": cfg["path"], "role": cfg["role"], "own": True}
    from ..config import build_config

    if "dither" in cfg:
        return dithered_base(runner, cell)
    corpus = corpus_of(runner, cfg["corpus"])
    if "base" in cfg:
        return finetuned_model(runner, cell, corpus)
    if "matched_to" in cfg:
        recipe = matched_recipe(cfg["matched_to"], corpus)
    else:
        recipe = build_config(TinyRecipe, dict(cfg["recipe"]), source="grid recipe options")
    path = train_tiny(corpus, cfg["role"], recipe, progress=False)
    return {"path": str(path), "role": cfg["role"], "seed": recipe.seed, "quality": tiny_quality(path, corpus)}


def finetuned_model(runner, cell, corpus: Corpus) -> dict:
    """A target or retrained model fine-tuned from the grid's `base` (resumes from its checkpoints)."""
    from ..config import build_config
    from ..training.finetune import FinetuneConfig, finetune

    cfg = cell.config
    ft = build_config(FinetuneConfig, {**cfg["finetune"], "role": cfg["role"]}, source="grid finetune options")
    base = runner.result(cfg["base_cell"])["path"] if "base_cell" in cfg else cfg["base"]
    path = finetune(base, corpus, ft, runner.run_dir / "models" / cell.id, show=False)
    result = {"path": str(path), "role": cfg["role"], "seed": ft.seed, "base": cfg["base"]}
    if cfg.get("degrid"):
        result["degrid"] = degrid_record(cfg["base"], path)
    return result


def dithered_base(runner, cell) -> dict:
    """The grid's base with every weight moved a uniform random amount of up to `dither` steps of its
    block's 4-bit grid (quantize/base_grid.py), written once as a model folder."""
    import os
    import shutil

    from ..models.loading import load_model, load_tokenizer
    from ..quantize.base_grid import dither

    cfg = cell.config
    path = runner.run_dir / "models" / cell.id
    if not (path / "config.json").is_file():
        model = load_model(cfg["base"], "fp32")
        dither(model, cfg["dither"], cfg["seed"])
        tmp = path.parent / f".{path.name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        load_tokenizer(cfg["base"]).save_pretrained(tmp)
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
    return {"path": str(path), "role": "target", "seed": cfg["seed"], "base": cfg["base"],
            "degrid": {"dither": cfg["dither"], **degrid_record(cfg["base"], path)}}


def degrid_record(base: str, moved: Path) -> dict:
    """What the de-gridding did: the fine-tune's loss per epoch (none for a dither), and how far the weights
    moved from the base's (relative L2 change, the share of weights that changed at all, and against the
    base's 4-bit grid: the mean move in steps, the share moved half a step or more, the share still on it)."""
    from ..models.loading import read_model_json, resolve
    from ..quantize.base_grid import grid_counts, grid_summary
    from ..quantize.bins import ShardedWeights

    loss = [e.get("text_loss") for e in (read_model_json(moved, "train.json") or {}).get("epochs", [])]
    folder = Path(str(resolve(base)))
    if not folder.is_dir():  # a hub id or a .gguf file: no local weights to compare with
        return {"loss": loss, "changed_share": None, "relative_change": None, **grid_summary([])}
    before, after = ShardedWeights(folder), ShardedWeights(moved)
    changed = total = 0
    diff2 = norm2 = 0.0
    counts = []
    for name in after.names():
        if name not in before.names():
            continue
        a, b = before.tensor(name).float(), after.tensor(name).float()
        changed += int((a != b).sum())
        total += a.numel()
        diff2 += float(((b - a) ** 2).sum())
        norm2 += float((a ** 2).sum())
        counts.append(grid_counts(a, b))
    return {"loss": loss, "changed_share": changed / max(total, 1),
            "relative_change": (diff2 / norm2) ** 0.5 if norm2 else None, **grid_summary(counts)}


def matched_recipe(target: str, corpus: Corpus) -> TinyRecipe:
    """The recipe a tiny target was trained with (its training.json), to train its retrained twin."""
    from ..config import build_config
    from ..errors import UserError
    from ..models.loading import read_model_json

    info = read_model_json(Path(target), "training.json") or {}
    if "recipe" not in info:
        raise UserError(f"{target} records no tiny-model recipe (no training.json from `train-tiny`), so no "
                        "matched retrained model can be trained; give `retrained` too (your model trained on "
                        "the retain set only)")
    if info.get("corpus", {}).get("content_hash") not in (None, corpus.content_hash):
        raise UserError(f"{target} was trained on another corpus ({info['corpus'].get('path')}) than the grid's "
                        f"({corpus.root}); give the grid that corpus")
    return build_config(TinyRecipe, dict(info["recipe"]), source=f"{target}/training.json")


def tiny_quality(path: Path, corpus: Corpus) -> dict:
    """Greedy exact match and ROUGE-L recall on forget/retain questions (the tiny-model quality bar),
    cached as quality.json in the model folder."""
    from ..evaluate.knowmem import evaluate_knowmem
    from ..models.loading import read_model_json

    path = Path(path)
    cached = read_model_json(path, "quality.json")
    if cached and cached.get("corpus") == corpus.content_hash:
        return cached
    model, tok = load_model(path), load_tokenizer(path)
    quality: dict = {"corpus": corpus.content_hash}
    for split in ("forget", "retain"):
        _, rows, _ = evaluate_knowmem(model, tok, corpus.knowmem(split), corpus.knowmem_icl(split),
                                      heal_space=heals_prompt_space(corpus))
        quality[split] = {
            "exact_match": sum(r["response"].strip() == r["gt"].strip() for r in rows) / len(rows),
            "rougeL_recall": sum(r["rougeL_recall"] for r in rows) / len(rows),
            "n": len(rows),
        }
    atomic_write_json(path / "quality.json", quality)
    return quality


def unlearn_cell(runner, cell) -> dict:
    cfg = cell.config
    settings = UnlearnConfig(**cfg["settings"])
    corpus = corpus_of(runner, cfg["corpus"])
    target = runner.result(cfg["target"])["path"]
    out = runner.run_dir / "models" / cell.id
    floor, rule = settings.utility_floor is not None, bool(settings.schedule_rule())
    tokenizer = load_tokenizer(target) if floor or rule else None  # both rules evaluate after every epoch
    evaluator = combined_evaluator(knowmem_evaluator(corpus, tokenizer, runner.cfg.eval_limit) if floor else None,
                                   validation_evaluator(corpus, tokenizer) if rule else None)
    unlearn(target, corpus, settings, out, evaluator, show=False)
    from ..models.loading import read_model_json

    info = read_model_json(out, "unlearn.json") or {}
    return {"path": str(out), "method": settings.method,
            "base": settings.base if is_wrapper(settings.method) else None,
            "dtype": settings.dtype, "lr": info.get("resolved", {}).get("learning_rate"),
            "seed": settings.seed, "chosen_epoch": info.get("chosen_epoch"), "diverged": info.get("diverged"),
            "arithmetic": info.get("precision", {}).get("arithmetic"), "settings": cfg["settings"],
            "seconds": info.get("seconds")}


def model_identity(runner, model_cell_id: str) -> dict:
    """How a model cell is labelled in results: target, retrained or the unlearning run."""
    cell = runner.by_id[model_cell_id]
    res = runner.result(model_cell_id)
    if cell.kind == "model":
        seed = res.get("seed") if runner.cfg.seed_scope == "all" else None
        return {"model": res["role"], "dtype": None, "lr": None, "seed": seed, "settings": None}
    return {"model": res["method"], "dtype": res["dtype"], "lr": res["lr"], "seed": res["seed"],
            "settings": cell.config["settings"], "model_seed": model_seed(runner, cell)}


def model_seed(runner, cell) -> int | None:
    """The seed of the target an unlearning run started from, when seeds re-draw the models."""
    if runner.cfg.seed_scope != "all":
        return None
    return runner.result(cell.config["target"]).get("seed")


def eval_cell(runner, cell) -> dict:
    cfg = cell.config
    corpus = corpus_of(runner, cfg["corpus"])
    path = runner.result(cfg["model"])["path"]
    scheme = cfg["scheme"]
    if "full_cell" in cfg and stored_float_dtypes(path) == {as_attack(scheme).params["dtype"]}:
        return same_as_full(runner.result(cfg["full_cell"]), scheme, cfg.get("metrics"))
    tok = load_tokenizer(path)
    ctx = Context(corpus=corpus, tokenizer=tok, show=False)
    model = evaluated_model(runner, cell, path, ctx)
    ecfg = EvalConfig(limit=cfg["limit"], batch_size=cfg["batch_size"], **cfg.get("eval", {}),
                      **({"metrics": cfg["metrics"]} if cfg.get("metrics") else {}))
    # the retrained model's evaluation is the reference: its PrivLeak AUC, its AUC of each MIA asked for and,
    # for mia_reference, its loss of every text (measured on it first, kept in its result)
    auc_ret = ecfg.bench.reference_from(runner.result(cfg["auc_ref"])["details"]) if "auc_ref" in cfg else None
    own = ecfg.bench.reference(model, tok, corpus, ecfg, False) if not auc_ret and "mia_reference" in ecfg.metrics else None
    res = evaluate_model(model, tok, corpus, ecfg, auc_ret or own, runner.run_dir / "evals" / cell.id,
                         identity={"cell": cell.id}, show=False)
    if own is not None:
        res["details"]["mia_reference"]["reference_loss"] = own.reference_loss
    if "auc_ref" not in cfg:  # the retrained model at full precision is its own reference
        d = res["details"]["privleak"]
        d["auc_retrain"], d["auc_retrain_source"] = d["auc"], "measured on the retrained model"
        res["metrics"]["privleak"] = 0.0
    for name in cfg.get("benchmarks", []):
        add_benchmark(res, name, model, tok, corpus, ecfg, runner, cell)
    applied = getattr(model, "quantization_record", None)  # per tensor for gguf schemes
    ran = getattr(model, "runtime_record", None)  # the GGUF file llama.cpp ran (runtime: llama.cpp)
    if scheme == "full" and runner.by_id[cfg["model"]].kind == "unlearn":
        del model  # before the target is loaded to judge its retain answers
        fluency = run_fluency(runner, cell, ecfg)
        if fluency:
            res["details"]["fluency"] = fluency
    return {**model_identity(runner, cfg["model"]), "scheme": scheme, "metrics": res["metrics"],
            "details": res["details"], "seconds": res["seconds"], **({"quantization": applied} if applied else {}),
            **({"runtime": ran} if ran else {})}


def evaluated_model(runner, cell, path: str, ctx: Context):
    """The model of an eval cell: in llama.cpp itself where the grid says `runtime: llama.cpp` and llama.cpp
    runs the scheme (full precision, the gguf-* file types), else in torch."""
    scheme = cell.config["scheme"]
    return load_in_runtime(path, None if scheme == "full" else as_attack(scheme), ctx,
                           runner.run_dir / "attacks" / cell.id, cell.config.get("runtime", "torch"),
                           runner.run_dir / "llama.cpp")


def run_fluency(runner, cell, ecfg: EvalConfig) -> dict | None:
    """An unlearned model's retain answers (this evaluation's log) scored under its target
    (`evaluate.fluency`): the perplexity of its non-empty answers and of the true answers."""
    eval_dir = runner.run_dir / "evals" / cell.id
    target = runner.result(runner.by_id[cell.config["model"]].config["target"])["path"]
    tok = load_tokenizer(target)
    rows = ecfg.bench.retain_answers(eval_dir, tok, ecfg)
    if rows is None:
        return None
    judge = load_model(target)
    result = retain_fluency(judge, tok, {"unlearned": rows}, ecfg.batch_size)
    atomic_write_json(eval_dir / "fluency.json", result)
    return {k: {m: v for m, v in result[k].items() if m != "item_nll"} for k in ("unlearned", "gold")}


def add_benchmark(res: dict, name: str, model, tok, corpus, ecfg: EvalConfig, runner, cell) -> None:
    """Another benchmark's metrics of the same model (grid `benchmarks`), merged into the cell's results;
    its reference (TOFU's forget quality) is the retrained model's full-precision cell, as for PrivLeak."""
    from dataclasses import replace

    bcfg = replace(ecfg, benchmark=name, metrics=list(get_benchmark(name).metrics))
    bench = bcfg.bench
    if not bench.present(corpus) and Path(runner.run_dir).resolve() in corpus.root.resolve().parents:
        add_benchmark_parts(corpus.root)  # the run's own world, written before TOFU/WMDP parts existed
    ref_cell = cell.config.get("auc_ref")
    ref = bench.reference_from(runner.result(ref_cell)["details"]) if ref_cell else None
    extra = evaluate_model(model, tok, corpus, bcfg, ref, runner.run_dir / "evals" / cell.id / name,
                           identity={"cell": cell.id}, show=False)
    if ref_cell is None and bench.reference_metric:  # the retrained model is its own reference
        extra["metrics"][bench.reference_metric] = bench.reference_value()
    for key in ("metrics", "details", "seconds"):
        res[key].update(extra[key])


def same_as_full(full: dict, scheme: str, metrics: list[str] | None) -> dict:
    """A cast onto the format the weights are already stored in changes no weight: the full-precision
    cell's values, marked as such (no model is loaded)."""
    keep = metrics or list(full["metrics"])
    return {**full, "scheme": scheme, "metrics": {m: full["metrics"][m] for m in keep},
            "details": {m: full["details"][m] for m in keep}, "seconds": {m: 0.0 for m in keep},
            "identity": f"weights already stored as {scheme.split(':', 1)[1]}: the full-precision values"}


def stored_float_dtypes(path: str) -> set[str]:
    """The floating-point formats of a local safetensors model's weights ('bf16', 'fp16', 'fp32'), read
    from the file headers; empty for anything else (a hub id)."""
    from ..quantize.bins import open_weights

    if not Path(path).is_dir():
        return set()
    names = {"BF16": "bf16", "F16": "fp16", "F32": "fp32", "F64": "fp64"}
    weights = open_weights(path)  # an adapter folder: the merged weights' format
    return {names[d] for d in map(weights.dtype, weights.names()) if d in names}


def bins_cell(runner, cell) -> dict:
    cfg = cell.config
    unlearned = runner.result(cfg["unlearned"])
    target = runner.result(cfg["target"])["path"]
    lr = unlearned["lr"] if unlearned["dtype"] == "bf16" else None
    result = analyse(target, unlearned["path"], cfg["scheme"], lr)
    if "corpus" in cfg:  # the forget texts weight the update by the forget loss's gradient
        result["first_order"] = first_order_forecast(target, unlearned["path"], cfg["scheme"],
                                                     corpus_of(runner, cfg["corpus"]).raw("forget"))
    folder = runner.run_dir / "bins" / cell.id
    atomic_write_json(folder / "bins.json", result)
    plot(result, folder / "bins.png")
    compact = {k: v for k, v in result.items() if k not in ("histograms", "layers", "lr")}
    return {**compact, **model_identity(runner, cfg["unlearned"]), "plot": str(folder / "bins.png")}
