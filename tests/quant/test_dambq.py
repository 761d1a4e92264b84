"""DAMBQ's weight codes, clip rule, activations and recorded errors against values computed
by hand from the reference's constants (ALPHA_W, CLIP_W = 0.5, 0.98, 2.6, 4.16, 5.66; EMA
0.99; EPS 1e-6)."""
from __future__ import annotations

import pytest
import torch

from quant.dambq import (DambqActQuantizer, DambqWeightQuantizer, act_error, dambq_codes,
                         quantize_weight, weight_error)


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
    # loaded into a new quantizer (the state dict keeps bits and clip, not whether it was
    # set), the first training forward sets the clip afresh, as the reference's init flag
    fresh = DambqWeightQuantizer(2)
    fresh.load_state_dict(q.state_dict())
    assert fresh.bits.tolist() == [2, 3] and torch.equal(fresh.clip, before)
    fresh.train()
    fresh(w)
    assert fresh.clip.tolist() == pytest.approx([5.2, 2.08])


def test_layer_granularity_has_one_clip_and_one_bit_width():
    q = DambqWeightQuantizer(1, bits=2)
    w = torch.tensor([[1.0, -3.0], [0.5, 0.5]]).view(2, 2, 1, 1)
    q.train()
    out = q(w)
    # 2.6 * mean(1, 3, 0.5, 0.5) = 2.6 * 1.25 = 3.25; w / 3.25 = 0.3077, -0.9231, 0.1538,
    # 0.1538 -> nearest of ±0.2246, ±1: 0.2246, -1, 0.2246, 0.2246; times 3.25
    assert q.clip.tolist() == pytest.approx([3.25])
    assert out.flatten().tolist() == pytest.approx([0.72995, -3.25, 0.72995, 0.72995], abs=1e-4)


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


def test_error_formulas():
    w = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    w_q = torch.tensor([[0.5, 2.5], [3.0, 3.0]])
    g = torch.tensor([[2.0, 1.0], [7.0, -1.0]])
    # channel 0: |0.5*2 + (-0.5)*1| / 2 = 0.25; channel 1: |0*7 + 1*(-1)| / 2 = 0.5
    assert weight_error(w, w_q, g, 2).tolist() == pytest.approx([0.25, 0.5])
    # one group (the layer): |0.5*2 + (-0.5)*1 + 0*7 + 1*(-1)| / 4 = |-0.5| / 4 = 0.125
    assert weight_error(w, w_q, g, 1).tolist() == pytest.approx([0.125])
    x = torch.tensor([[[1.0]], [[2.0]]]).view(1, 2, 1, 1).repeat(2, 1, 1, 1)    # N=2, C=2
    x_q = torch.zeros_like(x)
    gx = torch.tensor([1.0, -1.0, 3.0, 1.0]).view(2, 2, 1, 1)
    # channel 0: |1*1 + 1*3| / 2 = 2; channel 1: |2*(-1) + 2*1| / 2 = 0; the layer: |4 + 0| / 4 = 1
    assert act_error(x, x_q, gx, 2).tolist() == pytest.approx([2.0, 0.0])
    assert act_error(x, x_q, gx, 1).tolist() == pytest.approx([1.0])


def test_recording_accumulates_the_errors_over_backward_passes():
    wq = DambqWeightQuantizer(2, bits=2)
    wq.train()
    wq.record = True
    w = torch.tensor([[0.3, 1.3], [-0.4, 0.2]], requires_grad=True)
    g = torch.tensor([[1.0, 2.0], [3.0, -1.0]])
    # clip: 2.6 * mean|w_c| = 2.6 * 0.8 = 2.08 and 2.6 * 0.3 = 0.78; w / clip = 0.1442, 0.625;
    # -0.5128, 0.2564 -> codes 0.2246, 1.0; -0.2246, 0.2246 -> w_q = 0.46717, 2.08; -0.17519,
    # 0.17519; error (∂L/∂w_q = g): |(0.3-0.46717)*1 + (1.3-2.08)*2| / 2 = 0.86359;
    # |(-0.4+0.17519)*3 + (0.2-0.17519)*(-1)| / 2 = 0.34962
    (wq(w) * g).sum().backward()
    assert wq.err.tolist() == pytest.approx([0.86359, 0.34962], abs=1e-4)
    # a second pass adds (the clip moves by the EMA, the weights are the same: same w_q)
    (wq(w) * g).sum().backward()
    assert wq.err.tolist() == pytest.approx([2 * 0.86359, 2 * 0.34962], abs=1e-4)
    aq = DambqActQuantizer(1, bits=2, alpha=3.0)
    aq.train()
    aq.record = True
    x = torch.tensor([0.4, 1.6]).view(1, 2, 1, 1).requires_grad_(True)
    # one group: x_q = 0, 2; |(0.4-0)*1 + (1.6-2)*5| / 2 = |0.4 - 2| / 2 = 0.8
    (aq(x) * torch.tensor([1.0, 5.0]).view(1, 2, 1, 1)).sum().backward()
    assert aq.err.tolist() == pytest.approx([0.8], abs=1e-5)
    aq.eval()
    aq(x).sum().backward()                         # evaluation records nothing
    assert aq.err.tolist() == pytest.approx([0.8], abs=1e-5)
