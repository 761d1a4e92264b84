"""Which keys of a resolved trial config apply to it: what a trial's MLflow run logs as
parameters (docs/mlflow.md, "A trial's run").

A key is left out when it cannot change what the trial does: ``null`` (the dataset's or
the model's own default), the ``data.synthetic.*`` sizes of a non-synthetic dataset,
``data.path`` of a torchvision dataset and ``data.root`` of a file, ``data.image_size`` and
``data.workers`` of anything but an image folder, ``data.crop_pad`` of an image folder, ``data.split_seed``
without a validation split, ``train.milestones``/``train.gamma`` off the step schedule,
the alpha settings (``train.init_alphas`` included) of a model with no quantized layer
or only DAMBQ layers (whose one threshold per layer trains with ``train.lr``), and
``quant.allocation.*`` when no allocation runs.
"""
from __future__ import annotations

from typing import Any

from sweep.config.schema import TrialConfig
from sweep.labels import is_full_precision

__all__ = ["applicable", "TORCHVISION_DATASETS", "FILE_DATASETS"]

TORCHVISION_DATASETS = ("cifar10", "cifar100", "mnist")     # found or downloaded under data.root
FILE_DATASETS = ("npz", "imagefolder")                       # read from data.path
_ALPHA_KEYS = ("train.alpha_lr_act", "train.alpha_lr_weight", "train.alpha_weight_decay",
               "train.alpha_floor", "train.init_alphas")


def _applies(key: str, cfg: TrialConfig) -> bool:
    d, t, q = cfg.data, cfg.train, cfg.quant
    if key.startswith("data.synthetic."):
        return d.dataset == "synthetic"
    if key == "data.path":
        return d.dataset in FILE_DATASETS
    if key == "data.root":
        return d.dataset in TORCHVISION_DATASETS
    if key in ("data.image_size", "data.workers"):
        return d.dataset == "imagefolder"
    if key == "data.crop_pad":
        return d.dataset != "imagefolder"
    if key == "data.split_seed":
        return d.val_fraction > 0
    if key in ("train.milestones", "train.gamma"):
        return t.schedule == "step"
    if key in _ALPHA_KEYS:
        return not (is_full_precision(q.w_bits, q.a_bits) and not q.layers) and \
            (q.scheme != "dambq" or bool(q.layers))
    if key.startswith("quant.allocation."):
        return q.allocation.method != "none"
    return True


def applicable(cfg: TrialConfig) -> dict[str, Any]:
    """The trial's dotted keys and values that apply to it (see the module doc)."""
    return {k: v for k, v in cfg.flatten().items() if v is not None and _applies(k, cfg)}
