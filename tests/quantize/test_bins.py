"""The bin analysis on synthetic model pairs with known answers, and proof that it streams."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from unlearn_audit.errors import UserError
from unlearn_audit.quantize import bins
from unlearn_audit.quantize.rtn import RTNScheme, quantize

NAMES = [f"model.layers.{i}.mlp.up_proj.weight" for i in range(3)]


def make_target(seed=0, rows=64, cols=256):
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(rows, cols, generator=g) * 0.05 for n in NAMES}


def save(folder, tensors, shards=1, dtype=torch.float32):
    folder.mkdir(parents=True, exist_ok=True)
    names = list(tensors)
    for i in range(shards):
        part = {n: tensors[n].to(dtype).contiguous() for n in names[i::shards]}
        save_file(part, str(folder / f"model-{i + 1:05d}-of-{shards:05d}.safetensors"))
    return folder


def nudge(target, inside: bool):
    """Move every zero-bin weight (|w| < Delta/2) by +-0.4 Delta toward 0 or away (crossing the bin edge)."""
    out = {}
    for n, w in target.items():
        _, _, delta = quantize(w, RTNScheme(4, "group", 128))
        zero = w.abs() < delta / 2
        if inside:  # stays inside the zero bin: halve the magnitude
            new = torch.where(zero, w * 0.5, w)
        else:  # pushed out of the zero bin by 0.6 Delta
            new = torch.where(zero, w + torch.sign(w + 1e-12) * 0.6 * delta, w)
        out[n] = new
    return out


def test_changes_inside_the_zero_bin_are_erased(tmp_path):
    t = make_target()
    r = bins.analyse(save(tmp_path / "t", t), save(tmp_path / "u", nudge(t, inside=True)), "rtn-int4-g128")
    assert r["same_code_share"] == 1.0 and r["same_value_share"] == 1.0
    assert r["zero_bin_share"] == 1.0 and r["erased_mass_share"] == 1.0
    assert 0.05 < r["changed_share"] < 0.5
    assert r["verdict"].startswith("quantized unlearned model equals the quantized target")
    assert r["projected_survival"] == 0.0  # nothing of the update is left after quantization
    assert set(r["layers"]) == set(NAMES)


def test_changes_beyond_half_a_step_survive(tmp_path):
    t = make_target()
    r = bins.analyse(save(tmp_path / "t", t), save(tmp_path / "u", nudge(t, inside=False)), "rtn-int4-g128")
    assert r["erased_mass_share"] == 0.0 and r["same_code_share"] < 1.0
    assert r["verdict"].startswith("update survives 4-bit quantization")
    assert r["projected_survival"] > 0.5
    assert r["dw_over_delta"]["p50"] >= 0.5


def test_identical_models(tmp_path):
    t = make_target()
    r = bins.analyse(save(tmp_path / "t", t), save(tmp_path / "u", t), "rtn-int8-channel")
    assert r["changed_share"] == 0.0 and "identical" in r["verdict"]


def test_bf16_cap_against_the_zero_bin(tmp_path):
    t = make_target()
    folder = save(tmp_path / "t", t, dtype=torch.bfloat16)
    small = bins.analyse(folder, folder, "rtn-int4-g128", lr=1e-6)
    large = bins.analyse(folder, folder, "rtn-int4-g128", lr=1e-3)
    assert small["bf16_cap"] == 2.0**-11 and large["bf16_cap"] == 0.5
    assert small["cap_inside_zero_bin_share"] == 1.0  # the cap lies inside every group's zero bin
    assert large["cap_inside_zero_bin_share"] == 0.0
    assert small["bf16_movable_share"] < large["bf16_movable_share"] == 1.0
    assert small["dtypes"]["target"] == ["BF16"]


def test_bf16_cap_formula():
    assert bins.bf16_cap(1e-5) == 2.0**-8  # the "about 2^-8 at lr 1e-5"
    assert bins.bf16_cap(3e-5) == 2.0**-7


def test_fp32_target_is_rounded_like_a_bf16_unlearned_model(tmp_path):
    t = make_target()
    r = bins.analyse(save(tmp_path / "t", t), save(tmp_path / "u", t, dtype=torch.bfloat16), "rtn-int4-g128")
    assert r["changed_share"] == 0.0  # storage rounding alone is not an unlearning update


def test_sharded_streaming_gives_the_same_answer_with_small_memory(tmp_path, monkeypatch):
    t = make_target(rows=96, cols=384)
    u = nudge(t, inside=True)
    u[NAMES[0]] = u[NAMES[0]] + 0.02  # one tensor with a real update
    one = bins.analyse(save(tmp_path / "t1", t), save(tmp_path / "u1", u), "rtn-int4-g128")
    loaded = []
    original = bins.ShardedWeights.rows

    def spy(self, name, start, stop, as_dtype=None, **kwargs):
        x = original(self, name, start, stop, as_dtype, **kwargs)
        loaded.append(x.numel())
        return x

    monkeypatch.setattr(bins.ShardedWeights, "rows", spy)
    sharded = bins.analyse(save(tmp_path / "t3", t, shards=3), save(tmp_path / "u3", u, shards=3), "rtn-int4-g128",
                           opts=bins.BinsOptions(chunk_elements=4096))
    assert max(loaded) <= 4096 < 96 * 384  # never a whole tensor in memory
    for key in ("changed_share", "same_code_share", "zero_bin_share", "erased_share"):
        assert sharded[key] == one[key]
    assert sharded["erased_mass_share"] == pytest.approx(one["erased_mass_share"], rel=1e-6)  # float sums


def test_bnb_codebook_scheme_and_outputs(tmp_path):
    t = make_target()
    r = bins.analyse(save(tmp_path / "t", t), save(tmp_path / "u", nudge(t, inside=True)), "bnb-fp4")
    assert r["bits"] == 4 and 0 <= r["erased_mass_share"] <= 1
    files = bins.write_outputs(r, tmp_path / "out")
    data = json.loads(files["json"].read_text())
    assert {"changed_share", "same_code_share", "zero_bin_share", "layers"} <= set(data)
    assert files["plot"].stat().st_size > 1000 and "verdict" in files["table"].read_text()


@pytest.mark.parametrize("scheme, message", [("gptq-int4-g128", "calibration"), ("rtn-int4-tensor", "per-tensor")])
def test_unsupported_schemes(tmp_path, scheme, message):
    t = save(tmp_path / "t", make_target())
    with pytest.raises(UserError, match=message):
        bins.analyse(t, t, scheme)


def test_bins_cli(run_cli, tmp_path):
    t = make_target()
    code, out, _ = run_cli("bins", "--target", save(tmp_path / "t", t), "--unlearned",
                           save(tmp_path / "u", nudge(t, True)), "--lr", "1e-5", "--out", tmp_path / "b", "--quiet")
    assert code == 0 and "verdict (rtn-int4-g128)" in out and (tmp_path / "b" / "bins.png").is_file()
    code, _, err = run_cli("bins", "--target", tmp_path / "nope", "--unlearned", tmp_path / "u")
    assert code == 2 and "model folder not found" in err
    code, out, err = run_cli("bins", "--target", tmp_path / "t", "--unlearned", tmp_path / "u", "--corpus",
                             tmp_path / "no-corpus", "--quiet")
    assert code == 2 and "corpus folder not found" in err and "verdict" not in out  # before any weight is read


def test_coverage_reports_what_the_quantizers_leave_in_full_precision(tmp_path):
    """Embeddings, norms and tied output heads are not quantized, so bins does not analyse them, but it
    says so, with their share of the update: here an update that lives mostly in the embedding."""
    target = {**make_target(), "model.embed_tokens.weight": torch.randn(100, 256) * 0.05,
              "model.norm.weight": torch.ones(256)}
    unlearned = {n: w.clone() for n, w in target.items()}
    unlearned["model.embed_tokens.weight"] += 0.01
    unlearned["model.norm.weight"] += 0.001
    unlearned[NAMES[0]][0, 0] += 0.01
    t, u = save(tmp_path / "t", target), save(tmp_path / "u", unlearned)
    (t / "config.json").write_text(json.dumps({"tie_word_embeddings": True}))
    r = bins.analyse(t, u, "rtn-int4-g128")
    cov = r["coverage"]
    left = {x["tensor"]: x for x in cov["not_analysed"]}
    assert set(left) == {"model.embed_tokens.weight", "model.norm.weight"}
    total = 100 * 256 * 0.01 + 256 * 0.001 + 0.01
    assert left["model.embed_tokens.weight"]["update_mass_share"] == pytest.approx(256 / total, rel=1e-3)
    assert left["model.norm.weight"]["reason"].startswith("not a weight matrix")
    assert cov["analysed_update_mass_share"] == pytest.approx(0.01 / total, rel=1e-2)
    assert "tied to model.embed_tokens.weight" in cov["tied_output_head"]
    assert "not analysed: model.embed_tokens.weight" in bins.table(r)


def test_the_forecast_counts_the_tensors_the_quantizer_keeps(tmp_path):
    """An update erased in the quantized layers but also living in the (unquantized) embedding: the
    whole-model survival is the embedding's share of |u - t|^2, which survives whole."""
    target = {**make_target(), "model.embed_tokens.weight": torch.randn(100, 256) * 0.05}
    inside = nudge(make_target(), inside=True)  # erased by int4
    sq_q = sum(float((inside[n] - target[n]).double().square().sum()) for n in NAMES)
    step = (sq_q / (100 * 256)) ** 0.5  # the embedding update carries as much |.|^2 as the quantized one
    unlearned = {**inside, "model.embed_tokens.weight": target["model.embed_tokens.weight"] + step}
    r = bins.analyse(save(tmp_path / "t", target), save(tmp_path / "u", unlearned), "rtn-int4-g128")
    assert r["projected_survival_quantized"] == 0.0
    assert r["not_quantized_sq_share"] == pytest.approx(0.5, abs=1e-3)
    assert r["projected_survival"] == pytest.approx(0.5, abs=1e-3)  # 50% back, not the quantized layers' 100%
    assert "50% of |update|^2 lies in tensors the quantizer keeps" in r["verdict"]
    cast = bins.analyse(tmp_path / "t", tmp_path / "u", "cast-bf16")  # a cast rounds every tensor alike
    assert cast["not_quantized_sq_share"] == 0.0


def test_widths_the_group_size_does_not_divide_are_listed(tmp_path):
    target = {"model.layers.0.mlp.down_proj.weight": torch.randn(8, 192) * 0.05}
    unlearned = {n: w + 0.01 for n, w in target.items()}
    r = bins.analyse(save(tmp_path / "t", target), save(tmp_path / "u", unlearned), "rtn-int4-g128")
    assert r["partial_last_group"] == {"model.layers.0.mlp.down_proj.weight": 192}
    assert "their last group has its own step" in bins.table(r)


def torch_path_tally(wt, wu, scheme, cap):
    """The reference: the per-view torch statistics that the compiled kernel replaces for RTN schemes."""
    t = bins.Tally()
    for xt, xu in zip(bins.group_views(wt, scheme), bins.group_views(wu, scheme)):
        bins.tally_groups(t, xt, xu, scheme, cap)
    return t


@pytest.mark.skipif(not bins.bins_kernel.available(), reason="numba not installed")
@pytest.mark.parametrize("name", ["rtn-int4-g128", "rtn-int3-g64-asym", "rtn-int8-channel", "rtn-int4-g128-maxq",
                                  "bnb-fp4", "bnb-nf4"])
@pytest.mark.parametrize("stored", [torch.float32, torch.bfloat16])
def test_compiled_kernel_equals_the_torch_statistics(name, stored):
    """The one-pass kernels must count exactly what the torch path counts (codes, zero bins, erased weights,
    bf16 cap) and sum the same masses, on a width the group size does not divide (for bitsandbytes: a last
    partial block of 64) and with unchanged rows."""
    g = torch.Generator().manual_seed(3)
    wt = (torch.randn(37, 200, generator=g) * 0.02).to(stored)
    step = torch.where(torch.rand(37, 200, generator=g) < 0.3, torch.randn(37, 200, generator=g) * 3e-3, 0.0)
    wu = (wt.float() + step).to(stored)
    wu[5] = wt[5]  # a row that did not change
    scheme = bins.parse_scheme(name)
    assert bins.fused(scheme)
    fused = bins.tally_chunk(wt, wu, scheme, cap=2.0**-8)
    ref = torch_path_tally(wt.float(), wu.float(), scheme, cap=2.0**-8)
    for k in ("n", "changed", "same_code", "same_value", "zero_bin", "erased", "movable", "cap_inside"):
        assert getattr(fused, k) == getattr(ref, k), k
    assert 0 < fused.erased < fused.changed < fused.n
    for k in ("mass", "erased_mass", "dot", "sq"):
        assert getattr(fused, k) == pytest.approx(getattr(ref, k), rel=1e-5, abs=1e-12), k
    assert fused.dw_hist.sum() == pytest.approx(fused.changed) and fused.w_hist.sum() == pytest.approx(fused.changed)
    # bitsandbytes' views are the torch path's own (blocks over the flat chunk); RTN's groups are not
    expected = ref if scheme.family == "bnb" else sampled_histograms(wt, wu, scheme)
    assert np.array_equal(fused.dw_hist, expected.dw_hist) and np.array_equal(fused.w_hist, expected.w_hist)


def sampled_histograms(wt: torch.Tensor, wu: torch.Tensor, scheme) -> bins.Tally:
    """The histograms as numpy computes them at `sample_positions` of the flat chunk, from each weight's group
    step (the kernel takes the same positions and must count each into the same bin)."""
    cols = wt.shape[1]
    group = cols if scheme.rtn.granularity == "channel" else scheme.rtn.group_size
    ft, fu = wt.reshape(-1).float(), wu.reshape(-1).float()
    sel = bins.sample_positions(ft.numel(), lambda i: fu[i] != ft[i])
    steps = torch.stack([bins.quantize_groups(x, scheme)[2].reshape(-1) for x in wt.float().split(group, dim=1)], 1)
    t = bins.Tally()
    bins.add_histograms(t, (fu[sel] - ft[sel]).abs(), ft[sel].abs(), steps[sel // cols, (sel % cols) // group],
                        int((fu != ft).sum()))
    return t


@pytest.mark.skipif(not bins.bins_kernel.available(), reason="numba not installed")
@pytest.mark.parametrize("name", ["rtn-int4-g128", "bnb-nf4"])
def test_compiled_histograms_sample_a_large_chunk_at_its_stride(name):
    """On a chunk larger than the sample (stride > 1, rows not aligned to it) the kernel takes the same
    positions as `sample_positions` and the same bins as np.histogram; a chunk whose stride misses every
    change falls back to all its changed weights."""
    g = torch.Generator().manual_seed(5)
    wt = (torch.randn(300, 999, generator=g) * 0.02).bfloat16()
    wu = torch.where(torch.rand(300, 999, generator=g) < 0.1, wt.float() + 1e-3, wt.float()).bfloat16()
    scheme = bins.parse_scheme(name)
    assert wt.numel() // (4 * bins.HIST_SAMPLE) > 1
    fused = bins.tally_chunk(wt, wu, scheme, cap=None)
    expected = torch_path_tally(wt.float(), wu.float(), scheme, cap=None) if scheme.family == "bnb" \
        else sampled_histograms(wt, wu, scheme)
    assert np.array_equal(fused.dw_hist, expected.dw_hist) and np.array_equal(fused.w_hist, expected.w_hist)
    sparse = wt.clone()
    sparse[7, 3] = wt[7, 3].float() + 0.01  # one change, off the stride
    fused = bins.tally_chunk(wt, sparse, scheme, cap=None)
    assert fused.changed == 1 and fused.dw_hist.sum() == 1 and fused.w_hist.sum() == 1
