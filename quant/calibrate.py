"""Clipping thresholds fitted to data: the alpha with the least quantization error.

``mse_alpha(quantizer, x)`` is the threshold at which ``quantizer`` reproduces ``x`` with
the least mean squared error, searched over a grid up to ``max |x|`` and refined around
the best point (for a weight quantizer ``x`` is the raw weight and the error is measured
on the normalised weight ``(w - mean) / std`` it quantizes). ``fit_alphas(model, x)`` sets every quantizer of a
model this way: weight thresholds from the layers' weights, activation thresholds from
the inputs each layer receives on one forward pass of ``x``, layer after layer, so a
layer's inputs are those of the layers before it at their fitted thresholds.

Used when a model starts from a checkpoint at another bit width, whose thresholds were
learnt for other level sets (docs/quantization.md, "Thresholds at a new bit width").
"""
from __future__ import annotations

import torch
from torch import nn

from .quantizers import ActQuantizer, WeightQuantizer

GRID = 40                  # candidate thresholds per search: (0, max |x|], then around the best
MAX_ELEMENTS = 1 << 20     # an activation tensor is subsampled (strided) to at most this


def _target(quantizer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What the quantizer's output approximates: the normalised weight, or the input."""
    if isinstance(quantizer, WeightQuantizer):
        return (x - x.mean()) / x.std()
    return x


def _least_error(quantizer: nn.Module, x: torch.Tensor, target: torch.Tensor, candidates) -> tuple[float, float]:
    """(alpha, error) of the candidate with the least mean squared error, as float32 values
    (the quantizer's own alpha is overwritten: the caller restores it)."""
    best, best_err = None, float("inf")
    for value in candidates:
        quantizer.alpha.fill_(value)
        err = float((quantizer(x) - target).pow(2).mean())
        if err < best_err:
            best, best_err = float(quantizer.alpha), err
    return best, best_err


@torch.no_grad()
def mse_alpha(quantizer: nn.Module, x: torch.Tensor, grid: int = GRID) -> float:
    """The threshold at which ``quantizer`` reproduces ``x`` with the least mean squared
    error: the best of ``grid`` even steps in ``(0, max |target|]``, refined by ``grid``
    even steps across the step either side of it (a resolution of ``max / grid^2 * 2``).
    The quantizer's own alpha is left unchanged."""
    if not isinstance(quantizer, (WeightQuantizer, ActQuantizer)):
        raise TypeError(f"mse_alpha takes a WeightQuantizer or an ActQuantizer, not {type(quantizer).__name__}")
    x = x.detach().float()
    if isinstance(quantizer, ActQuantizer) and x.numel() > MAX_ELEMENTS:
        x = x.reshape(-1)[:: -(-x.numel() // MAX_ELEMENTS)]
    target = _target(quantizer, x)
    top = float(target.abs().max())
    if not top > 0:
        return float(quantizer.alpha)       # an all-zero tensor: any threshold is as good
    saved = quantizer.alpha.detach().clone()
    step = top / grid
    try:
        coarse, _ = _least_error(quantizer, x, target, (step * k for k in range(1, grid + 1)))
        fine = (coarse + step * (2 * k / grid - 1) for k in range(grid + 1))
        best, _ = _least_error(quantizer, x, target, (a for a in fine if a > 0))
    finally:
        quantizer.alpha.copy_(saved)
    return best


@torch.no_grad()
def fit_alphas(model: nn.Module, x: torch.Tensor, grid: int = GRID) -> dict[str, tuple[float, float]]:
    """Set every clipping threshold of ``model`` to its ``mse_alpha``: weights from the
    layer's weight, activations from the layer's input on one forward pass of ``x`` with
    BatchNorm in train mode (it normalises by the batch: running statistics from another bit
    width are not to be trusted; they are left unchanged). Returns
    ``{"weight/<layer>" | "act/<layer>": (old, new)}``."""
    changed: dict[str, tuple[float, float]] = {}

    def fit(name: str, quantizer: nn.Module, value: torch.Tensor) -> None:
        old = float(quantizer.alpha)
        quantizer.alpha.fill_(mse_alpha(quantizer, value, grid))
        changed[name] = (old, float(quantizer.alpha))

    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    kept = [(m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None)
            for m in norms]
    was_training = model.training
    hooks = []
    for name, layer in model.named_modules():
        wq, aq = getattr(layer, "weight_quant", None), getattr(layer, "act_quant", None)
        if isinstance(wq, WeightQuantizer):
            fit(f"weight/{name}", wq, layer.weight)
        if isinstance(aq, ActQuantizer):
            hooks.append(layer.register_forward_pre_hook(
                lambda _layer, args, name=name, aq=aq: fit(f"act/{name}", aq, args[0])))
    try:
        for m in norms:
            m.momentum = 0.0             # normalise by the batch, keep the running statistics
        model.eval()
        for m in norms:
            m.train()                    # only they: a DAMBQ clip moves in train mode
        model(x)
    finally:
        for h in hooks:
            h.remove()
        for m, (momentum, tracked) in zip(norms, kept):
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)
        model.train(was_training)
    return changed
