"""bitsandbytes' 4-bit codebooks by hand: per-block absmax, the nearest code, padding, the zero bin
(the bitsandbytes comparison itself is in test_backends.py and needs the library)."""

import pytest
import torch

from unlearn_audit.quantize.codebook import FP4, NF4, codebook_groups, codebook_quantize, zero_bin_halfwidth


def test_each_block_is_scaled_by_its_own_absmax_and_takes_the_nearest_code():
    blocks = torch.tensor([[0.5, -1.0, 0.26, 0.0], [2.0, 0.0, -0.55, 1.4]])
    codes, deq, absmax = codebook_groups(blocks, "nf4")
    assert absmax.flatten().tolist() == [1.0, 2.0]
    expected = [[0.44070982933044434, -1.0, 0.24611230194568634, 0.0], [1.0, 0.0, -0.28444138169288635, 0.7229568362236023]]
    assert torch.allclose(deq, torch.tensor(expected) * absmax)
    assert torch.equal(NF4[codes] * absmax, deq)


def test_an_all_zero_block_dequantizes_to_zero_and_a_small_block_is_scaled_up():
    codes, deq, absmax = codebook_groups(torch.zeros(1, 4), "fp4")
    assert torch.equal(deq, torch.zeros(1, 4)) and absmax.item() == 0.0 and FP4[codes].abs().max() == 0.0
    assert codebook_groups(torch.zeros(1, 4), "nf4")[0].tolist() == [[7, 7, 7, 7]]  # NF4's code of 0.0
    codes, deq, _ = codebook_groups(torch.tensor([[0.5, 0.25, -0.5, 0.0]]), "nf4")
    assert codes.tolist() == [[15, 12, 0, 7]] and torch.allclose(deq, NF4[codes] * 0.5)


def test_a_weight_is_cut_into_row_major_blocks_and_the_last_one_padded_with_zeros():
    w = torch.arange(1, 11, dtype=torch.float32).reshape(2, 5)  # 10 values, blocks of 4: 4 + 4 + 2 (padded)
    codes, deq, absmax = codebook_quantize(w, "fp4", blocksize=4)
    assert codes.shape == deq.shape == absmax.shape == w.shape
    assert absmax.flatten().tolist() == [4.0] * 4 + [8.0] * 4 + [10.0] * 2  # padding leaves the absmax
    manual = torch.cat([codebook_groups(torch.tensor([[1.0, 2, 3, 4], [5, 6, 7, 8]]), "fp4")[1].flatten(),
                        codebook_groups(torch.tensor([[9.0, 10, 0, 0]]), "fp4")[1].flatten()[:2]])
    assert torch.equal(deq.flatten(), manual)
    assert torch.equal(codebook_quantize(w.to(torch.bfloat16), "fp4", blocksize=4)[1], deq)  # float32 math
    odd = torch.arange(1, 10, dtype=torch.float32).reshape(3, 3)  # 9 values: 4 + 4 + 1 (3 zeros of padding)
    assert codebook_quantize(odd, "nf4", blocksize=4)[2].flatten().tolist() == [4.0] * 4 + [8.0] * 4 + [9.0]


@pytest.mark.parametrize("kind, smallest", [("fp4", 0.0052083), ("nf4", 0.07958029955625534)])
def test_the_zero_bin_is_half_the_smallest_code_magnitude(kind, smallest):
    assert zero_bin_halfwidth(kind) == pytest.approx(smallest / 2)
