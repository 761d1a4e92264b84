"""DAMBQ's loss-aware bit allocation (LBA) as its reference code runs it
(``sijeh/DAMBQV2``, ``model/quant_tune.py`` and ``main_cifar10.py``; docs/quantization.md,
"LBA"), over the DAMBQ layers of a model:

- during the training epochs ``0 … schedule_epochs`` (0-based) every DAMBQ quantizer
  records its per-channel error over the epoch's iterations (``quant.dambq``);
- at the end of such an epoch, the averages (``quant.cost``: weights by parameter count,
  activations by input elements, over the block and shortcut convs) are compared with
  the targets (``quant.budget`` + ``margin``), weights and activations separately; for
  each side above its target, the fraction
  ``r = ratio_start + (ratio_end − ratio_start) · epoch / schedule_epochs`` of all its
  channels, ranked across layers by their error, the smallest first, lose one bit (never
  below 0); the errors then start again from zero.
- bits only decrease; once both averages are within their targets nothing changes again.

Nothing here knows of datasets or training loops: the engine calls ``begin_epoch`` and
``end_epoch`` around each training epoch.
"""
from __future__ import annotations

import torch
from torch import nn

from .cost import BitCost, bit_cost, budget_excess
from .dambq import DambqActQuantizer, DambqWeightQuantizer, dambq_layers, mean_bits

__all__ = ["lba_ratio", "lba_lower", "LbaAllocator"]

_TOLERANCE = 1e-9
_SIDES = (("weight", "avg_w_bits", "weight_quant", DambqWeightQuantizer),
          ("act", "avg_a_bits", "act_quant", DambqActQuantizer))


def lba_ratio(epoch: int, ratio_start: float = 0.01, ratio_end: float = 0.30,
              schedule_epochs: int = 150) -> float:
    """The fraction of channels lowered at the end of 0-based ``epoch``."""
    return ratio_start + (ratio_end - ratio_start) * epoch / schedule_epochs


def lba_lower(errors: torch.Tensor, bits: torch.Tensor, ratio: float) -> torch.Tensor:
    """New bits: the ``int(n · ratio)`` channels with the smallest accumulated error (all
    layers' channels concatenated) lose one bit, never below 0 (a channel at 0 bits is
    still ranked, and stays at 0)."""
    k = int(len(errors) * ratio)
    out = bits.clone()
    if k:
        idx = torch.topk(errors, k, largest=False).indices
        out[idx] -= 1
    return out.clamp(min=0)


class LbaAllocator:
    """LBA over ``model``'s DAMBQ layers, with ``policy.allocation``'s schedule and
    ``policy.budget``'s targets; ``shape`` (``models.shapes``) weighs the averages."""

    def __init__(self, model: nn.Module, policy, shape):
        self.model, self.policy, self.shape = model, policy, shape
        self.settings = policy.allocation
        self.limits = {k: v + self.settings.margin for k, v in (policy.budget or {}).items()}
        self.sides = []          # (kind, budget key, quantizers in model order)
        for kind, key, attr, cls in _SIDES:
            qs = [getattr(m, attr) for _, m in dambq_layers(model) if isinstance(getattr(m, attr, None), cls)]
            self.sides.append((kind, key, qs))
        self.recording = False

    def cost(self) -> BitCost:
        """The model's averages, size and BOPs with its current bits."""
        return bit_cost(self.policy, self.shape, self.model)

    def reached(self, cost: BitCost | None = None) -> bool:
        """Whether every average with a target is within it (target + margin)."""
        excess = budget_excess(cost or self.cost(), self.limits)
        return all(v <= _TOLERANCE for v in excess.values())

    def active(self, epoch: int) -> bool:
        """Whether 0-based ``epoch`` records errors and may lower bits at its end."""
        return 0 <= epoch <= self.settings.schedule_epochs and not self.reached()

    def _quantizers(self):
        return [q for _, _, qs in self.sides for q in qs]

    def begin_epoch(self, epoch: int) -> None:
        self.recording = self.active(epoch)
        for q in self._quantizers():
            q.err.zero_()
            q.record = self.recording

    @torch.no_grad()
    def end_epoch(self, epoch: int) -> dict[str, int]:
        """Lower the bits if this epoch recorded and an average is above its target;
        ``{kind: channels lowered}`` (``weight``, ``act``; only the sides lowered)."""
        lowered = {}
        if self.recording:
            excess = budget_excess(self.cost(), self.limits)
            ratio = lba_ratio(epoch, self.settings.ratio_start, self.settings.ratio_end,
                              self.settings.schedule_epochs)
            for kind, key, qs in self.sides:
                if excess.get(key, 0.0) <= _TOLERANCE or not qs:
                    continue
                bits = torch.cat([q.bits for q in qs])
                new = lba_lower(torch.cat([q.err for q in qs]), bits, ratio)
                for q, part in zip(qs, torch.split(new, [q.bits.numel() for q in qs])):
                    q.bits.copy_(part)
                lowered[kind] = int((new != bits).sum())
        self.recording = False
        for q in self._quantizers():
            q.err.zero_()
            q.record = False
        return lowered

    def layer_bits(self) -> dict[str, float]:
        """``{"weight/<layer>": mean bits, "act/<layer>": mean bits}`` now."""
        out = {}
        for name, (w, a) in mean_bits(self.model).items():
            if w is not None:
                out[f"weight/{name}"] = w
            if a is not None:
                out[f"act/{name}"] = a
        return out
