"""The reference APoT ImageNet/MNIST code's quantized conv, written as that codebase writes it.

An independent second implementation to check the ImageNet family against: the clipping
thresholds are parameters of the conv (``weight_alpha`` 3.0, ``act_alpha`` 6.0), the
weight is normalised with its gradient, 3-5-bit weights and activations go through
``apot_quantization`` (clamp, argmin projection, straight-through ``(xhard - x).detach()
+ x``, alpha gradient by autograd), 2-bit weights through the calibrated-gradient
function; ``grad_scale`` scales the alphas' gradients. First conv and last linear layer
8-bit by ``max(w)`` as in ``reference_apot``. ``reference_model`` swaps these layers
into the project's float ImageNet-layout ResNet, so both sides share the architecture
and, from one seed, the initial weights. The optimiser is plain SGD over
``model.parameters()`` (alphas with the weights' learning rate and weight decay).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import models
from tests.reference_apot import RefFirstConv, RefLastFc, build_power_value


def gradient_scale(x, scale):
    yout = x
    ygrad = x * scale
    return (yout - ygrad).detach() + ygrad


def apot_quantization(tensor, alpha, proj_set, is_weight=True, grad_scale=None):
    def power_quant(x, value_s):
        if is_weight:
            shape, sign = x.shape, x.sign()
            xhard = x.view(-1).abs()
            value_s = value_s.type_as(x)
            idxs = (xhard.unsqueeze(0) - value_s.unsqueeze(1)).abs().min(dim=0)[1]
            xhard = value_s[idxs].view(shape).mul(sign)
        else:
            shape = x.shape
            xhard = x.view(-1)
            value_s = value_s.type_as(x)
            idxs = (xhard.unsqueeze(0) - value_s.unsqueeze(1)).abs().min(dim=0)[1]
            xhard = value_s[idxs].view(shape)
        return (xhard - x).detach() + x

    if grad_scale:
        alpha = gradient_scale(alpha, grad_scale)
    data = tensor / alpha
    data = data.clamp(-1, 1) if is_weight else data.clamp(0, 1)
    return power_quant(data, proj_set) * alpha


def uq_with_calibrated_graditens(grad_scale=None):
    class _uq(torch.autograd.Function):
        @staticmethod
        def forward(ctx, input, alpha):
            input.div_(alpha)
            input_c = input.clamp(min=-1, max=1)
            input_q = input_c.round()
            ctx.save_for_backward(input, input_q)
            return input_q.mul(alpha)

        @staticmethod
        def backward(ctx, grad_output):
            grad_input = grad_output.clone()  # calibration: grad for weights will not be clipped
            input, input_q = ctx.saved_tensors
            i = (input.abs() > 1.).float()
            sign = input.sign()
            grad_alpha = (grad_output * (sign * i + (input_q - input) * (1 - i))).sum()
            if grad_scale:
                grad_alpha = grad_alpha * grad_scale
            return grad_input, grad_alpha

    return _uq.apply   # the reference writes _uq().apply, which torch now warns about


class RefImageNetQuantConv2d(nn.Conv2d):
    """The reference's ``QuantConv2d`` (power=True, additive=True) around a float conv's weight."""

    def __init__(self, conv: nn.Conv2d, bit: int, grad_scale=None):
        super().__init__(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                         conv.padding, conv.dilation, conv.groups, conv.bias is not None)
        self.weight = conv.weight
        self.bit, self.grad_scale = bit, grad_scale
        if self.bit > 2:
            self.proj_set_weight = build_power_value(B=self.bit - 1, additive=True)
        self.proj_set_act = build_power_value(B=self.bit, additive=True)
        self.act_alpha = torch.nn.Parameter(torch.tensor(6.0))
        self.weight_alpha = torch.nn.Parameter(torch.tensor(3.0))

    def forward(self, x):
        mean = self.weight.mean()
        std = self.weight.std()
        weight = self.weight.add(-mean).div(std)
        if self.bit > 2:
            weight = apot_quantization(weight, self.weight_alpha, self.proj_set_weight, True, self.grad_scale)
        else:
            weight = uq_with_calibrated_graditens(self.grad_scale)(weight, self.weight_alpha)
        x = apot_quantization(x, self.act_alpha, self.proj_set_act, False, self.grad_scale)
        return F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


def reference_model(seed: int, bits: int, arch: str = "mnist_resnet10", in_channels: int = 1,
                    num_classes: int = 10, grad_scale=None) -> nn.Module:
    """The project's float ImageNet-layout ResNet built from ``seed``, with the reference's layers in."""
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
                setattr(mod, child_name, RefImageNetQuantConv2d(child, bits, grad_scale))
    return net
