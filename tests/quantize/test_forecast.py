"""The first-order (gradient-weighted) forecast and the torch twin it quantizes with."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from unlearn_audit.data.corpus import Corpus
from unlearn_audit.quantize.bins import BinsOptions, quantized_by
from unlearn_audit.quantize.forecast import first_order_forecast
from unlearn_audit.quantize.rtn import RTNScheme
from unlearn_audit.quantize.rtn import fake_quantize as rtn_fake_quantize
from unlearn_audit.quantize.schemes import fake_quantize, group_views, parse_scheme, quantize_groups


@pytest.mark.parametrize("shape", [(8, 256), (8, 320), (3, 96)])
def test_twin_equals_rtn_groups_with_a_partial_last_group(shape):
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    expected = torch.cat([rtn_fake_quantize(w[:, i:i + 128], RTNScheme(4, "channel", None))
                          for i in range(0, shape[1], 128)], dim=1)
    assert torch.equal(fake_quantize(w, parse_scheme("rtn-int4-g128")), expected)


@pytest.mark.parametrize("kind", ["fp4", "nf4"])
def test_twin_equals_the_blocks_bins_analyses(kind):
    """Q is what `bins` tallies: its group views, quantized block by block (a padded last block here)."""
    s = parse_scheme(f"bnb-{kind}")
    w = torch.randn(5, 100, generator=torch.Generator().manual_seed(1))
    blocks = torch.cat([quantize_groups(v, s)[1].reshape(-1) for v in group_views(w, s)]).reshape(w.shape)
    assert torch.equal(fake_quantize(w, s), blocks)


def test_a_cast_rounds_tensors_of_any_shape():
    norm = torch.randn(7, generator=torch.Generator().manual_seed(3))
    assert torch.equal(fake_quantize(norm, parse_scheme("cast-bf16")), norm.to(torch.bfloat16).float())


def test_quantized_tensors_are_the_2d_weights_but_embeddings_and_head():
    plain = BinsOptions()
    assert quantized_by("model.layers.0.mlp.up_proj.weight", (4, 4), plain)
    assert not quantized_by("model.embed_tokens.weight", (4, 4), plain)
    assert quantized_by("model.embed_tokens.weight", (4, 4), BinsOptions(include_embeddings=True))
    assert not quantized_by("lm_head.weight", (4, 4), plain) and not quantized_by("model.norm.weight", (4,), plain)


def edited(target, out, edit):
    """A copy of the model folder `target` whose weights `edit` changes (name, tensor) -> tensor."""
    shutil.copytree(target, out)
    weights = load_file(str(out / "model.safetensors"))
    save_file({n: edit(n, w).contiguous() for n, w in weights.items()}, str(out / "model.safetensors"))
    return out


def embedding_only(name, w):
    """Move only the token embedding (0.01 of random noise)."""
    return w + 0.01 * torch.randn(w.shape, generator=torch.Generator().manual_seed(2)) if "embed" in name else w


def recomputed(target, unlearned, texts, scheme="rtn-int4-g128"):
    """The forecast's sums recomputed from the gradients: per gradient (at t, at u, their mean)
    [<g, Q(u) - Q(t)>, <g, u - t>], and <g_mid, u - t> over the tensors Q keeps."""
    from unlearn_audit.models.loading import load_model, load_tokenizer
    from unlearn_audit.quantize.forecast import forget_gradient

    tok = load_tokenizer(target)
    t, u = load_model(target, "fp32"), load_model(unlearned, "fp32")
    gt, gu = forget_gradient(t, tok, texts), forget_gradient(u, tok, texts)
    s = parse_scheme(scheme)
    sums = {"t": [0.0, 0.0], "u": [0.0, 0.0], "mid": [0.0, 0.0], "kept": 0.0}
    for (n, pt), (_, pu) in zip(t.named_parameters(), u.named_parameters()):
        d = pu.detach() - pt.detach()
        quantized = quantized_by(n, tuple(d.shape), BinsOptions())
        q = fake_quantize(pu.detach(), s) - fake_quantize(pt.detach(), s) if quantized else d
        for key, g in (("t", gt[n]), ("u", gu[n]), ("mid", (gt[n] + gu[n]) / 2)):
            sums[key][0] += float((g * q).sum())
            sums[key][1] += float((g * d).sum())
        sums["kept"] += 0.0 if quantized else float(((gt[n] + gu[n]) / 2 * d).sum())
    return sums


def inside_zero_bins(name, w):
    """Halve every weight of a quantized tensor that int4 RTN g128 rounds to zero: int4 erases the change."""
    if not quantized_by(name, tuple(w.shape), BinsOptions()):
        return w
    q = fake_quantize(w.float(), parse_scheme("rtn-int4-g128"))
    return torch.where(q == 0, w * 0.5, w)


def test_an_update_inside_the_bins_is_forecast_to_come_back_whole(micro_target, micro_world, tmp_path):
    unlearned = edited(micro_target, tmp_path / "u", inside_zero_bins)
    texts = Corpus(micro_world).raw("forget")
    r = first_order_forecast(micro_target, unlearned, "rtn-int4-g128", texts)
    assert r["first_order_survival"] == 0.0 and r["kept_tensors_share"] == 0.0
    assert r["forget_loss_change_first_order"] != 0.0 and r["texts"] == len(texts)


def test_an_update_int4_leaves_alone_survives_whole(micro_target, micro_world, tmp_path):
    """Only the embedding moves: RTN keeps it, so all of the first-order loss change survives."""
    unlearned = edited(micro_target, tmp_path / "u", embedding_only)
    r = first_order_forecast(micro_target, unlearned, "rtn-int4-g128", Corpus(micro_world).raw("forget"))
    assert r["first_order_survival"] == pytest.approx(1.0) and r["kept_tensors_share"] == pytest.approx(1.0)
    assert r["survival_gradient_at_target"] == pytest.approx(1.0)


def test_the_survival_is_the_gradient_weighted_ratio(micro_target, micro_world, tmp_path):
    """Recomputed here from the gradients directly: the trapezoid-rule ratio of the module's docstring."""
    def crossing(name, w):  # a large update that crosses bin edges in the quantized tensors
        return w * 1.3 if quantized_by(name, tuple(w.shape), BinsOptions()) else w

    unlearned = edited(micro_target, tmp_path / "u", crossing)
    texts = Corpus(micro_world).raw("forget")
    r = first_order_forecast(micro_target, unlearned, "rtn-int4-g128", texts)
    assert r["scheme"] == "rtn-int4-g128" and r["texts"] == len(texts)
    num, den = recomputed(micro_target, unlearned, texts)["mid"]
    assert r["first_order_survival"] == pytest.approx(num / den, rel=1e-4)
    assert 0.0 < r["first_order_survival"]


def test_calibrated_schemes_are_refused(micro_target, micro_world):
    from unlearn_audit.errors import UserError

    with pytest.raises(UserError, match="calibration"):
        first_order_forecast(micro_target, micro_target, "gptq-int4-g128", ["text"])


def test_the_forget_gradient_is_that_of_the_mean_per_text_loss(micro_target, micro_world):
    """Chunks of unequal size (5 texts in batches of 3) weigh each text once: the gradient of the mean of the
    per-text NLLs, each text scored alone."""
    from unlearn_audit.models.loading import load_model, load_tokenizer
    from unlearn_audit.quantize.forecast import forget_gradient

    texts = Corpus(micro_world).raw("forget")[:5]
    tok, model = load_tokenizer(micro_target), load_model(micro_target, "fp32")
    tok.padding_side = "right"
    got = forget_gradient(model, tok, texts, batch_size=3)
    assert all(p.grad is None for p in model.parameters())  # the model is left without gradients
    for text in texts:
        ids = tok(text, return_tensors="pt").input_ids
        (model(input_ids=ids, labels=ids).loss / len(texts)).backward()
    want = {n: p.grad for n, p in model.named_parameters()}
    assert got.keys() == want.keys()
    for n in want:
        assert torch.allclose(got[n], want[n], atol=1e-6, rtol=1e-4), n


def test_a_tokenizer_without_pad_or_eos_is_refused():
    from unlearn_audit.errors import UserError
    from unlearn_audit.quantize.forecast import forget_gradient

    class NoPad:
        pad_token_id = None

    with pytest.raises(UserError) as err:
        forget_gradient(None, NoPad(), ["text"])
    assert str(err.value) == "the tokenizer has neither a pad nor an EOS token to pad the forget texts with"


def test_a_corpus_without_forget_texts_is_refused_in_its_own_words(micro_target):
    from unlearn_audit.errors import UserError

    with pytest.raises(UserError) as err:
        first_order_forecast(micro_target, micro_target, "rtn-int4-g128", [])
    assert str(err.value) == "the first-order forecast needs forget texts; the corpus has none"


def test_no_update_has_no_first_order_survival(micro_target, micro_world):
    texts = Corpus(micro_world).raw("forget")
    r = first_order_forecast(micro_target, micro_target, "rtn-int4-g128", texts)
    assert r == {"scheme": "rtn-int4-g128", "first_order_survival": None, "texts": len(texts),
                 "note": "the update does not change the forget loss to first order"}


def test_storage_rounding_is_read_only_where_both_models_store_the_tensor():
    from unlearn_audit.quantize.forecast import rounding_of

    class Stored:
        def __init__(self, dtypes):
            self.where, self.dtypes = dict.fromkeys(dtypes), dtypes

        def dtype(self, name):
            return self.dtypes[name]

    t32, u16 = Stored({"a": "F32", "b": "F32"}), Stored({"a": "BF16", "c": "BF16"})  # safetensors dtype names
    assert rounding_of(t32, u16, "a") == torch.bfloat16  # the fp32 target compared in the unlearned model's bf16
    assert rounding_of(t32, u16, "b") is None and rounding_of(t32, u16, "c") is None and rounding_of(t32, u16, "d") is None


def test_a_bf16_copy_of_an_fp32_target_made_no_update(micro_target, micro_world, tmp_path):
    """Storage rounding is not the update: the target is rounded to the unlearned model's bf16 first."""
    target32 = edited(micro_target, tmp_path / "t32", lambda n, w: w.float())
    r = first_order_forecast(target32, micro_target, "rtn-int4-g128", Corpus(micro_world).raw("forget"))
    assert r["first_order_survival"] is None


def test_each_gradient_gives_its_own_survival(micro_target, micro_world, tmp_path):
    """The survival with the gradient at the target, at the unlearned model and their mean, and the share
    of the tensors RTN keeps, all recomputed from the gradients; the embedding (kept) moves too."""
    def mixed(name, w):
        if "embed" in name:
            return w + 0.01 * torch.randn(w.shape, generator=torch.Generator().manual_seed(4))
        return w * 1.3 if quantized_by(name, tuple(w.shape), BinsOptions()) else w

    unlearned = edited(micro_target, tmp_path / "u", mixed)
    texts = Corpus(micro_world).raw("forget")
    r = first_order_forecast(micro_target, unlearned, "rtn-int4-g128", texts)
    sums = recomputed(micro_target, unlearned, texts)
    assert r["survival_gradient_at_target"] == pytest.approx(sums["t"][0] / sums["t"][1], rel=1e-4)
    assert r["survival_gradient_at_unlearned"] == pytest.approx(sums["u"][0] / sums["u"][1], rel=1e-4)
    assert r["first_order_survival"] == pytest.approx(sums["mid"][0] / sums["mid"][1], rel=1e-4)
    assert r["kept_tensors_share"] == pytest.approx(sums["kept"] / sums["mid"][1], rel=1e-4)
    assert r["kept_tensors_share"] != 0.0
    assert r["forget_loss_change_first_order"] == pytest.approx(sums["mid"][1], rel=1e-4)


def test_gguf_rounds_the_embedding_and_keeps_the_norms(micro_target, micro_world, tmp_path):
    """llama-quantize quantizes the token embedding (RTN does not) and leaves 1-D tensors in F32."""
    texts = Corpus(micro_world).raw("forget")
    moved = edited(micro_target, tmp_path / "embed", embedding_only)
    assert first_order_forecast(micro_target, moved, "gguf-q8_0", texts)["kept_tensors_share"] == 0.0
    assert first_order_forecast(micro_target, moved, "rtn-int4-g128", texts)["kept_tensors_share"] == pytest.approx(1.0)
    norms = edited(micro_target, tmp_path / "norms", lambda n, w: w * 1.5 if w.dim() == 1 else w)
    r = first_order_forecast(micro_target, norms, "gguf-q8_0", texts)
    assert r["kept_tensors_share"] == pytest.approx(1.0) and r["first_order_survival"] == pytest.approx(1.0)


def test_a_cast_rounds_every_tensor(micro_target, micro_world, tmp_path):
    """A norm update far below bf16's spacing: RTN keeps it whole (norms are not quantized), a bf16 cast
    rounds it away."""
    texts = Corpus(micro_world).raw("forget")
    target32 = edited(micro_target, tmp_path / "t32", lambda n, w: w.float())
    tiny = edited(target32, tmp_path / "u32", lambda n, w: w * (1 + 1e-5) if w.dim() == 1 else w)
    rtn = first_order_forecast(target32, tiny, "rtn-int4-g128", texts)
    assert rtn["first_order_survival"] == pytest.approx(1.0) and rtn["kept_tensors_share"] == pytest.approx(1.0)
    cast = first_order_forecast(target32, tiny, "cast-bf16", texts)
    assert cast["first_order_survival"] == pytest.approx(0.0, abs=1e-6) and cast["kept_tensors_share"] == 0.0
