"""A trial's dataset as an MLflow input (the run's *Dataset* column and the dataset
filter of the UI): its name (``data.name``, else ``data.dataset``), a digest, and where
it was read from.

The digest is the first 16 hex digits of the SHA-256 of the file for ``npz`` data, of
the sorted file names and sizes for an image folder, and of the generating settings for
synthetic images; a torchvision dataset is named by its name and split settings (its
files are the published ones). Trials with a validation split carry the input tag
``mlflow.data.context = train`` and the split in ``sweep.val_fraction``.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os

from mlflow.entities import Dataset, DatasetInput, InputTag

__all__ = ["dataset_input", "digest_of"]

CONTEXT_TAG = "mlflow.data.context"
_CHUNK = 1 << 20


@functools.lru_cache(maxsize=32)
def _file_digest(path: str, size: int, mtime: float) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def _folder_digest(path: str) -> str:
    h = hashlib.sha256()
    for root, dirs, files in sorted(os.walk(path)):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(root, name)
            h.update(f"{os.path.relpath(full, path)}\0{os.path.getsize(full)}\n".encode())
    return h.hexdigest()[:16]


def digest_of(data) -> str:
    """The digest of a ``DataConfig`` (see the module doc)."""
    if data.dataset == "npz" and data.path and os.path.isfile(data.path):
        st = os.stat(data.path)
        return _file_digest(os.path.abspath(data.path), st.st_size, st.st_mtime)
    if data.dataset == "imagefolder" and data.path and os.path.isdir(data.path):
        return _folder_digest(data.path)
    spec = data.synthetic.to_dict() if data.dataset == "synthetic" else {}
    text = json.dumps({"dataset": data.dataset, **spec}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def dataset_input(data) -> DatasetInput:
    """The MLflow input of a trial whose data config is ``data``."""
    name = data.name or data.dataset
    if data.dataset in ("npz", "imagefolder"):
        source_type, source = "local", {"uri": os.path.abspath(data.path or "")}
    elif data.dataset == "synthetic":
        source_type, source = "code", {"generator": "sweep.train.data.synthetic_images",
                                       **data.synthetic.to_dict()}
    else:
        source_type, source = "torchvision", {"dataset": data.dataset}
    tags = [InputTag(CONTEXT_TAG, "train"),
            InputTag("sweep.val_fraction", f"{data.val_fraction:g}")]
    return DatasetInput(Dataset(name=name, digest=digest_of(data), source_type=source_type,
                                source=json.dumps(source)), tags=tags)
