"""Small real input files for tests: an npz dataset and a model checkpoint."""
from __future__ import annotations

import numpy as np


def tiny_npz(path, n_train=8, n_test=4, size=8, channels=3, num_classes=2, **extra):
    """An npz dataset as the project reads it: uint8 N×H×W×C images, integer labels."""
    rng = np.random.default_rng(0)
    shape = (size, size, channels) if channels else (size, size)
    np.savez(path, x_train=rng.integers(0, 256, (n_train, *shape), dtype=np.uint8),
             y_train=np.arange(n_train) % num_classes,
             x_test=rng.integers(0, 256, (n_test, *shape), dtype=np.uint8),
             y_test=np.arange(n_test) % num_classes, **extra)
    return path


def float_checkpoint(path, arch="resnet20", num_classes=10, in_channels=3):
    """A full-precision checkpoint of ``arch`` (its state dict, as a reference file is)."""
    import torch
    from models import build_model
    torch.save({"state_dict": build_model(arch, num_classes=num_classes,
                                          in_channels=in_channels).state_dict()}, path)
    return path
