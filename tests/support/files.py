"""Small real input files for tests: an npz dataset, an image folder and a model checkpoint."""
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


def image_folder(root, classes=("cat", "dog", "emu"), n_train=4, n_val=2, seed=0):
    """An ImageNet-layout folder of real JPEG and PNG files, ``root/{train,val}/<class>/``,
    in assorted sizes (none square, none 224): each class its own colour plus noise."""
    import pathlib
    from PIL import Image
    rng = np.random.default_rng(seed)
    sizes = [(40, 30), (33, 52), (64, 48), (27, 27), (50, 36)]          # (W, H)
    for split, n in (("train", n_train), ("val", n_val)):
        for k, cls in enumerate(classes):
            folder = pathlib.Path(root) / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                w, h = sizes[(i + k) % len(sizes)]
                colour = np.array([80 * k % 256, 255 - 60 * k, 40 + 70 * k % 200])
                img = np.clip(colour + rng.normal(0, 30, (h, w, 3)), 0, 255).astype(np.uint8)
                ext = "png" if i % 2 else "jpg"
                Image.fromarray(img).save(folder / f"{cls}_{i}.{ext}")
    return pathlib.Path(root)
