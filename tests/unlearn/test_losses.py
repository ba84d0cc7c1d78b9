"""Each loss against a hand-computed value on tiny tensors."""

import math

import pytest
import torch

from unlearn_audit.errors import UserError
from unlearn_audit.unlearn import losses
from unlearn_audit.unlearn.methods import method_names, resolve_method

# batch of 1 sequence, 3 positions, vocabulary of 2; position 0's label is never scored (causal shift)
LOGITS = torch.tensor([[[0.0, 1.0], [2.0, 0.0], [0.0, 0.0]]])
LABELS = torch.tensor([[0, 1, 0]])


def log_softmax(row):
    return [x - math.log(sum(math.exp(v) for v in row)) for x in row]


def test_mean_nll_and_ga():
    # predicted at positions 0 and 1: label 1 under [0,1], label 0 under [2,0]
    expected = -(log_softmax([0.0, 1.0])[1] + log_softmax([2.0, 0.0])[0]) / 2
    assert losses.mean_nll(LOGITS, LABELS).item() == pytest.approx(expected, abs=1e-6)
    assert losses.ga_loss(LOGITS, LABELS).item() == pytest.approx(-expected, abs=1e-6)


def test_padding_is_ignored():
    labels = torch.tensor([[0, 1, -100]])
    expected = -log_softmax([0.0, 1.0])[1]
    assert losses.mean_nll(LOGITS, labels).item() == pytest.approx(expected, abs=1e-6)


def test_npo_at_the_reference_is_2_log2_over_beta():
    assert losses.npo_loss(LOGITS, LOGITS, LABELS, beta=0.5).item() == pytest.approx(4 * math.log(2), abs=1e-5)
    assert losses.npo_loss(LOGITS, LOGITS, LABELS).item() == pytest.approx(20 * math.log(2), abs=1e-5)  # beta 0.1


def test_npo_scores_each_sequence_of_a_batch_on_its_own():
    ref = torch.zeros(2, 3, 2)
    logits = torch.cat([LOGITS, torch.zeros(1, 3, 2)])  # the second sequence sits at the reference
    labels = torch.cat([LABELS, LABELS])
    ratio = log_softmax([0.0, 1.0])[1] + log_softmax([2.0, 0.0])[0] - 2 * math.log(0.5)
    expected = -(2 / 0.5) * (math.log(1 / (1 + math.exp(0.5 * ratio))) + math.log(0.5)) / 2
    assert losses.npo_loss(logits, ref, labels, beta=0.5).item() == pytest.approx(expected, abs=1e-5)


def test_npo_hand_value():
    ref = torch.zeros_like(LOGITS)  # log p_ref = 2 * log(1/2)
    beta = 0.5
    logp = log_softmax([0.0, 1.0])[1] + log_softmax([2.0, 0.0])[0]
    ratio = logp - 2 * math.log(0.5)
    expected = -(2 / beta) * math.log(1 / (1 + math.exp(beta * ratio)))
    assert losses.npo_loss(LOGITS, ref, LABELS, beta=beta).item() == pytest.approx(expected, abs=1e-5)


def test_klr_is_kl_of_reference_to_model():
    ref = torch.zeros_like(LOGITS)  # uniform reference
    expected = 0.0
    for row in ([0.0, 1.0], [2.0, 0.0]):  # positions 0 and 1 are scored
        lq = log_softmax(row)
        expected += sum(0.5 * (math.log(0.5) - q) for q in lq)
    expected /= 2
    assert losses.klr_loss(LOGITS, ref, LABELS).item() == pytest.approx(expected, abs=1e-6)
    assert losses.klr_loss(LOGITS, LOGITS, LABELS).item() == pytest.approx(0.0, abs=1e-7)


def test_gdr_is_retain_nll():
    expected = -(log_softmax([0.0, 1.0])[1] + log_softmax([2.0, 0.0])[0]) / 2  # by hand, not through mean_nll
    assert losses.gdr_loss(LOGITS, LABELS).item() == pytest.approx(expected, abs=1e-6)


def test_registry_has_the_six_paper_methods():
    assert {"ga", "ga_gdr", "ga_klr", "npo", "npo_gdr", "npo_klr"} <= set(method_names())
    m = resolve_method("npo_klr")
    assert m.needs_ref and m.needs_retain
    assert not resolve_method("ga_gdr").needs_ref
    with pytest.raises(UserError, match="unknown method 'ga_xyz'"):
        resolve_method("ga_xyz")


def kl(p_logits, q_logits):
    lp, lq = log_softmax(p_logits), log_softmax(q_logits)
    return sum(math.exp(a) * (a - b) for a, b in zip(lp, lq))


def test_klr_averages_over_the_scored_tokens_of_a_padded_batch():
    """Two sequences of 4 positions, a vocabulary of 3, the second padded after its first scored token:
    the mean is over the 4 scored tokens (not the 6 positions, nor per sequence)."""
    g = torch.Generator().manual_seed(0)
    logits, ref = torch.randn(2, 4, 3, generator=g), torch.randn(2, 4, 3, generator=g)
    labels = torch.tensor([[0, 1, 2, 0], [1, 2, -100, -100]])
    scored = [(0, 0), (0, 1), (0, 2), (1, 0)]  # position t predicts label t + 1
    expected = sum(kl(ref[b, t].tolist(), logits[b, t].tolist()) for b, t in scored) / len(scored)
    assert losses.klr_loss(logits, ref, labels).item() == pytest.approx(expected, abs=1e-6)
    one = torch.tensor([[0, 1, -100, -100]])  # a single scored token: divided by 1
    assert losses.klr_loss(logits[:1], ref[:1], one).item() == pytest.approx(kl(ref[0, 0].tolist(), logits[0, 0].tolist()), abs=1e-6)


def test_simnpo_is_npo_on_the_length_normalised_likelihood_without_a_reference():
    """SimNPO (Fan et al. 2024): L = -(2/beta) * mean_x log sigmoid(-beta * mean_t log p(y_t) - gamma), the
    mean over each sequence's scored tokens (padding excluded), then over sequences."""
    from unlearn_audit.unlearn.simnpo import simnpo_loss

    logits = torch.tensor([[[0.0, 1.0], [2.0, 0.0], [0.0, 0.0]], [[1.0, 0.0], [0.0, 0.0], [0.0, 3.0]]])
    labels = torch.tensor([[0, 1, 0], [0, 0, -100]])  # the second sequence has one scored token
    first = (log_softmax([0.0, 1.0])[1] + log_softmax([2.0, 0.0])[0]) / 2
    second = log_softmax([1.0, 0.0])[0]
    beta, gamma = 2.5, 0.3

    def term(m):
        return math.log(1 / (1 + math.exp(beta * m + gamma)))

    expected = -(2 / beta) * (term(first) + term(second)) / 2
    assert simnpo_loss(logits, labels, beta, gamma).item() == pytest.approx(expected, abs=1e-6)
    assert simnpo_loss(logits[:1], labels[:1], 1.0, 0.0).item() == pytest.approx(-2 * math.log(1 / (1 + math.exp(first))), abs=1e-6)
