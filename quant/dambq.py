"""DAMBQ's building blocks (docs/quantization.md, "DAMBQ"): its multi-bit weight codes
with the non-learned per-channel clip, its uniform activations with a learnable
threshold and per-input-channel bits, and the loss-aware bit-width allocation (LBA)
step. The rules are those of the reference code (``sijeh/DAMBQV2``); the constants below
are copied from it.

- Weight codes of ``b`` bits: every ``±a1 ± ... ± ab`` with ``ALPHA_W[b]`` (``Σa = 1``,
  no zero level); 0 bits is the single code 0 (the channel is pruned).
- Weight clip of a channel: ``CLIP_W[b] · mean|w_c|``, set by the first training forward
  and then kept as an exponential moving average (``EMA_DECAY``) over training forwards;
  not learned. A weight is ``clip · nearest code of clamp(w / (clip + EPS), -1, 1)``,
  with a straight-through gradient.
- Activations: ``round(clamp(x / α, 0, 1) · (2^b − 1)) · α / (2^b − 1)``, ``α``
  learnable (initially 3.0), one ``b`` per input channel; 0 bits gives 0.
- LBA: per channel, ``|Σ (w − w_q) · ∂L/∂w_q| / n_c`` (weights) and
  ``|Σ (x − x_q) · ∂L/∂x_q| / (N·H·W)`` (activations) accumulate over an epoch's
  iterations; at the epoch's end, while the average bits are above the target plus a
  margin, the fraction ``r = 0.01 + (range − 0.01) · (epoch − start) / (end − start)`` of
  all channels (ranked across layers) with the smallest error lose one bit; bits only
  decrease, never below 0.

Nothing here is wired into ``QuantPolicy`` yet (no ``quant.scheme: dambq``).
"""
from __future__ import annotations

import itertools

import torch
from torch import nn

__all__ = ["ALPHA_W", "CLIP_W", "EMA_DECAY", "EPS", "MAX_BITS", "LBA_MARGIN", "dambq_codes",
           "quantize_weight", "quantize_act", "DambqWeightQuantizer", "DambqActQuantizer",
           "weight_error", "act_error", "lba_ratio", "lba_lower"]

ALPHA_W = ((0.0, 0.0, 0.0, 0.0),
           (1.0, 0.0, 0.0, 0.0),
           (0.6123, 0.3877, 0.0, 0.0),
           (0.4557, 0.3436, 0.2007, 0.0),
           (0.3317, 0.2858, 0.2346, 0.1479))
CLIP_W = (0.5, 0.98, 2.6, 4.16, 5.66)          # clip = CLIP_W[bits] * mean|w_c|
EMA_DECAY = 0.99
EPS = 1e-6
MAX_BITS = 4
LBA_MARGIN = 0.07                               # LBA stops at target + margin


def _table() -> torch.Tensor:
    """(MAX_BITS + 1, 2^MAX_BITS): row b holds every sign combination of ALPHA_W[b]
    (repeated values where ALPHA_W[b] has zeros), in the reference's order."""
    alpha = torch.tensor(ALPHA_W, dtype=torch.float64)
    signs = torch.tensor(list(itertools.product((-1.0, 1.0), repeat=MAX_BITS)), dtype=torch.float64)
    return (alpha @ signs.T).float()


_CODES = _table()


def dambq_codes(bits: int) -> list[float]:
    """The distinct weight codes of ``bits`` (0..4), ascending."""
    return sorted({round(v, 6) for v in _CODES[bits].tolist()})


def quantize_weight(w: torch.Tensor, clip: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Per output channel: ``clip[c] · nearest code of bits[c]`` (straight-through
    gradient through the clamp)."""
    c = w.shape[0]
    x = torch.clamp(w / (clip.view(-1, *([1] * (w.dim() - 1))) + EPS), -1, 1)
    codes = _CODES.to(w.device, w.dtype).index_select(0, bits.to(w.device))     # (C, 16)
    flat = x.reshape(c, 1, -1)
    idx = (flat - codes.view(c, -1, 1)).abs().argmin(dim=1)                    # (C, n)
    hard = torch.gather(codes, 1, idx).view_as(x)
    return ((hard - x).detach() + x) * clip.view(-1, *([1] * (w.dim() - 1)))


def quantize_act(x: torch.Tensor, alpha: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Uniform, per input channel (dimension 1): bits 0 gives 0."""
    shape = (1, -1) + (1,) * (x.dim() - 2)
    scale = (2.0 ** bits.to(x.device, x.dtype) - 1).view(shape)
    y = torch.clamp(x / (alpha + EPS), 0, 1) * scale
    y = (y.round() - y).detach() + y
    return y * alpha / (scale + EPS)


class DambqWeightQuantizer(nn.Module):
    """Multi-bit codes per output channel; the clip is a buffer (EMA of
    ``CLIP_W[b] · mean|w_c|`` over training forwards)."""

    def __init__(self, channels: int, bits: int = MAX_BITS):
        super().__init__()
        self.register_buffer("bits", torch.full((channels,), bits, dtype=torch.long))
        self.register_buffer("clip", torch.ones(channels))
        self.register_buffer("clip_set", torch.tensor(False))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if self.training:
            with torch.no_grad():
                mean_abs = w.abs().reshape(w.shape[0], -1).mean(dim=1)
                current = torch.tensor(CLIP_W, device=w.device, dtype=w.dtype)[self.bits] * mean_abs
                if bool(self.clip_set):
                    self.clip.mul_(EMA_DECAY).add_((1 - EMA_DECAY) * current)
                else:
                    self.clip.copy_(current)
                    self.clip_set.fill_(True)
        return quantize_weight(w, self.clip, self.bits)


class DambqActQuantizer(nn.Module):
    """Uniform activations, one learnable threshold per layer, bits per input channel."""

    def __init__(self, channels: int, bits: int = MAX_BITS, alpha: float = 3.0):
        super().__init__()
        self.act_alpha = nn.Parameter(torch.tensor(float(alpha)))
        self.register_buffer("bits", torch.full((channels,), bits, dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return quantize_act(x, self.act_alpha, self.bits)


# ------------------------------------------------------------------------------ LBA

def weight_error(w: torch.Tensor, w_q: torch.Tensor, grad_w_q: torch.Tensor) -> torch.Tensor:
    """Per output channel ``|Σ (w − w_q) · ∂L/∂w_q| / n_c``."""
    prod = ((w - w_q) * grad_w_q).reshape(w.shape[0], -1)
    return prod.sum(dim=1).abs() / prod.shape[1]


def act_error(x: torch.Tensor, x_q: torch.Tensor, grad_x_q: torch.Tensor) -> torch.Tensor:
    """Per input channel ``|Σ_{N,H,W} (x − x_q) · ∂L/∂x_q| / (N·H·W)``."""
    prod = ((x - x_q) * grad_x_q).transpose(0, 1).reshape(x.shape[1], -1)
    return prod.sum(dim=1).abs() / prod.shape[1]


def lba_ratio(epoch: int, start: int = 0, end: int = 150, ratio_range: float = 0.3) -> float:
    """The fraction of channels lowered at the end of ``epoch``."""
    return (ratio_range - 0.01) * (epoch - start) / (end - start) + 0.01


def lba_lower(errors: torch.Tensor, bits: torch.Tensor, ratio: float) -> torch.Tensor:
    """New bits: the ``int(n · ratio)`` channels with the smallest accumulated error (all
    layers' channels concatenated) lose one bit, never below 0."""
    k = int(len(errors) * ratio)
    out = bits.clone()
    if k:
        idx = torch.topk(errors, k, largest=False).indices
        out[idx] -= 1
    return out.clamp(min=0)
