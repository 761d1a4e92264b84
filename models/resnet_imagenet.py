"""ImageNet-layout ResNets (He et al. 2016): ResNet-18/34/50 and the narrow MNIST ResNets.

A 7x7 stride-2 first conv, a 3x3 stride-2 max-pool, four stages of basic blocks or
bottlenecks, adaptive average pooling and a linear layer. ImageNet widths are 64-512
channels; the MNIST variants (``mnist_resnet10/14/18/34/50``) are the same layout at
16-128 channels, as the reference's MNIST folder builds them. Module names follow the
reference checkpoints (``conv1``, ``layer1.0.conv1``, ``layer2.0.downsample.0``, ``fc``).
Every conv but the first is quantized by the policy, the shortcut 1x1 convs included;
their reference uses the ImageNet family of quantizers.
"""
from __future__ import annotations

from torch import nn

from .registry import register_model
from .resnet_cifar import BasicBlock  # the same block; the shortcut comes from _make_layer

IMAGENET_WIDTHS = (64, 128, 256, 512)
MNIST_WIDTHS = (16, 32, 64, 128)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ImageNetResNet(nn.Module):
    first_layer = "conv1"
    last_layer = "fc"

    def __init__(self, block, blocks, widths=IMAGENET_WIDTHS, num_classes: int = 1000,
                 in_channels: int = 3):
        super().__init__()
        self.in_planes = widths[0]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, widths[0], blocks[0], stride=1)
        self.layer2 = self._make_layer(block, widths[1], blocks[1], stride=2)
        self.layer3 = self._make_layer(block, widths[2], blocks[2], stride=2)
        self.layer4 = self._make_layer(block, widths[3], blocks[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3] * block.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, block, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.in_planes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.in_planes, planes * block.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.in_planes, planes, stride, downsample)]
        self.in_planes = planes * block.expansion
        layers += [block(self.in_planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))


@register_model(family="imagenet")
def resnet18(**kw):
    return ImageNetResNet(BasicBlock, (2, 2, 2, 2), **kw)


@register_model(family="imagenet")
def resnet34(**kw):
    return ImageNetResNet(BasicBlock, (3, 4, 6, 3), **kw)


@register_model(family="imagenet")
def resnet50(**kw):
    return ImageNetResNet(Bottleneck, (3, 4, 6, 3), **kw)


@register_model(family="imagenet")
def mnist_resnet10(**kw):
    return ImageNetResNet(BasicBlock, (1, 1, 1, 1), MNIST_WIDTHS, **kw)


@register_model(family="imagenet")
def mnist_resnet14(**kw):
    return ImageNetResNet(BasicBlock, (2, 1, 1, 2), MNIST_WIDTHS, **kw)


@register_model(family="imagenet")
def mnist_resnet18(**kw):
    return ImageNetResNet(BasicBlock, (2, 2, 2, 2), MNIST_WIDTHS, **kw)


@register_model(family="imagenet")
def mnist_resnet34(**kw):
    return ImageNetResNet(BasicBlock, (3, 4, 6, 3), MNIST_WIDTHS, **kw)


@register_model(family="imagenet")
def mnist_resnet50(**kw):
    return ImageNetResNet(Bottleneck, (3, 4, 6, 3), MNIST_WIDTHS, **kw)
