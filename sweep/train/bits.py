"""The resolved bits of a model's layers (``bits.json``) and the short label of a
checkpoint's precision used in lineage tags: ``FP32``, ``W4A4`` or
``MIXED(w2.50,a3.00)`` (the averages over the layers the policy decides on)."""
from __future__ import annotations

from torch import nn

import quant
from sweep import labels
from sweep.labels import FULL_PRECISION


def layer_bits(model: nn.Module) -> dict:
    """``{module name: {w_bits, a_bits, scheme, act_scheme, z}}`` for every conv and
    linear layer; the first and last layer follow ``first_last_bits`` (inputs not
    quantized: ``a_bits`` 32)."""
    policy = getattr(model, "quant_policy", None) or quant.QuantPolicy()
    out = {}
    for name in quant.quantized_layer_names(model):
        spec = policy.spec_for(name)
        out[name] = {"w_bits": spec.w_bits, "a_bits": spec.a_bits, "scheme": spec.scheme,
                     "act_scheme": spec.act_scheme, "z": spec.z}
    for edge in (getattr(model, "first_layer", None), getattr(model, "last_layer", None)):
        if edge:
            out[edge] = {"w_bits": policy.first_last_bits, "a_bits": FULL_PRECISION,
                         "scheme": "fixed" if policy.first_last_bits != FULL_PRECISION else None,
                         "act_scheme": None, "z": None}
    return out


def bits_label(model: nn.Module) -> str:
    """``FP32``, ``W<w>A<a>`` when every decided layer agrees, else ``MIXED(w..,a..)``
    (``sweep.labels``)."""
    policy = getattr(model, "quant_policy", None) or quant.QuantPolicy()
    names = quant.quantized_layer_names(model)
    specs = [policy.spec_for(n) for n in names]
    if not specs:
        return labels.bits_label(FULL_PRECISION, FULL_PRECISION)
    ws, acts = {s.w_bits for s in specs}, {s.a_bits for s in specs}
    if len(ws) == 1 and len(acts) == 1:
        return labels.bits_label(ws.pop(), acts.pop())
    w, a = policy.average_bits(names)
    return labels.bits_label(w, a, mixed=True)


def checkpoint_bits_label(path) -> str | None:
    """The label of a project checkpoint file; None for a reference checkpoint (which
    does not say how it was quantized)."""
    from models.checkpoint import is_project_checkpoint, model_of, read_checkpoint

    ckpt = read_checkpoint(path)
    if not is_project_checkpoint(ckpt):
        return None
    return bits_label(model_of(ckpt))
