"""MobileNetV2 (Sandler et al. 2018): inverted residual blocks, with a CIFAR or an ImageNet stem.

A 3x3 first conv (32 channels), seven stages of inverted residual blocks (the paper's
table 2: expansion t, channels c, blocks n, stride s), a 1x1 conv to 1280 channels,
average pooling and a linear layer. A block is a 1x1 expansion conv (``conv1``, absent
when t = 1), a 3x3 depthwise conv (``conv2``, ``groups`` = its channels) and a 1x1
linear projection (``conv3``), each followed by batch norm, ReLU6 after the first two;
the input is added back when the stride is 1 and the channels agree.

- ``mobilenetv2``: the ImageNet stem and strides (224x224 inputs to 7x7 maps), dropout
  0.2 before the last layer, as torchvision's;
- ``mobilenetv2_cifar``: stride 1 in the first conv and in the second stage, so 32x32
  inputs end at 4x4 maps (the usual CIFAR adaptation); no dropout.

Module names: ``conv1``, ``layer1`` ... ``layer7`` (stages) holding blocks ``layerS.B``
with ``conv1/conv2/conv3`` and ``bn1/bn2/bn3``, then ``conv2``, ``bn2``, ``fc``. Every conv
but the first is quantized by the policy, the depthwise ones included; ``conv1`` and ``fc``
follow ``quant.first_last_bits`` (8-bit by default). Activation quantizers are unsigned,
as in the ResNets, where every quantized conv reads a ReLU output; here the expansion
convs (``layer*.*.conv1``) and the head conv (``conv2``) read a linear projection's output,
whose negative values a quantized input clips to 0. ``quant.layers: {"layer*.*.conv1":
{a_bits: 32}, "conv2": {a_bits: 32}}`` keeps those inputs in full precision.
"""
from __future__ import annotations

from torch import nn

from .registry import register_model

# (expansion t, output channels c, blocks n, stride s) per stage: the paper's table 2
STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
          (6, 160, 3, 2), (6, 320, 1, 1))
STEM_CHANNELS, HEAD_CHANNELS = 32, 1280


class InvertedResidual(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int, expansion: int):
        super().__init__()
        hidden = in_planes * expansion
        if expansion != 1:
            self.conv1 = nn.Conv2d(in_planes, hidden, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(hidden)
        self.conv2 = nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, bias=False)
        self.bn2 = nn.BatchNorm2d(hidden)
        self.conv3 = nn.Conv2d(hidden, planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU6(inplace=True)
        self.residual = stride == 1 and in_planes == planes

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x))) if hasattr(self, "conv1") else x
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return out + x if self.residual else out


class MobileNetV2(nn.Module):
    first_layer = "conv1"
    last_layer = "fc"

    def __init__(self, cifar_stem: bool, num_classes: int = 1000, in_channels: int = 3):
        super().__init__()
        stem_stride = 1 if cifar_stem else 2
        self.conv1 = nn.Conv2d(in_channels, STEM_CHANNELS, 3, stride=stem_stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(STEM_CHANNELS)
        self.relu = nn.ReLU6(inplace=True)
        in_planes = STEM_CHANNELS
        for i, (t, c, n, s) in enumerate(STAGES, start=1):
            if cifar_stem and i == 2:
                s = 1                               # 32x32 inputs: keep the resolution longer
            blocks = [InvertedResidual(in_planes if b == 0 else c, c, s if b == 0 else 1, t)
                      for b in range(n)]
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
            in_planes = c
        self.conv2 = nn.Conv2d(in_planes, HEAD_CHANNELS, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(HEAD_CHANNELS)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(0.0 if cifar_stem else 0.2)
        self.fc = nn.Linear(HEAD_CHANNELS, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        for i in range(1, len(STAGES) + 1):
            x = getattr(self, f"layer{i}")(x)
        x = self.relu(self.bn2(self.conv2(x)))
        return self.fc(self.dropout(self.avgpool(x).flatten(1)))


@register_model(family="imagenet")
def mobilenetv2(**kw):
    return MobileNetV2(cifar_stem=False, **kw)


@register_model(family="cifar")
def mobilenetv2_cifar(**kw):
    return MobileNetV2(cifar_stem=True, **kw)
