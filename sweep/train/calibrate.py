"""A model fitted to its bit widths from training batches, with no gradient step.

Two things a model started from a checkpoint of another bit width (or changed by the
last steps) may need before it is trained or scored (docs/search-space.md,
"Starting at a new bit width"):

- ``train.init_alphas: mse``: every clipping threshold fitted at its layer's bit width
  (``quant.calibrate.fit_alphas``, on the first training batch);
- ``train.bn_reestimate_batches: N``: BatchNorm running statistics forgotten and taken
  as the plain average over N training batches forwarded with BatchNorm in train mode (the other layers in eval mode). A moving
  average over the last steps was computed with the weights of those steps; after a
  change of bit width, or steps that flip quantized weights between levels, it no
  longer describes what the layers output.
"""
from __future__ import annotations

import itertools
from typing import Iterable

import torch
from torch import nn

from quant.calibrate import fit_alphas
from sweep.config.schema import INIT_ALPHAS
from sweep.train.loader import BatchLoader


@torch.no_grad()
def reestimate_batchnorm(model: nn.Module, batches: Iterable, count: int) -> int:
    """Reset every BatchNorm's running statistics and average them over the first
    ``count`` batches of ``batches`` (``(x, y)`` pairs). Returns how many were used; the
    model's mode and the layers' momentum are restored."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms or count <= 0:
        return 0
    momenta = [m.momentum for m in norms]
    was_training = model.training
    used = 0
    try:
        for m in norms:
            m.reset_running_stats()
            m.momentum = None            # a cumulative average: every batch counts the same
        model.eval()
        for m in norms:
            m.train()                    # only they: a DAMBQ clip would move in train mode
        for x, _ in itertools.islice(batches, count):
            model(x)
            used += 1
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.train(was_training)
    return used


def calibrate(model: nn.Module, loader: BatchLoader, init_alphas: str = "keep", bn_batches: int = 0,
              epoch0: int = 0) -> dict:
    """Fit the thresholds (``init_alphas="mse"``) on the first batch of ``loader``'s
    0-based epoch ``epoch0``, then re-estimate BatchNorm statistics from that epoch's first
    ``bn_batches`` batches. Returns ``{"alphas": {name: (old, new)}, "bn_batches": used}``."""
    if init_alphas not in INIT_ALPHAS:
        raise ValueError(f"init_alphas {init_alphas!r}; expected one of: {', '.join(INIT_ALPHAS)}")
    fitted = {}
    if init_alphas == "mse":
        x, _ = next(iter(loader.epoch(epoch0)))
        fitted = fit_alphas(model, x)
    used = reestimate_batchnorm(model, loader.epoch(epoch0), bn_batches) if bn_batches else 0
    return {"alphas": fitted, "bn_batches": used}
