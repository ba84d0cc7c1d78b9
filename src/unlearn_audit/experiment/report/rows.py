"""One row per (model, scheme) evaluation from a run's ledger, labelled, with retention and recovery
figures, aggregated over seeds (no recomputation; every share comes from `unlearn_audit.scoring`).
"""

from __future__ import annotations

from collections import defaultdict

from ...attacks import as_attack, target_reference
from ...scoring import (
    KNOWLEDGE,
    knowledge_recovery,
    mean,
    recovery,
    share,
    spread,
    utility_kept,
)


def rows_from_ledger(ledger) -> list[dict]:
    """One row per (model, scheme) evaluation, with retention figures for unlearned models."""
    rows = []
    for cell in ledger.cells("eval"):
        if cell.status != "done":
            continue
        r = cell.result
        m = r["metrics"]
        rows.append({
            "model": r["model"], "dtype": r["dtype"], "lr": r["lr"], "seed": r["seed"], "scheme": r["scheme"],
            "settings": r.get("settings"), "model_seed": r.get("model_seed"),
            "verbmem_f": m.get("verbmem_f"), "knowmem_f": m.get("knowmem_f"), "knowmem_r": m.get("knowmem_r"),
            "privleak": m.get("privleak"), "auc": r["details"].get("privleak", {}).get("auc"),
            "fluency_perplexity": r["details"].get("fluency", {}).get("unlearned", {}).get("perplexity"),
            "fluency_gold": r["details"].get("fluency", {}).get("gold", {}).get("perplexity"),
            "all_metrics": m,  # with other benchmarks' metrics where the grid asks for them (`benchmarks`)
        })
    label_rows(rows)
    add_retention(rows)
    add_recovery(rows)
    return rows


# Unlearning options that have their own place in a row's label (or never vary within a run).
LABELLED = {"method", "dtype", "learning_rate", "seed", "base", "arithmetic"}


def label_rows(rows: list[dict], like: list[dict] | None = None) -> None:
    """Give each row the label of its run: method, regime, learning rate and every other unlearning
    option that varies in this grid (epochs, alpha, ...; as among the rows `like`, default `rows`);
    seeds share a label and are averaged."""
    by_method: dict[str, list[dict]] = defaultdict(list)
    for r in rows if like is None else like:
        if r.get("settings"):
            by_method[r["model"]].append(r["settings"])
    varying = {}  # per method: the options that vary among its runs (not those set by method_overrides)
    for method, settings in by_method.items():
        keys = sorted({k for st in settings for k in st} - LABELLED)
        varying[method] = [k for k in keys if len({repr(st.get(k)) for st in settings}) > 1]
    for r in rows:
        if not r["dtype"]:
            r["label"] = r["model"].capitalize()
            continue
        extra = "".join(f", {k} {(r.get('settings') or {}).get(k)}" for k in varying.get(r["model"], []))
        r["label"] = f"{r['model'].upper()} ({r['dtype']}, lr {r['lr']:g}{extra})"


def add_retention(rows: list[dict]) -> None:
    """retained = unlearned / target and relative = (unlearned - retrained) / (target - retrained), each
    against the target and retrained models of the same seed (when seeds re-draw them) and precision or
    attack; for relearning attacks the target is taken at full precision (as `audit` does)."""
    ref = {(r["model"], r["seed"], r["scheme"]): r for r in rows if r["model"] in ("target", "retrained")}
    for r in rows:
        if r["model"] in ("target", "retrained"):
            continue
        t = ref.get(("target", r["model_seed"], target_reference(r["scheme"])))
        rt = ref.get(("retrained", r["model_seed"], r["scheme"]))
        for key in KNOWLEDGE:
            r[f"retained_{key}"] = share(r[key], t[key]) if t else None
            r[f"relative_{key}"] = share(r[key], t[key], rt[key]) if t and rt and rt[key] is not None else None
        r["utility_kept"] = utility_kept(r, t) if t else None


def add_recovery(rows: list[dict]) -> None:
    """recovery = (u_a - u) / (t_a - u) per knowledge metric and pooled (`scoring.knowledge_recovery`), per
    seed: u the same run and seed at full precision, t_a the target under the attack (at full precision
    for relearning)."""
    ref = {(r["model"], r["seed"], r["scheme"]): r for r in rows if r["model"] == "target"}
    full = {(r["label"], r["seed"]): r for r in rows if r["dtype"] and r["scheme"] == "full"}
    for r in rows:
        u, t = full.get((r["label"], r["seed"])), ref.get(("target", r["model_seed"], target_reference(r["scheme"])))
        if not r["dtype"] or r["scheme"] == "full" or not u or not t:
            continue
        for key in KNOWLEDGE:
            r[f"recovery_{key}"] = recovery(u[key], r[key], t[key])
        r["recovery_pooled"] = knowledge_recovery(u, r, t)


RECOVERY_KEYS = [*(f"recovery_{k}" for k in KNOWLEDGE), "recovery_pooled"]


AVERAGED = ["verbmem_f", "knowmem_f", "knowmem_r", "privleak", "retained_verbmem_f", "retained_knowmem_f",
            "relative_verbmem_f", "relative_knowmem_f", "utility_kept", "fluency_perplexity", "fluency_gold",
            *RECOVERY_KEYS]


def aggregate(rows: list[dict]) -> list[dict]:
    """Rows averaged over seeds: one per (run label, scheme), each value as its mean, with `sd` (the
    spread over seeds) and `n` (how many seeds)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["label"], r["scheme"])].append(r)
    out = []
    for (label, scheme), rs in groups.items():
        first = rs[0]
        agg = {"label": label, "scheme": scheme, "model": first["model"], "dtype": first["dtype"], "lr": first["lr"],
               "seeds": sorted(x["seed"] for x in rs if x["seed"] is not None), "n": len(rs), "sd": {}}
        for key in AVERAGED:
            values = [x.get(key) for x in rs]
            agg[key] = mean(values)
            agg["sd"][key] = spread(values)
        out.append(agg)
    return out


def ordered_labels(agg: list[dict]) -> list[str]:
    labels = {a["label"] for a in agg}
    return sorted(labels, key=lambda k: (k not in ("Target", "Retrained"), k != "Target", k))


def runs_by_label(agg: list[dict]) -> dict[str, dict[str, dict]]:
    """Aggregated rows of unlearned runs: label -> scheme -> row."""
    by_run: dict[str, dict[str, dict]] = defaultdict(dict)
    for a in agg:
        if a["dtype"]:
            by_run[a["label"]][a["scheme"]] = a
    return by_run


def is_quantization(name: str) -> bool:
    return name == "full" or as_attack(name).family == "quant"


def bins_rows(ledger) -> list[dict]:
    """The finished bins analyses, one per unlearned run and scheme (labelled like the eval rows)."""
    return [dict(c.result) for c in ledger.cells("bins") if c.status == "done"]


def bins_by_label(brows: list[dict], scheme: str | None) -> dict[str, dict]:
    """Per run label, the seeds' mean erased mass and survival along the update under `scheme`."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for b in brows:
        if b["scheme"] == scheme:
            groups[b["label"]].append(b)
    return {label: {"scheme": scheme, "n": len(bs),
                    "erased_mass_share": mean([b["erased_mass_share"] for b in bs]),
                    "projected_survival": mean([b.get("projected_survival") for b in bs]),
                    "first_order_survival": mean([(b.get("first_order") or {}).get("first_order_survival")
                                                  for b in bs])}
            for label, bs in groups.items()}
