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
    def embedding_only(name, w):
        return w + 0.01 * torch.randn(w.shape, generator=torch.Generator().manual_seed(2)) if "embed" in name else w

    unlearned = edited(micro_target, tmp_path / "u", embedding_only)
    r = first_order_forecast(micro_target, unlearned, "rtn-int4-g128", Corpus(micro_world).raw("forget"))
    assert r["first_order_survival"] == pytest.approx(1.0) and r["kept_tensors_share"] == pytest.approx(1.0)
    assert r["survival_gradient_at_target"] == pytest.approx(1.0)


def test_the_survival_is_the_gradient_weighted_ratio(micro_target, micro_world, tmp_path):
    """Recomputed here from the gradients directly: the trapezoid-rule ratio of the module's docstring."""
    from unlearn_audit.models.loading import load_model, load_tokenizer
    from unlearn_audit.quantize.forecast import forget_gradient

    def crossing(name, w):  # a large update that crosses bin edges in the quantized tensors
        return w * 1.3 if quantized_by(name, tuple(w.shape), BinsOptions()) else w

    unlearned = edited(micro_target, tmp_path / "u", crossing)
    texts = Corpus(micro_world).raw("forget")
    r = first_order_forecast(micro_target, unlearned, "rtn-int4-g128", texts)
    tok = load_tokenizer(micro_target)
    t, u = load_model(micro_target), load_model(unlearned)
    gt, gu = forget_gradient(t, tok, texts), forget_gradient(u, tok, texts)
    s = parse_scheme("rtn-int4-g128")
    num = den = 0.0
    for (n, pt), (_, pu) in zip(t.named_parameters(), u.named_parameters()):
        g = (gt[n] + gu[n]) / 2
        d = pu.detach() - pt.detach()
        q = fake_quantize(pu.detach(), s) - fake_quantize(pt.detach(), s) if quantized_by(n, tuple(d.shape), BinsOptions()) else d
        num, den = num + float((g * q).sum()), den + float((g * d).sum())
    assert r["first_order_survival"] == pytest.approx(num / den, rel=1e-4)
    assert 0.0 < r["first_order_survival"]


def test_calibrated_schemes_are_refused(micro_target, micro_world):
    from unlearn_audit.errors import UserError

    with pytest.raises(UserError, match="calibration"):
        first_order_forecast(micro_target, micro_target, "gptq-int4-g128", ["text"])
