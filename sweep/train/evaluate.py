"""Loss and accuracy of a model over one pass of a batch loader."""
from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def evaluate_model(model: torch.nn.Module, loader, autocast_dtype=None) -> dict:
    """Loss and accuracy of ``model`` over one pass of ``loader`` (eval mode): a
    ``BatchLoader`` or a ``FolderLoader`` (``sweep.train.loader.make_loader``)."""
    was_training = model.training
    model.eval()
    loss_sum, correct, total = 0.0, 0, 0
    for x, y in loader.epoch(0):
        with torch.autocast(loader.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            out = model(x)
        loss_sum += float(F.cross_entropy(out.float(), y, reduction="sum"))
        correct += int((out.argmax(1) == y).sum())
        total += int(y.numel())
    model.train(was_training)
    return {"loss": loss_sum / max(total, 1), "correct": correct, "total": total,
            "accuracy": 100.0 * correct / max(total, 1)}
