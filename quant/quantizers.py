"""Quantizer modules: each owns its learnable clipping threshold (alpha).

Parameter names follow the reference checkpoints: ``wgt_alpha`` for weights
(``<conv>.weight_quant.wgt_alpha``) and ``act_alpha`` for activations.
"""
from __future__ import annotations

import warnings

import torch
from torch import nn

from . import functional as F
from .levels import LevelSet, act_levels, weight_levels

WEIGHT_ALPHA_INIT = 3.0
ACT_ALPHA_INIT = 8.0


class _LevelQuantizer(nn.Module):
    """Holds a level set's projection table as buffers that follow the module's device."""

    alpha_name = "alpha"

    def __init__(self, levels: LevelSet, init_alpha: float):
        super().__init__()
        self.levels = levels
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
        return f"{self.levels!r}, {self.alpha_name}={float(self.alpha.detach()):.4g}"


class WeightQuantizer(_LevelQuantizer):
    """Normalise, clip by ``wgt_alpha``, project onto the weight level set (sign kept)."""

    alpha_name = "wgt_alpha"

    def __init__(self, bits: int, scheme: str = "apot", z: float | None = None,
                 init_alpha: float = WEIGHT_ALPHA_INIT):
        super().__init__(weight_levels(bits, scheme, z), init_alpha)
        self.bits, self.scheme, self.z = bits, scheme, z

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return F.weight_quantize(w, self.wgt_alpha, self.thr, self.lv)


class ActQuantizer(_LevelQuantizer):
    """Clip by ``act_alpha`` from above and project onto the activation level set."""

    alpha_name = "act_alpha"

    def __init__(self, bits: int, scheme: str = "apot", init_alpha: float = ACT_ALPHA_INIT):
        super().__init__(act_levels(bits, scheme), init_alpha)
        self.bits, self.scheme = bits, scheme

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return F.act_quantize(a, self.act_alpha, self.thr, self.lv)


class FixedPointWeight(nn.Module):
    """The first/last layer weight rule: ``bits``-bit fixed point scaled by max(w)."""

    def __init__(self, bits: int = 8):
        super().__init__()
        self.bits = bits

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return F.fixed_point_weight(w, self.bits)

    def extra_repr(self) -> str:
        return f"bits={self.bits}"
