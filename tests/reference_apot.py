"""The reference APoT CIFAR code's quantized layers, written as that codebase writes them.

An independent second implementation to check the project against: weight
normalisation, an in-place ``div_`` by alpha, clamp, then ``round`` (2-bit weights) or an
argmin over a levels x elements distance matrix, and the straight-through backward with
the clipping gradient; 8-bit first conv and last linear layer by ``max(w)``; the
optimiser groups of the reference ``main.py`` (alphas at absolute learning rates).
``reference_model`` swaps these layers into the project's float ResNet, so both sides
share the architecture and, from one seed, the initial weights.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import models


def build_power_value(B=2, additive=True):
    base_a, base_b, base_c = [0.], [0.], [0.]
    if additive:
        if B == 2:
            for i in range(3):
                base_a.append(2 ** (-i - 1))
        elif B == 4:
            for i in range(3):
                base_a.append(2 ** (-2 * i - 1))
                base_b.append(2 ** (-2 * i - 2))
        elif B == 3:
            for i in range(3):
                if i < 2:
                    base_a.append(2 ** (-i - 1))
                else:
                    base_b.append(2 ** (-i - 1))
                    base_a.append(2 ** (-i - 2))
        elif B == 5:  # the ImageNet/MNIST code's addition (5-bit weights, reference_apot_imagenet)
            for i in range(3):
                if i < 2:
                    base_a.append(2 ** (-2 * i - 1))
                    base_b.append(2 ** (-2 * i - 2))
                else:
                    base_c.append(2 ** (-2 * i - 1))
                    base_a.append(2 ** (-2 * i - 2))
                    base_b.append(2 ** (-2 * i - 3))
        else:
            raise ValueError(f"B={B} not needed here")
    values = torch.Tensor(list({a + b + c for a in base_a for b in base_b for c in base_c}))
    return values.mul(1.0 / torch.max(values))


def weight_quantization(b, grids, power=True):
    def uniform_quant(x, b):
        return x.mul(2 ** b - 1).round().div(2 ** b - 1)

    def power_quant(x, value_s):
        shape, sign = x.shape, x.sign()
        xhard = x.view(-1).abs()
        value_s = value_s.type_as(x)
        idxs = (xhard.unsqueeze(0) - value_s.unsqueeze(1)).abs().min(dim=0)[1]
        return value_s[idxs].view(shape).mul(sign)

    class _pq(torch.autograd.Function):
        @staticmethod
        def forward(ctx, input, alpha):
            input.div_(alpha)
            input_c = input.clamp(min=-1, max=1)
            sign = input_c.sign()
            input_abs = input_c.abs()
            input_q = (power_quant(input_abs, grids) if power else uniform_quant(input_abs, b)).mul(sign)
            ctx.save_for_backward(input, input_q)
            return input_q.mul(alpha)

        @staticmethod
        def backward(ctx, grad_output):
            grad_input = grad_output.clone()          # weight gradients are not clipped
            input, input_q = ctx.saved_tensors
            i = (input.abs() > 1.).float()
            sign = input.sign()
            grad_alpha = (grad_output * (sign * i + (input_q - input) * (1 - i))).sum()
            return grad_input, grad_alpha

    return _pq.apply


class weight_quantize_fn(nn.Module):
    def __init__(self, w_bit, power=True):
        super().__init__()
        self.w_bit = w_bit - 1
        self.power = power if w_bit > 2 else False
        self.grids = build_power_value(self.w_bit, additive=True) if self.power else None
        self.weight_q = weight_quantization(b=self.w_bit, grids=self.grids, power=self.power)
        self.register_parameter("wgt_alpha", nn.Parameter(torch.tensor(3.0)))

    def forward(self, weight):
        mean, std = weight.data.mean(), weight.data.std()
        weight = weight.add(-mean).div(std)
        return self.weight_q(weight, self.wgt_alpha)


def act_quantization(b, grid, power=True):
    def uniform_quant(x, b=3):
        return x.mul(2 ** b - 1).round().div(2 ** b - 1)

    def power_quant(x, grid):
        shape = x.shape
        xhard = x.view(-1)
        value_s = grid.type_as(x)
        idxs = (xhard.unsqueeze(0) - value_s.unsqueeze(1)).abs().min(dim=0)[1]
        return value_s[idxs].view(shape)

    class _uq(torch.autograd.Function):
        @staticmethod
        def forward(ctx, input, alpha):
            input = input.div(alpha)
            input_c = input.clamp(max=1)
            input_q = power_quant(input_c, grid) if power else uniform_quant(input_c, b)
            ctx.save_for_backward(input, input_q)
            return input_q.mul(alpha)

        @staticmethod
        def backward(ctx, grad_output):
            grad_input = grad_output.clone()
            input, input_q = ctx.saved_tensors
            i = (input > 1.).float()
            grad_alpha = (grad_output * (i + (input_q - input) * (1 - i))).sum()
            return grad_input * (1 - i), grad_alpha

    return _uq.apply


class RefQuantConv2d(nn.Conv2d):
    def __init__(self, conv: nn.Conv2d, bit: int):
        super().__init__(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                         conv.padding, conv.dilation, conv.groups, conv.bias is not None)
        self.weight = conv.weight
        self.bit = bit
        self.weight_quant = weight_quantize_fn(w_bit=bit, power=True)
        self.act_grid = build_power_value(bit, additive=True)
        self.act_alq = act_quantization(bit, self.act_grid, power=True)
        self.act_alpha = nn.Parameter(torch.tensor(8.0))

    def forward(self, x):
        weight_q = self.weight_quant(self.weight)
        x = self.act_alq(x, self.act_alpha)
        return F.conv2d(x, weight_q, self.bias, self.stride, self.padding, self.dilation, self.groups)


class RefFirstConv(nn.Conv2d):
    def __init__(self, conv: nn.Conv2d):
        super().__init__(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                         conv.padding, conv.dilation, conv.groups, conv.bias is not None)
        self.weight = conv.weight

    def forward(self, x):
        max = self.weight.data.max()
        weight_q = self.weight.div(max).mul(127).round().div(127).mul(max)
        weight_q = (weight_q - self.weight).detach() + self.weight
        return F.conv2d(x, weight_q, self.bias, self.stride, self.padding, self.dilation, self.groups)


class RefLastFc(nn.Linear):
    def __init__(self, fc: nn.Linear):
        super().__init__(fc.in_features, fc.out_features, fc.bias is not None)
        self.weight, self.bias = fc.weight, fc.bias

    def forward(self, x):
        max = self.weight.data.max()
        weight_q = self.weight.div(max).mul(127).round().div(127).mul(max)
        weight_q = (weight_q - self.weight).detach() + self.weight
        return F.linear(x, weight_q, self.bias)


def reference_model(seed: int, bits: int, arch: str = "resnet20", in_channels: int = 3,
                    num_classes: int = 10) -> nn.Module:
    """The project's float CIFAR ResNet built from ``seed``, with the reference's layers in."""
    torch.manual_seed(seed)
    net = models.build_model(arch, num_classes=num_classes, in_channels=in_channels)
    for name, mod in list(net.named_modules()):
        for child_name, child in list(mod.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if full == "conv1":
                setattr(mod, child_name, RefFirstConv(child))
            elif full == "fc":
                setattr(mod, child_name, RefLastFc(child))
            elif isinstance(child, nn.Conv2d):
                setattr(mod, child_name, RefQuantConv2d(child, bits))
    return net


def reference_optimizer(net: nn.Module, lr: float, momentum: float = 0.9, weight_decay: float = 1e-4,
                        alpha_lr_act: float = 0.1, alpha_lr_weight: float = 0.02,
                        alpha_weight_decay: float = 1e-4) -> torch.optim.SGD:
    """The reference ``main.py``'s SGD: one group per parameter, alphas at their own rates."""
    groups = []
    for name, p in net.named_parameters():
        if "act_alpha" in name:
            groups.append({"params": [p], "lr": alpha_lr_act, "weight_decay": alpha_weight_decay})
        elif "wgt_alpha" in name:
            groups.append({"params": [p], "lr": alpha_lr_weight, "weight_decay": alpha_weight_decay})
        else:
            groups.append({"params": [p]})
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)


def state_dict_from_project(project_model: nn.Module) -> dict:
    """The project's quantized model's weights under the reference's names."""
    return {k.replace(".act_quant.act_alpha", ".act_alpha"): v
            for k, v in project_model.state_dict().items()}
