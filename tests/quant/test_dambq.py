"""DAMBQ's weight codes, clip rule, activations and LBA step against values computed by
hand from the reference's constants (ALPHA_W, CLIP_W = 0.5, 0.98, 2.6, 4.16, 5.66; EMA
0.99; EPS 1e-6)."""
from __future__ import annotations

import pytest
import torch

from quant.dambq import (DambqActQuantizer, DambqWeightQuantizer, act_error, dambq_codes,
                         lba_lower, lba_ratio, quantize_weight, weight_error)


def test_codes_from_alpha_w():
    assert dambq_codes(0) == [0.0]
    assert dambq_codes(1) == [-1.0, 1.0]
    # 0.6123 + 0.3877 = 1.0; 0.6123 - 0.3877 = 0.2246 (no zero level)
    assert dambq_codes(2) == pytest.approx([-1.0, -0.2246, 0.2246, 1.0], abs=1e-6)
    # 0.4557 ± 0.3436 ± 0.2007: 1.0, 0.5986, 0.3128, -0.0886 and their negatives
    assert dambq_codes(3) == pytest.approx(
        [-1.0, -0.5986, -0.3128, -0.0886, 0.0886, 0.3128, 0.5986, 1.0], abs=1e-6)
    four = dambq_codes(4)
    # 0.3317 + 0.2858 + 0.2346 + 0.1479 = 1.0; smallest magnitude 0.3317 - 0.2858 - 0.2346 +
    # 0.1479 = -0.0408
    assert len(four) == 16 and four[-1] == pytest.approx(1.0) and 0.0 not in four
    assert min(abs(v) for v in four) == pytest.approx(0.0408, abs=1e-6)


def test_clip_is_clip_w_times_mean_abs_then_an_ema():
    q = DambqWeightQuantizer(2, bits=2)
    q.bits[1] = 3
    w = torch.tensor([[1.0, -3.0], [0.5, 0.5]]).view(2, 2, 1, 1)
    q.train()
    q(w)
    # CLIP_W is indexed by bits (0..4): channel 0 at 2 bits: 2.6 * mean(1, 3) = 5.2;
    # channel 1 at 3 bits: 4.16 * 0.5 = 2.08
    assert q.clip.tolist() == pytest.approx([5.2, 2.08])
    q(2 * w)
    # EMA: 0.99 * old + 0.01 * new (new = 10.4, 4.16): 5.252, 2.1008
    assert q.clip.tolist() == pytest.approx([5.252, 2.1008])
    q.eval()
    before = q.clip.clone()
    q(5 * w)
    assert torch.equal(q.clip, before)             # evaluation leaves the clip alone


def test_weight_projection_onto_the_channels_codes():
    clip = torch.tensor([2.0, 1.0])
    bits = torch.tensor([2, 0])
    w = torch.tensor([[0.3, 1.3, -5.0, 0.0], [0.7, -0.7, 3.0, 0.1]])
    out = quantize_weight(w, clip, bits)
    # channel 0: w / 2 = 0.15, 0.65, -2.5 -> -1 (clamped), 0.0; nearest of ±0.2246, ±1:
    # 0.2246, 1.0 (0.65 is 0.4254 from 0.2246, 0.35 from 1), -1, then 0 is equally far from
    # ±0.2246 and takes the first in the reference's order, -0.2246; times 2
    assert out[0].tolist() == pytest.approx([0.4492, 2.0, -2.0, -0.4492], abs=1e-5)
    assert out[1].tolist() == [0.0, 0.0, 0.0, 0.0]  # 0 bits: the channel is pruned
    w.requires_grad_(True)
    quantize_weight(w, clip, bits).sum().backward()
    # straight through inside the clip (d/dw of clip * w / (clip + EPS) ~ 1), 0 where clamped
    assert w.grad[0].tolist() == pytest.approx([1.0, 1.0, 0.0, 1.0], abs=1e-5)


def test_activations_uniform_per_input_channel():
    q = DambqActQuantizer(2, bits=2, alpha=3.0)
    q.bits[1] = 0
    x = torch.tensor([0.4, 1.6, 5.0, -1.0]).view(1, 1, 2, 2).repeat(1, 2, 1, 1)
    y = q(x)
    # 2 bits: x / 3 * 3 = 0.4, 1.6, 3 (clamped), 0 -> round 0, 2, 3, 0 -> times 3 / 3
    assert y[0, 0].flatten().tolist() == pytest.approx([0.0, 2.0, 3.0, 0.0], abs=1e-5)
    assert y[0, 1].flatten().tolist() == [0.0, 0.0, 0.0, 0.0]


def test_lba_errors_ratio_and_lowering():
    w = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    w_q = torch.tensor([[0.5, 2.5], [3.0, 3.0]])
    g = torch.tensor([[2.0, 1.0], [7.0, -1.0]])
    # channel 0: |0.5*2 + (-0.5)*1| / 2 = 0.25; channel 1: |0*7 + 1*(-1)| / 2 = 0.5
    assert weight_error(w, w_q, g).tolist() == pytest.approx([0.25, 0.5])
    x = torch.tensor([[[1.0]], [[2.0]]]).view(1, 2, 1, 1).repeat(2, 1, 1, 1)    # N=2, C=2
    x_q = torch.zeros_like(x)
    gx = torch.tensor([1.0, -1.0, 3.0, 1.0]).view(2, 2, 1, 1)
    # channel 0: |1*1 + 1*3| / 2 = 2; channel 1: |2*(-1) + 2*1| / 2 = 0
    assert act_error(x, x_q, gx).tolist() == pytest.approx([2.0, 0.0])
    # V2's schedule: 0.01 + 0.29 * epoch / 150
    assert lba_ratio(0) == pytest.approx(0.01) and lba_ratio(75) == pytest.approx(0.155)
    assert lba_ratio(150) == pytest.approx(0.3)
    errors = torch.tensor([0.9, 0.1, 0.5, 0.05, 0.7, 0.3, 0.2, 0.8, 0.6, 0.4])
    bits = torch.tensor([4, 4, 4, 0, 4, 3, 4, 4, 4, 4])
    # int(10 * 0.3) = 3 smallest errors: channels 3 (0.05), 1 (0.1), 6 (0.2); channel 3 is
    # at 0 bits already and stays there
    assert lba_lower(errors, bits, 0.3).tolist() == [4, 3, 4, 0, 4, 3, 3, 4, 4, 4]
    assert lba_lower(errors, bits, 0.05).tolist() == bits.tolist()          # int(0.5) = 0
