"""Batched greedy generation and batched token log-probabilities: the two model calls MUSE makes.

MUSE's reference loop calls `generate` (or a forward pass) once per item. Here prompts are sorted by
length, left-padded into batches and decoded with the KV cache; a stopping criterion ends a row as soon
as its output contains a stop string (the text after it is cut away by the metric anyway), so the
results equal the per-item loop while the work shrinks by the batch size. Prompts that share a long
token prefix (KnowMem's few-shot examples: ~320 of ~350 tokens on MUSE-NEWS) have that prefix encoded
once; each batch continues from a copy of its KV cache, with the padding between prefix and question.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch

log = logging.getLogger(__name__)

# Tokens per batch on CPU (measured on 2 cores, bench/eval_speed.py): decoding is dominated by per-step
# Python overhead and by reading the weights once per step, so large batches pay; teacher-forced scoring
# materialises full-vocabulary logits, so smaller batches stay in cache and win.
CPU_GENERATE_TOKENS = 32768
CPU_SCORE_TOKENS = 2048
# ... and long sequences are also capped by batch x length^2 (the attention scores of the prompt pass).
# On SmolLM2-135M with MUSE-NEWS's ~950-token VerbMem prompts (24 items, grouped KV heads kept grouped and
# a static cache, see below): 7 rows per batch took 111 s, 12 rows 80 s, 24 rows 75 s.
CPU_ATTENTION_CELLS = 32 * 1024**2
BATCH_CAP = 128
# A common token prefix at least this long is encoded once and shared by every prompt.
MIN_SHARED_PREFIX = 16


def max_positions(model) -> int | None:
    """The model's context length, when its config states one."""
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(model.config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def choose_batch_size(
    model, longest: int, requested: int | None = None, cap: int = BATCH_CAP, cpu_tokens: int = CPU_GENERATE_TOKENS
) -> int:
    """Batch size for sequences of length `longest`: the user's choice, else a memory-based guess."""
    if requested:
        return max(1, int(requested))
    device = next(model.parameters()).device
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cfg = model.config
        vocab = getattr(cfg, "vocab_size", 32000)
        hidden = getattr(cfg, "hidden_size", 4096)
        layers = getattr(cfg, "num_hidden_layers", 32)
        per_token = 4 * vocab + 2 * 2 * layers * hidden + 16 * hidden  # logits fp32 + KV cache + activations
        budget = int(0.4 * free / max(1, per_token))
    else:
        budget = min(cpu_tokens, CPU_ATTENTION_CELLS // max(1, longest))
    return int(max(1, min(cap, budget // max(1, longest))))


class StopOnStrings:
    """Stopping criterion: a row is done once its new text contains any stop string.

    Each step decodes only the rows still running, and only a window of their newest tokens wide
    enough to hold any stop string (a stop string seen earlier would have ended the row then)."""

    def __init__(self, tokenizer, prompt_len: int, stops: Sequence[str]):
        self.tokenizer = tokenizer
        self.prompt_len = prompt_len
        self.stops = tuple(stops)
        self.window = 2 * max(len(s) for s in self.stops) + 4
        self.done: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        if self.done is None:
            self.done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        start = max(self.prompt_len, input_ids.shape[1] - self.window)
        rows = (~self.done).nonzero().flatten().tolist()
        texts = self.tokenizer.batch_decode(input_ids[rows, start:], skip_special_tokens=True,
                                            clean_up_tokenization_spaces=True)
        for row, text in zip(rows, texts):
            if any(s in text for s in self.stops):
                self.done[row] = True
        return self.done.clone()


def truncate(ids: list[list[int]], limit: int | None, keep_end: bool) -> int:
    """Cut sequences longer than `limit` in place (keeping their end or their start); returns how many."""
    if limit is None:
        return 0
    cut = 0
    for i, seq in enumerate(ids):
        if len(seq) > limit:
            ids[i] = seq[-limit:] if keep_end else seq[:limit]
            cut += 1
    return cut


def document_prefix(tokenizer) -> list[int]:
    """What every text starts with: nothing where the tokenizer begins texts with a special token of its
    own (Llama's BOS: MUSE's setting, unchanged), else its BOS (or EOS) token.

    A tokenizer that adds nothing (SmolLM2's) leaves a text's first word at position 0, where the model
    keeps its attention sink. Measured on SmolLM2-135M fine-tuned on the built-in world: its own
    training text scored 5.7 nats per token with the word at position 0 and 0.3 behind any one token
    (the base model: 3.1 either way), so training and evaluation both give every text this prefix, as
    lm-evaluation-harness does for such models."""
    cached = getattr(tokenizer, "_unlearn_audit_prefix", None)
    if cached is not None:
        return cached
    probe = tokenizer("a", add_special_tokens=True).input_ids
    special = set(tokenizer.all_special_ids)
    token = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    prefix = [] if (probe and probe[0] in special) or token is None else [token]
    try:
        tokenizer._unlearn_audit_prefix = prefix
    except AttributeError:  # a tokenizer that refuses new attributes: probe each time
        pass
    return prefix


def encode_documents(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text with the tokenizer's special tokens and the document prefix (above)."""
    if not texts:
        return []
    prefix = document_prefix(tokenizer)
    return [prefix + ids for ids in tokenizer(list(texts), add_special_tokens=True).input_ids]


def encode_prompts(tokenizer, prompts: Sequence[str], limit: int | None) -> tuple[list[list[int]], int]:
    """Token ids of each prompt (special tokens as MUSE adds them, `document_prefix` where the tokenizer
    adds none), left-truncated to `limit` tokens."""
    ids = encode_documents(tokenizer, prompts)
    return ids, truncate(ids, limit, keep_end=True)


def pad(batch: list[list[int]], pad_id: int, device, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack sequences with padding on the left (generation) or on the right (scoring, training)."""
    width = max(map(len, batch))
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, seq in enumerate(batch):
        span = slice(width - len(seq), width) if left else slice(0, len(seq))
        ids[row, span] = torch.tensor(seq, dtype=torch.long)
        mask[row, span] = 1
    return ids.to(device), mask.to(device)


def right_pad(batch: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right padding: what teacher-forced scoring and training batches use."""
    return pad(batch, pad_id, device, left=False)


def generation_kwargs(model, tokenizer, max_new_tokens: int) -> dict:
    """Greedy decoding exactly as MUSE asks for it (do_sample=False, the tokenizer's pad token)."""
    eos = model.generation_config.eos_token_id
    if eos is None:
        eos = tokenizer.eos_token_id
    return dict(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        temperature=None,
        top_p=None,
        top_k=None,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=eos,
        use_cache=True,
    )


def common_prefix_length(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the longest token prefix that every sequence has, leaving each at least one own token."""
    if not seqs:
        return 0
    shortest = min(map(len, seqs))
    first = seqs[0]
    n = 0
    while n < shortest - 1 and all(seq[n] == first[n] for seq in seqs):
        n += 1
    return n


class SharedPrefix:
    """The KV cache of the token prefix every prompt starts with, computed once.

    `batch(rows)` lays prompts out as [prefix | padding | own tokens] with the padding masked (position
    ids come from the mask, so each prompt sees the same positions as alone) and hands `generate` a
    copy of the cache widened to the batch."""

    def __init__(self, model, prefix: list[int], pad_id: int):
        self.prefix, self.pad_id = prefix, pad_id
        device = next(model.parameters()).device
        with torch.no_grad():
            self.cache = model(input_ids=torch.tensor([prefix], device=device), use_cache=True).past_key_values

    @classmethod
    def find(cls, model, ids: list[list[int]], pad_id: int) -> SharedPrefix | None:
        n = common_prefix_length(ids) if len(ids) > 1 else 0
        if n < MIN_SHARED_PREFIX:
            return None
        try:
            return cls(model, ids[0][:n], pad_id)
        except (TypeError, ValueError, AttributeError, NotImplementedError) as err:  # exotic cache types
            log.info("prompts share %d tokens, but the model's cache cannot be reused (%s); encoding each", n, err)
            return None

    def batch(self, seqs: list[list[int]], device) -> tuple[torch.Tensor, torch.Tensor, object]:
        p = len(self.prefix)
        own, own_mask = pad([seq[p:] for seq in seqs], self.pad_id, device, left=True)
        head = torch.tensor([self.prefix] * len(seqs), dtype=torch.long, device=device)
        cache = copy.deepcopy(self.cache)
        cache.batch_repeat_interleave(len(seqs))
        return torch.cat([head, own], 1), torch.cat([torch.ones_like(head), own_mask], 1), cache


GQA_SDPA = "unlearn_audit_sdpa_gqa"


def gqa_sdpa_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
    """transformers' SDPA attention, but grouped-query heads stay grouped when a padding mask is given.

    transformers expands the key/value heads to every query head (`repeat_kv`) whenever there is a mask,
    which copies the whole KV cache at every decoding step; torch's SDPA takes the groups directly
    (`enable_gqa`). On SmolLM2-135M (9 query / 3 KV heads), batch 8 of ~950-token prompts, a decoding step
    took 177 ms with the copy and 100 ms without. Every other case goes to transformers' own function."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if attention_mask is None or kwargs.get("position_bias") is not None or getattr(module, "num_key_value_groups", 1) == 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling, enable_gqa=True)
    return out.transpose(1, 2).contiguous(), None


@contextmanager
def grouped_kv_attention(model) -> Iterator[None]:
    """Run `model` with `gqa_sdpa_forward` on CPU while the block runs (its SDPA attention otherwise).

    Only CPU: there torch's SDPA kernels accept grouped heads with a mask; on CUDA a mask sends grouped
    heads to the slow math kernel, so transformers' choice stays. Needs torch >= 2.5 (`enable_gqa`)."""
    on_cpu = next(model.parameters()).device.type == "cpu"
    if not (on_cpu and getattr(model.config, "_attn_implementation", None) == "sdpa"
            and hasattr(model, "set_attn_implementation") and "enable_gqa" in (
                torch.nn.functional.scaled_dot_product_attention.__doc__ or "")):
        yield
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(GQA_SDPA, gqa_sdpa_forward)
    AttentionMaskInterface.register(GQA_SDPA, sdpa_mask)  # the padding masks SDPA gets (none: no masking at all)
    model.set_attn_implementation(GQA_SDPA)
    try:
        yield
    finally:
        model.set_attn_implementation("sdpa")


def decode_cache(rows: int) -> dict:
    """A preallocated (static) KV cache for batches: the default dynamic cache grows by concatenation, copying
    the cache at every decoding step. SmolLM2-135M, batch 8 of ~950-token prompts, median step with grouped
    KV heads: 116 ms dynamic, 100 ms static; single rows: 59 ms dynamic, 63 ms static, so they keep theirs.
    Models without static-cache support are decoded with their default cache (transformers ignores it)."""
    return {"cache_implementation": "static"} if rows > 1 else {}


@torch.inference_mode()
def greedy_generate(
    model,
    tokenizer,
    prompts: Sequence[str],
    max_new_tokens: int,
    stop_strings: Sequence[str] = (),
    batch_size: int | None = None,
    progress: Callable[[int], None] | None = None,
    heal_space: bool = False,
) -> tuple[list[str], int]:
    """Greedy continuations of `prompts` (decoded, special tokens skipped) and how many were truncated.

    `heal_space`: a prompt whose last token is whitespace alone ("Answer: " -> ..., ':', 'Ġ' in byte-level
    BPE tokenizers such as SmolLM2's) loses that token, and the model writes the space itself, joined to
    the next word as in every text it was trained on ('ĠEmberlyn'); the output is returned without it.
    Without this a model fine-tuned on "Answer: Emberlyn" sees a lone 'Ġ' that in training only ever came
    before digits (measured: the SmolLM2 demo target answered 36% of its forget questions with the lone
    token, 87% without)."""
    ctx = max_positions(model)
    limit = None if ctx is None else max(1, ctx - max_new_tokens)
    ids, truncated = encode_prompts(tokenizer, prompts, limit)
    healed = heal_trailing_space(tokenizer, ids) if heal_space else [""] * len(ids)
    if truncated:
        log.warning("%d prompt(s) longer than the context; kept their last %d tokens", truncated, limit)
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    outputs: list[str] = [""] * len(ids)
    with grouped_kv_attention(model):
        generate_batches(model, tokenizer, ids, order, outputs, max_new_tokens, stop_strings, batch_size, progress)
    outputs = [out[len(space):] if space and out.startswith(space) else out for out, space in zip(outputs, healed)]
    return outputs, truncated


def heal_trailing_space(tokenizer, ids: list[list[int]]) -> list[str]:
    """Drop each prompt's last token where it is whitespace alone (in place); returns the dropped text."""
    dropped = []
    for seq in ids:
        text = tokenizer.decode(seq[-1:]) if len(seq) > 1 else ""
        if text and not text.strip():
            seq.pop()
            dropped.append(text)
        else:
            dropped.append("")
    return dropped


def generate_batches(model, tokenizer, ids: list[list[int]], order: list[int], outputs: list[str],
                     max_new_tokens: int, stop_strings: Sequence[str], batch_size: int | None,
                     progress: Callable[[int], None] | None) -> None:
    """Decode the prompts `ids` in batches of similar length (longest first) into `outputs`."""
    from transformers import StoppingCriteriaList

    device = next(model.parameters()).device
    kwargs = generation_kwargs(model, tokenizer, max_new_tokens)
    shared = SharedPrefix.find(model, ids, tokenizer.pad_token_id)
    start = 0
    while start < len(order):
        bs = choose_batch_size(model, len(ids[order[start]]) + max_new_tokens, batch_size)
        rows = order[start : start + bs]
        if shared:
            input_ids, mask, cache = shared.batch([ids[i] for i in rows], device)
            extra = {"past_key_values": cache}
        else:
            input_ids, mask = pad([ids[i] for i in rows], tokenizer.pad_token_id, device, left=True)
            extra = decode_cache(len(rows))
        stopping = None
        if stop_strings:
            stopping = StoppingCriteriaList([StopOnStrings(tokenizer, input_ids.shape[1], stop_strings)])
        out = model.generate(input_ids=input_ids, attention_mask=mask, stopping_criteria=stopping, **kwargs, **extra)
        texts = tokenizer.batch_decode(
            out[:, input_ids.shape[1] :], skip_special_tokens=True, clean_up_tokenization_spaces=True
        )
        for i, text in zip(rows, texts):
            outputs[i] = text
        start += len(rows)
        if progress:
            progress(len(rows))


@torch.inference_mode()
def token_logprobs(
    model,
    tokenizer,
    texts: Sequence[str],
    batch_size: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[list[np.ndarray], int]:
    """log p(token_t | tokens_<t) for t = 1..n-1 of each text (BOS included as MUSE encodes it).

    Returns one float64 array per text and how many texts were cut to the model's context.
    """
    ctx = max_positions(model)
    ids = encode_documents(tokenizer, texts)
    truncated = truncate(ids, ctx, keep_end=False)
    if truncated:
        log.warning("%d text(s) longer than the context (%d tokens) were truncated for scoring", truncated, ctx)
    return score_ids(model, tokenizer, ids, batch_size, progress), truncated


def score_ids(model, tokenizer, ids: list[list[int]], batch_size: int | None = None,
              progress: Callable[[int], None] | None = None, hits: list[np.ndarray] | None = None) -> list[np.ndarray]:
    """Teacher-forced log-probabilities of every token after the first of each sequence, in batches of
    similar length (right-padded; longest first). With a list `hits`, it is filled with, per sequence,
    whether each of those tokens is the model's greedy choice (ties count as a hit)."""
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    result: list[np.ndarray] = [np.zeros(0)] * len(ids)
    if hits is not None:
        hits[:] = [np.zeros(0, dtype=bool)] * len(ids)
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    start = 0
    while start < len(order):
        bs = choose_batch_size(model, len(ids[order[start]]), batch_size, cpu_tokens=CPU_SCORE_TOKENS)
        rows = order[start : start + bs]
        input_ids, mask = right_pad([ids[i] for i in rows], pad_id, device)
        logits = model(input_ids=input_ids, attention_mask=mask).logits[:, :-1]
        lp = gather_logprobs(logits, input_ids[:, 1:])
        top = greedy_hits(logits, input_ids[:, 1:]) if hits is not None else None
        for r, i in enumerate(rows):
            result[i] = lp[r, : len(ids[i]) - 1].double().cpu().numpy()
            if top is not None:
                hits[i] = top[r, : len(ids[i]) - 1].cpu().numpy()
        start += len(rows)
        if progress:
            progress(len(rows))
    return result


def split_continuation(tokenizer, prompt: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of `prompt` and of `continuation` after it, both cut from the encoding of the whole text
    (with the document prefix), so the continuation is tokenized as the model reads the text.

    The cut falls before the first token that ends past the prompt; a token that straddles the boundary
    (a BPE merge of the prompt's last characters with the continuation's first: "Answer:" + " A" read as
    'Answer:Ġ', 'A') belongs to the continuation, whose probability then includes it. Tokenizers without
    character offsets (slow ones) split by encoding the prompt alone, as lm-evaluation-harness does."""
    prefix = document_prefix(tokenizer)
    try:
        enc = tokenizer(prompt + continuation, add_special_tokens=True, return_offsets_mapping=True)
    except (NotImplementedError, TypeError, ValueError):
        enc = None
    if enc is None or "offset_mapping" not in enc:
        ctx, full = encode_documents(tokenizer, [prompt, prompt + continuation])
        n = len(ctx) if len(full) > len(ctx) and full[: len(ctx)] == ctx else len(full) - len(
            tokenizer(continuation, add_special_tokens=False).input_ids)
        return full[:n], full[n:]
    ids, spans = prefix + list(enc["input_ids"]), [(0, 0)] * len(prefix) + [tuple(o) for o in enc["offset_mapping"]]
    cut = next((i for i, (start, end) in enumerate(spans) if end > len(prompt) and end > start), len(ids))
    return ids[:cut], ids[cut:]


@torch.inference_mode()
def continuation_logprobs(
    model,
    tokenizer,
    pairs: Sequence[tuple[str, str]],
    batch_size: int | None = None,
    progress: Callable[[int], None] | None = None,
    hits: list[np.ndarray] | None = None,
) -> tuple[list[np.ndarray], int]:
    """log p(continuation token | prompt, earlier continuation tokens) for each (prompt, continuation)
    pair: the quantity behind TOFU's answer probability and truth ratio and multiple-choice accuracy
    (`hits`: see `score_ids`, cut to the continuation the same way).

    Prompts longer than the context lose their start. Returns one float64 array per pair (one entry per
    continuation token) and how many prompts were cut."""
    ctx = max_positions(model)
    split = [split_continuation(tokenizer, p, c) for p, c in pairs]
    ids, truncated = [], 0
    for prompt_ids, cont_ids in split:
        seq = prompt_ids + cont_ids
        if ctx is not None and len(seq) > ctx:
            seq, truncated = seq[len(seq) - ctx:], truncated + 1
        ids.append(seq)
    if truncated:
        log.warning("%d prompt(s) longer than the context (%d tokens) lost their start", truncated, ctx)
    scores = score_ids(model, tokenizer, ids, batch_size, progress, hits)

    def tail(arrays: list[np.ndarray]) -> list[np.ndarray]:
        return [a[max(0, len(a) - len(cont)):] if cont else a[:0] for a, (_, cont) in zip(arrays, split)]

    if hits is not None:
        hits[:] = tail(hits)
    return tail(scores), truncated


def greedy_hits(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Whether each target token is the greedy choice of its logits (ties count as a hit)."""
    logits = logits.float()
    return logits.amax(-1) <= logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def gather_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log_softmax(logits)[target] in float32 without materialising the whole log-softmax twice."""
    logits = logits.float()
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


# Architectures whose forward pass honours a custom 4D attention mask with explicit position ids
# (transformers' masking_utils returns a 4D mask as given, to sliding-window layers too; rotary positions
# come from position_ids), checked against separate rows in tests/evaluate/test_batching.py; others score
# each pair on its own row.
SHARED_PROMPT_TYPES = ("llama", "gemma3_text")


def shares_prompts(model) -> bool:
    """Whether `shared_prompt_logprobs` may pack one prompt's continuations into one row for this model."""
    cfg = model.config
    return cfg.model_type in SHARED_PROMPT_TYPES and getattr(cfg, "_attn_implementation", "sdpa") in ("sdpa", "eager")


def packed_width_limit(model) -> int | None:
    """The longest packed row: the context, and a sliding window's width where there is one (a 4D mask
    given to the model replaces the window, so every row must fit inside it)."""
    limits = [n for n in (max_positions(model), getattr(model.config, "sliding_window", None)) if n]
    return min(limits) if limits else None


def tree_mask(segments: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive (rows, 1, L, L) mask of packed rows: segment 0 (the prompt) is causal; each continuation
    (segments 1, 2, ...) sees the prompt and its own earlier tokens, never another continuation; padding
    (-1) sees only itself, so no row of the softmax is empty."""
    q = torch.arange(segments.shape[1])
    keys, queries = segments[:, None, :], segments[:, :, None]
    allowed = (q[:, None] >= q[None, :])[None] & (keys >= 0) & (queries >= 0) & ((keys == 0) | (keys == queries))
    allowed |= torch.eye(len(q), dtype=torch.bool)[None]
    return torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)[:, None]


@torch.inference_mode()
def shared_prompt_logprobs(model, tokenizer, pairs: Sequence[tuple[str, str]], batch_size: int | None = None,
                           progress: Callable[[int], None] | None = None,
                           hits: list[np.ndarray] | None = None) -> tuple[list[np.ndarray], int]:
    """`continuation_logprobs` with each distinct prompt encoded once: a prompt and all its continuations
    form one row (prompt, continuation 1, continuation 2, ...) whose tree mask and position ids make each
    continuation read exactly what it reads on a row of its own (TOFU scores 6-7 answers per question: on
    the built-in world's ~11-token prompts and ~7-token answers a row holds 55% of the tokens). Equal to
    separate rows up to float rounding (the sums of attention run over other lengths). Pairs whose row
    would pass the context or a sliding window, and models outside SHARED_PROMPT_TYPES, take the
    separate-row path."""
    if not shares_prompts(model):
        return continuation_logprobs(model, tokenizer, pairs, batch_size, progress, hits)
    split = [split_continuation(tokenizer, p, c) for p, c in pairs]
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, (prompt_ids, cont_ids) in enumerate(split):
        if cont_ids and prompt_ids:
            groups.setdefault(tuple(prompt_ids), []).append(i)
    ctx = packed_width_limit(model)
    width = {k: len(k) + sum(len(split[i][1]) for i in members) for k, members in groups.items()}
    rows = sorted((k for k in groups if ctx is None or width[k] <= ctx), key=lambda k: -width[k])
    scores: list[np.ndarray] = [np.zeros(0)] * len(pairs)
    found: list[np.ndarray] = [np.zeros(0, dtype=bool)] * len(pairs)
    start = 0
    while start < len(rows):
        batch = rows[start : start + choose_batch_size(model, width[rows[start]], batch_size, cpu_tokens=CPU_SCORE_TOKENS)]
        score_packed(model, tokenizer, [(k, groups[k]) for k in batch], split, scores, found)
        start += len(batch)
        if progress:
            progress(sum(len(groups[k]) for k in batch))
    packed = {i for k in rows for i in groups[k]}
    rest = [i for i in range(len(pairs)) if i not in packed]
    truncated = 0
    if rest:
        rest_hits: list[np.ndarray] = []
        lps, truncated = continuation_logprobs(model, tokenizer, [pairs[i] for i in rest], batch_size, progress, rest_hits)
        for i, lp, hit in zip(rest, lps, rest_hits):
            scores[i], found[i] = lp, hit
    if hits is not None:
        hits[:] = found
    return scores, truncated


def score_packed(model, tokenizer, rows: list[tuple[tuple[int, ...], list[int]]], split, scores: list, found: list) -> None:
    """One forward pass over packed rows; fills the log-probabilities and greedy hits of each member pair
    (its first token is read from the prompt's last position, as on a row of its own)."""
    ids, positions, segments = [], [], []
    for prompt, members in rows:
        row, pos, seg = list(prompt), list(range(len(prompt))), [0] * len(prompt)
        for j, i in enumerate(members, 1):
            cont = split[i][1]
            row += cont
            pos += range(len(prompt), len(prompt) + len(cont))
            seg += [j] * len(cont)
        ids.append(row), positions.append(pos), segments.append(seg)
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids, _ = right_pad(ids, pad_id, device)
    position_ids, _ = right_pad(positions, 0, device)
    segs, _ = right_pad(segments, -1, "cpu")
    mask = tree_mask(segs, model.get_input_embeddings().weight.dtype).to(device)
    logits = model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids).logits
    for r, (prompt, members) in enumerate(rows):
        at = len(prompt)
        for i in members:
            cont = split[i][1]
            reads = torch.tensor([len(prompt) - 1, *range(at, at + len(cont) - 1)], device=device)
            targets = torch.tensor(cont, device=device)
            picked = logits[r, reads].float()  # once for both readers
            scores[i] = gather_logprobs(picked, targets).double().cpu().numpy()
            found[i] = greedy_hits(picked, targets).cpu().numpy()
            at += len(cont)
