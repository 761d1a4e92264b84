"""DAMBQ's quantizers (docs/quantization.md, "DAMBQ"): multi-bit weight codes with a
non-learned clip per output channel, uniform activations with a learnable threshold and
bits per input channel, and the per-channel errors its loss-aware bit allocation ranks
(``quant.lba``). The rules are those of the reference code (``sijeh/DAMBQV2``,
``model/quant_layers.py``); the constants below are copied from it.

- Weight codes of ``b`` bits: every ``±a1 ± ... ± ab`` with ``ALPHA_W[b]`` (``Σa = 1``,
  no zero level); 0 bits is the single code 0 (the channel is pruned).
- Weight clip of a group (an output channel, or the whole layer): ``CLIP_W[b] · mean|w|``
  over the group, set by the first training forward after the model is built or loaded
  and then kept as an exponential moving average (``EMA_DECAY``) over training forwards;
  a buffer, not learned. A weight is ``clip · nearest code of clamp(w / (clip + EPS), -1, 1)``,
  with a straight-through gradient.
- Activations: ``round(clamp(x / α, 0, 1) · (2^b − 1)) · α / (2^b − 1)``, ``α``
  learnable (initially 3.0, one per layer), ``b`` per input channel (or one per layer);
  0 bits gives 0.
- Errors (while a quantizer's ``record`` is on, over training backward passes): per
  group ``|Σ (w − w_q) · ∂L/∂w_q| / n`` (weights) and ``|Σ (x − x_q) · ∂L/∂x_q| / n``
  (activations, summed over the batch and the pixels), ``n`` the group's elements in
  that tensor.

The bits, the clip and the activation threshold are in the state dict
(``<layer>.weight_quant.bits``, ``<layer>.weight_quant.clip``, ``<layer>.act_quant.bits``,
``<layer>.act_quant.act_alpha``); the errors and whether the clip was set are not.
"""
from __future__ import annotations

import itertools

import torch
from torch import nn

from .levels import DAMBQ_MAX_BITS as MAX_BITS

__all__ = ["ALPHA_W", "CLIP_W", "EMA_DECAY", "EPS", "MAX_BITS", "ACT_ALPHA_INIT", "dambq_codes",
           "quantize_weight", "quantize_act", "weight_error", "act_error", "DambqWeightQuantizer",
           "DambqActQuantizer", "dambq_layers", "mean_bits"]

ALPHA_W = ((0.0, 0.0, 0.0, 0.0),
           (1.0, 0.0, 0.0, 0.0),
           (0.6123, 0.3877, 0.0, 0.0),
           (0.4557, 0.3436, 0.2007, 0.0),
           (0.3317, 0.2858, 0.2346, 0.1479))
CLIP_W = (0.5, 0.98, 2.6, 4.16, 5.66)          # clip = CLIP_W[bits] * mean|w|
EMA_DECAY = 0.99
EPS = 1e-6
ACT_ALPHA_INIT = 3.0


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


def _per_group(t: torch.Tensor, ndim: int) -> torch.Tensor:
    """A (groups,) tensor shaped to broadcast over a weight of ``ndim`` dimensions."""
    return t.view(-1, *([1] * (ndim - 1)))


def _float32(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def quantize_weight(w: torch.Tensor, clip: torch.Tensor, bits: torch.Tensor,
                    codes: torch.Tensor | None = None) -> torch.Tensor:
    """Per group (``len(bits)`` groups along dimension 0: output channels, or 1 for the
    whole layer): ``clip · nearest code of bits`` (straight-through gradient through the
    clamp). ``codes``: the code table on ``w``'s device (default: built here)."""
    groups = bits.numel()
    table = (_CODES if codes is None else codes).to(w.device, w.dtype)
    c = _per_group(clip, w.dim())
    x = torch.clamp(w / (c + EPS), -1, 1)
    sets = table.index_select(0, bits.to(w.device))                       # (groups, 16)
    idx = (x.reshape(groups, 1, -1) - sets.unsqueeze(-1)).abs().argmin(dim=1)
    hard = torch.gather(sets, 1, idx).view_as(x)
    return ((hard - x).detach() + x) * c


def quantize_act(x: torch.Tensor, alpha: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Uniform, bits per input channel (dimension 1; one value: the whole layer); 0 bits
    gives 0."""
    shape = (1, -1) + (1,) * (x.dim() - 2)
    scale = (2.0 ** bits.to(x.device, x.dtype) - 1).view(shape)
    y = torch.clamp(x / (alpha + EPS), 0, 1) * scale
    y = (y.round() - y).detach() + y
    return y * alpha / (scale + EPS)


def weight_error(w: torch.Tensor, w_q: torch.Tensor, grad_w_q: torch.Tensor, groups: int) -> torch.Tensor:
    """Per group of dimension 0 ``|Σ (w − w_q) · ∂L/∂w_q| / n_group``."""
    prod = ((w - w_q) * grad_w_q).reshape(groups, -1)
    return prod.sum(dim=1).abs() / prod.shape[1]


def act_error(x: torch.Tensor, x_q: torch.Tensor, grad_x_q: torch.Tensor, groups: int) -> torch.Tensor:
    """Per group of dimension 1 (input channels, or one for the layer)
    ``|Σ_{N,(C),H,W} (x − x_q) · ∂L/∂x_q| / n_group``."""
    prod = ((x - x_q) * grad_x_q).transpose(0, 1).reshape(groups, -1)
    return prod.sum(dim=1).abs() / prod.shape[1]


class _Recording(nn.Module):
    """Bits per group and the error accumulated over training backward passes while
    ``record`` is on (``quant.lba`` turns it on and reads ``err``)."""

    def __init__(self, groups: int, bits: int):
        super().__init__()
        self.register_buffer("bits", torch.full((groups,), bits, dtype=torch.long))
        self.register_buffer("err", torch.zeros(groups), persistent=False)
        self.record = False

    def _watch(self, out: torch.Tensor, ref: torch.Tensor, error) -> None:
        if not (self.record and self.training and out.requires_grad):
            return
        ref_d, out_d, groups = ref.detach(), out.detach(), self.bits.numel()

        def hook(grad):
            self.err.add_(error(ref_d, out_d, grad, groups))
        out.register_hook(hook)

    def extra_repr(self) -> str:
        b = self.bits.float()
        return f"groups={self.bits.numel()}, bits mean={float(b.mean()):.3g} min={int(b.min())} max={int(b.max())}"


class DambqWeightQuantizer(_Recording):
    """Multi-bit codes per group (output channel, or the layer); the clip is a buffer (EMA
    of ``CLIP_W[b] · mean|w|`` over training forwards)."""

    def __init__(self, groups: int, bits: int = MAX_BITS):
        super().__init__(groups, bits)
        self.register_buffer("clip", torch.ones(groups))
        # whether a training forward has set the clip since the model was built or loaded
        # (the reference's ``init`` flag: not saved, so a loaded model resets it once)
        self.register_buffer("clip_set", torch.tensor(False), persistent=False)
        self.register_buffer("clip_w", torch.tensor(CLIP_W), persistent=False)
        self.register_buffer("codes", _CODES.clone(), persistent=False)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        w = _float32(w)
        if self.training:
            with torch.no_grad():
                current = self.clip_w[self.bits] * w.abs().reshape(self.bits.numel(), -1).mean(dim=1)
                ema = EMA_DECAY * self.clip + (1 - EMA_DECAY) * current
                self.clip.copy_(torch.where(self.clip_set, ema, current))
                self.clip_set.fill_(True)
        out = quantize_weight(w, self.clip, self.bits, self.codes)
        self._watch(out, w, weight_error)
        return out


class DambqActQuantizer(_Recording):
    """Uniform activations, one learnable threshold ``act_alpha`` per layer, bits per
    group (input channel, or the layer)."""

    def __init__(self, groups: int, bits: int = MAX_BITS, alpha: float = ACT_ALPHA_INIT):
        super().__init__(groups, bits)
        self.act_alpha = nn.Parameter(torch.tensor(float(alpha)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _float32(x)
        out = quantize_act(x, self.act_alpha, self.bits)
        self._watch(out, x, act_error)
        return out


def dambq_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, layer)`` of every layer with a DAMBQ weight or activation quantizer, in
    model order."""
    return [(n, m) for n, m in model.named_modules()
            if isinstance(getattr(m, "weight_quant", None), DambqWeightQuantizer)
            or isinstance(getattr(m, "act_quant", None), DambqActQuantizer)]


def mean_bits(model: nn.Module) -> dict[str, tuple[float | None, float | None]]:
    """``{layer: (mean weight bits, mean activation bits)}`` of the DAMBQ layers (None
    where that side is not DAMBQ). The mean over output channels is the layer's weight
    bits weighted by parameter count, the mean over input channels its activation bits
    weighted by input elements: every channel holds as many of either."""
    out = {}
    for name, layer in dambq_layers(model):
        sides = (getattr(layer, "weight_quant", None), getattr(layer, "act_quant", None))
        out[name] = tuple(float(q.bits.float().mean()) if isinstance(q, _Recording) else None
                          for q in sides)
    return out
