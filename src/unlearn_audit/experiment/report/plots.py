"""The report's plots (labels never overlap: long method names wrap, values are printed on the bars).
"""

from __future__ import annotations

from pathlib import Path

from ...quantize.schemes import precision_label
from ...scoring import (
    FORGOT_ENOUGH,
    percent,
)
from ...utils.io import save_figure
from .rows import is_quantization
from .verdicts import retained_after


def plot_knowledge(agg: list[dict], schemes: list[str], path: Path) -> Path | None:
    """KnowMem and VerbMem on D_f against precision, one line per model (mean over seeds, with the
    spread as error bars), one panel per regime."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    regimes = sorted({a["dtype"] for a in agg if a["dtype"]})
    if not regimes:
        return None
    fig, axes = plt.subplots(2, len(regimes), figsize=(6 * len(regimes), 7), squeeze=False)
    x = list(range(len(schemes)))
    for col, dtype in enumerate(regimes):
        labels = ["Target", "Retrained"] + sorted({a["label"] for a in agg if a["dtype"] == dtype})
        for row, key in enumerate(("knowmem_f", "verbmem_f")):
            ax = axes[row][col]
            for label in labels:
                pts = {a["scheme"]: a for a in agg if a["label"] == label}
                if not pts:
                    continue
                ys = [pts[s][key] if s in pts and pts[s][key] is not None else float("nan") for s in schemes]
                err = [(pts[s]["sd"].get(key) or 0.0) if s in pts else 0.0 for s in schemes]
                style = {"Target": "k--", "Retrained": "k:"}.get(label, "-o")
                ax.errorbar(x, ys, yerr=err, fmt=style, capsize=3, label=label)
            ax.set_xticks(x, schemes, fontsize=7, rotation=30, ha="right")  # attack names are long
            ax.set_title(f"{dtype} regime: {key} (x100, mean ± spread over seeds)", fontsize=9)
            ax.set_ylim(-2, 102)
        axes[0][col].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)


def plot_retained_bars(verdicts: list[dict], schemes: list[str], path: Path) -> Path | None:
    """The paper's figure form: per method, the retained share of the target's forget-set knowledge
    (mean of VerbMem and KnowMem, seeds averaged) at full precision and after each quantizer, as bars;
    one panel per training precision, side by side on one scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    quant = [s for s in schemes if s == "full" or is_quantization(s)]
    regimes = sorted({v["dtype"] for v in verdicts})
    if not regimes or not quant:
        return None
    panels = [[v for v in verdicts if v["dtype"] == d] for d in regimes]
    widest = max(len(p) for p in panels)
    fig, axes = plt.subplots(1, len(regimes), figsize=(max(6.0, 1.5 * widest + 1.5) * len(regimes), 4.8),
                             squeeze=False, sharey=True)
    width = 0.8 / len(quant)
    colours = plt.get_cmap("viridis")([i / max(1, len(quant) - 1) * 0.85 for i in range(len(quant))])
    for ax, dtype, runs in zip(axes[0], regimes, panels):
        for j, scheme in enumerate(quant):
            ys = [retained_after(v, scheme) for v in runs]
            xs = [i + (j - (len(quant) - 1) / 2) * width for i in range(len(runs))]
            ax.bar(xs, [100 * y if y is not None else float("nan") for y in ys], width, color=colours[j],
                   label="full precision" if scheme == "full" else f"{precision_label(scheme)} ({scheme})")
        ax.axhline(100, color="k", ls="--", lw=0.8, label="the target")
        ax.axhline(FORGOT_ENOUGH * 100, color="grey", ls=":", lw=0.8, label=f"{percent(FORGOT_ENOUGH)}: deep forgetting")
        ax.set_xticks(range(len(runs)), [v["label"].replace(" (", "\n(", 1) for v in runs], fontsize=7)
        ax.set_title(f"{dtype} unlearning", fontsize=10)
        ax.set_ylim(0, 130)
    axes[0][0].set_ylabel("forget-set knowledge retained\n(% of the target's, mean of VerbMem and KnowMem)", fontsize=8)
    axes[0][-1].legend(fontsize=7, loc="upper right", ncol=2)
    fig.suptitle("Retained after unlearning: full precision and quantized", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)
