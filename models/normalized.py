"""A network with its input normalisation built in: pixel values in, logits out.

``Normalized(net, mean, std)`` takes float images ``N×C×H×W`` with pixel values 0–255
and applies ``x · 1/(255·std) − mean/std`` — the affine map the training and evaluation
loaders apply, with the same float32 constants, so its predictions match theirs — then
``net``. This is the form a model is logged to MLflow in (``sweep.track.pytorch_model``),
so that whoever loads it needs only the images.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

__all__ = ["Normalized"]


class Normalized(nn.Module):
    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.net = net
        mean64, std64 = np.asarray(mean, np.float64), np.asarray(std, np.float64)
        shape = (1, len(mean64), 1, 1)
        self.register_buffer("scale", torch.tensor(1.0 / (255.0 * std64), dtype=torch.float32).view(shape))
        self.register_buffer("shift", torch.tensor(-mean64 / std64, dtype=torch.float32).view(shape))

    @property
    def arch(self) -> str:
        return getattr(self.net, "arch", type(self.net).__name__)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.float().contiguous().mul(self.scale).add(self.shift))
