"""LBA, DAMBQ's loss-aware bit allocation: the ratio schedule, the lowering step, and a
whole allocator on a hand-checked case (two layers, given errors and shapes: which
channels lose a bit, the averages weighted by parameters and input elements, and the
stopping rule at the budget + margin)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from models.shapes import LayerShape, ModelShape
from quant.dambq import DambqActQuantizer, DambqWeightQuantizer
from quant.layers import QuantConv2d
from quant.lba import LbaAllocator, lba_lower, lba_ratio
from quant.policy import QuantPolicy


def test_ratio_schedule():
    # V2's schedule: 0.01 + 0.29 * epoch / 150
    assert lba_ratio(0) == pytest.approx(0.01) and lba_ratio(75) == pytest.approx(0.155)
    assert lba_ratio(150) == pytest.approx(0.3)
    # a short one: 0.2 + (0.5 - 0.2) * 2 / 4 = 0.35
    assert lba_ratio(2, 0.2, 0.5, 4) == pytest.approx(0.35)


def test_lowering_step():
    errors = torch.tensor([0.9, 0.1, 0.5, 0.05, 0.7, 0.3, 0.2, 0.8, 0.6, 0.4])
    bits = torch.tensor([4, 4, 4, 0, 4, 3, 4, 4, 4, 4])
    # int(10 * 0.3) = 3 smallest errors: channels 3 (0.05), 1 (0.1), 6 (0.2); channel 3 is
    # at 0 bits already and stays there
    assert lba_lower(errors, bits, 0.3).tolist() == [4, 3, 4, 0, 4, 3, 3, 4, 4, 4]
    assert lba_lower(errors, bits, 0.05).tolist() == bits.tolist()          # int(0.5) = 0


class TwoLayers(nn.Module):
    """a: 3x3 conv 2 -> 2 channels on 4x4 inputs; b: 1x1 conv 2 -> 4 channels on 2x2."""

    def __init__(self):
        super().__init__()
        self.a = QuantConv2d(2, 2, 3, bias=False, weight_quantizer=DambqWeightQuantizer(2),
                             act_quantizer=DambqActQuantizer(2))
        self.b = QuantConv2d(2, 4, 1, bias=False, weight_quantizer=DambqWeightQuantizer(4),
                             act_quantizer=DambqActQuantizer(2))


# parameters: a 2*2*9 = 36 (18 per output channel), b 2*4 = 8 (2 per channel); input
# elements per image: a 2*4*4 = 32 (16 per channel), b 2*2*2 = 8 (4 per channel)
SHAPE = ModelShape({"a": LayerShape(36, 36 * 16, 32), "b": LayerShape(8, 8 * 4, 8)}, 0, None, None, (4, 4))


def _set_errors(model, w_a, w_b, x_a, x_b):
    for q, e in ((model.a.weight_quant, w_a), (model.b.weight_quant, w_b),
                 (model.a.act_quant, x_a), (model.b.act_quant, x_b)):
        q.err.copy_(torch.tensor(e))


def test_allocator_on_a_hand_checked_case():
    model = TwoLayers()
    policy = QuantPolicy(w_bits=4, a_bits=4, scheme="dambq",
                         budget={"avg_w_bits": 3.5, "avg_a_bits": 3.0},
                         allocation={"method": "lba", "ratio_start": 0.34, "ratio_end": 0.5,
                                     "schedule_epochs": 2})
    lba = LbaAllocator(model, policy, SHAPE)
    assert lba.limits == pytest.approx({"avg_w_bits": 3.57, "avg_a_bits": 3.07})   # + 0.07
    assert (lba.cost().avg_w_bits, lba.cost().avg_a_bits) == (4.0, 4.0)

    # epoch 0: ratio 0.34. Weights, 6 channels ranked across both layers by error
    # (a: 0.5, 0.1; b: 0.3, 0.05, 0.2, 0.4): int(6 * 0.34) = 2 lose a bit, b's channel 1
    # (0.05) and a's channel 1 (0.1). Activations, 4 input channels (a: 0.2, 0.9; b: 0.1,
    # 0.3): int(4 * 0.34) = 1, b's channel 0.
    lba.begin_epoch(0)
    assert lba.recording and model.a.weight_quant.record and model.b.act_quant.record
    _set_errors(model, [0.5, 0.1], [0.3, 0.05, 0.2, 0.4], [0.2, 0.9], [0.1, 0.3])
    assert lba.end_epoch(0) == {"weight": 2, "act": 1}
    assert model.a.weight_quant.bits.tolist() == [4, 3]
    assert model.b.weight_quant.bits.tolist() == [4, 3, 4, 4]
    assert model.a.act_quant.bits.tolist() == [4, 4] and model.b.act_quant.bits.tolist() == [3, 4]
    assert not model.a.weight_quant.record and float(model.a.weight_quant.err.sum()) == 0.0
    # weights by parameters: (36 * 3.5 + 8 * 3.75) / 44 = 156 / 44 = 3.5455, within 3.57 (the
    # plain mean over the six channels, 22 / 6 = 3.667, would not be); activations by input
    # elements: (32 * 4 + 8 * 3.5) / 40 = 3.9, above 3.07
    cost = lba.cost()
    assert cost.avg_w_bits == pytest.approx(156 / 44) and cost.avg_a_bits == pytest.approx(3.9)
    assert not lba.reached()

    # epoch 1: ratio 0.34 + 0.16 / 2 = 0.42. Weights are within their target: unchanged
    # whatever their errors. Activations: int(4 * 0.42) = 1, now a's channel 0 (0.05)
    lba.begin_epoch(1)
    _set_errors(model, [0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.05, 0.9], [0.6, 0.3])
    assert lba.end_epoch(1) == {"act": 1}
    assert model.a.weight_quant.bits.tolist() == [4, 3]
    assert model.a.act_quant.bits.tolist() == [3, 4] and model.b.act_quant.bits.tolist() == [3, 4]
    # (32 * 3.5 + 8 * 3.5) / 40 = 3.5
    assert lba.cost().avg_a_bits == pytest.approx(3.5)

    # epoch 2: ratio 0.5, int(4 * 0.5) = 2: a's channel 1 (0.1) and b's channel 0, which is
    # ranked although already lowered once (0.2): (32 * 3 + 8 * 3) / 40 = 3.0, within 3.07
    lba.begin_epoch(2)
    _set_errors(model, [0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.7, 0.1], [0.2, 0.3])
    assert lba.end_epoch(2) == {"act": 2}
    assert model.a.act_quant.bits.tolist() == [3, 3] and model.b.act_quant.bits.tolist() == [2, 4]
    assert lba.cost().avg_a_bits == pytest.approx(3.0)
    assert lba.reached() and not lba.active(2)
    assert lba.layer_bits() == pytest.approx({"weight/a": 3.5, "act/a": 3.0, "weight/b": 3.75,
                                              "act/b": 3.0})


def test_allocator_stops_after_its_schedule_and_leaves_unset_targets_alone():
    model = TwoLayers()
    policy = QuantPolicy(w_bits=4, a_bits=4, scheme="dambq", budget={"avg_w_bits": 2.0},
                         allocation={"method": "lba", "ratio_start": 0.5, "ratio_end": 0.5,
                                     "schedule_epochs": 1})
    lba = LbaAllocator(model, policy, SHAPE)
    for epoch in range(3):
        lba.begin_epoch(epoch)
        _set_errors(model, [0.5, 0.1], [0.3, 0.05, 0.2, 0.4], [0.2, 0.9], [0.1, 0.3])
        lba.end_epoch(epoch)
    # lowered after epochs 0 and 1 only (3 of 6 weight channels each time: the same three,
    # by the same errors); activations have no target and keep 4 bits
    assert model.a.weight_quant.bits.tolist() == [4, 2]
    assert model.b.weight_quant.bits.tolist() == [4, 2, 2, 4]
    assert model.a.act_quant.bits.tolist() == [4, 4] and model.b.act_quant.bits.tolist() == [4, 4]
    assert not lba.active(2) and not lba.reached()
