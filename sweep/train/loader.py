"""Batches straight from one uint8 tensor on the device: shuffle, crop, flip, normalise.

A ``BatchLoader`` holds a split's images as a single ``N×C×H×W`` uint8 tensor on its
device and builds every batch with a handful of whole-batch tensor ops: gather the
batch, pad it once, take each image's crop window (and mirror it) with one ``gather``,
then convert to float and normalise as one affine map, ``x * 1/(255 std) - mean/std``.
No per-image Python, no PIL, no worker processes (docs/benchmarks.md).

Randomness is drawn on the CPU from ``(seed, epoch)`` alone, so an epoch's order, crop
offsets and flips are the same on every device and in every run.
"""
from __future__ import annotations

import math
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["BatchLoader", "Normalise", "crop_flip", "epoch_generator", "make_loader"]


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator seeded from ``(seed, epoch)``; distinct pairs give unrelated streams."""
    state = np.random.SeedSequence([int(seed) % 2**63, int(epoch) % 2**63]).generate_state(2)
    return torch.Generator().manual_seed(int(state[0]) << 31 ^ int(state[1]))


def crop_flip(x: torch.Tensor, pad: int, dy: torch.Tensor, dx: torch.Tensor,
              flip: torch.Tensor | None = None) -> torch.Tensor:
    """Per-image crop of a zero-padded batch, optionally mirrored, as one gather.

    Image ``i`` of the result is ``pad(x[i], pad)[:, dy[i]:dy[i]+H, dx[i]:dx[i]+W]``,
    flipped left-right where ``flip[i]``; ``dy, dx`` lie in ``[0, 2 pad]``. ``x`` is
    ``B×C×H×W`` of any dtype; the result is contiguous, same shape and dtype.
    """
    b, c, h, w = x.shape
    wp = w + 2 * pad
    xp = F.pad(x, (pad, pad, pad, pad)) if pad else x.contiguous()
    rows = dy[:, None] + torch.arange(h, device=x.device)                        # B×H
    cols = dx[:, None] + torch.arange(w, device=x.device)                        # B×W
    if flip is not None:
        cols = torch.where(flip[:, None], cols.flip(1), cols)
    index = (rows[:, :, None] * wp + cols[:, None, :]).view(b, 1, h * w).expand(b, c, h * w)
    return xp.view(b, c, -1).gather(2, index).view(b, c, h, w)


class Normalise:
    """uint8 batches to normalised floats on ``device``: ``(x/255 - mean)/std`` as one
    affine map, ``x * 1/(255 std) - mean/std``, in ``dtype`` and ``memory_format``."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], device: torch.device,
                 channels_last: bool = False, dtype: torch.dtype = torch.float32):
        std64, mean64 = np.asarray(std, dtype=np.float64), np.asarray(mean, dtype=np.float64)
        self.scale = torch.tensor(1.0 / (255.0 * std64), dtype=torch.float32,
                                  device=device).view(1, -1, 1, 1)
        self.shift = torch.tensor(-mean64 / std64, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.dtype = dtype

    def __call__(self, xb: torch.Tensor) -> torch.Tensor:
        out = xb.to(torch.float32, memory_format=self.memory_format)
        out.mul_(self.scale).add_(self.shift)
        return out if self.dtype == torch.float32 else out.to(self.dtype)


def make_loader(bundle, split: str, batch_size: int, device="cpu", train: bool = False,
                seed: int = 0, workers: int = 0, **kwargs):
    """The loader of ``bundle.<split>``: a ``BatchLoader`` for images held in memory, a
    ``sweep.train.folder.FolderLoader`` (``workers`` processes) for a ``FileSplit``."""
    from sweep.train.data import FileSplit
    part = getattr(bundle, split)
    if isinstance(part, FileSplit):
        from sweep.train.folder import FolderLoader
        return FolderLoader(part, batch_size, device, bundle.mean, bundle.std, train=train,
                            image_size=bundle.image_size[0], flip=bundle.flip, seed=seed,
                            workers=workers, **kwargs)
    return BatchLoader.from_bundle(bundle, split, batch_size, device, train=train, seed=seed, **kwargs)


class BatchLoader:
    """Normalised ``(x, y)`` batches of one split, built on ``device``.

    ``train=True``: every epoch a fresh permutation, and per image a random crop of the
    zero-padded image (``crop_pad`` pixels each side; 0 = none) and a left-right flip
    with probability 1/2 (``flip``), all determined by ``(seed, epoch)``.
    ``train=False``: the split in order, no augmentation, the last batch kept whole.
    ``len(loader)`` is the number of batches in an epoch. Iterating the loader runs
    epochs 0, 1, 2, ...; ``loader.epoch(i)`` runs epoch ``i`` on its own.
    """

    def __init__(self, split, batch_size: int, device: str | torch.device = "cpu",
                 mean: Sequence[float] = (0.0,), std: Sequence[float] = (1.0,),
                 train: bool = False, crop_pad: int = 0, flip: bool = False, seed: int = 0,
                 drop_last: bool = False, channels_last: bool = False,
                 dtype: torch.dtype = torch.float32):
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be at least 1")
        if crop_pad < 0:
            raise ValueError(f"crop_pad={crop_pad} must be 0 (no crop) or a positive pixel count")
        self.device = torch.device(device)
        self.x = split.x.to(self.device).contiguous()
        self.y = split.y.to(self.device)
        if self.x.dtype != torch.uint8 or self.x.dim() != 4:
            raise ValueError(f"split.x must be a uint8 N×C×H×W tensor, got {self.x.dtype} "
                             f"{tuple(self.x.shape)}")
        channels = self.x.shape[1]
        if len(mean) != channels or len(std) != channels:
            raise ValueError(f"mean {tuple(mean)} and std {tuple(std)} need one value per "
                             f"channel ({channels})")
        self.batch_size = int(batch_size)
        self.train = bool(train)
        self.crop_pad = int(crop_pad) if self.train else 0
        self.flip = bool(flip) and self.train
        self.seed = int(seed)
        self.drop_last = bool(drop_last) and self.train
        self._normalise = Normalise(mean, std, self.device, channels_last, dtype)
        self._next_epoch = 0

    @classmethod
    def from_bundle(cls, bundle, split: str, batch_size: int, device="cpu", train: bool = False,
                    seed: int = 0, **kwargs) -> "BatchLoader":
        """A loader for ``bundle.<split>`` with the bundle's mean, std, crop_pad and flip."""
        return cls(getattr(bundle, split), batch_size, device, bundle.mean, bundle.std,
                   train=train, crop_pad=bundle.crop_pad, flip=bundle.flip, seed=seed, **kwargs)

    @property
    def num_samples(self) -> int:
        return self.x.shape[0]

    def __len__(self) -> int:
        n, b = self.num_samples, self.batch_size
        return n // b if self.drop_last else math.ceil(n / b)

    def set_epoch(self, epoch: int) -> None:
        """Make the next ``iter(loader)`` run epoch ``epoch``."""
        self._next_epoch = int(epoch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch, self._next_epoch = self._next_epoch, self._next_epoch + 1
        return self.epoch(epoch)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of epoch ``epoch``, the same for the same ``(seed, epoch)``."""
        n, b = self.num_samples, self.batch_size
        if not self.train:
            for start in range(0, n, b):
                yield self._normalise(self.x[start:start + b]), self.y[start:start + b]
            return
        order, dy, dx, flips = self.draw(epoch)
        for start in range(0, len(self) * b, b):
            idx = order[start:start + b]
            xb = self.x.index_select(0, idx)
            if self.crop_pad or self.flip:
                xb = crop_flip(xb, self.crop_pad, dy[start:start + b], dx[start:start + b],
                               flips[start:start + b] if self.flip else None)
            yield self._normalise(xb), self.y.index_select(0, idx)

    def draw(self, epoch: int):
        """Epoch ``epoch``'s permutation, crop offsets ``dy, dx`` and flips, on the device.

        Entry ``i`` of ``dy``/``dx``/``flips`` belongs to the ``i``-th image of the epoch,
        ``order[i]``. The draws do not depend on ``crop_pad``/``flip`` being on, so the
        order is the same with or without augmentation.
        """
        g = epoch_generator(self.seed, epoch)
        n, span = self.num_samples, 2 * self.crop_pad + 1
        order = torch.randperm(n, generator=g)
        dy = torch.randint(0, span, (n,), generator=g)
        dx = torch.randint(0, span, (n,), generator=g)
        flips = torch.rand(n, generator=g) < 0.5
        return tuple(t.to(self.device) for t in (order, dy, dx, flips))
