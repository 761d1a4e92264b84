"""Average bits, weight size and BOPs of ResNet-20 (CIFAR, 32x32, 10 classes) against a
count done by hand from the architecture:

    layer                      Cin->Cout  k  out HxW  weights  MACs/image   inputs/image
    conv1 (first, 8-bit)        3->16     3  32x32      432      442,368     3*32*32 = 3,072
    layer1.{0,1,2}.conv{1,2}   16->16     3  32x32    2,304    2,359,296    16*32*32 = 16,384   (x6)
    layer2.0.conv1             16->32     3  16x16    4,608    1,179,648    16*32*32 = 16,384
    layer2.0.downsample.0      16->32     1  16x16      512      131,072    16,384
    layer2.0.conv2, 2.{1,2}.*  32->32     3  16x16    9,216    2,359,296    32*16*16 = 8,192    (x5)
    layer3.0.conv1             32->64     3   8x8    18,432    1,179,648    8,192
    layer3.0.downsample.0      32->64     1   8x8     2,048      131,072    8,192
    layer3.0.conv2, 3.{1,2}.*  64->64     3   8x8    36,864    2,359,296    64*8*8 = 4,096      (x5)
    fc (last, 8-bit)           64->10     -   -         640          640    64

    counted weights (blocks + shortcuts): layer1 6*2304 = 13,824; layer2 4608+512+5*9216 =
    51,200; layer3 18432+2048+5*36864 = 204,800; total 269,824
    counted inputs: layer1 6*16384 = 98,304; layer2 16384+16384+5*8192 = 73,728;
    layer3 8192+8192+5*4096 = 36,864; total 208,896
    other parameters at 32 bits: BN scale+shift 2*(16 + 6*16 + 7*32 + 7*64) = 1,568, fc bias 10
    -> 1,578
    counted MACs: layer1 6*2,359,296 = 14,155,776; layer2 1,179,648+131,072+5*2,359,296 =
    13,107,200; layer3 the same, 13,107,200; total 40,370,176
"""
from __future__ import annotations

import pytest

import models
from models.shapes import arch_shape, model_shape
from quant import QuantPolicy
from quant.cost import bit_cost, budget_excess

EDGE_BYTES = (432 + 640) * 8 / 8          # first and last layer at 8 bits
OTHER_BYTES = 1578 * 4                    # BN and bias at 32 bits
EDGE_BOPS = 442_368 * 8 * 32 + 640 * 8 * 32   # 8-bit weights, unquantized (32-bit) inputs


def test_resnet20_layer_shapes_match_the_hand_count():
    shape = arch_shape("resnet20")
    layers = shape.layers
    assert (layers["conv1"].params, layers["conv1"].macs, layers["conv1"].in_elems) == (432, 442_368, 3072)
    assert (layers["layer2.0.downsample.0"].params, layers["layer2.0.downsample.0"].macs,
            layers["layer2.0.downsample.0"].in_elems) == (512, 131_072, 16_384)
    assert (layers["layer3.2.conv2"].params, layers["layer3.2.conv2"].macs,
            layers["layer3.2.conv2"].in_elems) == (36_864, 2_359_296, 4096)
    counted = [n for n in layers if n not in ("conv1", "fc")]
    assert len(counted) == 18 + 2
    assert sum(layers[n].params for n in counted) == 269_824
    assert sum(layers[n].in_elems for n in counted) == 208_896
    assert sum(layers[n].macs for n in counted) == 40_370_176
    assert shape.other_params == 1578
    # measured on a built model (8-bit first and last layer: QuantConv2d/QuantLinear hooked)
    built = model_shape(models.build_model("resnet20"))
    assert built.layers == shape.layers and built.other_params == 1578


@pytest.mark.parametrize("bits", [4, 2])
def test_uniform_bits(bits):
    cost = bit_cost(QuantPolicy(w_bits=bits, a_bits=bits), arch_shape("resnet20"))
    assert cost.avg_w_bits == bits and cost.avg_a_bits == bits
    # W4A4: 269,824*4/8 = 134,912 + 1,072 + 6,312 = 142,296 bytes
    # W2A2: 269,824*2/8 =  67,456 + 1,072 + 6,312 =  74,840 bytes
    assert cost.weight_size_bytes == {4: 142_296, 2: 74_840}[bits]
    assert cost.weight_size_bytes == 269_824 * bits / 8 + EDGE_BYTES + OTHER_BYTES
    # W4A4: 40,370,176*16 = 645,922,816 + 113,410,048 = 759,332,864
    # W2A2: 40,370,176*4  = 161,480,704 + 113,410,048 = 274,890,752
    assert cost.bops == {4: 759_332_864, 2: 274_890_752}[bits]
    assert cost.bops == 40_370_176 * bits * bits + EDGE_BOPS


def test_mixed_allocation():
    """layer1 W2A2, layer2 W4A4 (model-wide), layer3 W3A3, both shortcuts W4A4 (the last
    matching pattern wins: layer3.0.downsample.0 is W4A4)."""
    policy = QuantPolicy(w_bits=4, a_bits=4, layers={"layer1.*": {"w_bits": 2, "a_bits": 2},
                                                     "layer3.*": {"w_bits": 3, "a_bits": 3},
                                                     "*.downsample.0": {"w_bits": 4, "a_bits": 4}})
    cost = bit_cost(policy, arch_shape("resnet20"))
    # weights: layer1 13,824*2 = 27,648; layer2 51,200*4 = 204,800;
    #          layer3 (204,800 - 2,048)*3 = 608,256 + 2,048*4 = 8,192  -> 848,896 bits
    assert cost.avg_w_bits == pytest.approx(848_896 / 269_824)          # 3.1461...
    # inputs:  layer1 98,304*2 = 196,608; layer2 73,728*4 = 294,912;
    #          layer3 (36,864 - 8,192)*3 = 86,016 + 8,192*4 = 32,768  -> 610,304
    assert cost.avg_a_bits == pytest.approx(610_304 / 208_896)          # 2.9216...
    # size: 848,896/8 = 106,112 + 1,072 + 6,312 = 113,496 bytes
    assert cost.weight_size_bytes == 113_496
    # BOPs: layer1 14,155,776*2*2 = 56,623,104; layer2 13,107,200*16 = 209,715,200;
    #       layer3 (13,107,200 - 131,072)*9 = 116,785,152 + 131,072*16 = 2,097,152;
    #       + the first and last layer 113,410,048  -> 498,630,656
    assert cost.bops == 56_623_104 + 209_715_200 + 116_785_152 + 2_097_152 + EDGE_BOPS == 498_630_656


def test_binary_layers_and_budget_excess():
    policy = QuantPolicy(w_bits=2, a_bits=2, layers={"layer3.*": {"w_bits": 1}},
                         budget={"avg_w_bits": 1.5})
    cost = bit_cost(policy, arch_shape("resnet20"))
    # (13,824 + 51,200)*2 + 204,800*1 = 334,848 bits over 269,824 weights
    assert cost.avg_w_bits == pytest.approx(334_848 / 269_824)
    assert budget_excess(cost, policy.budget) == {"avg_w_bits": pytest.approx(334_848 / 269_824 - 1.5)}
    assert budget_excess(cost, None) == {}


def test_full_precision_counts_32_bits():
    cost = bit_cost(QuantPolicy(first_last_bits=32), arch_shape("resnet20"))
    assert (cost.avg_w_bits, cost.avg_a_bits) == (32, 32)
    assert cost.weight_size_bytes == 272_474 * 4
