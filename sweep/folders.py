"""An image folder's layout, listed and checked: ``train/<class>/*`` and ``val/<class>/*``
(or ``test/``), ImageNet's layout and torchvision ``ImageFolder``'s.

``scan_folder(path)`` lists the class folders of ``train/`` (sorted: label ``i`` is the
``i``-th name) and the image files in each, by extension (torchvision's list), and the
same for the evaluation split; every problem is one ``FolderError`` naming the folder
and what is wrong (no such folder, no ``train/``, no ``val/``/``test/``, no class
folders, a training class with no images, evaluation classes unknown to training).
Only ``os`` is used: the configuration checks (``--dry-run``) count a folder's images
with it, and ``sweep.train.folder`` streams them. Results are cached per folder while
its directories are unchanged.
"""
from __future__ import annotations

import dataclasses
import functools
import os

import numpy as np

__all__ = ["DEFAULT_IMAGE_SIZE", "FolderError", "FolderScan", "IMG_EXTENSIONS", "EVAL_SPLITS",
           "scan_folder"]

DEFAULT_IMAGE_SIZE = 224            # the crop side when data.image_size is null

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
EVAL_SPLITS = ("val", "test")       # the first that exists is the evaluation split
LAYOUT = ("an image folder holds train/<class>/<image> and val/<class>/<image> (or test/), "
          "one sub-folder per class")


class FolderError(ValueError):
    """An image folder that does not have the layout above; the message says what and where."""


@dataclasses.dataclass(frozen=True)
class FolderScan:
    root: str
    classes: tuple[str, ...]
    eval_split: str                 # val or test
    train_files: np.ndarray         # bytes paths relative to root (os.fsencode), sorted by class
    train_labels: np.ndarray        # int64
    eval_files: np.ndarray
    eval_labels: np.ndarray


def _class_dirs(folder: str) -> list[str]:
    with os.scandir(folder) as it:
        return sorted(e.name for e in it if e.is_dir(follow_symlinks=True))


def _images(folder: str) -> list[str]:
    found = []
    for where, dirs, files in os.walk(folder, followlinks=True):
        dirs.sort()
        found += [os.path.join(where, f) for f in sorted(files) if f.lower().endswith(IMG_EXTENSIONS)]
    return found


def _state(root: str) -> tuple:
    """What the cache keys on: the modification times of the split and class folders."""
    out = []
    for split in ("train", *EVAL_SPLITS):
        folder = os.path.join(root, split)
        if os.path.isdir(folder):
            out.append((split, os.stat(folder).st_mtime_ns))
            out += [(split, c, os.stat(os.path.join(folder, c)).st_mtime_ns) for c in _class_dirs(folder)]
    return tuple(out)


def scan_folder(path: str) -> FolderScan:
    """The classes and images of the image folder ``path`` (see the module doc)."""
    root = os.path.abspath(os.path.expanduser(str(path)))
    if not os.path.exists(root):
        raise FolderError(f"image folder {root} does not exist; {LAYOUT}")
    if not os.path.isdir(root):
        raise FolderError(f"{root} is a file, not an image folder; {LAYOUT}")
    return _scan(root, _state(root))


@functools.lru_cache(maxsize=8)
def _scan(root: str, state: tuple) -> FolderScan:
    train = os.path.join(root, "train")
    if not os.path.isdir(train):
        raise FolderError(f"image folder {root} has no train/ folder; {LAYOUT}")
    eval_split = next((s for s in EVAL_SPLITS if os.path.isdir(os.path.join(root, s))), None)
    if eval_split is None:
        raise FolderError(f"image folder {root} has no val/ (or test/) folder; {LAYOUT}")
    classes = _class_dirs(train)
    if not classes:
        raise FolderError(f"{train} has no class folders; {LAYOUT}")
    index = {c: i for i, c in enumerate(classes)}
    files, labels = [], []
    for c in classes:
        found = _images(os.path.join(train, c))
        if not found:
            raise FolderError(f"class folder {os.path.join(train, c)} holds no images "
                              f"({', '.join(IMG_EXTENSIONS)}); remove it or add its images")
        files += found
        labels += [index[c]] * len(found)
    evaluation = os.path.join(root, eval_split)
    unknown = [c for c in _class_dirs(evaluation) if c not in index]
    if unknown:
        raise FolderError(f"{evaluation} has class folders that train/ lacks: "
                          f"{', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}; "
                          "both splits name their classes alike")
    eval_files, eval_labels = [], []
    for c in _class_dirs(evaluation):
        found = _images(os.path.join(evaluation, c))
        eval_files += found
        eval_labels += [index[c]] * len(found)

    def rel(paths):
        return np.array([os.fsencode(os.path.relpath(p, root)) for p in paths], dtype=np.bytes_)

    return FolderScan(root, tuple(classes), eval_split, rel(files), np.array(labels, np.int64),
                      rel(eval_files), np.array(eval_labels, np.int64))
