"""Membership inference as open-unlearning computes it (its src/evals/metrics/mia/, read at commit
d3d7cf9): six attacks score every forget text (members) and holdout text (nonmembers), and each attack is
summarised by its AUC, its TPR at 1% and 5% FPR and a bootstrap interval of the AUC.

Encoding (open-unlearning's CompletionDataset, `preprocess_pretraining_instance` with an empty prefix): a
text x_0..x_{n-1} is tokenized with its special tokens and cut to len(tokenizer("")) + 2048 tokens; the
first s = max(len(tokenizer("")), 1) tokens carry no loss, so the scored tokens are x_s..x_{n-1} and
lp_j = log p(x_j | x_<j). (A tokenizer that adds no BOS gets the toolkit's document prefix first, as in
training and every other metric here: `models.generation.document_prefix`.)

Scores, one per text, higher = less likely a member (open-unlearning's sign):
  LOSS      = -mean(lp_s..lp_{n-1})                                   Yeom et al. 2018
  zlib      = LOSS / len(zlib.compress(decode(x_s..x_{n-1}, skip_special_tokens=True)))   Carlini et al. 2021
  Min-K%    = -mean of the max(1, int(m k)) lowest of the m values lp_s..lp_{n-2}, k = 0.4 (0 when m = 0):
              the last scored token is dropped ("ignore eos prediction", `tokenwise_logprobs`)   Shi et al. 2024
  Min-K%++  = Min-K% of z_j = (lp_j - mu_j) / sqrt(max(sigma2_j, 1e-6)), mu_j = sum_v p_j(v) log p_j(v),
              sigma2_j = sum_v p_j(v) log^2 p_j(v) - mu_j^2 over the model's next-token distribution p_j
                                                                       Zhang et al. 2024 (arXiv 2404.02936)
  Reference = LOSS(model) - LOSS(reference model)           reference-model calibration, Carlini et al. 2021
  GradNorm  = mean over the parameters theta that get a gradient of ||dL/dtheta||_p, p = 2,
              L = -mean(lp_s..lp_{n-2}), one text per backward, model in train mode (NaN when m = 0)
                                                                   Wang et al. 2024 (arXiv 2402.17012)
Summaries of the forget scores F and holdout scores H:
  AUC        = roc_auc_score(labels F -> 0, H -> 1, scores) = P(h > f) + P(h = f) / 2: 1 when the forget texts
               are much more likely than the holdout texts (open-unlearning's `mia_auc`)
  TPR@a      = max over thresholds t with FPR(t) < a of TPR(t), a text called a member when its score <= t
               (TPR: share of F, FPR: share of H): `tpr[np.where(fpr < a)[0][-1]]`, the low-FPR rule of
               Carlini et al. 2022 (LiRA, "Membership inference attacks from first principles"), on every
               threshold of the ROC curve
  AUC CI     = 2.5th and 97.5th percentiles of the AUC over 1000 bootstrap resamples, F and H resampled
               separately (seed 0)
  normalised = (A - A_c) / A_c * 100 with A = 1 - AUC, A_c = 1 - the retrained control's AUC: open-unlearning's
               `privleak` (MUSE reports 1 - AUC), i.e. `privleak.privleak` on 1 - AUC
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import UserError
from ..models.generation import (
    CPU_SCORE_TOKENS,
    choose_batch_size,
    document_prefix,
    encode_documents,
    gather_logprobs,
    max_positions,
    right_pad,
    split_continuation,
    truncate,
)
from .privleak import mia_auc, min_k_score, privleak

MIA_METRICS = ("mia_loss", "mia_zlib", "mia_min_k", "mia_min_k_plus_plus", "mia_reference", "mia_gradnorm")
SPLITS = ("forget", "holdout")
# open-unlearning's settings: configs/eval/muse_metrics/mia_*.yaml and configs/data/datasets/MUSE_MIA.yaml
K = 0.4
P_NORM = 2
MAX_LENGTH = 2048
QA_MAX_LENGTH = 512  # configs/data/datasets/TOFU_MIA.yaml
SIGMA2_FLOOR = 1e-6
FPRS = {"tpr@1%fpr": 0.01, "tpr@5%fpr": 0.05}
RESAMPLES, SEED = 1000, 0
# scheme families whose models hold library-format (packed integer) weights: quantize/backends.py stores
# "library format" for them and "dequantized weights" for rtn, gguf, fp8, mxfp4, nvfp4 (and casts keep floats)
PACKED_FAMILIES = ("bnb", "gptq", "awq", "hqq")
CHUNK_LOGITS = 2**22  # logits per chunk of the vocabulary statistics (16 positions of a 262k vocabulary)


@dataclass
class TextStats:
    """What one forward pass gives the attacks about one text (see the module docstring)."""

    loss: float  # mean NLL over every scored token (LOSS)
    lp: np.ndarray  # lp_s..lp_{n-2}: the scored tokens but the last (Min-K%, Min-K%++)
    mu: np.ndarray  # mean of log p over the next-token distribution at those positions
    sigma2: np.ndarray  # its variance there
    text: str  # the scored tokens decoded, special tokens skipped (zlib)


Item = str | tuple[str, str]  # a text scored whole (MUSE), or (prompt, answer) scored on the answer (TOFU)


def encode(tokenizer, items: Sequence[Item], context: int | None) -> tuple[list[list[int]], list[int], int]:
    """(token ids of each item, its first scored position, how many items the model's context cut). A text
    is scored from s = max(len(tokenizer("")), 1) (MUSE's CompletionDataset) and cut to s + MAX_LENGTH
    tokens; a (prompt, answer) pair on its answer's tokens, cut from `split_continuation` as TOFU's other
    teacher-forced scores are (open-unlearning's QADataset: labels only on the answer), to QA_MAX_LENGTH."""
    prefix = len(document_prefix(tokenizer)) + len(tokenizer("", add_special_tokens=True).input_ids)
    ids, starts = [], []
    for item in items:
        if isinstance(item, str):
            ids.append(encode_documents(tokenizer, [item])[0][: prefix + MAX_LENGTH])
            starts.append(max(prefix, 1))
        else:
            prompt, answer = split_continuation(tokenizer, *item)
            ids.append((prompt + answer)[:QA_MAX_LENGTH])
            starts.append(max(len(prompt), 1))
    return ids, starts, truncate(ids, context, keep_end=False)


def vocab_stats(logits: torch.Tensor, targets: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lp, mu, sigma2) at each position of `logits` (positions x vocabulary) for its target token, in float32,
    a chunk of positions at a time: no positions x vocabulary log-probabilities are kept."""
    chunk = max(1, CHUNK_LOGITS // max(1, logits.shape[-1]))
    out = []
    for a in range(0, logits.shape[0], chunk):
        logp = torch.log_softmax(logits[a : a + chunk].float(), dim=-1)
        p = logp.exp()
        mu = (p * logp).sum(-1)
        sigma2 = (p * logp.square()).sum(-1) - mu.square()
        out.append(torch.stack([logp.gather(-1, targets[a : a + chunk, None]).squeeze(-1), mu, sigma2]))
    both = torch.cat(out, dim=1) if out else torch.zeros(3, 0)
    return tuple(both.double().cpu().numpy())


@torch.inference_mode()
def text_stats(model, tokenizer, texts: Sequence[Item], batch_size: int | None = None,
               progress: Callable[[int], None] | None = None) -> tuple[list[TextStats], int]:
    """`TextStats` of every item from one batched forward pass (right-padded, longest first), and how many
    items the model's context cut."""
    ids, starts, cut = encode(tokenizer, texts, max_positions(model))
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    stats: list[TextStats] = [None] * len(ids)  # type: ignore[list-item]
    start = 0
    while start < len(order):
        rows = order[start : start + choose_batch_size(model, len(ids[order[start]]), batch_size,
                                                       cpu_tokens=CPU_SCORE_TOKENS)]
        input_ids, mask = right_pad([ids[i] for i in rows], pad_id, device)
        logits = model(input_ids=input_ids, attention_mask=mask).logits
        for r, i in enumerate(rows):
            n, s = len(ids[i]), starts[i]
            lp, mu, sigma2 = vocab_stats(logits[r, s - 1 : n - 1], input_ids[r, s:n])
            loss = float(-lp.mean()) if lp.size else float("nan")
            text = tokenizer.decode(ids[i][s:], skip_special_tokens=True)
            stats[i] = TextStats(loss, lp[:-1], mu[:-1], sigma2[:-1], text)
        start += len(rows)
        if progress:
            progress(len(rows))
    return stats, cut


def min_k(values: np.ndarray, k: float = K) -> float:
    """Min-K% of token scores as open-unlearning's `MinKProbAttack` (0 for a text without any)."""
    return 0.0 if values.size == 0 else min_k_score(values, k)


def zlib_bytes(text: str) -> int:
    """zlib's compressed length of the text in bytes: the denominator of the zlib attack."""
    return len(zlib.compress(text.encode("utf-8")))


def min_k_plus_plus(st: TextStats, k: float = K) -> float:
    """Min-K%++: Min-K% of each token's log-prob standardised by the model's own next-token distribution."""
    return min_k((st.lp - st.mu) / np.sqrt(np.maximum(st.sigma2, SIGMA2_FLOOR)), k)


def item_scores(metric: str, st: TextStats, reference_loss: float | None = None) -> dict:
    """One text's log row for a one-pass attack: its score and what the score is made of."""
    if metric == "mia_loss":
        return {"score": st.loss}
    if metric == "mia_zlib":
        size = zlib_bytes(st.text)
        return {"score": st.loss / size, "loss": st.loss, "zlib_bytes": size}
    if metric == "mia_min_k":
        return {"score": min_k(st.lp), "tokens": int(st.lp.size)}
    if metric == "mia_min_k_plus_plus":
        return {"score": min_k_plus_plus(st), "tokens": int(st.lp.size)}
    if metric == "mia_reference":
        return {"score": st.loss - reference_loss, "loss": st.loss, "reference_loss": reference_loss}
    raise ValueError(f"not a one-pass attack: {metric}")


def gradnorm_scores(model, tokenizer, texts: Sequence[Item], p: float = P_NORM,
                    progress: Callable[[int], None] | None = None) -> tuple[list[float], int]:
    """GradNorm of each text (one forward and backward each, batch 1, model in train mode as open-unlearning's
    `GradNormAttack`), and how many texts the context cut. Gradients are cleared afterwards and the model's
    mode restored."""
    ids, starts, cut = encode(tokenizer, texts, max_positions(model))
    device = next(model.parameters()).device
    was_training = model.training
    scores = []
    model.train()
    try:
        with torch.inference_mode(False), torch.enable_grad():
            for seq, s in zip(ids, starts):
                if len(seq) - 1 - s < 1:  # no token left once the last is dropped (open-unlearning fails here)
                    scores.append(float("nan"))
                    continue
                x = torch.tensor([seq], device=device)
                logits = model(input_ids=x, attention_mask=torch.ones_like(x)).logits[0]
                loss = -gather_logprobs(logits[s - 1 : len(seq) - 2], x[0, s : len(seq) - 1]).mean()
                model.zero_grad(set_to_none=True)
                loss.backward()
                norms = [w.grad.detach().norm(p=p) for w in model.parameters() if w.grad is not None]
                scores.append(float(torch.stack(norms).mean().float()) if norms else float("nan"))
                if progress:
                    progress(1)
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return scores, cut


def weights_state(model) -> tuple:
    """Changes whenever a weight tensor is replaced or modified in place (torch's version counters)."""
    return tuple((w.data_ptr(), w._version) for w in model.parameters())


def shared_stats(model, tokenizer, texts: dict[str, list[Item]], batch_size: int | None = None,
                 show: bool = True) -> tuple[dict[str, list[TextStats]], int]:
    """`text_stats` of every split's texts in one pass, kept on the model for the other one-pass attacks of
    the same evaluation (recomputed once its weights, the texts or the tokenizer change)."""
    flat = [t for split in texts for t in texts[split]]
    key = (tuple(flat), id(tokenizer), weights_state(model))
    cached = getattr(model, "_unlearn_audit_mia", None)
    if cached is None or cached[0] != key:
        with tqdm(total=len(flat), desc="mia", disable=not show, leave=False) as bar:
            stats, cut = text_stats(model, tokenizer, flat, batch_size, bar.update)
        cached = (key, stats, cut)
        model._unlearn_audit_mia = cached
    _, stats, cut = cached
    out, start = {}, 0
    for split, items in texts.items():
        out[split], start = stats[start : start + len(items)], start + len(items)
    return out, cut


def attack_logs(metric: str, model, tokenizer, texts: dict[str, list[Item]], batch_size: int | None = None,
                show: bool = True, reference_loss: dict[str, list[float]] | None = None) -> tuple[dict, int]:
    """The attack's per-text log of each split ({split: [{index, text, score, ...}]}) and how many texts
    the context cut. `reference_loss`: the reference model's LOSS of each text (mia_reference)."""
    if metric == "mia_gradnorm":
        logs, cut = {}, 0
        with tqdm(total=sum(map(len, texts.values())), desc=metric, disable=not show, leave=False) as bar:
            for split, items in texts.items():
                scores, n = gradnorm_scores(model, tokenizer, items, progress=bar.update)
                logs[split] = [{"index": i, **item_fields(t), "score": g} for i, (t, g) in enumerate(zip(items, scores))]
                cut += n
        return logs, cut
    stats, cut = shared_stats(model, tokenizer, texts, batch_size, show)
    logs = {}
    for split, items in texts.items():
        ref = reference_loss[split] if reference_loss else [None] * len(items)
        logs[split] = [{"index": i, **item_fields(t), **item_scores(metric, st, r)}
                       for i, (t, st, r) in enumerate(zip(items, stats[split], ref))]
    return logs, cut


def item_fields(item: Item) -> dict:
    """How a scored item is logged: its text, or its prompt and answer."""
    return {"text": item} if isinstance(item, str) else {"prompt": item[0], "answer": item[1]}


def split_scores(logs: dict) -> tuple[list[float], list[float]]:
    """(forget scores, holdout scores) of an attack's log."""
    return [r["score"] for r in logs["forget"]], [r["score"] for r in logs["holdout"]]


def attack_auc(forget: Sequence[float], holdout: Sequence[float]) -> float:
    """open-unlearning's AUC: roc_auc_score with forget -> 0, holdout -> 1 on the scores (ties count half);
    `privleak.mia_auc` with the holdout texts as the side expected to score higher."""
    return mia_auc(holdout, forget)


def tpr_at_fpr(forget: Sequence[float], holdout: Sequence[float], fpr: float) -> float:
    """Share of forget texts called members at the lowest threshold whose FPR on holdout texts stays below
    `fpr` (member: score <= t; LiRA's `tpr[np.where(fpr < a)[0][-1]]` over every threshold)."""
    f, h = np.sort(np.asarray(forget, float)), np.sort(np.asarray(holdout, float))
    if np.isnan(f).any() or np.isnan(h).any():
        return float("nan")
    cuts = np.unique(np.concatenate([f, h]))
    tpr = np.searchsorted(f, cuts, side="right") / len(f)
    below = np.searchsorted(h, cuts, side="right") / len(h) < fpr
    return float(tpr[below].max()) if below.any() else 0.0


def auc_interval(forget: Sequence[float], holdout: Sequence[float], resamples: int = RESAMPLES,
                 seed: int = SEED) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the AUC: `resamples` draws of n_f forget and n_h holdout texts with
    replacement, each side resampled on its own (the forget draws first, then the holdout ones)."""
    f, h = np.asarray(forget, float), np.asarray(holdout, float)
    if np.isnan(f).any() or np.isnan(h).any():
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    idx_f, idx_h = rng.integers(0, len(f), (resamples, len(f))), rng.integers(0, len(h), (resamples, len(h)))
    hs, fs = torch.from_numpy(np.sort(h[idx_h], axis=1)), torch.from_numpy(f[idx_f])
    at_most, below = torch.searchsorted(hs, fs, right=True), torch.searchsorted(hs, fs)  # per resample, per forget draw
    wins = (len(h) - at_most) + (at_most - below).double() / 2  # holdout draws scoring higher, ties counting half
    lo, hi = np.percentile((wins.sum(1) / (len(f) * len(h))).numpy(), [2.5, 97.5])
    return float(lo), float(hi)


def normalised_auc(auc: float, auc_control: float | None) -> float | None:
    """open-unlearning's `privleak` of an attack: the relative gap of 1 - AUC to the control's 1 - AUC, x100
    (open-unlearning adds 1e-10 to the denominator; here a control AUC of 1 gives None)."""
    if auc_control is None:
        return None
    return privleak(1 - auc, 1 - auc_control)


def summarise(forget: Sequence[float], holdout: Sequence[float], auc_control: float | None = None,
              source: str | None = None) -> dict:
    """The aggregate of one attack: AUC, TPR at 1% and 5% FPR, the AUC's interval, the control's AUC and the
    normalised value (None without a control). Items the attack cannot score (NaN: GradNorm of an item with
    no token left once the last is dropped, where open-unlearning fails) are left out and counted."""
    kept_f, kept_h = [x for x in forget if not np.isnan(x)], [x for x in holdout if not np.isnan(x)]
    unscored = len(forget) + len(holdout) - len(kept_f) - len(kept_h)
    forget, holdout = kept_f, kept_h
    auc = attack_auc(forget, holdout) if forget and holdout else float("nan")
    return {"auc": auc, **{key: tpr_at_fpr(forget, holdout, a) for key, a in FPRS.items()},
            "auc_ci95": list(auc_interval(forget, holdout)), "auc_control": auc_control,
            "auc_control_source": source, "normalised": normalised_auc(auc, auc_control),
            "n_forget": len(forget), "n_holdout": len(holdout), "n_unscored": unscored}


def check_request(metrics: Sequence[str], reference_model: bool, scheme: str) -> None:
    """Refuse, before any model is loaded, an attack this run cannot compute: Reference without a reference
    model, GradNorm on a scheme whose weights are packed."""
    if "mia_reference" in metrics and not reference_model:
        raise UserError("mia_reference compares each text's loss with a reference model's: give a control model "
                        "(eval: --retrained MODEL; audit: --control MODEL or base:MODEL), or drop mia_reference "
                        "from --metrics")
    if "mia_gradnorm" in metrics and scheme != "full":
        from ..quantize.schemes import parse_scheme

        if parse_scheme(scheme).family in PACKED_FAMILIES:
            raise UserError(f"mia_gradnorm needs gradients of the weights, which {scheme} packs into integers; "
                            "evaluate it at full precision or under a dequantized scheme (rtn-*, gguf-*, fp8-*, "
                            "mxfp4, nvfp4, cast-*)")


def check_model(model, metrics: Sequence[str]) -> None:
    """Refuse GradNorm, before any metric is evaluated, on a loaded model whose weights are packed."""
    if "mia_gradnorm" in metrics and (why := packed_weights(model)):
        raise UserError(f"mia_gradnorm needs gradients of the weights, and this model's are packed ({why}): "
                        "evaluate it at full precision or under a dequantized scheme")


def packed_weights(model) -> str | None:
    """What makes a loaded model's weights packed (a library quantizer, integer tensors), else None."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        return f"it is quantized by {type(quantizer).__name__}"
    for name, w in model.named_parameters():
        if not w.dtype.is_floating_point:
            return f"its weight {name} is stored as {w.dtype}"
    return None


def run_attack(name: str, model, tokenizer, texts: dict[str, list[Item]], batch_size: int | None, ref,
               show: bool) -> tuple[float, dict, dict]:
    """One attack on the members (forget) and nonmembers (holdout): (AUC, its summary with the control's AUC
    from `ref` where measured, {log.json: per-item scores, agg.json: the summary})."""
    reference_loss = getattr(ref, "reference_loss", None) if name == "mia_reference" else None
    if name == "mia_reference" and reference_loss is None:
        raise UserError("mia_reference needs a reference model's loss of every text (`eval --retrained MODEL` "
                        "measures it); this evaluation has none")
    if reference_loss is not None and any(len(reference_loss[s]) != len(texts[s]) for s in texts):
        raise UserError("mia_reference: the reference model's losses were measured on other texts (another --limit?)")
    logs, truncated = attack_logs(name, model, tokenizer, texts, batch_size, show, reference_loss)
    control = (getattr(ref, "mia_control", None) or {}).get(name)
    agg = summarise(*split_scores(logs), control, ref.mia_control_source if control is not None else None)
    return agg["auc"], {**agg, "truncated": truncated}, {"log.json": logs, "agg.json": agg}


def control_side(model, tokenizer, texts: dict[str, list[Item]], metrics: Sequence[str], batch_size: int | None,
                 show: bool = True) -> dict:
    """The retrained model's side of the attacks asked for: its AUC of each (mia_reference: 0.5, every score
    being its loss minus its own) and, for mia_reference, its LOSS of every item."""
    asked = [m for m in metrics if m in MIA_METRICS]
    control = {name: attack_auc(*split_scores(attack_logs(name, model, tokenizer, texts, batch_size, show)[0]))
               for name in asked if name != "mia_reference"}
    loss = None
    if "mia_reference" in asked:
        control["mia_reference"] = 0.5
        logs = attack_logs("mia_loss", model, tokenizer, texts, batch_size, show)[0]
        loss = {split: [r["score"] for r in rows] for split, rows in logs.items()}
    return {"mia_control": control, "reference_loss": loss}


def control_aucs(details: dict) -> dict[str, float]:
    """The control's AUC of each attack, read from its own evaluation (mia_reference: where its evaluation
    kept its loss of every text, `reference_losses`)."""
    aucs = {m: details[m]["auc"] for m in MIA_METRICS if m in details and m != "mia_reference"}
    return {**aucs, **({"mia_reference": 0.5} if reference_losses(details) else {})}


def reference_losses(details: dict) -> dict[str, list[float]] | None:
    """The control's LOSS of every text where its own evaluation kept it (a grid's retrained model)."""
    return (details.get("mia_reference") or {}).get("reference_loss")
