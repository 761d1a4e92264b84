"""Quantizer modules: each owns its learnable clipping threshold (alpha).

Parameter names follow the reference checkpoints: ``wgt_alpha`` for weights
(``<conv>.weight_quant.wgt_alpha``) and ``act_alpha`` for activations. ``family``
selects the CIFAR or the ImageNet variant of the same rules (``functional``); an
ImageNet-family layer saves its alphas as ``<conv>.weight_alpha`` and ``<conv>.act_alpha``
(``layers``). ``grad_scale`` multiplies the alpha's gradient (None: 1).
"""
from __future__ import annotations

import warnings

import torch
from torch import nn

from . import functional as F
from .levels import LevelSet, act_levels, weight_levels

WEIGHT_ALPHA_INIT = 3.0
ACT_ALPHA_INIT = {"cifar": 8.0, "imagenet": 6.0}


class _LevelQuantizer(nn.Module):
    """Holds a level set's projection table as buffers that follow the module's device."""

    alpha_name = "alpha"

    def __init__(self, levels: LevelSet, init_alpha: float, family: str = "cifar",
                 grad_scale: float | None = None):
        super().__init__()
        self.levels, self.family, self.grad_scale = levels, family, grad_scale
        self.register_parameter(self.alpha_name, nn.Parameter(torch.tensor(float(init_alpha))))
        self.register_buffer("thr", torch.from_numpy(levels.thresholds.copy()), persistent=False)
        self.register_buffer("lv", torch.from_numpy(levels.levels.copy()), persistent=False)

    @property
    def alpha(self) -> nn.Parameter:
        return getattr(self, self.alpha_name)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + self.alpha_name
        value = state_dict.get(key)
        if value is not None and torch.is_tensor(value) and bool((value < 0).any()):
            warnings.warn(f"{prefix.rstrip('.')}: loaded clipping threshold {self.alpha_name}="
                          f"{float(value):.4g} is negative; using its absolute value",
                          RuntimeWarning, stacklevel=2)
            state_dict[key] = value.abs()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        extra = "" if self.family == "cifar" else f", family={self.family}"
        extra += "" if self.grad_scale is None else f", grad_scale={self.grad_scale:g}"
        return f"{self.levels!r}, {self.alpha_name}={float(self.alpha.detach()):.4g}{extra}"


class WeightQuantizer(_LevelQuantizer):
    """Normalise, clip by ``wgt_alpha``, project onto the weight level set (sign kept)."""

    alpha_name = "wgt_alpha"

    def __init__(self, bits: int, scheme: str = "apot", z: float | None = None,
                 init_alpha: float = WEIGHT_ALPHA_INIT, family: str = "cifar",
                 grad_scale: float | None = None):
        super().__init__(weight_levels(bits, scheme, z), init_alpha, family, grad_scale)
        self.bits, self.scheme, self.z = bits, scheme, z

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return F.weight_quantize(w, self.wgt_alpha, self.thr, self.lv, self.family, self.grad_scale)


class ActQuantizer(_LevelQuantizer):
    """Clip by ``act_alpha`` from above (ImageNet family: to [0, alpha]) and project onto the
    activation level set."""

    alpha_name = "act_alpha"

    def __init__(self, bits: int, scheme: str = "apot", init_alpha: float | None = None,
                 family: str = "cifar", grad_scale: float | None = None):
        init = ACT_ALPHA_INIT[family] if init_alpha is None else init_alpha
        super().__init__(act_levels(bits, scheme), init, family, grad_scale)
        self.bits, self.scheme = bits, scheme

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return F.act_quantize(a, self.act_alpha, self.thr, self.lv, self.family, self.grad_scale)


class FixedPointWeight(nn.Module):
    """The first/last layer weight rule: ``bits``-bit fixed point scaled by max(w)."""

    def __init__(self, bits: int = 8):
        super().__init__()
        self.bits = bits

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return F.fixed_point_weight(w, self.bits)

    def extra_repr(self) -> str:
        return f"bits={self.bits}"
