"""Datasets as uint8 tensors: a registry of sources, per-dataset defaults, splits.

``load_data(cfg)`` reads a source by name (``cifar10``, ``cifar100``, ``mnist``,
``npz``, ``synthetic``), settles its normalisation and augmentation
(docs/search-space.md, "Data"), holds out ``val_fraction`` of the training images as the
validation split (fixed by ``split_seed``) and returns a ``DataBundle`` of channels-first
uint8 images and int64 labels. ``sweep.train.loader.BatchLoader`` turns a split into batches.

``imagefolder`` is the exception: a folder of image files too large to hold (ImageNet) is
listed, not read; its splits are ``FileSplit``s of file names, decoded and transformed
every epoch by worker processes (``sweep.train.folder``). ``make_loader`` (``loader``)
picks the loader a split needs.

Only torch and numpy are needed; torchvision (and PIL) are imported inside the loaders
that use them. Nothing here knows where data lives: ``cfg.root``/``cfg.path`` say.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import os
import pathlib
import socket
import threading
import warnings
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch


__all__ = ["DATASETS", "DataBundle", "DataError", "FileSplit", "Split", "load_data",
           "register_dataset", "holdout_indices", "setting"]

log = logging.getLogger(__name__)

CIFAR_MEAN, CIFAR_STD = (0.491, 0.482, 0.447), (0.247, 0.243, 0.262)
MNIST_MEAN, MNIST_STD = (0.131,), (0.308,)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
PROBE_TIMEOUT_S = 3.0       # how long to wait for a download server before calling it offline


class DataError(Exception):
    """A dataset that cannot be found, read or used as configured; the message says how to fix it."""


@dataclasses.dataclass
class Split:
    """Images ``x`` (uint8, N×C×H×W, contiguous) and labels ``y`` (int64, N)."""
    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return self.y.shape[0]


@dataclasses.dataclass
class FileSplit:
    """Image files, read when a batch needs them: ``files`` (paths relative to ``root``, as
    bytes, ``os.fsencode``) and labels ``y`` (int64, N)."""
    root: str
    files: np.ndarray
    y: torch.Tensor

    def __len__(self) -> int:
        return self.y.shape[0]

    def path(self, i: int) -> str:
        return os.path.join(self.root, os.fsdecode(self.files[i]))


@dataclasses.dataclass
class DataBundle:
    """Everything a trial needs about its data. ``test`` is None when ``val`` is the test set.

    Pickles through numpy arrays (``to_arrays``/``from_arrays``), which Ray's object store
    shares between trials without copying.
    """
    name: str
    train: Split | FileSplit
    val: Split | FileSplit
    test: Split | FileSplit | None
    num_classes: int
    in_channels: int
    image_size: tuple[int, int]          # (H, W) of the batches (a FileSplit's: the crop)
    classes: tuple[str, ...]
    mean: tuple[float, ...]              # per channel, [0, 1] units
    std: tuple[float, ...]
    crop_pad: int                        # pixels of zero padding for the random crop; 0 = none
    flip: bool                           # random left-right flip
    notes: list[str] = dataclasses.field(default_factory=list)

    _SPLITS = ("train", "val", "test")

    def to_arrays(self) -> dict[str, Any]:
        """A dict of numpy arrays (sharing memory with the tensors) and plain metadata."""
        out: dict[str, Any] = {}
        for which in self._SPLITS:
            split = getattr(self, which)
            if isinstance(split, FileSplit):
                out[f"{which}_files"], out[f"{which}_root"] = split.files, split.root
                out[f"{which}_y"] = split.y.numpy()
            elif split is not None:
                out[f"{which}_x"], out[f"{which}_y"] = split.x.numpy(), split.y.numpy()
        out["meta"] = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                       if f.name not in self._SPLITS}
        return out

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, Any]) -> "DataBundle":
        """The inverse of ``to_arrays``; tensors share the arrays' memory (read-only is fine)."""
        def split(which):
            if f"{which}_y" not in arrays:
                return None
            with warnings.catch_warnings():      # arrays from Ray's store are read-only
                warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
                y = torch.from_numpy(arrays[f"{which}_y"])
                if f"{which}_files" in arrays:
                    return FileSplit(arrays[f"{which}_root"], arrays[f"{which}_files"], y)
                return Split(torch.from_numpy(arrays[f"{which}_x"]), y)
        meta = dict(arrays["meta"])
        return cls(train=split("train"), val=split("val"), test=split("test"), **meta)

    def __reduce__(self):
        return (DataBundle.from_arrays, (self.to_arrays(),))

    def describe(self) -> str:
        sizes = ", ".join(f"{w} {len(getattr(self, w))}" for w in self._SPLITS
                          if getattr(self, w) is not None)
        val = "held out of train" if self.test is not None else "the test set"
        return (f"{self.name}: {sizes} images of {self.in_channels}×{self.image_size[0]}×"
                f"{self.image_size[1]}, {self.num_classes} classes; val is {val}")


@dataclasses.dataclass
class _Raw:
    """What a source loader returns: channels-last uint8 arrays and the dataset's defaults."""
    display: str
    x_train: np.ndarray                   # N×H×W×C uint8
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: tuple[str, ...]
    mean: tuple[float, ...] | None = None  # None: compute from the training images
    std: tuple[float, ...] | None = None
    stats_in_file: bool = False           # the file's own mean/std outrank data.mean/std
    crop_pad: int = 0
    flip: bool = False
    notes: list[str] = dataclasses.field(default_factory=list)


# A source returns a _Raw (read into memory, settled by load_data) or, streamed from
# files, a DataBundle settled by its own loader.
DATASETS: dict[str, Callable[[Any], "_Raw | DataBundle"]] = {}


def register_dataset(name: str):
    def wrap(fn):
        DATASETS[name] = fn
        return fn
    return wrap


def setting(cfg: Any, key: str, default: Any = None) -> Any:
    """``cfg.key`` or ``cfg[key]``, ``default`` when missing or None."""
    value = cfg.get(key) if isinstance(cfg, Mapping) else getattr(cfg, key, None)
    return default if value is None else value


def load_data(cfg: Any) -> DataBundle:
    """The dataset ``cfg`` names, split and with its normalisation settled.

    ``cfg`` has (as attributes or keys) ``dataset, root, path, val_fraction, split_seed,
    mean, std, crop_pad, flip, synthetic``; ``None`` means the dataset's default.
    """
    name = setting(cfg, "dataset")
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; expected one of: {', '.join(DATASETS)}")
    raw = DATASETS[name](cfg)
    if isinstance(raw, DataBundle):          # streamed from files: already split and settled
        return raw
    notes = list(raw.notes)

    x_train, x_test = _channels_first(raw.x_train, "x_train"), _channels_first(raw.x_test, "x_test")
    channels = x_train.shape[1]
    if x_test.shape[1:] != x_train.shape[1:]:
        raise DataError(f"{raw.display}: test images are {tuple(x_test.shape[1:])} but training "
                        f"images are {tuple(x_train.shape[1:])} (C×H×W); they must match")
    num_classes = len(raw.classes)
    y_train = _labels(raw.y_train, len(x_train), num_classes, raw.display, "y_train")
    y_test = _labels(raw.y_test, len(x_test), num_classes, raw.display, "y_test")

    mean, std = _normalisation(cfg, raw, x_train, notes)
    if len(mean) != channels or len(std) != channels:
        raise DataError(f"data.mean {mean} / data.std {std} need one value per channel: "
                        f"{raw.display} has {channels}")
    if min(std) <= 0:
        raise DataError(f"data.std {std} must be positive")
    crop_pad = int(setting(cfg, "crop_pad", raw.crop_pad))
    if crop_pad < 0:
        raise DataError(f"data.crop_pad={crop_pad} must be 0 (no random crop) or a pixel count")
    flip = bool(setting(cfg, "flip", raw.flip))

    train, test = Split(x_train, y_train), Split(x_test, y_test)
    val_fraction = float(setting(cfg, "val_fraction", 0.0))
    if val_fraction > 0:
        train, val = _hold_out(train, val_fraction, int(setting(cfg, "split_seed", 0)), raw.display)
    else:
        val, test = test, None

    bundle = DataBundle(name=name, train=train, val=val, test=test, num_classes=num_classes,
                        in_channels=channels, image_size=tuple(x_train.shape[2:]),
                        classes=raw.classes, mean=mean, std=std, crop_pad=crop_pad, flip=flip,
                        notes=notes)
    log.info("%s", bundle.describe())
    for note in notes:
        log.info("data: %s", note)
    return bundle


# ---------------------------------------------------------------- shared steps

def _channels_first(x: np.ndarray, what: str) -> torch.Tensor:
    if x.dtype != np.uint8:
        raise DataError(f"{what} is {x.dtype}; images must be uint8 (0..255)")
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise DataError(f"{what} has shape {x.shape}; expected N×H×W×C or N×H×W (gray)")
    return torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).contiguous()


def _labels(y: np.ndarray, n: int, num_classes: int, display: str, what: str) -> torch.Tensor:
    y = np.asarray(y)
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{display}: {what} must be {n} integer labels, got {y.dtype} {y.shape}")
    if n and (y.min() < 0 or y.max() >= num_classes):
        raise DataError(f"{display}: {what} holds labels outside 0..{num_classes - 1} "
                        f"({num_classes} classes)")
    return torch.from_numpy(y.astype(np.int64))


def _normalisation(cfg, raw: _Raw, x_train: torch.Tensor, notes: list[str]):
    """mean/std by precedence: an npz's own values, else data.mean/std, else defaults/computed."""
    cfg_mean, cfg_std = setting(cfg, "mean"), setting(cfg, "std")
    if raw.stats_in_file:
        if cfg_mean is not None or cfg_std is not None:
            notes.append(f"data.mean/data.std ignored: {raw.display} carries its own mean "
                         f"{raw.mean} and std {raw.std}")
        return raw.mean, raw.std
    mean = raw.mean if cfg_mean is None else tuple(float(v) for v in _seq(cfg_mean))
    std = raw.std if cfg_std is None else tuple(float(v) for v in _seq(cfg_std))
    if mean is None or std is None:
        got_mean, got_std = channel_stats(x_train)
        which = " and ".join(w for w, v in (("mean", mean), ("std", std)) if v is None)
        mean, std = mean or got_mean, std or got_std
        notes.append(f"{which} computed from the {len(x_train)} training images: "
                     f"mean {mean}, std {std}")
    return mean, std


def _seq(v) -> Sequence[float]:
    return (v,) if isinstance(v, (int, float)) else v


def channel_stats(x: torch.Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of uint8 N×C×H×W images, in [0, 1] units."""
    total = torch.zeros(x.shape[1], dtype=torch.float64)
    squares = torch.zeros(x.shape[1], dtype=torch.float64)
    for start in range(0, x.shape[0], chunk):
        part = x[start:start + chunk].to(torch.float64) / 255.0
        total += part.sum(dim=(0, 2, 3))
        squares += part.square().sum(dim=(0, 2, 3))
    count = x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(0).sqrt()
    return tuple(round(float(v), 4) for v in mean), tuple(round(float(v), 4) for v in std)


def holdout_indices(n: int, fraction: float, seed: int, display: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, val) indices, sorted: a fixed random ``fraction`` of ``n`` training images
    held out, the same for every trial."""
    n_val = int(round(fraction * n))
    if not 0 < n_val < n:
        raise DataError(f"data.val_fraction={fraction} holds out {n_val} of {display}'s {n} "
                        f"training images; it must leave at least one on each side")
    perm = torch.from_numpy(np.random.default_rng(seed).permutation(n))
    return perm[n_val:].sort().values, perm[:n_val].sort().values


def _hold_out(train: Split, fraction: float, seed: int, display: str) -> tuple[Split, Split]:
    """(train, val) of ``holdout_indices``."""
    train_idx, val_idx = holdout_indices(len(train), fraction, seed, display)
    return (Split(train.x[train_idx], train.y[train_idx]),
            Split(train.x[val_idx], train.y[val_idx]))


# ---------------------------------------------------------------- sources

@register_dataset("npz")
def _load_npz(cfg) -> _Raw:
    path = setting(cfg, "path")
    if path is None:
        raise DataError("dataset: npz needs data.path, the .npz file to read")
    path = pathlib.Path(path).expanduser().resolve()
    if not path.is_file():
        raise DataError(f"npz file not found: {path} (set data.path)")
    with np.load(path, allow_pickle=False) as f:
        missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in f.files]
        if missing:
            raise DataError(f"{path} lacks {', '.join(missing)}; an npz dataset holds x_train, "
                            f"y_train, x_test, y_test, classes and optionally mean, std")
        arrays = {k: f[k] for k in f.files}
    y_max = int(max(arrays["y_train"].max(initial=0), arrays["y_test"].max(initial=0)))
    classes = tuple(str(c) for c in arrays["classes"]) if "classes" in arrays \
        else tuple(str(i) for i in range(y_max + 1))
    # Augmentation defaults follow the kind of image: colour 32x32 is CIFAR's recipe
    # (crop with 4-pixel padding, flips), grey is MNIST's (none); data.* overrides.
    x = arrays["x_train"]
    cifar_like = x.ndim == 4 and x.shape[1:] == (32, 32, 3)
    crop_pad, flip = (4, True) if cifar_like else (0, False)
    notes = [f"npz: {'CIFAR-like images: crop_pad 4, flip' if cifar_like else 'no augmentation'} "
             "by default (data.crop_pad, data.flip override)"]
    has_stats = "mean" in arrays and "std" in arrays
    mean = tuple(float(v) for v in np.atleast_1d(arrays["mean"])) if has_stats else None
    std = tuple(float(v) for v in np.atleast_1d(arrays["std"])) if has_stats else None
    return _Raw(f"npz file {path}", arrays["x_train"], arrays["y_train"], arrays["x_test"],
                arrays["y_test"], classes, mean, std, crop_pad=crop_pad, flip=flip,
                stats_in_file=has_stats, notes=notes)


@register_dataset("synthetic")
def _load_synthetic(cfg) -> _Raw:
    """Class templates (coarse random blocks) plus noise: learnable, deterministic, any size."""
    s = setting(cfg, "synthetic", {})
    n_train, n_test = int(setting(s, "train_size", 2048)), int(setting(s, "test_size", 512))  # keys.py's
    size, channels = int(setting(s, "image_size", 32)), int(setting(s, "channels", 3))
    num_classes, seed = int(setting(s, "num_classes", 10)), int(setting(s, "seed", 0))
    x_train, y_train, x_test, y_test = synthetic_images(n_train, n_test, size, channels,
                                                        num_classes, seed)
    classes = tuple(f"class{i}" for i in range(num_classes))
    return _Raw("synthetic data", x_train, y_train, x_test, y_test, classes)


def synthetic_images(n_train: int, n_test: int, size: int, channels: int, num_classes: int,
                     seed: int = 0, noise: float = 48.0):
    """(x_train, y_train, x_test, y_test): uint8 N×size×size×channels, balanced labels."""
    rng = np.random.default_rng(seed)
    cells = max(2, size // 8)
    templates = rng.uniform(0, 255, (num_classes, cells, cells, channels)).astype(np.float32)
    grid = np.arange(size) * cells // size
    templates = templates[:, grid][:, :, grid]                     # blocky class patterns

    def make(n):
        y = rng.permutation(np.arange(n) % num_classes)
        x = np.empty((n, size, size, channels), np.uint8)
        for start in range(0, n, 1024):
            part = y[start:start + 1024]
            img = 64 + 0.5 * templates[part]
            img += rng.standard_normal(img.shape, dtype=np.float32) * noise
            x[start:start + 1024] = np.clip(np.rint(img), 0, 255)
        return x, y.astype(np.int64)

    return (*make(n_train), *make(n_test))


# torchvision datasets: the files each needs, so absence is seen before any network call.
_TORCHVISION = {
    "cifar10": dict(display="CIFAR-10", cls="CIFAR10", folder="cifar-10-batches-py",
                    files=[f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"],
                    fix="extract cifar-10-python.tar.gz in {root} (it unpacks to {folder}/)",
                    mean=CIFAR_MEAN, std=CIFAR_STD, crop_pad=4, flip=True),
    "cifar100": dict(display="CIFAR-100", cls="CIFAR100", folder="cifar-100-python",
                     files=["train", "test", "meta"],
                     fix="extract cifar-100-python.tar.gz in {root} (it unpacks to {folder}/)",
                     mean=CIFAR_MEAN, std=CIFAR_STD, crop_pad=4, flip=True),
    "mnist": dict(display="MNIST", cls="MNIST", folder="MNIST/raw",
                  files=["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                         "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"],
                  fix="put the four idx files, decompressed (train-images-idx3-ubyte, "
                      "train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte), "
                      "in {root}/{folder}/",
                  mean=MNIST_MEAN, std=MNIST_STD, crop_pad=0, flip=False),
}


def _reachable(host: str, port: int = 443, timeout: float | None = None) -> bool:
    """Whether a TCP connection to ``host`` opens within ``timeout`` s (DNS included)."""
    timeout = PROBE_TIMEOUT_S if timeout is None else timeout
    result: list[bool] = []

    def probe():
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)   # a hung DNS lookup cannot hold us
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def _load_torchvision(name: str, cfg) -> _Raw:
    spec = _TORCHVISION[name]
    root = pathlib.Path(setting(cfg, "root", "data")).expanduser().resolve()
    folder = root / spec["folder"]
    missing = [f for f in spec["files"] if not (folder / f).is_file()]
    if name == "mnist" and all((root / "MNIST/processed" / f).is_file()
                               for f in ("training.pt", "test.pt")):
        missing = []                                   # torchvision's legacy layout
    import torchvision.datasets as tvd
    from urllib.parse import urlparse
    cls = getattr(tvd, spec["cls"])
    if missing:
        what = f"{spec['folder']}/" if len(missing) == len(spec["files"]) else \
            f"{spec['folder']}/ with {', '.join(missing)}"
        absent = f"{spec['display']} not found under {root} (expected {what})"
        url = cls.url if hasattr(cls, "url") else cls.mirrors[0]
        fix = spec["fix"].format(root=root, folder=spec["folder"]) + ", or use dataset: npz"
        host = urlparse(url).hostname
        if not _reachable(host):
            raise DataError(f"{absent}; no network to download it ({host} unreachable): {fix}")
        log.info("%s; downloading it from %s", absent, host)
        try:
            cls(str(root), train=True, download=True)
        except (OSError, RuntimeError) as e:               # URLError is an OSError
            raise DataError(f"{absent}; downloading it failed ({e}): {fix}") from e
    try:
        train, test = cls(str(root), train=True), cls(str(root), train=False)
    except RuntimeError as e:
        raise DataError(f"{spec['display']} under {root} cannot be read ({e}); delete {folder} "
                        f"and download it again, or "
                        f"{spec['fix'].format(root=root, folder=spec['folder'])}") from e
    x_train, x_test = (np.asarray(d.data) for d in (train, test))
    y_train, y_test = (np.asarray(d.targets, dtype=np.int64) for d in (train, test))
    return _Raw(spec["display"], x_train, y_train, x_test, y_test, tuple(train.classes),
                spec["mean"], spec["std"], crop_pad=spec["crop_pad"], flip=spec["flip"])


for _name in _TORCHVISION:
    register_dataset(_name)(functools.partial(_load_torchvision, _name))


@register_dataset("imagefolder")
def _load_imagefolder(cfg) -> DataBundle:
    from sweep.train.folder import load_folder      # PIL and torchvision, only for folders
    return load_folder(cfg)
