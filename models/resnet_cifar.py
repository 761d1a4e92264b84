"""CIFAR ResNets (He et al. 2016, section 4.2): 16-32-64 channels, 6n+2 layers.

Built from plain ``nn.Conv2d``/``nn.Linear``; a ``quant.QuantPolicy`` swaps in the
quantized layers afterwards. Module names follow the reference checkpoints
(``conv1``, ``layer2.0.conv1``, ``layer2.0.downsample.0``, ``fc``). Adaptive average
pooling, so 28x28 one-channel MNIST images work too.
"""
from __future__ import annotations

from torch import nn

from .registry import register_model


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None):
        """``downsample``: the shortcut, built by the caller (the ImageNet layout builds it
        first); None builds the 1x1 conv + batch norm here when the shape changes."""
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        if downsample is None and (stride != 1 or in_planes != planes):
            downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes))
        self.downsample = downsample

    def forward(self, x):
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + residual)


class CifarResNet(nn.Module):
    first_layer = "conv1"
    last_layer = "fc"

    def __init__(self, depth: int, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110); got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.in_planes = 16
        self.layer1 = self._make_layer(16, n, stride=1)
        self.layer2 = self._make_layer(32, n, stride=2)
        self.layer3 = self._make_layer(64, n, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (blocks - 1):
            layers.append(BasicBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(x).flatten(1))


@register_model(family="cifar")
def resnet20(**kw):
    return CifarResNet(20, **kw)


@register_model(family="cifar")
def resnet32(**kw):
    return CifarResNet(32, **kw)


@register_model(family="cifar")
def resnet44(**kw):
    return CifarResNet(44, **kw)


@register_model(family="cifar")
def resnet56(**kw):
    return CifarResNet(56, **kw)


@register_model(family="cifar")
def resnet110(**kw):
    return CifarResNet(110, **kw)
