"""Checkpoints: the project's own format and the reference (APoT-family) layout.

The project's format is a plain dict (tensors, numbers, strings, lists) so that it
loads with ``torch.load(..., weights_only=True)``:

    {"format": "quant-sweep", "format_version": 1, "state_dict": ...,
     "model": {arch, num_classes, in_channels}, "quant": QuantPolicy.to_dict(layer_pairs=True),
     "data": {dataset, mean, std, ...}, "config": <resolved config or None>,
     "provenance": {git_commit, versions, created}, "epoch": int, "metrics": {...},
     "train_state": {optimizer, epoch, best, history, rng}   # optional, for resuming}

A reference checkpoint is ``{"state_dict", "best_prec" | "best_acc1", "epoch",
"optimizer"}`` with ``module.``-prefixed keys (or without). In the CIFAR family its
activation thresholds are stored as ``<conv>.act_alpha`` where this project has
``<conv>.act_quant.act_alpha``; the ImageNet family stores ``<conv>.weight_alpha`` and
``<conv>.act_alpha``, as an ImageNet-family model here does. ``family_of`` tells the two
apart by their keys. The N_grid authors' checkpoints are CIFAR-family ones with two
unused buffers per conv, ``<conv>.factorW`` and ``<conv>.factorA``, which are ignored by
name (``IGNORED_BUFFERS``).
"""
from __future__ import annotations

import datetime as _dt
import os
import pickle
import platform
import subprocess
from pathlib import Path

import torch
from torch import nn

from quant.policy import QuantPolicy

FORMAT = "quant-sweep"
FORMAT_VERSION = 1
_REPO = Path(__file__).resolve().parents[1]


class CheckpointError(Exception):
    """A checkpoint that cannot be read or does not fit the model; names the file."""

    def __init__(self, path, message: str):
        self.path, self.message = str(path), message
        super().__init__(f"{path}: {message}")


IGNORED_BUFFERS = ("factorW", "factorA")    # the N_grid code's unused per-conv buffers (all 0.0)


def _is_ignored_buffer(key: str) -> bool:
    return key.rpartition(".")[2] in IGNORED_BUFFERS


def _is_alpha(key: str) -> bool:
    return key.endswith(("act_alpha", "wgt_alpha", "weight_alpha"))


DAMBQ_BITS_KEYS = ("weight_quant.bits", "act_quant.bits")   # a DAMBQ layer's per-channel bits


def _is_quant_state(key: str) -> bool:
    """A clipping threshold, or a DAMBQ layer's bits or weight clip: what a checkpoint of
    another precision lacks or has in excess."""
    return _is_alpha(key) or key.endswith((*DAMBQ_BITS_KEYS, "weight_quant.clip"))


_FAMILY_KEYS = {"cifar": ".weight_quant.wgt_alpha", "imagenet": ".weight_alpha"}


def family_of(state_dict: dict) -> str | None:
    """'cifar', 'imagenet', or None (full precision: loads into either), from the keys
    (``module.``-prefixed or not)."""
    for family, suffix in _FAMILY_KEYS.items():
        if any(k.endswith(suffix) for k in state_dict):
            return family
    return None


def read_checkpoint(path) -> dict:
    """Load a checkpoint file safely (weights only) into a dict with a ``state_dict``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "no such checkpoint file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged file
        text = str(exc)
        if isinstance(exc, pickle.UnpicklingError) and "GLOBAL" in text:
            detail = next((ln.strip() for ln in text.splitlines() if "GLOBAL" in ln), "")
            raise CheckpointError(path, "holds objects that are not plain data, and is not loaded "
                                        f"(weights_only=True): {detail}") from None
        first = text.strip().splitlines()[0] if text.strip() else ""
        raise CheckpointError(path, f"is truncated or corrupt ({type(exc).__name__}"
                                    f"{': ' + first[:200] if first else ''})") from None
    if isinstance(obj, dict) and "state_dict" not in obj and obj and all(
            torch.is_tensor(v) for v in obj.values()):
        obj = {"state_dict": obj}  # a bare state dict
    if not isinstance(obj, dict) or not isinstance(obj.get("state_dict"), dict):
        raise CheckpointError(path, "is not a checkpoint: expected a dict with a 'state_dict' "
                                    f"(got {type(obj).__name__} with keys "
                                    f"{sorted(obj)[:6] if isinstance(obj, dict) else '-'})")
    obj["state_dict"] = {(k[7:] if k.startswith("module.") else k): v
                         for k, v in obj["state_dict"].items()}
    return obj


def is_project_checkpoint(ckpt: dict) -> bool:
    return ckpt.get("format") == FORMAT


def load_weights(model: nn.Module, state_dict: dict, path="checkpoint", bits: bool = True) -> dict:
    """Load ``state_dict`` into ``model``: strict about names and shapes, lenient about alphas.

    Clipping thresholds the checkpoint lacks keep their initial values (a full-precision
    checkpoint starts a quantized model: progressive initialisation); thresholds the
    model has no quantizer for are ignored. DAMBQ's per-channel bits and weight clips are
    treated the same way; with ``bits=False`` the checkpoint's bits are not loaded (the
    model keeps its own: a ``train.init`` starts at its trial's ``quant.*`` bits).
    Returns what was left out, for reporting.
    """
    if not bits:
        state_dict = {k: v for k, v in state_dict.items() if not k.endswith(DAMBQ_BITS_KEYS)}
    own = model.state_dict()
    ckpt_family = family_of(state_dict)
    model_family = getattr(getattr(model, "quant_policy", None), "family", None)
    if ckpt_family and model_family and ckpt_family != model_family:
        arch = getattr(model, "arch", type(model).__name__)
        raise CheckpointError(path, f"is a {ckpt_family}-family quantized checkpoint (keys ending in "
                                    f"{_FAMILY_KEYS[ckpt_family]}), the model ({arch}) is "
                                    f"{model_family}-family; set quant.family: {ckpt_family}")
    mapped = {}
    ignored = sorted(k for k in state_dict if _is_ignored_buffer(k) and k not in own)
    for key, value in state_dict.items():
        if key in ignored:
            continue
        if key not in own and key.endswith(".act_alpha"):
            alt = key[: -len("act_alpha")] + "act_quant.act_alpha"
            key = alt if alt in own else key
        mapped[key] = value
    unexpected = [k for k in mapped if k not in own]
    missing = [k for k in own if k not in mapped]
    bad_unexpected = [k for k in unexpected if not _is_quant_state(k)]
    bad_missing = [k for k in missing if not _is_quant_state(k)]
    shapes = [f"{k}: checkpoint {tuple(mapped[k].shape)} vs model {tuple(own[k].shape)}"
              for k in mapped if k in own and tuple(mapped[k].shape) != tuple(own[k].shape)]
    problems = []
    if bad_missing:
        problems.append(f"{len(bad_missing)} model key(s) missing from it, e.g. {', '.join(bad_missing[:4])}")
    if bad_unexpected:
        problems.append(f"{len(bad_unexpected)} key(s) the model does not have, e.g. "
                        f"{', '.join(bad_unexpected[:4])}")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatch(es): {'; '.join(shapes[:4])}")
    if problems:
        arch = getattr(model, "arch", type(model).__name__)
        raise CheckpointError(path, f"does not fit model {arch}: " + "; ".join(problems))
    model.load_state_dict({k: v for k, v in mapped.items() if k in own}, strict=False)
    out = {"missing_alphas": [k for k in missing if _is_alpha(k)],
           "ignored_alphas": [k for k in unexpected if _is_alpha(k)]}
    if ignored:
        out["ignored_buffers"] = ignored
    return out


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=_REPO, capture_output=True,
                             text=True, timeout=5)
        if out.returncode != 0:
            return None
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def provenance() -> dict:
    """Git commit, library versions and time: recorded with every result."""
    versions = {"python": platform.python_version(), "torch": str(torch.__version__)}
    for name in ("torchvision", "numpy", "ray", "mlflow", "optuna"):
        try:
            versions[name] = str(__import__(name).__version__)
        except Exception:
            pass
    return {"git_commit": _git_commit(), "versions": versions,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "host": platform.node()}


def save_checkpoint(path, model: nn.Module, *, model_cfg: dict, quant_cfg: dict | QuantPolicy, data_cfg: dict,
                    config: dict | None = None, epoch: int | None = None, metrics: dict | None = None,
                    prov: dict | None = None, extra: dict | None = None) -> Path:
    """Write the project's checkpoint atomically (a temporary file, then a rename).
    ``quant_cfg`` is the ``QuantPolicy`` (stored as ``to_dict(layer_pairs=True)``) or such a dict."""
    if isinstance(quant_cfg, QuantPolicy):
        quant_cfg = quant_cfg.to_dict(layer_pairs=True)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "model": dict(model_cfg), "quant": dict(quant_cfg), "data": dict(data_cfg),
        "config": config, "epoch": epoch, "metrics": dict(metrics or {}),
        "provenance": prov or provenance(),
    }
    if extra is not None:
        payload["train_state"] = extra  # optimiser state, epoch, best: what a resume needs
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def policy_of(ckpt: dict, **overrides) -> QuantPolicy:
    """The quantization a project checkpoint was trained with (its ``quant`` entry, as
    written by any version of this project), ``overrides`` (``quant.*`` keys) on top."""
    return QuantPolicy.from_dict({**(ckpt.get("quant") or {}), **overrides})


def model_of(ckpt: dict, policy: QuantPolicy | None = None, **model) -> nn.Module:
    """The (untrained) model a project checkpoint describes: its ``model`` entry with
    ``model`` overrides (``arch``, ``num_classes``, ``in_channels``) on top, quantized by
    ``policy`` (default: the checkpoint's own)."""
    from .registry import build_model

    spec = {**(ckpt.get("model") or {}), **{k: v for k, v in model.items() if v is not None}}
    sizes = {k: spec[k] for k in ("num_classes", "in_channels") if spec.get(k) is not None}
    return build_model(spec["arch"], policy=policy if policy is not None else policy_of(ckpt), **sizes)


def build_from_checkpoint(path) -> tuple[nn.Module, dict]:
    """The model a project checkpoint describes, with its weights loaded."""
    ckpt = read_checkpoint(path)
    if not is_project_checkpoint(ckpt):
        raise CheckpointError(path, "is a reference checkpoint and does not say which model it "
                                    "holds; give --arch, --w-bits, --a-bits and --scheme (and --z)")
    model = model_of(ckpt)
    load_weights(model, ckpt["state_dict"], path)
    return model, ckpt
