"""Autograd functions of the quantizers (module level, so they pickle).

``weight_quantize``: normalise a weight tensor (mean and std as constants), divide by
the learnable ``alpha``, clip to [-1, 1], project the magnitude onto the level set,
restore the sign and scale; straight-through gradient for the weight and the APoT
clipping gradient for alpha (docs/quantization.md, "Weight quantizer").

``act_quantize``: divide by ``alpha``, clip above at 1, project, scale; gradient masked
where the input was clipped, APoT gradient for alpha ("Activation quantizer").

The ImageNet family (``family="imagenet"``, docs/quantization.md "Two families") is the
same pair with these differences: the weight is normalised with its gradient (mean and
std not constants), 3-5-bit weights get no gradient outside +-alpha while 2-bit weights
keep the unclipped "calibrated" gradient (and the CIFAR kernels), activations are
clamped to [0, 1], and the forward of 3-5-bit weights and of activations is written as
the straight-through rounding ``((q - c) + c) * alpha``.
``grad_scale`` (either family) multiplies only the alpha gradients.

``fixed_point_weight``: the 8-bit first/last layer rule ``round(w / max(w) * 127) / 127
* max(w)`` with a straight-through gradient.

Quantization math is float32 whatever the input dtype (bf16 autocast included).
"""
from __future__ import annotations

import torch

from . import kernels


def _flatten(t: torch.Tensor):
    """A 1-D alias of a dense tensor (contiguous or channels-last) and how to undo it.

    The alias is detached from its base so that compiled kernels see a plain 1-D tensor
    and do not specialise (recompile) on the shape of the tensor it came from.
    """
    if t.is_contiguous():
        return t.view(-1).detach(), (lambda y: y.view(t.shape))
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        p = t.permute(0, 2, 3, 1)
        return p.reshape(-1).detach(), (lambda y: y.view(p.shape).permute(0, 3, 1, 2))
    c = t.contiguous()
    return c.view(-1).detach(), (lambda y: y.view(c.shape))


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype == torch.float32 else t.float()


# kernel names by rule: (forward, backward)
_WEIGHT_RULES = {"cifar": ("weight_fwd", "weight_bwd"),                 # also ImageNet 2-bit (calibrated)
                 "clipped": ("weight_fwd_ste", "weight_bwd_clipped")}   # ImageNet 3-5 bits
_ACT_RULES = {"cifar": ("act_fwd", "act_bwd"), "imagenet": ("act_fwd_ste", "act_bwd_clamped")}


def _scaled(grad_alpha: torch.Tensor, scale: float | None) -> torch.Tensor:
    return grad_alpha.reshape(()) if scale is None else grad_alpha.reshape(()) * scale


class WeightQuantize(torch.autograd.Function):
    """``w_hat = (w - mean) / std`` with ``mean``, ``std`` constants, then the quantizer."""

    @staticmethod
    def forward(ctx, w, alpha, thr, lv, mean, std, rule="cifar", grad_scale=None):
        w32 = _f32(w.detach())
        flat, unflatten = _flatten(w32)
        alpha32 = _f32(alpha.detach())
        y = kernels.run(_WEIGHT_RULES[rule][0], flat, mean, std, alpha32, thr, lv)
        ctx.save_for_backward(w32, mean, std, alpha32, thr, lv)
        ctx.in_dtype, ctx.rule, ctx.grad_scale = w.dtype, rule, grad_scale
        return unflatten(y)

    @staticmethod
    def backward(ctx, grad_out):
        w32, mean, std, alpha32, thr, lv = ctx.saved_tensors
        flat, unflatten = _flatten(w32)
        g, _ = _flatten(_same_layout(_f32(grad_out), w32))
        grad_w, grad_alpha = kernels.run(_WEIGHT_RULES[ctx.rule][1], g, flat, mean, std, alpha32, thr, lv)
        return (unflatten(grad_w).to(ctx.in_dtype), _scaled(grad_alpha, ctx.grad_scale),
                None, None, None, None, None, None)


class ActQuantize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, alpha, thr, lv, rule="cifar", grad_scale=None):
        a32 = _f32(a.detach())
        flat, unflatten = _flatten(a32)
        alpha32 = _f32(alpha.detach())
        y = kernels.run(_ACT_RULES[rule][0], flat, alpha32, thr, lv)
        ctx.save_for_backward(a32, alpha32, thr, lv)
        ctx.in_dtype, ctx.rule, ctx.grad_scale = a.dtype, rule, grad_scale
        return unflatten(y)

    @staticmethod
    def backward(ctx, grad_out):
        a32, alpha32, thr, lv = ctx.saved_tensors
        flat, unflatten = _flatten(a32)
        g, _ = _flatten(_same_layout(_f32(grad_out), a32))
        grad_a, grad_alpha = kernels.run(_ACT_RULES[ctx.rule][1], g, flat, alpha32, thr, lv)
        return unflatten(grad_a).to(ctx.in_dtype), _scaled(grad_alpha, ctx.grad_scale), None, None, None, None


def _same_layout(g: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """``g`` laid out in memory like ``ref``, so both flatten to the same element order."""
    if ref.dim() == 4 and not ref.is_contiguous() and ref.is_contiguous(memory_format=torch.channels_last):
        return g.contiguous(memory_format=torch.channels_last)
    return g.contiguous()


def weight_quantize(w: torch.Tensor, alpha: torch.Tensor, thr: torch.Tensor, lv: torch.Tensor,
                    family: str = "cifar", grad_scale: float | None = None) -> torch.Tensor:
    """Quantize a raw weight tensor (normalised inside) with clipping threshold ``alpha``.

    ``family="imagenet"``: the normalisation is part of the graph (its gradient reaches
    the weight), then 2-bit weights (one positive level) take the calibrated rule and
    wider ones the clipped straight-through rule."""
    if family == "cifar":
        w32 = _f32(w.detach())
        return WeightQuantize.apply(w, alpha, thr, lv, w32.mean(), w32.std(), "cifar", grad_scale)
    w32 = _f32(w)
    w_hat = w32.add(-w32.mean()).div(w32.std())
    rule = "cifar" if lv.numel() <= 2 else "clipped"
    return normalised_weight_quantize(w_hat, alpha, thr, lv, rule, grad_scale)


def act_quantize(a: torch.Tensor, alpha: torch.Tensor, thr: torch.Tensor, lv: torch.Tensor,
                 family: str = "cifar", grad_scale: float | None = None) -> torch.Tensor:
    """Quantize activations with clipping threshold ``alpha`` (clipped above at alpha; the
    ImageNet family also clamps below at 0)."""
    return ActQuantize.apply(a, alpha, thr, lv, "cifar" if family == "cifar" else "imagenet", grad_scale)


def normalised_weight_quantize(w_hat: torch.Tensor, alpha: torch.Tensor, thr: torch.Tensor,
                               lv: torch.Tensor, rule: str = "cifar",
                               grad_scale: float | None = None) -> torch.Tensor:
    """The weight quantizer on an already normalised weight (mean 0 and std 1 as constants,
    which leave it unchanged): the ImageNet family's second step, and to check the
    quantizer against vectors whose input is ``w_hat``."""
    zero = torch.zeros((), dtype=torch.float32, device=w_hat.device)
    return WeightQuantize.apply(w_hat, alpha, thr, lv, zero, torch.ones_like(zero), rule, grad_scale)


def fixed_point_weight(w: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """``round(w / max(w) * n) / n * max(w)``, n = 2^(bits-1) - 1, straight-through.

    ``max(w)``, not ``max(|w|)``, as in the reference; the straight-through form
    ``(q - w).detach() + w`` is kept literally so values match it bit for bit.
    """
    n = float(2 ** (bits - 1) - 1)
    top = w.detach().max()
    q = w.detach().div(top).mul(n).round().div(n).mul(top)
    return (q - w).detach() + w
