"""Drop-in quantized layers: ``QuantConv2d(nn.Conv2d)`` and ``QuantLinear(nn.Linear)``.

A layer takes a ``weight_quantizer`` (applied to its weight) and an ``act_quantizer``
(applied to its input); either may be None (not quantized). The state dict keeps the
float layer's keys plus the quantizers' alphas: ``<layer>.weight_quant.wgt_alpha`` and
``<layer>.act_quant.act_alpha`` (CIFAR family), or, with ImageNet-family quantizers,
under the layer's own names ``<layer>.weight_alpha`` and ``<layer>.act_alpha`` as the
reference's ImageNet and MNIST checkpoints store them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


# ImageNet family: (the quantizer's key, the layer's own key) for each threshold
_OWN_KEYS = (("weight_quant.wgt_alpha", "weight_alpha"), ("act_quant.act_alpha", "act_alpha"))


def _save_own_keys(module, state_dict, prefix, local_metadata):
    for inner, own in _OWN_KEYS:
        if prefix + inner in state_dict:
            state_dict[prefix + own] = state_dict.pop(prefix + inner)
    return state_dict


def _load_own_keys(module, state_dict, prefix, *args):
    for inner, own in _OWN_KEYS:
        if prefix + own in state_dict:
            state_dict[prefix + inner] = state_dict.pop(prefix + own)


class _QuantMixin:
    def _init_quant(self, weight_quantizer: nn.Module | None, act_quantizer: nn.Module | None):
        self.weight_quant = weight_quantizer
        self.act_quant = act_quantizer
        if any(getattr(q, "family", "cifar") == "imagenet" for q in (weight_quantizer, act_quantizer)):
            self._register_state_dict_hook(_save_own_keys)
            self.register_load_state_dict_pre_hook(_load_own_keys)

    def quantized_weight(self) -> torch.Tensor:
        return self.weight if self.weight_quant is None else self.weight_quant(self.weight)

    def quantized_input(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.act_quant is None else self.act_quant(x)

    def _copy_from(self, layer: nn.Module):
        with torch.no_grad():
            self.weight.copy_(layer.weight)
            if layer.bias is not None:
                self.bias.copy_(layer.bias)
        return self.to(layer.weight.device)


class QuantConv2d(_QuantMixin, nn.Conv2d):
    def __init__(self, *args, weight_quantizer: nn.Module | None = None,
                 act_quantizer: nn.Module | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_quant(weight_quantizer, act_quantizer)

    @classmethod
    def from_float(cls, conv: nn.Conv2d, weight_quantizer=None, act_quantizer=None):
        """A quantized copy of ``conv`` (same hyperparameters, weights copied)."""
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                  padding=conv.padding, dilation=conv.dilation, groups=conv.groups,
                  bias=conv.bias is not None, padding_mode=conv.padding_mode,
                  weight_quantizer=weight_quantizer, act_quantizer=act_quantizer)
        return new._copy_from(conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.quantized_input(x), self.quantized_weight(), self.bias)


class QuantLinear(_QuantMixin, nn.Linear):
    def __init__(self, *args, weight_quantizer: nn.Module | None = None,
                 act_quantizer: nn.Module | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_quant(weight_quantizer, act_quantizer)

    @classmethod
    def from_float(cls, linear: nn.Linear, weight_quantizer=None, act_quantizer=None):
        """A quantized copy of ``linear`` (weights copied)."""
        new = cls(linear.in_features, linear.out_features, bias=linear.bias is not None,
                  weight_quantizer=weight_quantizer, act_quantizer=act_quantizer)
        return new._copy_from(linear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.quantized_input(x), self.quantized_weight(), self.bias)
