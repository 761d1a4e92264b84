"""MobileNetV2 with both stems: torchvision's layout, quantized depthwise convs, W4A4 and W2A2 training steps."""
import pytest
import torch
from torch import nn

import models
from models.shapes import model_shape
from quant import FixedPointWeight, QuantConv2d, QuantLinear, QuantPolicy


@pytest.fixture
def eager_kernels():
    from quant import kernels
    before = kernels.mode()
    kernels.set_mode("eager")
    yield
    kernels.set_mode(before)


def test_imagenet_stem_has_torchvisions_weights_and_multiply_accumulates():
    """Same parameter count (3,504,872 with 1000 classes) and per-layer MACs at 224x224 as
    torchvision's mobilenet_v2; the CIFAR stem ends 32x32 inputs at 4x4 maps."""
    from torchvision.models import mobilenet_v2
    ours, theirs = models.get_entry("mobilenetv2").fn(num_classes=1000), mobilenet_v2()
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters()) == 3504872
    a, b = model_shape(ours, (224, 224)), model_shape(theirs, (224, 224))
    assert [s.macs for s in a.layers.values()] == [s.macs for s in b.layers.values()]
    assert sum(s.macs for s in a.layers.values()) == 300774272
    cifar = model_shape(models.get_entry("mobilenetv2_cifar").fn(), (32, 32))
    assert cifar.layers["conv2"].in_elems == 320 * 4 * 4


@pytest.mark.parametrize("bits", [4, 2])
@pytest.mark.parametrize("arch", ["mobilenetv2_cifar", "mobilenetv2"])
def test_every_conv_but_the_first_is_quantized_depthwise_included(arch, bits):
    """At WnAn every conv but the first is quantized, the 17 depthwise ones included (their
    quantized weights take only the level set's values times alpha); first and last layers
    are 8-bit fixed point. (Forward and backward at W4A4 and W2A2, with a gradient on the
    first quantized layer's thresholds, a depthwise conv here: tests/models/test_models.py,
    test_registered_model_forward_backward.)"""
    m = models.build_model(arch, num_classes=10, policy=QuantPolicy(w_bits=bits, a_bits=bits))
    assert m.quant_policy.family == models.get_entry(arch).family
    convs = {n: c for n, c in m.named_modules() if isinstance(c, nn.Conv2d)}
    assert all(isinstance(c, QuantConv2d) for c in convs.values())
    assert isinstance(m.conv1.weight_quant, FixedPointWeight) and m.conv1.act_quant is None
    assert isinstance(m.fc, QuantLinear) and m.fc.weight_quant.bits == 8 and m.fc.act_quant is None
    depthwise = [c for c in convs.values() if c.groups > 1]
    assert len(depthwise) == 17 and all(c.groups == c.in_channels == c.out_channels for c in depthwise)
    for n, c in convs.items():
        if n != "conv1":
            assert c.weight_quant.bits == bits and c.act_quant.bits == bits, n
    dw = m.layer3[1].conv2
    with torch.no_grad():
        q = dw.quantized_weight() / dw.weight_quant.alpha
    assert set(torch.unique(q.abs()).tolist()) <= set(dw.weight_quant.lv.tolist())


def test_expansion_inputs_can_stay_full_precision(eager_kernels):
    """The documented quant.layers entry leaves the signed inputs (expansion convs, head
    conv) unquantized and quantizes the rest; the model still runs."""
    m = models.build_model("mobilenetv2_cifar", policy=QuantPolicy(
        w_bits=4, a_bits=4, layers={"layer*.*.conv1": {"a_bits": 32}, "conv2": {"a_bits": 32}}))
    assert m.layer2[0].conv1.act_quant is None and m.conv2.act_quant is None
    assert m.layer2[0].conv1.weight_quant.bits == 4
    assert m.layer2[0].conv2.act_quant.bits == 4 and m.layer1[0].conv3.act_quant.bits == 4
    assert m(torch.randn(1, 3, 16, 16)).shape == (1, 10)
