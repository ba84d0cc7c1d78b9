"""The audit's scorecard: audit.md (one row per attack, with the control) and audit.png."""

from __future__ import annotations

from pathlib import Path

from ..evaluate.benchmark import get_benchmark
from ..scoring import KNOWLEDGE, Gate, Hidden, fmt, markdown_table, percent
from ..utils.io import atomic_write_text, save_figure


def columns(report: dict) -> tuple[list[tuple[str, str]], list[str]]:
    """(metric, label) of the benchmark's metrics the audit measured, and its knowledge metrics."""
    labels = report.get("metrics") or get_benchmark("muse").labels  # audits written before benchmarks were recorded
    present = [(k, label) for k, label in labels.items() if k in report["full"]["unlearned"]]
    return present, list(report.get("knowledge") or KNOWLEDGE)


def holds(row: dict) -> str:
    return {True: "holds", False: "**fails**", None: "undefined"}[row.get("holds")]


def attack_label(row: dict) -> str:
    """An attack as tables name it: a gguf scheme by what llama.cpp's type mix actually applied."""
    applied = (row.get("quantization") or {}).get("applied")
    return f"quant:{applied}" if applied else row["attack"]


def table(report: dict) -> list[str]:
    present, knowledge = columns(report)

    def digits(metric: str) -> int:
        return 3 if metric in report.get("fractions", ()) else 1

    head = ["attack", *(label for _, label in present), "retained", "recovery",
            *(f"control {label}" for k, label in present if k in knowledge), "control gain",
            "bins forecast", "forgetting"]
    rows = []
    for r in [report["full"], *report["attacks"]]:
        ctrl = r.get("control") or {}
        rows.append([attack_label(r), *(fmt(r["unlearned"].get(k), digits=digits(k)) for k, _ in present),
                     fmt(r.get("retained"), True),
                     fmt(r.get("recovery"), True), *(fmt(ctrl.get(k)) for k, _ in present if k in knowledge),
                     fmt(r.get("control_gain"), True), fmt(r.get("forecast_recovery"), True),
                     holds(r) if r["attack"] != "full" else ("holds" if r["retained"] <= report["config"]["max_retained"]
                                                             else "**fails**")])
    return markdown_table(head, rows).split("\n")


def wording(report: dict) -> tuple[str, str, str]:
    """(benchmark title, its knowledge metrics' labels joined, its utility label) for the texts."""
    present, knowledge = columns(report)
    labels = dict(present)
    utility = report.get("utility") or "knowmem_r"
    return ((report.get("benchmark") or "muse").upper(), ", ".join(labels.get(k, k) for k in knowledge),
            labels.get(utility, get_benchmark("muse").label(utility)))


def hidden_line(report: dict) -> str:
    """Where the knowledge is, with the attacks that show it (`scoring.hidden_or_gone`)."""
    places = report.get("hidden_or_gone") or []
    by = report.get("hidden_by") or {}
    tested = report.get("hidden_tested") or {}
    if places == [Hidden.NOT_FOUND.value] and tested:  # say what was tested, not "erased"
        return (f"not found under the {tested['attacks']} attacks tested "
                f"({' and '.join(tested['untested'])} not tested)")
    return "; ".join(place + (f" ({', '.join(by[place])})" if by.get(place) else "") for place in places) or "-"


def control_line(report: dict) -> str:
    """Which control the shares are measured against, and what that means (audits written before
    `--control` name only their retrained model)."""
    control = report.get("control")
    if not control:
        return f"control (retrained): `{report['retrained']}`" if report.get("retrained") else \
            "control: none (the baseline is 0)"
    model = f" `{control['model']}`" if control.get("model") else ""
    floors = control.get("floors") or {}
    labels = dict(columns(report)[0])
    floor = "; floors: " + ", ".join(f"{labels.get(m, m)} {source}" for m, source in floors.items()) if floors else ""
    return f"control: {control['kind']}{model}: {control['meaning']}{floor}"


def control_kind(report: dict) -> str:
    return (report.get("control") or {}).get("kind") or ("retrained" if report.get("retrained") else "none")


def render(report: dict) -> str:
    cfg = report["config"]
    bench, knowledge, utility = wording(report)
    control = control_line(report)
    outcome = Gate(report["gate"]).outcome
    lines = [f"# unlearn-audit: {outcome}", "",
             report["verdict"], "", f"Hidden or gone? {hidden_line(report)}", "",
             f"- target: `{report['target']}`", f"- unlearned: `{report['unlearned']}`",
             f"- {control}", f"- corpus: {report['corpus']}, benchmark {bench}; threshold: "
             f"forgetting holds when at most {percent(cfg['max_retained'])} of the target's knowledge remains and the model "
             f"keeps at least {percent(cfg.get('min_utility', 0))} of the target's {utility}", "",
             *table(report), "",
             "Scores on the evaluation set of each attack (the forget set; for relearn:forget-part the "
             f"held-out part; docs/benchmarks.md gives each metric's scale). retained = max over {knowledge} of "
             "(unlearned - control) / "
             "(target - control) under the same attack; recovery = the share of what unlearning removed "
             "that the attack brings back; control gain = what the attack gives the control, as a "
             "share of the target's forgettable knowledge; bins forecast = 1 - projected survival of the "
             "update under that quantizer (`bins`).", "", "Attack sources:", ""]
    seen = set()
    for r in report["attacks"]:
        if r["family"] not in seen:
            seen.add(r["family"])
            lines.append(f"- {r['family']}: {r['source']}")
    return "\n".join(lines + runtime_lines(report)) + "\n"


def runtime_lines(report: dict) -> list[str]:
    """Under --runtime llama.cpp: which evaluations llama.cpp ran, on which file (sha256) and types."""
    runtimes = report.get("runtimes") or {}
    if not runtimes:
        return []
    lines = ["", "Run in llama.cpp itself (the other evaluations in torch):", ""]
    for where, r in runtimes.items():
        lines.append(f"- {where}: `{r['gguf']}` (sha256 {r['sha256'][:16]}, {r.get('ftype') or r.get('outtype') or 'as given'}; "
                     f"llama-cpp-python {r.get('llama_cpp_python')})")
    return lines


def plot(report: dict, path: Path) -> Path:
    """Bars per attack: the unlearned model's retained share and the control's gain, threshold dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [report["full"], *report["attacks"]]
    names = [r["attack"] for r in rows]
    kept = [r.get("retained") or 0.0 for r in rows]
    gain = [r.get("control_gain") or 0.0 for r in rows]
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(rows) + 1.5))
    y = range(len(rows))
    ax.barh([i - 0.2 for i in y], [100 * k for k in kept], height=0.4, label="unlearned: target knowledge retained")
    ax.barh([i + 0.2 for i in y], [100 * g for g in gain], height=0.4, color="0.6",
            label=f"control ({control_kind(report)}): knowledge gained")
    ax.axvline(100 * report["config"]["max_retained"], color="k", ls="--", lw=1, label="threshold")
    ax.set_yticks(list(y), names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(f"% of the target's forgettable knowledge (max of {wording(report)[1]})")
    ax.set_xlim(0, 105)
    ax.set_title(report["verdict"][:110], fontsize=7)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)


def write_scorecard(report: dict, out: Path) -> None:
    atomic_write_text(out / "audit.md", render(report))
    plot(report, out / "audit.png")
