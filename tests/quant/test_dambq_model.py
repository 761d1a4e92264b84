"""A DAMBQ ResNet-20 (``quant.scheme: dambq``): forward and backward at channel and layer
granularity, its cost from the bits its channels hold, and checkpoints that keep the
per-channel bits and clips."""
from __future__ import annotations

import pytest
import torch

import models
from models.checkpoint import build_from_checkpoint, load_weights, save_checkpoint
from quant import FixedPointWeight, QuantPolicy
from quant.dambq import DambqActQuantizer, DambqWeightQuantizer, mean_bits
from sweep.train.bits import bits_label, bits_record, model_cost


def _model(granularity="channel", **quant):
    policy = QuantPolicy(w_bits=4, a_bits=4, scheme="dambq", granularity=granularity, **quant)
    return models.build_model("resnet20", policy=policy)


@pytest.mark.parametrize("granularity, w_groups, a_groups", [("channel", 64, 32), ("layer", 1, 1)])
def test_forward_backward(granularity, w_groups, a_groups):
    torch.manual_seed(0)
    model = _model(granularity)
    conv = model.layer3[0].conv1                          # 32 -> 64 channels
    assert isinstance(conv.weight_quant, DambqWeightQuantizer) and isinstance(conv.act_quant, DambqActQuantizer)
    assert conv.weight_quant.bits.shape == (w_groups,) and conv.act_quant.bits.shape == (a_groups,)
    assert isinstance(model.conv1.weight_quant, FixedPointWeight) and model.conv1.act_quant is None
    model.train()
    out = model(torch.randn(4, 3, 8, 8))
    torch.nn.functional.cross_entropy(out, torch.tensor([0, 1, 2, 3])).backward()
    assert torch.isfinite(out).all()
    assert conv.weight.grad.abs().sum() > 0 and conv.act_quant.act_alpha.grad is not None
    # the clip was set by the training forward: 5.66 (4 bits) * mean|w| of each group
    mean_abs = conv.weight.detach().abs().reshape(w_groups, -1).mean(dim=1)
    assert torch.allclose(conv.weight_quant.clip, 5.66 * mean_abs)
    # the DAMBQ layers' activation thresholds are listed with the others (initially 3.0)
    from quant import alphas
    assert alphas(model)["act/layer3.0.conv1"] == pytest.approx(3.0, abs=0.01)


def test_cost_counts_the_bits_the_channels_hold():
    model = _model()
    assert bits_label(model) == "W4A4" and model_cost(model)[0].avg_w_bits == 4.0
    for name, m in model.named_modules():
        if name.startswith("layer3.") and isinstance(m, DambqWeightQuantizer):
            m.bits.fill_(2)
    # per-stage weights (tests/quant/test_cost.py): (13,824*4 + 51,200*4 + 204,800*2) / 269,824
    # = 669,696 / 269,824 = 2.482, what a policy with layer3.* at 2 bits counts
    cost = model_cost(model)[0]
    assert cost.avg_w_bits == pytest.approx(669_696 / 269_824)
    same = models.build_model("resnet20", policy=QuantPolicy(w_bits=4, a_bits=4,
                                                             layers={"layer3.*": {"w_bits": 2}}))
    assert cost == model_cost(same)[0]
    # half of layer1.0.conv1's 16 input channels at 0 bits: its mean is 2, and its 16,384
    # input elements count at 2: (208,896*4 - 16,384*2) / 208,896 = 3.843
    model.layer1[0].conv1.act_quant.bits[:8] = 0
    assert model_cost(model)[0].avg_a_bits == pytest.approx((208_896 * 4 - 16_384 * 2) / 208_896)
    record = bits_record(model)
    layer = record["layers"]["layer1.0.conv1"]
    assert layer["a_bits"] == 2.0 and layer["channel_a_bits"] == [0] * 8 + [4] * 8
    assert record["layers"]["layer3.2.conv2"]["channel_w_bits"] == [2] * 64
    assert bits_label(model).startswith("MIXED(")


def test_checkpoint_round_trip_keeps_bits_and_clips(tmp_path):
    torch.manual_seed(0)
    model = _model()
    model.layer2[1].conv2.weight_quant.bits[:5] = torch.tensor([0, 1, 2, 3, 2])
    model.layer2[1].conv2.act_quant.bits[3] = 1
    model.train()
    model(torch.randn(2, 3, 8, 8))                  # sets the clips
    path = save_checkpoint(tmp_path / "m.pt", model, model_cfg={"arch": "resnet20", "num_classes": 10,
                                                                "in_channels": 3},
                           quant_cfg=model.quant_policy, data_cfg={}, prov={"git_commit": None})
    loaded, ckpt = build_from_checkpoint(path)
    assert ckpt["quant"]["allocation"]["method"] == "none" and ckpt["quant"]["granularity"] == "channel"
    for (name, a), (_, b) in zip(model.named_buffers(), loaded.named_buffers()):
        if name.endswith(("bits", "clip")):
            assert torch.equal(a, b), name
    assert mean_bits(loaded) == mean_bits(model)
    model.eval()
    loaded.eval()
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(model(x), loaded(x))
    # as train.init: the weights, not the bits (the trial's own quant.* bits)
    fresh = _model()
    load_weights(fresh, ckpt["state_dict"], path, bits=False)
    assert fresh.layer2[1].conv2.weight_quant.bits.tolist() == [4] * 32
    assert torch.equal(fresh.layer2[1].conv2.weight, model.layer2[1].conv2.weight)
    # a full-precision state dict starts a DAMBQ model: bits, clips, thresholds its own
    fp = models.build_model("resnet20")
    info = load_weights(_model(), fp.state_dict(), "fp32")
    assert len(info["missing_alphas"]) == 20           # one act_alpha per DAMBQ conv (18 + 2 shortcuts)
    # a layer-granularity model cannot take per-channel bits: one message naming them
    with pytest.raises(Exception, match="shape mismatch.*weight_quant.bits"):
        load_weights(_model("layer"), ckpt["state_dict"], path)
