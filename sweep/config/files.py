"""The files a config names, opened and matched against the config before anything runs:
an ``npz`` dataset's arrays (their headers; only the labels are read), an image folder's
classes and files (listed, not read), the shape of the built-in datasets, a synthetic dataset's size against this machine's memory, and a
``train.init`` checkpoint (read weights-only, loaded into the model it is to start).

Each check returns ``(key, message)`` of the first problem, or None. Results are cached
per file and modification time: a space of many trials opens each file once.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import zipfile

from sweep.config.checks import is_uri
from sweep.config.schema import TrialConfig

__all__ = ["DataShape", "data_shape", "check_data", "check_init", "machine_memory"]

# Channels, classes, training and test images, side of the datasets known without reading them.
_BUILTIN = {"cifar10": (3, 10, 50000, 10000, 32), "cifar100": (3, 100, 50000, 10000, 32),
            "mnist": (1, 10, 60000, 10000, 28)}
_NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


@dataclasses.dataclass(frozen=True)
class DataShape:
    """What a model needs to know of a dataset (None: not known before loading it)."""
    channels: int | None
    num_classes: int | None
    train_images: int | None = None
    test_images: int | None = None
    image_size: int | None = None     # pixels, the smaller side


def machine_memory() -> int:
    """Bytes of physical memory (0 when unknown)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def data_shape(cfg: TrialConfig):
    """``(DataShape, None)`` or ``(None, (key, message))`` of the dataset ``cfg.data`` names."""
    d = cfg.data
    if d.dataset in _BUILTIN:
        return DataShape(*_BUILTIN[d.dataset]), None
    if d.dataset == "synthetic":
        s = d.synthetic
        return DataShape(s.channels, s.num_classes, s.train_size, s.test_size, s.image_size), None
    if d.dataset == "npz":
        try:
            st = os.stat(d.path)
        except OSError:
            return None, ("data.path", f"npz file {d.path} does not exist (paths are relative to "
                                       "the directory the command runs in)")
        return _npz_shape(d.path, st.st_mtime_ns, st.st_size)
    from sweep.folders import DEFAULT_IMAGE_SIZE, FolderError, scan_folder   # listed, not read
    try:
        scan = scan_folder(d.path)
    except FolderError as exc:
        return None, ("data.path", str(exc))
    return DataShape(3, len(scan.classes), len(scan.train_files), len(scan.eval_files),
                     d.image_size or DEFAULT_IMAGE_SIZE), None


@functools.lru_cache(maxsize=64)
def _npz_shape(path: str, mtime_ns: int, size: int):
    import numpy as np
    fix = ("an npz dataset is a numpy .npz file (np.savez) holding uint8 x_train, x_test "
           "(N×H×W×C or N×H×W) and integer y_train, y_test, optionally classes, mean and std")
    if os.path.isdir(path):
        return None, ("data.path", f"{path} is a directory, not an .npz file; {fix}")
    if not zipfile.is_zipfile(path):
        return None, ("data.path", f"{path} is not an npz file; {fix}")
    try:
        with np.load(path, allow_pickle=False) as f:     # the file opened once
            members = {n[:-4]: n for n in f.zip.namelist() if n.endswith(".npy")}
            missing = [k for k in _NPZ_KEYS if k not in members]
            if missing:
                return None, ("data.path", f"{path} lacks {', '.join(missing)}; {fix}")
            heads = {}
            for k in ("x_train", "x_test"):     # the images' headers only, not their pixels
                with f.zip.open(members[k]) as fh:
                    version = np.lib.format.read_magic(fh)
                    read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                            else np.lib.format.read_array_header_2_0)
                    shape, _, dtype = read(fh)
                    heads[k] = (tuple(shape) + (1,) if len(shape) == 3 else tuple(shape), dtype)
            y_train, y_test = f["y_train"], f["y_test"]
            classes = f["classes"] if "classes" in f.files else None
    except Exception as exc:    # noqa: BLE001 - a damaged zip or array header
        return None, ("data.path", f"{path} cannot be read as an npz file ({type(exc).__name__}: "
                                   f"{str(exc).strip()[:200]}); {fix}")
    (xs, xt), (ts, tt) = heads["x_train"], heads["x_test"]
    for what, shape, dtype in (("x_train", xs, xt), ("x_test", ts, tt)):
        if dtype != np.uint8:
            return None, ("data.path", f"{path}: {what} is {dtype}; images must be uint8 (0..255)")
        if len(shape) != 4:
            return None, ("data.path", f"{path}: {what} has shape {shape}; expected N×H×W×C or N×H×W")
    if xs[0] == 0:
        return None, ("data.path", f"{path} holds no training images (x_train has shape {xs}); "
                                   "a sweep would train on nothing")
    for what, y, n in (("y_train", y_train, xs[0]), ("y_test", y_test, ts[0])):
        if y.ndim != 1 or len(y) != n or (n and not np.issubdtype(y.dtype, np.integer)):
            return None, ("data.path", f"{path}: {what} must be {n} integer labels, one per "
                                       f"image; got shape {y.shape} of {y.dtype}")
        if n and y.min() < 0:
            return None, ("data.path", f"{path}: {what} holds negative labels")
    channels = xs[3]
    if ts[1:] != xs[1:]:
        return None, ("data.path", f"{path}: test images are {ts[1:]} but training images "
                                   f"{xs[1:]}; they must match")
    labels = 1 + int(max(y_train.max(initial=0), y_test.max(initial=0)))
    num_classes = len(classes) if classes is not None else labels
    if classes is not None and labels > len(classes):
        return None, ("data.path", f"{path}: labels go up to {labels - 1} but classes names "
                                   f"{len(classes)}")
    return DataShape(int(channels), int(num_classes), int(xs[0]), int(ts[0]), int(min(xs[1:3]))), None


def check_data(cfg: TrialConfig):
    """(key, message) when the data cannot feed this model, or a split would be empty."""
    shape, problem = data_shape(cfg)
    if problem:
        return problem
    d, m = cfg.data, cfg.model
    if d.dataset != "imagefolder":
        for k, v in (("data.image_size", d.image_size), ("data.workers", d.workers)):
            if v is not None:
                return k, (f"applies to dataset: imagefolder (images streamed from files), not "
                           f"{d.dataset}; leave it out")
    elif d.crop_pad:
        return "data.crop_pad", ("does not apply to an image folder, whose training crop is "
                                 "RandomResizedCrop(data.image_size); leave it out")
    if d.dataset in _BUILTIN and os.path.isfile(d.root):
        return "data.root", (f"{d.root} is a file; data.root is the folder where {d.dataset} is "
                             "found or downloaded")
    if shape.channels is not None and d.dataset != "npz":    # an npz's own mean/std outrank these
        for k, v in (("data.mean", d.mean), ("data.std", d.std)):
            if v is not None and len(v) != shape.channels:
                return k, (f"has {len(v)} value(s) but {_what(d)} has {shape.channels}-channel "
                           "images; give one per channel, or leave it out")
    if d.crop_pad is not None and shape.image_size is not None and d.crop_pad > shape.image_size:
        return "data.crop_pad", (f"{d.crop_pad} pixels of padding around {shape.image_size}-pixel "
                                 f"images of {_what(d)}; at most {shape.image_size} (CIFAR's recipe is 4)")
    if d.dataset == "synthetic":
        s = d.synthetic
        need = (s.train_size + s.test_size) * s.image_size ** 2 * s.channels * 3 \
            + s.num_classes * s.image_size ** 2 * s.channels * 4
        have = machine_memory()
        if have and need > have // 2:
            return "data.synthetic.train_size", (
                f"{s.train_size} + {s.test_size} images of {s.channels}×{s.image_size}×"
                f"{s.image_size} need about {need / 2**30:.1f} GiB, more than half of this "
                f"machine's {have / 2**30:.1f} GiB; make data.synthetic.train_size, test_size or "
                "image_size smaller")
    if shape.channels is not None and m.in_channels is not None and m.in_channels != shape.channels:
        return "model.in_channels", (f"is {m.in_channels} but {_what(d)} has {shape.channels}-channel "
                                     "images; set it to match, or leave it out (null: from the data)")
    if shape.num_classes is not None and m.num_classes is not None and m.num_classes < shape.num_classes:
        return "model.num_classes", (f"is {m.num_classes} but {_what(d)} has {shape.num_classes} "
                                     "classes; the model needs an output per class: set it to "
                                     f"{shape.num_classes} or more, or leave it out (null: from the data)")
    if shape.train_images is not None and d.val_fraction > 0:
        n_val = int(round(d.val_fraction * shape.train_images))
        if not 0 < n_val < shape.train_images:
            return "data.val_fraction", (f"{d.val_fraction} holds out {n_val} of {_what(d)}'s "
                                         f"{shape.train_images} training images; it must leave at "
                                         "least one on each side")
    if shape.test_images == 0 and d.val_fraction == 0:
        return "data.val_fraction", (f"{_what(d)} holds no test images, and val_acc is measured on "
                                     "the test set when data.val_fraction is 0; add test images or "
                                     "hold out a validation split (data.val_fraction: 0.1)")
    return None


def _what(d) -> str:
    return f"npz file {d.path}" if d.dataset == "npz" else f"data.dataset {d.dataset}"


def check_init(cfg: TrialConfig):
    """(key, message) when ``train.init`` (a local path) is not a checkpoint this trial's
    model can start from: read weights-only and loaded into the model, as the trial will."""
    init = cfg.train.init
    if not isinstance(init, str) or is_uri(init):     # runs:/, models:/: resolved at start
        return None
    if os.path.isdir(init):
        inside = os.path.join(init, "model.pt")
        hint = (f"; a trial's checkpoint folder holds model.pt: --set train.init={inside}"
                if os.path.isfile(inside) else "")
        return "train.init", f"{init} is a directory, not a checkpoint file{hint}"
    try:
        st = os.stat(init)
    except OSError:
        return "train.init", f"checkpoint {init} does not exist"
    shape, problem = data_shape(cfg)
    if problem:
        return problem
    m = cfg.model
    model = dict(arch=m.arch, num_classes=m.num_classes or shape.num_classes or 10,
                 in_channels=m.in_channels or shape.channels or 3)
    cache = (init, st.st_mtime_ns, st.st_size, repr(sorted(model.items())), repr(cfg.quant))
    if cache not in _FITS:
        _FITS[cache] = _fits(init, st.st_mtime_ns, st.st_size, model, cfg.quant)
    return _FITS[cache]


_FITS: dict = {}


@functools.lru_cache(maxsize=1)         # the weights are read once, not per model they start
def _read(path: str, mtime_ns: int, size: int) -> dict:
    from models.checkpoint import read_checkpoint
    return read_checkpoint(path)


def _fits(path, mtime_ns, size, model_kw, policy):
    from models import build_model
    from models.checkpoint import CheckpointError, load_weights
    try:
        load_weights(build_model(policy=policy, **model_kw), _read(path, mtime_ns, size)["state_dict"], path)
    except CheckpointError as exc:
        return "train.init", str(exc)
    return None
