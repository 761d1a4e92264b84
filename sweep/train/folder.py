"""Image folders streamed from disk: the standard ImageNet transforms in DataLoader workers.

``load_folder(cfg)`` lists ``data.path`` (``sweep.folders.scan_folder``) into a
``DataBundle`` of ``FileSplit``s (file names and labels; ``data.val_fraction`` holds out
part of ``train/`` as with every dataset). ``FolderLoader`` streams a split: worker
processes (``data.workers``) decode each image with PIL and transform it, training with
``RandomResizedCrop(image_size)`` and a horizontal flip (``data.flip``), evaluation with
``Resize(round(image_size * 256 / 224))`` and ``CenterCrop(image_size)``, as torchvision's
ImageNet recipe (``data.image_size``, default 224). Workers hand over uint8 batches; the
float conversion and normalisation (ImageNet mean and std unless ``data.mean/std`` say
otherwise) run on the training device, as for the in-memory datasets.

An image's random crop and flip are drawn from a generator seeded by ``(train.seed,
epoch, index)``, so an epoch's batches do not depend on how many workers built them; the
order of an epoch is a permutation seeded by ``(train.seed, epoch)``, as ``BatchLoader``'s.
"""
from __future__ import annotations

import math
import os
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from sweep.folders import DEFAULT_IMAGE_SIZE, FolderError, scan_folder
from sweep.train.data import (IMAGENET_MEAN, IMAGENET_STD, DataBundle, DataError, FileSplit,
                              holdout_indices, setting)
from sweep.train.loader import Normalise, epoch_generator

__all__ = ["FolderImages", "FolderLoader", "load_folder", "resize_for"]

def resize_for(image_size: int) -> int:
    """The shorter side evaluation resizes to before its centre crop: 256 for 224."""
    return int(round(image_size * 256 / 224))


def load_folder(cfg: Any) -> DataBundle:
    """The image folder ``cfg.path`` as a ``DataBundle`` of ``FileSplit``s."""
    path = setting(cfg, "path")
    if path is None:
        raise DataError("dataset: imagefolder needs data.path, a folder with train/ and val/")
    try:
        scan = scan_folder(path)
    except FolderError as exc:
        raise DataError(str(exc)) from None
    if int(setting(cfg, "crop_pad", 0)):
        raise DataError(f"data.crop_pad={setting(cfg, 'crop_pad')} does not apply to an image folder, "
                        "whose training crop is RandomResizedCrop(data.image_size); leave it out")
    size = int(setting(cfg, "image_size", DEFAULT_IMAGE_SIZE))
    mean = tuple(float(v) for v in setting(cfg, "mean", IMAGENET_MEAN))
    std = tuple(float(v) for v in setting(cfg, "std", IMAGENET_STD))
    if len(mean) != 3 or len(std) != 3:
        raise DataError(f"data.mean {mean} / data.std {std} need three values: an image folder's "
                        "images are read as RGB")
    if min(std) <= 0:
        raise DataError(f"data.std {std} must be positive")
    display = f"imagefolder {scan.root}"
    train = FileSplit(scan.root, scan.train_files, torch.from_numpy(scan.train_labels))
    test = FileSplit(scan.root, scan.eval_files, torch.from_numpy(scan.eval_labels))
    val_fraction = float(setting(cfg, "val_fraction", 0.0))
    if val_fraction > 0:
        train_idx, val_idx = holdout_indices(len(train), val_fraction, int(setting(cfg, "split_seed", 0)), display)
        train, val = (FileSplit(scan.root, scan.train_files[i.numpy()], train.y[i])
                      for i in (train_idx, val_idx))
    else:
        val, test = test, None
    if len(val) == 0:
        raise DataError(f"{os.path.join(scan.root, scan.eval_split)} holds no images, and val_acc is "
                        "scored on it when data.val_fraction is 0; add images or hold out a "
                        "validation split (data.val_fraction: 0.1)")
    notes = [f"imagefolder: streamed from {scan.root} (train/ and {scan.eval_split}/); training "
             f"RandomResizedCrop({size}){' + flip' if setting(cfg, 'flip', True) else ''}, evaluation "
             f"Resize({resize_for(size)}) + CenterCrop({size})"]
    return DataBundle(name="imagefolder", train=train, val=val, test=test,
                      num_classes=len(scan.classes), in_channels=3, image_size=(size, size),
                      classes=scan.classes, mean=mean, std=std, crop_pad=0,
                      flip=bool(setting(cfg, "flip", True)), notes=notes)


def _transform(image_size: int, train: bool, flip: bool):
    from torchvision import transforms as T
    if train:
        steps = [T.RandomResizedCrop(image_size, antialias=True)]
        steps += [T.RandomHorizontalFlip()] if flip else []
    else:
        steps = [T.Resize(resize_for(image_size), antialias=True), T.CenterCrop(image_size)]
    return T.Compose(steps + [T.PILToTensor()])


class FolderImages(torch.utils.data.Dataset):
    """A ``FileSplit`` as a map-style dataset of ``(uint8 3×S×S tensor, label)``; ``epoch``
    selects the random draws of the training transform."""

    def __init__(self, split: FileSplit, image_size: int, train: bool, flip: bool, seed: int = 0):
        self.split, self.train, self.seed = split, bool(train), int(seed)
        self.transform = _transform(image_size, self.train, flip)
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int):
        from PIL import Image
        path = self.split.path(i)
        try:
            with Image.open(path) as im:
                img = im.convert("RGB")
        except (OSError, ValueError) as exc:
            raise DataError(f"{path} cannot be read as an image ({exc})") from None
        if self.train:
            state = np.random.SeedSequence([self.seed, self.epoch, int(i)]).generate_state(1)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(state[0]))
                x = self.transform(img)
        else:
            x = self.transform(img)
        return x, int(self.split.y[i])


class FolderLoader:
    """Normalised ``(x, y)`` batches of a ``FileSplit`` on ``device``, with ``BatchLoader``'s
    interface (``len``, ``num_samples``, ``epoch(i)``, ``device``).

    ``train=True``: each epoch a permutation seeded by ``(seed, epoch)`` and the training
    transform; ``train=False``: the split in order, the evaluation transform, the last batch
    kept. ``workers`` processes decode (0: in this process); each epoch starts its own."""

    def __init__(self, split: FileSplit, batch_size: int, device: str | torch.device = "cpu",
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 train: bool = False, image_size: int = DEFAULT_IMAGE_SIZE, flip: bool = True,
                 seed: int = 0, workers: int = 0, drop_last: bool = False,
                 channels_last: bool = False, dtype: torch.dtype = torch.float32):
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be at least 1")
        self.device = torch.device(device)
        self.dataset = FolderImages(split, image_size, train, flip and train, seed)
        self.batch_size, self.train, self.seed = int(batch_size), bool(train), int(seed)
        self.workers = int(workers)
        self.drop_last = bool(drop_last) and self.train
        self.normalise = Normalise(mean, std, self.device, channels_last, dtype)

    @property
    def num_samples(self) -> int:
        return len(self.dataset)

    def __len__(self) -> int:
        n, b = self.num_samples, self.batch_size
        return n // b if self.drop_last else math.ceil(n / b)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of epoch ``epoch``, the same for the same ``(seed, epoch)``."""
        self.dataset.epoch = int(epoch)
        order = (torch.randperm(self.num_samples, generator=epoch_generator(self.seed, epoch)).tolist()
                 if self.train else range(self.num_samples))
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_size=self.batch_size, sampler=order, num_workers=self.workers,
            drop_last=self.drop_last, pin_memory=self.device.type == "cuda",
            prefetch_factor=4 if self.workers else None)
        for x, y in loader:
            yield (self.normalise(x.to(self.device, non_blocking=True)),
                   y.to(self.device, non_blocking=True))
