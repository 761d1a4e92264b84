"""Element-wise quantizer kernels: forward and backward of each quantizer as one pass.

Each function takes flat (1-D) tensors and the projection table of a ``LevelSet``
(``thr``: sorted float32 thresholds, ``lv``: the levels). The projection is a chain of
``torch.where`` over the thresholds, which ``torch.compile`` fuses with the rest of the
quantizer's arithmetic into one kernel, with no temporaries of size elements x levels.
Where compilation is unavailable (or ``QUANT_KERNELS=eager``), the same functions run
eagerly with ``torch.bucketize`` for the projection.

Arithmetic follows the reference order exactly (divide by alpha, clamp, project, scale),
so outputs are bit-equal to it; only the alpha gradient's float32 sum order differs.
"""
from __future__ import annotations

import logging
import os
import threading
import warnings

import torch

# ---- projection -------------------------------------------------------------------


def _project_chain(c: torch.Tensor, thr: torch.Tensor, lv: torch.Tensor) -> torch.Tensor:
    q = torch.where(c >= thr[0], lv[1], lv[0])
    for i in range(1, thr.shape[0]):
        q = torch.where(c >= thr[i], lv[i + 1], q)
    return q


def _project_bucketize(c: torch.Tensor, thr: torch.Tensor, lv: torch.Tensor) -> torch.Tensor:
    return lv[torch.bucketize(c, thr, right=True)]


def _make_kernels(project):
    """The quantizer kernels, written once over a projection function."""

    def signed_project(c, thr, lv):
        """Project ``|c|`` onto the weight levels and restore the sign (binary weights,
        no thresholds: the level set {1}, so the sign alone)."""
        return c.sign() if thr.shape[0] == 0 else project(c.abs(), thr, lv) * c.sign()

    def weight_grad_alpha(g, x, thr, lv):
        """The APoT clipping gradient of alpha, ``x = w_hat / alpha``; also ``|x| > 1``."""
        over = x.abs() > 1.0
        q = signed_project(x.clamp(-1.0, 1.0), thr, lv)
        return (g * torch.where(over, x.sign(), q - x)).sum(), over

    def weight_fwd(w, mean, std, alpha, thr, lv):
        c = ((w - mean) / std / alpha).clamp(-1.0, 1.0)
        return signed_project(c, thr, lv) * alpha

    def weight_bwd(g, w, mean, std, alpha, thr, lv):
        grad_alpha, _ = weight_grad_alpha(g, (w - mean) / std / alpha, thr, lv)
        return g / std, grad_alpha

    def act_fwd(a, alpha, thr, lv):
        c = (a / alpha).clamp(max=1.0)
        return project(c, thr, lv) * alpha

    def act_bwd(g, a, alpha, thr, lv):
        x = a / alpha
        over = x > 1.0
        q = project(x.clamp(max=1.0), thr, lv)
        grad_alpha = (g * torch.where(over, torch.ones_like(x), q - x)).sum()
        return torch.where(over, torch.zeros_like(g), g), grad_alpha

    # ---- the ImageNet family (docs/quantization.md, "Two families"): the straight-through
    # rounding written as autograd sees it, ``((q - c) + c) * alpha``, so values match it
    # (the ``g * alpha / alpha`` below is autograd's chain through that form, kept for the
    # same reason)

    def weight_fwd_ste(w, mean, std, alpha, thr, lv):
        c = ((w - mean) / std / alpha).clamp(-1.0, 1.0)
        return ((signed_project(c, thr, lv) - c) + c) * alpha

    def weight_bwd_clipped(g, w, mean, std, alpha, thr, lv):
        """3-5-bit weights: no weight gradient outside +-alpha (the clamp comes first)."""
        grad_alpha, over = weight_grad_alpha(g, (w - mean) / std / alpha, thr, lv)
        return torch.where(over, torch.zeros_like(g), g * alpha / alpha / std), grad_alpha

    def act_fwd_ste(a, alpha, thr, lv):
        c = (a / alpha).clamp(0.0, 1.0)
        return ((project(c, thr, lv) - c) + c) * alpha

    def act_bwd_clamped(g, a, alpha, thr, lv):
        """Clamp to [0, 1]: no gradient below 0 either, for the input nor for alpha."""
        x = a / alpha
        over, under = x > 1.0, x < 0.0
        q = project(x.clamp(0.0, 1.0), thr, lv)
        grad_alpha = (g * torch.where(over, torch.ones_like(x),
                                      torch.where(under, torch.zeros_like(x), q - x))).sum()
        return torch.where(over | under, torch.zeros_like(g), g * alpha / alpha), grad_alpha

    return {"weight_fwd": weight_fwd, "weight_bwd": weight_bwd,
            "act_fwd": act_fwd, "act_bwd": act_bwd,
            "weight_fwd_ste": weight_fwd_ste, "weight_bwd_clipped": weight_bwd_clipped,
            "act_fwd_ste": act_fwd_ste, "act_bwd_clamped": act_bwd_clamped}


# torch's C++ builder says "No CUDA runtime is found" on every CPU-only compile: not news here.
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)

_EAGER = _make_kernels(_project_bucketize)
_CHAIN = _make_kernels(_project_chain)
_compiled: dict[str, object] = {}
_lock = threading.Lock()
_state = {"mode": None}


def mode() -> str:
    """'compiled' or 'eager': how the kernels run in this process."""
    if _state["mode"] is None:
        wanted = os.environ.get("QUANT_KERNELS", "compiled").strip().lower()
        if wanted not in ("compiled", "eager"):
            raise ValueError(f"QUANT_KERNELS={wanted!r}; expected 'compiled' or 'eager'")
        _state["mode"] = wanted
    return _state["mode"]


def set_mode(value: str) -> None:
    """Choose 'compiled' (fused by torch.compile) or 'eager' kernels for this process."""
    if value not in ("compiled", "eager"):
        raise ValueError(f"kernel mode {value!r}; expected 'compiled' or 'eager'")
    _state["mode"] = value


def _allow_recompiles(limit: int = 64) -> None:
    """One compilation per level-set size (1-31 thresholds) and device: more than dynamo's
    default of 8 per function once several bit widths run in one process."""
    cfg = torch._dynamo.config
    for attr in ("recompile_limit", "cache_size_limit"):  # the name changed across versions
        if hasattr(cfg, attr) and getattr(cfg, attr) < limit:
            setattr(cfg, attr, limit)


def _get(name: str):
    if mode() == "eager":
        return _EAGER[name]
    fn = _compiled.get(name)
    if fn is None:
        with _lock:
            fn = _compiled.get(name)
            if fn is None:
                _allow_recompiles()
                fn = torch.compile(_CHAIN[name], dynamic=True, fullgraph=True)
                _compiled[name] = fn
    return fn


def run(name: str, *args):
    """Run kernel ``name`` on flat tensors; falls back to eager if compilation fails.

    Inside a region that torch.compile is tracing (``train.compile``), the where-chain
    is traced inline, so the quantizer fuses with its neighbours in the model's graph.
    """
    if torch.compiler.is_compiling():
        return _CHAIN[name](*args)
    if mode() == "compiled":
        try:
            return _get(name)(*args)
        except Exception as exc:  # a missing compiler or an unsupported backend
            warnings.warn(f"quantizer kernels fall back to eager mode: torch.compile failed "
                          f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})",
                          RuntimeWarning, stacklevel=2)
            set_mode("eager")
    return _EAGER[name](*args)
