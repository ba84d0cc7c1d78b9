"""Membership inference as open-unlearning computes it (evaluate/mia.py): every score against a hand
computation and against open-unlearning's own pipeline restated, the summaries against sklearn and LiRA's
rule, and MUSE's opt-in metrics end to end on the micro world."""

import json
import math
import shutil
import zlib
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from unlearn_audit.data.corpus import Corpus
from unlearn_audit.errors import UserError
from unlearn_audit.evaluate import mia
from unlearn_audit.evaluate.mia import (
    attack_auc,
    attack_logs,
    auc_interval,
    encode,
    gradnorm_scores,
    item_scores,
    normalised_auc,
    summarise,
    text_stats,
    tpr_at_fpr,
    vocab_stats,
)

TEXTS = ["Ada Lovelace wrote the first program in 1843.", "the quick brown fox jumps over the lazy dog",
         "a", "Grace Hopper found a moth in the relay, and the word bug stuck to computing ever since.",
         "the fox"]
IGNORE = -100


@pytest.fixture(scope="module")
def tok():
    """A byte-level BPE with a BOS post-processor, as Llama's (tokenizer("") is [BOS])."""
    from unlearn_audit.models.tiny import build_tokenizer

    return build_tokenizer(TEXTS * 3, 300)


class TableLM(torch.nn.Module):
    """Logits made by hand: position i's logits are scale * table[i], whatever the input (so every row of a
    batch sees the same table, padding or not)."""

    def __init__(self, vocab: int, length: int = 64, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.table = torch.nn.Parameter(torch.randn(length, vocab, generator=g) * 3)
        self.scale = torch.nn.Parameter(torch.ones(()))
        self.config = SimpleNamespace(max_position_embeddings=length)
        self.calls, self.modes = 0, []

    def forward(self, input_ids, attention_mask=None, **kwargs):
        self.calls += 1
        self.modes.append(self.training)
        return SimpleNamespace(logits=self.scale * self.table[None, : input_ids.shape[1]].expand(input_ids.shape[0], -1, -1))


def tiny_llama(tok, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                      initializer_range=0.3, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id)
    return LlamaForCausalLM(cfg).eval()


# ----------------------------------------------------------------------------- open-unlearning restated
def ou_batch(tok, texts, max_length=2048):
    """CompletionDataset (`preprocess_pretraining_instance`, prefix "") and DataCollatorForSupervisedDataset."""
    from torch.nn.utils.rnn import pad_sequence

    ids, labels = [], []
    for text in texts:
        full = tok(text, add_special_tokens=True)["input_ids"]
        prefix_len = len(tok("", add_special_tokens=True)["input_ids"])
        full = full[: prefix_len + max_length]
        matched = max(prefix_len, 1)
        ids.append(torch.tensor(full))
        labels.append(torch.tensor([IGNORE] * matched + full[matched:]))
    input_ids = pad_sequence(ids, batch_first=True, padding_value=tok.pad_token_id)
    return {"input_ids": input_ids, "attention_mask": input_ids.ne(tok.pad_token_id),
            "labels": pad_sequence(labels, batch_first=True, padding_value=IGNORE)}


def ou_avg_loss(model, batch) -> list[float]:
    """evaluate_probability's avg_loss."""
    with torch.no_grad():
        logits = model(**batch).logits
    losses = torch.nn.CrossEntropyLoss(ignore_index=IGNORE, reduction="none")(
        logits[..., :-1, :].transpose(-1, -2), batch["labels"][..., 1:]).sum(-1)
    return (losses / (batch["labels"] != IGNORE).sum(-1)).tolist()


def ou_tokenwise(model, batch, vocab: bool = False, grad: bool = False) -> list[torch.Tensor]:
    """tokenwise_logprobs (vocab=False) / tokenwise_vocab_logprobs (vocab=True)."""
    with torch.set_grad_enabled(grad):
        logits = model(**batch).logits
    log_probs = torch.log_softmax(logits, dim=-1)[:, :-1, :]
    target = torch.gather(log_probs, 2, batch["input_ids"][:, 1:].unsqueeze(-1)).squeeze(-1)
    out = []
    for i in range(logits.shape[0]):
        idx = (batch["labels"][i] != IGNORE).nonzero(as_tuple=True)[0][:-1]
        if idx.numel() == 0:
            out.append(torch.zeros(0, logits.shape[-1]) if vocab else torch.zeros(0))
            continue
        a, b = idx[0].item(), idx[-1].item()
        out.append((log_probs if vocab else target)[i, a - 1 : b])
    return out


def ou_min_k(lp: np.ndarray, k: float = 0.4) -> float:
    if lp.size == 0:
        return 0
    return -np.mean(np.sort(lp)[: max(1, int(len(lp) * k))])


def ou_scores(model, tok, texts, ref_model=None) -> dict[str, list[float]]:
    """Every attack's score of each text, as open-unlearning's attack classes compute them."""
    batch = ou_batch(tok, texts)
    loss = ou_avg_loss(model, batch)
    lps = ou_tokenwise(model, batch)
    vocab = ou_tokenwise(model, batch, vocab=True)
    kept = [row[row != IGNORE].tolist() for row in batch["labels"]]
    out = {"mia_loss": loss,
           "mia_zlib": [x / len(zlib.compress(tok.decode(k, skip_special_tokens=True).encode("utf-8")))
                        for x, k in zip(loss, kept)],
           "mia_min_k": [ou_min_k(lp.float().numpy()) for lp in lps], "mia_min_k_plus_plus": []}
    for all_probs, target in zip(vocab, lps):
        mu = (torch.exp(all_probs) * all_probs).sum(-1)
        sigma = (torch.exp(all_probs) * torch.square(all_probs)).sum(-1) - torch.square(mu)
        scores = (target - mu) / torch.sqrt(torch.clamp(sigma, min=1e-6))
        out["mia_min_k_plus_plus"].append(ou_min_k(scores.numpy()))
    if ref_model is not None:
        out["mia_reference"] = [a - b for a, b in zip(loss, ou_avg_loss(ref_model, batch))]
    grads = []
    for text in texts:  # GradNormAttack: batch size 1, train mode, p = 2
        one = ou_batch(tok, [text])
        if (one["labels"] != IGNORE).sum() < 2:  # no token left once the last is dropped: it fails, we say NaN
            grads.append(float("nan"))
            continue
        model.train()
        sample_loss = -torch.mean(ou_tokenwise(model, one, grad=True)[0])
        model.zero_grad()
        sample_loss.backward()
        grads.append(float(torch.stack([w.grad.detach().norm(p=2) for w in model.parameters()
                                        if w.grad is not None]).mean()))
        model.eval()
    out["mia_gradnorm"] = grads
    return out


def our_scores(model, tok, texts, ref_model=None, batch_size=2) -> dict[str, list[float]]:
    split = {"forget": texts, "holdout": texts[:1]}
    ref = None
    if ref_model is not None:
        ref = {s: [r["score"] for r in rows] for s, rows in attack_logs("mia_loss", ref_model, tok, split, batch_size,
                                                                         False)[0].items()}
    names = [m for m in mia.MIA_METRICS if ref_model is not None or m != "mia_reference"]
    return {m: [r["score"] for r in attack_logs(m, model, tok, split, batch_size, False, ref)[0]["forget"]]
            for m in names}


# ----------------------------------------------------------------------------- the scores
def test_mia_encoding_is_open_unlearnings_completion_dataset(tok):
    long = " ".join(["the quick brown fox"] * 700)
    ids, starts, cut = encode(tok, [TEXTS[0], long], None)
    s = starts[0]
    assert starts == [1, 1] and cut == 0  # tokenizer("") = [BOS]: the BOS carries no loss
    assert ids[0] == tok(TEXTS[0]).input_ids
    assert len(tok(long).input_ids) > 2049 and ids[1] == tok(long).input_ids[:2049]  # len(tokenizer("")) + 2048
    batch = ou_batch(tok, [TEXTS[0], long])
    assert (batch["labels"][0] != IGNORE).sum() == len(ids[0]) - s
    ids, _, cut = encode(tok, [TEXTS[0], long], 100)  # a shorter context cuts too, and says so
    assert cut == 1 and len(ids[1]) == 100


def test_one_pass_scores_equal_a_hand_computation_from_constructed_logits(tok):
    model = TableLM(len(tok))
    stats, _ = text_stats(model, tok, TEXTS, batch_size=2)
    logp = torch.log_softmax(model.table.detach().double(), -1).numpy()
    for text, st in zip(TEXTS, stats):
        x = tok(text).input_ids
        n = len(x)
        lp = np.array([logp[j - 1, x[j]] for j in range(1, n)])  # every scored token: x_1 .. x_{n-1}
        np.testing.assert_allclose(st.loss, -lp.mean(), rtol=1e-6)
        np.testing.assert_allclose(st.lp, lp[:-1], rtol=1e-5, atol=1e-6)  # the last scored token is dropped
        p = np.exp(logp[: n - 2])
        mu = (p * logp[: n - 2]).sum(-1)
        sigma2 = (p * logp[: n - 2] ** 2).sum(-1) - mu**2
        np.testing.assert_allclose(st.mu, mu, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(st.sigma2, sigma2, rtol=1e-4, atol=1e-5)
        k = max(1, int((n - 2) * 0.4))
        min_k = -np.sort(lp[:-1])[:k].mean() if n > 2 else 0.0
        z = (lp[:-1] - mu) / np.sqrt(np.maximum(sigma2, 1e-6))
        min_kpp = -np.sort(z)[:k].mean() if n > 2 else 0.0
        text_scored = tok.decode(x[1:], skip_special_tokens=True)
        assert st.text == text_scored
        expected = {"mia_loss": -lp.mean(), "mia_zlib": -lp.mean() / len(zlib.compress(text_scored.encode("utf-8"))),
                    "mia_min_k": min_k, "mia_min_k_plus_plus": min_kpp, "mia_reference": -lp.mean() - 0.25}
        for metric, value in expected.items():
            np.testing.assert_allclose(item_scores(metric, st, 0.25)["score"], value, rtol=1e-5, atol=1e-6)
    short = stats[TEXTS.index("a")]  # [BOS, a]: one scored token, none left once the last is dropped
    assert short.lp.size == 0 and item_scores("mia_min_k", short)["score"] == 0.0 == item_scores(
        "mia_min_k_plus_plus", short)["score"]


def test_mia_zlib_text_is_the_scored_tokens_decoded_without_special_tokens(tok):
    text = "Ada wrote </s> the program"
    (st,), _ = text_stats(TableLM(len(tok)), tok, [text])
    x = tok(text).input_ids
    assert x[0] == tok.bos_token_id and st.text == tok.decode(x[1:], skip_special_tokens=True)
    assert "</s>" not in st.text and "<s>" not in st.text
    row = item_scores("mia_zlib", st)
    assert row["zlib_bytes"] == len(zlib.compress(st.text.encode("utf-8")))
    assert row["score"] == st.loss / row["zlib_bytes"]


def test_min_k_plus_plus_statistics_equal_a_full_vocabulary_computation_in_any_chunking(monkeypatch):
    g = torch.Generator().manual_seed(1)
    logits, targets = torch.randn(37, 501, generator=g) * 4, torch.randint(0, 501, (37,), generator=g)
    logp = torch.log_softmax(logits.double(), -1)
    mu = (logp.exp() * logp).sum(-1)
    expected = (logp.gather(-1, targets[:, None]).squeeze(-1), mu, (logp.exp() * logp**2).sum(-1) - mu**2)
    for chunk in (501, 501 * 5, 2**22):  # 1, 5 and all 37 positions at a time
        monkeypatch.setattr(mia, "CHUNK_LOGITS", chunk)
        for got, want in zip(vocab_stats(logits, targets), expected):
            np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-5)


def test_every_attack_equals_open_unlearnings_pipeline_on_a_tiny_llama(tok):
    model, ref_model = tiny_llama(tok, 0), tiny_llama(tok, 1)
    ours = our_scores(model, tok, TEXTS, ref_model)
    assert not model.training and all(w.grad is None for w in model.parameters())  # mode and gradients restored
    theirs = ou_scores(model, tok, TEXTS, ref_model)
    assert set(ours) == set(mia.MIA_METRICS)
    for metric in mia.MIA_METRICS:
        np.testing.assert_allclose(ours[metric], theirs[metric], rtol=2e-5, atol=1e-6, err_msg=metric)


def test_gradnorm_is_the_mean_parameter_norm_of_a_manual_backward(tok):
    model = TableLM(len(tok)).eval()
    text = TEXTS[1]
    (score,), _ = gradnorm_scores(model, tok, [text])
    x = tok(text).input_ids
    n, table = len(x), model.table.detach().double()
    p = torch.softmax(table[: n - 2], -1).numpy()
    onehot = np.eye(table.shape[1])[x[1 : n - 1]]  # targets x_1 .. x_{n-2}: the last scored token dropped
    d_logits = (p - onehot) / (n - 2)  # d(-mean lp) / d logits, scale = 1
    g_table = np.zeros(table.shape)
    g_table[: n - 2] = d_logits
    g_scale = (d_logits * table[: n - 2].numpy()).sum()
    expected = (np.linalg.norm(g_table) + abs(g_scale)) / 2  # the mean over the two parameters' 2-norms
    np.testing.assert_allclose(score, expected, rtol=1e-5)
    assert model.modes == [True] and not model.training and model.table.grad is None  # train mode, then restored


def test_one_pass_attacks_share_one_forward_until_a_weight_changes(tok):
    model = TableLM(len(tok))
    texts = {"forget": TEXTS[:3], "holdout": TEXTS[3:]}
    for metric in ("mia_loss", "mia_zlib", "mia_min_k", "mia_min_k_plus_plus"):
        attack_logs(metric, model, tok, texts, batch_size=8, show=False)
    assert model.calls == 1
    with torch.no_grad():
        model.table.mul_(2)  # the model changed in place: the cached pass is stale
    after, _ = attack_logs("mia_loss", model, tok, texts, batch_size=8, show=False)
    assert model.calls == 2 and after["forget"][0]["score"] == text_stats(model, tok, TEXTS[:1])[0][0].loss


# ----------------------------------------------------------------------------- the summaries
@pytest.mark.parametrize("seed", range(4))
def test_attack_auc_is_open_unlearnings_roc_auc_score(seed):
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(seed)
    forget, holdout = rng.integers(0, 6, 13).astype(float), rng.integers(2, 9, 17).astype(float)  # ties included
    labels = [0] * len(forget) + [1] * len(holdout)
    assert attack_auc(forget, holdout) == pytest.approx(roc_auc_score(labels, np.concatenate([forget, holdout])))
    assert attack_auc([0.1, 0.2], [0.8, 0.9]) == 1.0  # forget texts much more likely (lower scores): 1


def test_tpr_at_low_fpr_on_a_hand_made_example():
    holdout = 0.2 + np.arange(100) * 0.01  # 0.20 .. 1.19
    forget = [0.05, 0.1, 0.205, 0.215, 0.235, 0.255, 2.0]
    # FPR < 1%: no holdout text at or below t, so t < 0.20: 0.05 and 0.1 are caught
    assert tpr_at_fpr(forget, holdout, 0.01) == pytest.approx(2 / 7)
    # FPR < 5%: at most 4 holdout texts (0.20 .. 0.23) at or below t, so t < 0.24: five caught
    assert tpr_at_fpr(forget, holdout, 0.05) == pytest.approx(5 / 7)
    assert tpr_at_fpr([0.5], [0.1, 0.9], 0.01) == 0.0  # nothing below every holdout text: no member found
    assert np.isnan(tpr_at_fpr([np.nan], [0.1], 0.05))


@pytest.mark.parametrize("seed", range(4))
def test_tpr_at_fpr_is_liras_rule_on_every_threshold(seed):
    from sklearn.metrics import roc_curve

    rng = np.random.default_rng(seed)
    forget, holdout = rng.normal(0, 1, 40), rng.normal(1, 1, 300)
    labels = np.r_[np.ones(40), np.zeros(300)]  # members (forget) are the positives, found by low score
    fpr, tpr, _ = roc_curve(labels, -np.r_[forget, holdout], drop_intermediate=False)
    default_fpr, default_tpr, _ = roc_curve(labels, -np.r_[forget, holdout])  # LiRA's call, untied scores
    for a in (0.01, 0.05):
        assert tpr_at_fpr(forget, holdout, a) == tpr[np.where(fpr < a)[0][-1]]
        assert tpr_at_fpr(forget, holdout, a) == default_tpr[np.where(default_fpr < a)[0][-1]]


def test_auc_interval_is_a_seeded_percentile_bootstrap_resampling_each_side():
    rng = np.random.default_rng(3)
    forget, holdout = rng.normal(0, 1, 15), rng.normal(0.8, 1, 25)
    lo, hi = auc_interval(forget, holdout)
    assert (lo, hi) == auc_interval(forget, holdout)  # reproducible
    assert lo < attack_auc(forget, holdout) < hi
    tied = rng.integers(0, 4, 15).astype(float), rng.integers(1, 5, 25).astype(float)
    for f, h in ((forget, holdout), tied):
        draws = np.random.default_rng(0)  # seed 0, 1000 resamples: forget indices first, then holdout
        idx_f, idx_h = draws.integers(0, 15, (1000, 15)), draws.integers(0, 25, (1000, 25))
        aucs = [attack_auc(f[i], h[j]) for i, j in zip(idx_f, idx_h)]
        np.testing.assert_allclose(auc_interval(f, h), np.percentile(aucs, [2.5, 97.5]), rtol=1e-12)
    assert auc_interval([1.0], [2.0]) == (1.0, 1.0)


def test_normalisation_is_open_unlearnings_privleak_with_its_one_minus_auc_convention():
    for auc, auc_control in ((0.98, 0.52), (0.3, 0.45), (0.5, 0.5)):
        score, ref = 1 - auc, 1 - auc_control  # open-unlearning's privacy.privleak
        assert normalised_auc(auc, auc_control) == pytest.approx((score - ref) / (ref + 1e-10) * 100, rel=1e-8)
    assert normalised_auc(0.9, None) is None and normalised_auc(0.9, 1.0) is None
    agg = summarise([0.1, 0.2, 0.3], [0.25, 0.4, 0.5, 0.6], 0.6, "measured")
    assert agg["auc"] == attack_auc([0.1, 0.2, 0.3], [0.25, 0.4, 0.5, 0.6])
    assert agg["normalised"] == normalised_auc(agg["auc"], 0.6) and agg["auc_control_source"] == "measured"
    assert set(agg) >= {"tpr@1%fpr", "tpr@5%fpr", "auc_ci95", "auc_control"}


# ----------------------------------------------------------------------------- MUSE: opt-in, refused before work
def test_mia_metrics_are_opt_in_and_the_defaults_unchanged():
    from unlearn_audit.evaluate.benchmark import benchmark_names, get_benchmark
    from unlearn_audit.evaluate.muse import METRICS
    from unlearn_audit.evaluate.runner import EvalConfig

    muse = get_benchmark("muse")
    assert muse.metrics == METRICS == ("verbmem_f", "knowmem_f", "knowmem_r", "privleak")
    assert EvalConfig().metrics == list(METRICS) and EvalConfig().for_benchmark("muse").metrics == list(METRICS)
    assert muse.known_metrics == METRICS + mia.MIA_METRICS
    assert all(muse.label(m).endswith("AUC") for m in mia.MIA_METRICS) and set(mia.MIA_METRICS) <= set(muse.fractions)
    for name in benchmark_names():
        assert not set(get_benchmark(name).metrics) & set(mia.MIA_METRICS)
    EvalConfig(metrics=["mia_loss", "mia_gradnorm"]).validate()  # asked for by name: known
    EvalConfig(benchmark="tofu", metrics=["mia_loss"]).validate()  # TOFU's forget vs holdout answers too
    with pytest.raises(UserError, match="unknown metric"):
        EvalConfig(benchmark="wmdp", metrics=["mia_loss"]).validate()  # multiple choice: no texts to score


def test_the_retrained_reference_is_unchanged_without_attacks():
    from unlearn_audit.evaluate.muse import AucRetrain, Muse, MuseReference

    muse = Muse()
    same = muse.reference_from({"privleak": {"auc": 0.4}})
    assert type(same) is AucRetrain and same == AucRetrain(0.4, "measured on the retrained model")
    assert muse.reference_from({"knowmem_f": {}}) is None
    both = muse.reference_from({"privleak": {"auc": 0.4}, "mia_loss": {"auc": 0.55}, "mia_reference": {"auc": 0.9}})
    assert isinstance(both, MuseReference) and both.value == 0.4 and both.mia_control == {"mia_loss": 0.55}
    assert muse.wants_reference(["mia_zlib"]) and not muse.wants_reference(["verbmem_f"])


def test_packed_weights_are_found_on_the_loaded_model(tok):
    model = TableLM(len(tok))
    assert mia.packed_weights(model) is None
    mia.check_model(model, ["mia_gradnorm"])
    model.codes = torch.nn.Parameter(torch.zeros(4, dtype=torch.uint8), requires_grad=False)  # as bnb's Params4bit
    assert "codes is stored as torch.uint8" in mia.packed_weights(model)
    mia.check_model(model, ["mia_loss"])  # only GradNorm needs gradients
    with pytest.raises(UserError, match="mia_gradnorm needs gradients"):
        mia.check_model(model, ["mia_gradnorm"])


def test_a_bitsandbytes_model_is_packed_and_an_rtn_model_keeps_its_gradients(tok, tmp_path):
    pytest.importorskip("bitsandbytes")
    from unlearn_audit.quantize.backends import quantized_model

    tiny_llama(tok, 0).save_pretrained(tmp_path / "m")
    assert "Bnb4BitHfQuantizer" in mia.packed_weights(quantized_model(tmp_path / "m", "bnb-nf4"))
    rtn = quantized_model(tmp_path / "m", "rtn-int4-g32")
    assert mia.packed_weights(rtn) is None
    scores, _ = gradnorm_scores(rtn, tok, TEXTS[:2])
    assert all(np.isfinite(scores)) and min(scores) > 0


def no_model_work(monkeypatch):
    import unlearn_audit.models.loading as loading
    import unlearn_audit.quantize  # noqa: F401  (imported first: its modules bind load_model at import)

    def boom(*a, **k):
        raise AssertionError("a model was loaded before the refusal")

    monkeypatch.setattr(loading, "load_model", boom)
    monkeypatch.setattr(loading, "load_tokenizer", boom)


@pytest.mark.parametrize("extra, message", [
    (["--metrics", "mia_loss,mia_reference"], "mia_reference compares each text's loss with a reference model's"),
    (["--metrics", "mia_gradnorm", "--quantize", "bnb-nf4"], "mia_gradnorm needs gradients of the weights, which bnb-nf4"),
    (["--metrics", "mia_gradnorm", "--quantize", "gptq-int4-g128"], "which gptq-int4-g128 packs into integers"),
])
def test_mia_requests_this_run_cannot_compute_are_refused_before_loading(run_cli, micro_world, tmp_path, monkeypatch,
                                                                          extra, message):
    no_model_work(monkeypatch)
    code, _, err = run_cli("eval", "--model", tmp_path / "model", "--corpus", micro_world, "--out", tmp_path / "out", *extra)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_mia_without_holdout_texts_is_refused_before_loading(run_cli, micro_world, tmp_path, monkeypatch):
    world = tmp_path / "world"
    shutil.copytree(micro_world, world)
    (world / "privleak" / "holdout.json").unlink()
    no_model_work(monkeypatch)
    code, _, err = run_cli("eval", "--model", tmp_path / "model", "--corpus", world, "--out", tmp_path / "out",
                           "--metrics", "mia_min_k")
    assert code == 2 and "holdout.json does not exist" in err and len(err.strip().splitlines()) == 1


def test_dequantized_schemes_keep_gradnorm():
    mia.check_request(["mia_gradnorm"], False, "rtn-int4-g128")
    mia.check_request(["mia_gradnorm"], False, "fp8-e4m3")
    mia.check_request(["mia_gradnorm", "mia_reference"], True, "full")


# ----------------------------------------------------------------------------- end to end on the micro world
def test_eval_writes_every_attack_with_the_retrained_control(run_cli, micro_target, micro_retrained, micro_world,
                                                             tmp_path):
    out = tmp_path / "eval"
    code, stdout, err = run_cli("eval", "--model", micro_target, "--corpus", micro_world, "--retrained", micro_retrained,
                              "--metrics", ",".join(mia.MIA_METRICS), "--limit", "6", "--out", out, "--quiet")
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    corpus = Corpus(micro_world)
    sizes = {split: min(6, len(corpus.privleak(split))) for split in ("forget", "holdout")}
    assert not {"verbmem_f", "knowmem_f", "knowmem_r", "privleak"} & set(metrics)  # only what was asked
    for name in mia.MIA_METRICS:
        d, agg = metrics["details"][name], json.loads((out / name / "agg.json").read_text())
        log = json.loads((out / name / "log.json").read_text())
        assert {s: len(rows) for s, rows in log.items()} == sizes and {"index", "text", "score"} <= set(log["forget"][0])
        assert metrics[name] == d["auc"] == agg["auc"] == attack_auc(*mia.split_scores(log))
        assert d["auc_ci95"][0] <= d["auc"] <= d["auc_ci95"][1] and f"| {name} | {d['auc']:.4f} |" in stdout
        assert d["auc_control"] is not None and d["normalised"] == normalised_auc(d["auc"], d["auc_control"])
    assert metrics["details"]["mia_reference"]["auc_control"] == 0.5  # the control is its own reference
    ref_log = json.loads((out / "mia_reference" / "log.json").read_text())["forget"][0]
    assert ref_log["score"] == pytest.approx(ref_log["loss"] - ref_log["reference_loss"])
    assert metrics["details"]["mia_loss"]["auc"] > 0.8  # the target knows its forget texts better than holdout ones


def test_tofu_runs_every_attack_on_its_forget_and_holdout_answers(run_cli, micro_target, micro_retrained, micro_world,
                                                                  tmp_path):
    out = tmp_path / "eval"
    code, stdout, err = run_cli("eval", "--model", micro_target, "--corpus", micro_world, "--benchmark", "tofu",
                                "--metrics", ",".join(["forget_prob", *mia.MIA_METRICS]), "--retrained",
                                micro_retrained, "--limit", "6", "--out", out, "--quiet")
    assert code == 0, stdout + err
    metrics = json.loads((out / "metrics.json").read_text())
    for name in mia.MIA_METRICS:
        d = metrics["details"][name]
        log = json.loads((out / name / "log.json").read_text())
        assert {s: len(rows) for s, rows in log.items()} == {"forget": 6, "holdout": 6}
        assert {"index", "prompt", "answer", "score"} <= set(log["forget"][0])  # scored on the answer
        scored = [[x for x in scores if not math.isnan(x)] for scores in mia.split_scores(log)]
        assert metrics[name] == d["auc"] == attack_auc(*scored) and d["auc_control"] is not None
        assert d["n_forget"] + d["n_holdout"] + d["n_unscored"] == 12
    # GradNorm leaves out the one-token answers it cannot score (nothing is left once the last token drops)
    assert metrics["details"]["mia_gradnorm"]["n_unscored"] > 0
    # LOSS is the teacher-forced answer loss forget_prob is made of, item for item
    loss = json.loads((out / "mia_loss" / "log.json").read_text())["forget"]
    prob = json.loads((out / "forget_prob" / "log.json").read_text())
    assert [r["score"] for r in loss] == pytest.approx([r["avg_loss"] for r in prob], abs=1e-5)  # float32 there
    assert metrics["details"]["mia_reference"]["auc_control"] == 0.5


def test_tofu_attacks_need_holdout_answers(run_cli, micro_target, micro_world, tmp_path):
    import shutil

    copy = tmp_path / "world"
    shutil.copytree(micro_world, copy)
    (copy / "tofu" / "holdout.json").unlink()
    code, _, err = run_cli("eval", "--model", micro_target, "--corpus", copy, "--benchmark", "tofu", "--metrics",
                           "mia_loss", "--out", tmp_path / "o", "--quiet")
    assert code == 2 and "tofu/holdout.json does not exist" in err and err.count("\n") == 1
