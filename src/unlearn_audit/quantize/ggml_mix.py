"""Which ggml type `llama-quantize` gives each tensor of a model for a file type (the "mix" of Q4_K_M etc.),
ported from llama.cpp's src/llama-quant.cpp (commit 0c1e570, vendored by llama-cpp-python 0.3.36):
`llama_ftype_get_default_type`, `tensor_allows_quantization`, `tensor_get_category`,
`llama_tensor_get_type_impl` (for the file types below), `tensor_type_fallback`, and the order in which
`llama_model_quantize_impl` visits tensors (the loader's `weight_name_comparer`), which the layer counters
of attn_v / ffn_down depend on. Defaults of `llama-quantize` are assumed: no --imatrix (unless has_imatrix),
no --pure, no --tensor-type / --output-tensor-type / --token-embedding-type overrides.

Shapes are given in numpy / PyTorch order (rows, cols): the row width ggml calls ne[0] is shape[-1]
(gguf-py's `ReaderTensor.shape` is ne order, i.e. reversed).

Also the Hugging Face -> GGUF tensor names convert_hf_to_gguf.py uses for LlamaForCausalLM.
"""

from __future__ import annotations

import re

FTYPES = ("q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q4_k_m", "q4_k_s", "q5_k_m", "q5_k_s", "q6_k")

#: llama_ftype_get_default_type
DEFAULT_TYPE = {"q4_0": "q4_0", "q4_1": "q4_1", "q5_0": "q5_0", "q5_1": "q5_1", "q8_0": "q8_0",
                "q4_k_m": "q4_k", "q4_k_s": "q4_k", "q5_k_m": "q5_k", "q5_k_s": "q5_k", "q6_k": "q6_k"}

#: ggml_blck_size of the types involved
BLOCK_SIZE = {"f32": 1, "f16": 1, "bf16": 1, "q4_0": 32, "q4_1": 32, "q5_0": 32, "q5_1": 32, "q8_0": 32,
              "q4_k": 256, "q5_k": 256, "q6_k": 256}

#: tensor_type_fallback: a 256-block type on a row width not divisible by 256
FALLBACK = {"q4_k": "q5_0", "q5_k": "q5_1", "q6_k": "q8_0"}

# name fragments tensor_allows_quantization refuses (the arch-independent ones)
_NOT_QUANTIZED = ("_norm.weight", "ffn_gate_inp.weight", "ffn_gate_tid2eid.weight", "altup", "laurel",
                  "per_layer_model_proj", "ssm_conv1d", "shortconv.conv.weight", "indexer.k_proj.weight",
                  "indexer.q_proj.weight", "time_mix_first.weight", "time_mix_w0.weight",
                  "time_mix_w1.weight", "time_mix_w2.weight", "time_mix_v0.weight", "time_mix_v1.weight",
                  "time_mix_v2.weight", "time_mix_a0.weight", "time_mix_a1.weight", "time_mix_a2.weight",
                  "time_mix_g1.weight", "time_mix_g2.weight", "time_mix_decay_w1.weight",
                  "time_mix_decay_w2.weight", "time_mix_lerp_fused.weight", "attn_rel_b.weight",
                  ".position_embd", "sam.pos_embd", "sam.neck.", "sam.net_", ".rel_pos", ".patch_embd",
                  ".patch_merger", "a.rvq.codebook", "mm.a.code_embd")
_NOT_QUANTIZED_EXACT = ("position_embd.weight", "token_types.weight")


def _layer(name: str) -> int:
    """sscanf(name, "blk.%d.", &layer), -1 when it does not match (the loader's weight_name_comparer)."""
    m = re.match(r"blk\.([+-]?\d+)\.", name)
    return int(m.group(1)) if m else -1


def quantize_order(names) -> list[str]:
    """The order llama_model_quantize_impl visits tensors: by layer (non-layer tensors first), then name."""
    return sorted(names, key=lambda n: (_layer(n), n.encode()))


def tensor_category(name: str) -> str:
    """C `tensor_get_category`."""
    if name == "output.weight":
        return "output"
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return "token_embd"
    for frag, cat in (("attn_qkv.weight", "attn_qkv"), ("attn_kv_b.weight", "attn_kv_b"),
                      ("attn_v.weight", "attn_v"), ("attn_k.weight", "attn_k"), ("attn_q.weight", "attn_q"),
                      ("attn_output.weight", "attn_output"), ("ffn_up", "ffn_up"), ("ffn_gate", "ffn_gate"),
                      ("ffn_down", "ffn_down")):
        if frag in name:
            return cat
    return "other"


def allows_quantization(name: str, shape: tuple[int, ...]) -> bool:
    """C `tensor_allows_quantization` with default params (quantize_output_tensor on, not only_copy)."""
    if _n_dims(shape) < 2:
        return False
    if not name.endswith("weight"):
        return False
    if any(frag in name for frag in _NOT_QUANTIZED) or name in _NOT_QUANTIZED_EXACT:
        return False
    return True


def _n_dims(shape: tuple[int, ...]) -> int:
    """C `ggml_n_dims` of a numpy-order shape: 1 + the last ne index (ne = reversed shape) above 1."""
    ne = tuple(reversed(shape))
    for i in range(len(ne) - 1, 0, -1):
        if ne[i] != 1:
            return i + 1
    return 1


def _c_mod(a: int, b: int) -> int:
    return a - b * int(a / b)  # C's %, truncating toward zero


def use_more_bits(i_layer: int, n_layers: int) -> bool:
    """The `use_more_bits` lambda of llama_tensor_get_type_impl (C integer division and %)."""
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or _c_mod(i_layer - n_layers // 8, 3) == 2


def tensor_types(names_shapes: dict[str, tuple[int, ...]], ftype: str, n_layers: int,
                 n_head: int | None = None, n_head_kv: int | None = None, *, n_expert: int = 0,
                 arch: str = "llama", model_70b: bool = False, has_imatrix: bool = False,
                 source_type: str = "f16") -> dict[str, str]:
    """The ggml type (lower-case gguf-py name: "q4_k", "q6_k", "q8_0", "f32", ...) `llama-quantize` writes
    for each tensor (GGUF names, numpy-order shapes) of a model with n_layers blocks, for `ftype`.

    1-D tensors stay f32 (convert_hf_to_gguf writes them so); 2-D tensors llama.cpp will not quantize
    (e.g. ffn_gate_inp) keep `source_type`. n_head / n_head_kv (GQA) only matter for ftypes outside
    FTYPES (Q2_K, IQ*), so they change nothing here; n_expert, arch ("falcon"), model_70b (llama.cpp's
    LLM_TYPE_70B) and has_imatrix switch the corresponding rules of llama_tensor_get_type_impl."""
    ft = str(ftype).lower()
    if ft not in DEFAULT_TYPE:
        raise ValueError(f"unsupported ftype {ftype!r}; choose from {', '.join(FTYPES)}")
    del n_head, n_head_kv  # n_gqa() enters only Q2_K / IQ* branches
    default = DEFAULT_TYPE[ft]
    falcon = arch.lower() == "falcon"
    order = quantize_order(names_shapes)
    cats = {n: tensor_category(n) for n in order}
    n_attention_wv = sum(c in ("attn_v", "attn_qkv", "attn_kv_b") for c in cats.values())
    tied = "output.weight" not in names_shapes  # has_tied_embeddings: no output.weight tensor
    n_ffn_down = n_layers
    i_attention_wv = 0
    i_ffn_down = 0
    out: dict[str, str] = {}
    for name in order:
        shape = tuple(int(d) for d in names_shapes[name])
        if not allows_quantization(name, shape):
            out[name] = "f32" if _n_dims(shape) < 2 else source_type
            continue
        cat = cats[name]
        new = default
        nx = shape[-1]
        if cat == "output" or (tied and cat == "token_embd"):
            if falcon or nx % BLOCK_SIZE[new] != 0:
                new = "q8_0"
            elif new != "q8_0":
                new = "q6_k"
        elif cat == "token_embd":
            pass  # only IQ*/TQ*/Q2_0 file types change the token embeddings
        elif cat in ("attn_v", "attn_qkv", "attn_kv_b"):  # category_is_attn_v (C's later qkv branch is dead)
            if ft in ("q4_k_m", "q5_k_m") and use_more_bits(i_attention_wv, n_attention_wv):
                new = "q6_k"
            elif ft == "q4_k_s" and i_attention_wv < 4:
                new = "q5_k"
            if model_70b and new in ("q3_k", "q4_k"):
                new = "q5_k"
            if n_expert == 8:
                new = "q8_0"
            i_attention_wv += 1
        elif cat == "attn_k":
            if n_expert == 8:
                new = "q8_0"
        elif cat == "ffn_down":
            i_layer, n_layer = i_ffn_down, n_ffn_down
            if n_expert > 1:
                i_layer = _layer(name)
                if not 0 <= i_layer < n_layer:
                    raise ValueError(f"bad layer {i_layer} for tensor {name}; must be in [0, {n_layer})")
            if ft == "q4_k_m":
                if falcon:
                    new = ("q6_k" if i_layer < n_layer // 16 else
                           "q5_k" if use_more_bits(i_layer, n_layer) else "q4_k")
                elif use_more_bits(i_layer, n_layer):
                    new = "q6_k"
            elif ft == "q5_k_m" and use_more_bits(i_layer, n_layer):
                new = "q6_k"
            elif ft == "q4_k_s" and not falcon and i_layer < n_layer // 8:
                new = "q5_k"
            elif ft in ("q4_0", "q5_0") and has_imatrix and i_layer < n_layer // 8:
                new = "q4_1" if ft == "q4_0" else "q5_1"
            i_ffn_down += 1
        elif cat == "attn_output":
            if not falcon and n_expert == 8 and ft in ("q4_k_s", "q4_k_m"):
                new = "q5_k"
        # tensor_type_fallback
        if nx % BLOCK_SIZE[new] != 0:
            fb = FALLBACK.get(new, new)
            new = fb if nx % BLOCK_SIZE[fb] == 0 else "f16"
        out[name] = new
    return {n: out[n] for n in names_shapes}


# ----------------------------------------------------------------------------- Hugging Face names

_HF_LLAMA = [
    (r"model\.embed_tokens\.weight", "token_embd.weight"),
    (r"model\.norm\.weight", "output_norm.weight"),
    (r"lm_head\.weight", "output.weight"),
    (r"model\.layers\.(\d+)\.input_layernorm\.weight", "blk.{}.attn_norm.weight"),
    (r"model\.layers\.(\d+)\.post_attention_layernorm\.weight", "blk.{}.ffn_norm.weight"),
    (r"model\.layers\.(\d+)\.self_attn\.q_proj\.weight", "blk.{}.attn_q.weight"),
    (r"model\.layers\.(\d+)\.self_attn\.k_proj\.weight", "blk.{}.attn_k.weight"),
    (r"model\.layers\.(\d+)\.self_attn\.v_proj\.weight", "blk.{}.attn_v.weight"),
    (r"model\.layers\.(\d+)\.self_attn\.o_proj\.weight", "blk.{}.attn_output.weight"),
    (r"model\.layers\.(\d+)\.mlp\.gate_proj\.weight", "blk.{}.ffn_gate.weight"),
    (r"model\.layers\.(\d+)\.mlp\.up_proj\.weight", "blk.{}.ffn_up.weight"),
    (r"model\.layers\.(\d+)\.mlp\.down_proj\.weight", "blk.{}.ffn_down.weight"),
]


def hf_to_gguf_name(name: str) -> str | None:
    """The GGUF name convert_hf_to_gguf.py gives a LlamaForCausalLM tensor; None for one it drops
    (rotary_emb.inv_freq) or does not know."""
    for pattern, target in _HF_LLAMA:
        m = re.fullmatch(pattern, name)
        if m:
            return target.format(*m.groups())
    return None


def hf_to_gguf(names_shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """{HF name: shape} -> {GGUF name: shape} (shapes unchanged: the q/k rope permutation keeps them)."""
    out = {}
    for name, shape in names_shapes.items():
        g = hf_to_gguf_name(name)
        if g is not None:
            out[g] = tuple(shape)
    return out


def hf_tensor_types(names_shapes: dict[str, tuple[int, ...]], ftype: str, n_layers: int,
                    **kwargs) -> dict[str, str]:
    """tensor_types for a Hugging Face Llama-style state dict, keyed by the HF names."""
    gguf_shapes = hf_to_gguf(names_shapes)
    types = tensor_types(gguf_shapes, ftype, n_layers, **kwargs)
    return {n: types[g] for n in names_shapes if (g := hf_to_gguf_name(n)) is not None}
