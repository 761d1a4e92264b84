"""A project checkpoint as an MLflow PyTorch model, so that a registered version loads
anywhere with ``mlflow.pytorch.load_model("models:/<name>-<arch>@<stage>-best")``.

The folder ``save_pytorch_model`` writes (logged as the run's ``model/`` artifact, the
source of the registered version) holds:

- ``MLmodel``, ``data/model.pt2``, ``requirements.txt``...: the model as
  ``mlflow.pytorch`` saves it in the ``pt2`` format (``torch.export``: a graph that
  loads without this project's code, any batch size) — ``models.normalized.Normalized``
  around the network in evaluation mode, so it takes float images ``N×C×H×W`` with pixel
  values 0–255 and returns logits ``N×classes`` — with its signature and an input
  example. ``load_model`` returns the exported graph: call it (it has no ``.eval()``);
- ``model.pt``: the project checkpoint itself, so ``train.init`` and ``sweep.evaluate``
  resolve ``models:/...`` (and ``runs:/<id>/model``) to it.
"""
from __future__ import annotations

import os
import shutil

from sweep.track.names import CHECKPOINT_FILE

__all__ = ["save_pytorch_model"]


def _requirements() -> list[str]:
    import mlflow
    import numpy
    import torch
    return [f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}",
            f"numpy=={numpy.__version__}"]


def save_pytorch_model(checkpoint: str | os.PathLike, out_dir: str | os.PathLike) -> str:
    """Write ``out_dir`` (which must not exist) from a project checkpoint file; returns
    it. The image size comes from the checkpoint's data entry (32×32 when absent)."""
    import numpy as np
    import torch
    import mlflow.pytorch
    from mlflow.models import infer_signature

    from models.checkpoint import build_from_checkpoint
    from models.normalized import Normalized

    net, ckpt = build_from_checkpoint(checkpoint)
    data = ckpt.get("data") or {}
    channels = (ckpt.get("model") or {}).get("in_channels") or len(data.get("mean") or [0, 0, 0])
    height, width = data.get("image_size") or (32, 32)
    mean = data.get("mean") or [0.0] * channels
    std = data.get("std") or [1.0] * channels
    model = Normalized(net, mean, std).eval()
    example = np.full((2, channels, height, width), 127.0, dtype=np.float32)
    example[1] = np.linspace(0, 255, height * width, dtype=np.float32).reshape(height, width)
    with torch.no_grad():
        logits = model(torch.from_numpy(example)).numpy()
    out_dir = os.fspath(out_dir)
    mlflow.pytorch.save_model(
        model, out_dir, signature=infer_signature(example, logits), input_example=example,
        serialization_format="pt2", pip_requirements=_requirements(),
        metadata={"input": "float32 images NxCxHxW, pixel values 0-255 (normalisation is "
                           "inside the model)", "output": "logits N x classes",
                  "arch": net.arch if hasattr(net, "arch") else None})
    shutil.copyfile(checkpoint, os.path.join(out_dir, CHECKPOINT_FILE))
    return out_dir
