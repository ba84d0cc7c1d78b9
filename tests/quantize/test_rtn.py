"""RTN properties: codes in range, error within half a step, idempotence, groups, conventions."""

import pytest
import torch

from unlearn_audit.errors import UserError
from unlearn_audit.quantize.rtn import RTNScheme, fake_quantize, parse_rtn, quantize

SCHEMES = [
    RTNScheme(4, "group", 128), RTNScheme(4, "group", 32), RTNScheme(8, "channel", None),
    RTNScheme(3, "tensor", None), RTNScheme(2, "group", 64), RTNScheme(4, "group", 128, symmetric=False),
    RTNScheme(4, "group", 64, delta="maxq"), RTNScheme(4, "group", 128, delta="ct"), RTNScheme(5, "group", 48),
]


@pytest.fixture()
def w():
    g = torch.Generator().manual_seed(0)
    return torch.randn(16, 320, generator=g) * 0.05  # 320 = 2.5 groups of 128: a last partial group


@pytest.mark.parametrize("scheme", SCHEMES, ids=lambda s: s.name)
def test_codes_within_range(w, scheme):
    codes, _, _ = quantize(w, scheme)
    assert codes.min() >= scheme.qmin and codes.max() <= scheme.qmax
    assert torch.equal(codes, codes.round())


@pytest.mark.parametrize("scheme", SCHEMES, ids=lambda s: s.name)
def test_error_at_most_half_a_step(w, scheme):
    _, deq, delta = quantize(w, scheme)
    err = (deq - w).abs()
    if scheme.symmetric and scheme.delta == "paper":
        # Delta = max/2^(N-1): the positive extreme clips to code 2^(N-1)-1 and may be off by one step
        clipped = w >= (scheme.qmax + 0.5) * delta
        assert (err[~clipped] <= delta[~clipped] / 2 + 1e-7).all()
        assert (err[clipped] <= delta[clipped] + 1e-7).all()
    else:
        assert (err <= delta / 2 + 1e-7).all()


@pytest.mark.parametrize("scheme", [s for s in SCHEMES if s.delta == "maxq" or not s.symmetric], ids=lambda s: s.name)
def test_idempotent(w, scheme):
    once = fake_quantize(w, scheme)
    assert torch.allclose(fake_quantize(once, scheme), once, atol=1e-7)


def test_paper_delta_is_idempotent_unless_a_positive_maximum_clips():
    """With Delta = max/2^(N-1) a positive extreme clips to (2^(N-1)-1)*Delta, which shrinks the next
    Delta: re-quantizing moves the grid (compressed-tensors' max/7.5 behaves the same way). Groups whose
    extreme is negative are idempotent."""
    scheme = RTNScheme(4, "channel", None)
    neg = torch.tensor([[-0.8, 0.3, 0.05]])
    pos = torch.tensor([[0.8, -0.3, 0.05]])
    assert torch.allclose(fake_quantize(fake_quantize(neg, scheme), scheme), fake_quantize(neg, scheme))
    assert not torch.allclose(fake_quantize(fake_quantize(pos, scheme), scheme), fake_quantize(pos, scheme))


def test_paper_delta_is_max_over_two_to_the_n_minus_one():
    row = torch.tensor([[0.8, -0.3, 0.05, -0.8]])
    codes, deq, delta = quantize(row, RTNScheme(4, "channel", None))
    assert torch.allclose(delta, torch.full_like(row, 0.1))  # 0.8 / 8
    assert codes.tolist() == [[7, -3, 0, -8]]  # +0.8 clips to 7, -0.8 is exactly -8
    assert torch.allclose(deq, torch.tensor([[0.7, -0.3, 0.0, -0.8]]))


def test_groups_are_independent_and_partial_group_gets_its_own_step():
    w = torch.zeros(1, 160)
    w[0, 0] = 1.0  # first group of 128
    w[0, 130] = 0.01  # partial group of 32
    _, deq, delta = quantize(w, RTNScheme(4, "group", 128))
    assert delta[0, 0] == pytest.approx(1 / 8) and delta[0, 130] == pytest.approx(0.01 / 8)
    assert deq[0, 130] == pytest.approx(0.01 * 7 / 8)  # survives thanks to its own step


def test_asymmetric_zero_point_and_zero_exact():
    w = torch.tensor([[0.0, 0.1, 0.2, 0.75]])
    _, deq, _ = quantize(w, RTNScheme(4, "channel", None, symmetric=False))
    assert deq[0, 0] == 0.0  # zero stays representable
    assert (deq - w).abs().max() <= 0.75 / 15 / 2 + 1e-7


@pytest.mark.parametrize("name", ["rtn-int4-g128", "rtn-int8-channel", "rtn-int3-tensor", "rtn-int4-g64-asym",
                                  "rtn-int4-g128-maxq", "rtn-int4-g128-ct"])
def test_names_round_trip(name):
    assert parse_rtn(name).name == name


@pytest.mark.parametrize("name", ["rtn-int9-g128", "rtn-int4", "rtn-int4-g0", "rtn-fp4-g128"])
def test_bad_names(name):
    with pytest.raises(UserError):
        parse_rtn(name)


def test_the_scheme_refuses_what_it_cannot_quantize_with_a_sentence():
    assert RTNScheme(2, "channel", None).qmin == -2 and RTNScheme(8, "group", 1).qmax == 127  # the bounds are allowed
    for bits in (1, 9):
        with pytest.raises(UserError, match=f"RTN supports 2 to 8 bits, not {bits}"):
            RTNScheme(bits)
    with pytest.raises(UserError, match="granularity must be one of tensor, channel, group"):
        RTNScheme(4, "block")
    for size in (0, None):
        with pytest.raises(UserError, match="group-wise RTN needs a positive group size"):
            RTNScheme(4, "group", size)
    with pytest.raises(UserError, match="delta convention must be one of paper, maxq, ct"):
        RTNScheme(4, delta="absmax")
    with pytest.raises(UserError, match=r"RTN quantizes 2-D weights, got shape \(2, 2, 2\)"):
        quantize(torch.zeros(2, 2, 2), RTNScheme(4))


def test_asymmetric_scale_spans_min_to_max_and_an_all_zero_group_stays_zero():
    w = torch.tensor([[-0.3, 0.0, 0.45, 0.1], [0.0, 0.0, 0.0, 0.0]])
    codes, deq, delta = quantize(w, RTNScheme(4, "channel", None, symmetric=False))
    assert delta[0, 0].item() == pytest.approx(0.75 / 15)  # (max - min) / (2^N - 1)
    assert codes[0].tolist() == [0.0, 6.0, 15.0, 8.0]  # zero point round(0.3 / 0.05) = 6
    assert torch.allclose(deq[0], torch.tensor([-0.3, 0.0, 0.45, 0.1]), atol=0.025)
    assert torch.equal(deq[1], torch.zeros(4)) and torch.equal(codes[1], torch.zeros(4))  # no 0 / 0


def test_tensor_granularity_is_one_step_for_every_row():
    w = torch.tensor([[0.8, 0.1], [0.05, -0.4]])
    codes, deq, delta = quantize(w, RTNScheme(4, "tensor", None))
    assert delta.shape == w.shape and torch.allclose(delta, torch.full_like(w, 0.1))
    assert codes.tolist() == [[7.0, 1.0], [0.0, -4.0]] and torch.allclose(deq, torch.tensor([[0.7, 0.1], [0.0, -0.4]]))


def test_each_row_has_its_own_step_and_a_positive_minimum_still_keeps_zero_exact():
    w = torch.tensor([[0.8, -0.4], [0.08, 0.04]])
    _, _, delta = quantize(w, RTNScheme(4, "channel", None))
    assert torch.allclose(delta[:, 0], torch.tensor([0.1, 0.01]))
    codes, deq, delta = quantize(torch.tensor([[0.2, 0.4, 0.6]]), RTNScheme(4, "channel", None, symmetric=False))
    assert delta[0, 0].item() == pytest.approx(0.6 / 15) and codes.tolist() == [[5.0, 10.0, 15.0]]  # min clamps to 0


def test_scheme_errors_are_exact_sentences():
    with pytest.raises(UserError) as err:
        RTNScheme(4, "group", 0)
    assert str(err.value) == "group-wise RTN needs a positive group size"
    with pytest.raises(UserError) as err:
        parse_rtn("rtn-int4")
    assert str(err.value) == "'rtn-int4' is not an RTN scheme (examples: rtn-int4-g128, rtn-int8-channel, rtn-int3-g64-asym)"


def test_each_group_takes_the_maximum_of_its_own_inputs():
    w = torch.zeros(1, 256)
    w[0, 0], w[0, 129], w[0, 200] = 1.0, 0.5, 0.01  # group 1: max 1.0; group 2: max 0.5
    _, _, delta = quantize(w, RTNScheme(4, "group", 128))
    assert delta[0, 72].item() == pytest.approx(1 / 8) and delta[0, 200].item() == pytest.approx(0.5 / 8)
