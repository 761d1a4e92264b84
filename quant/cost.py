"""Average bits, weight size and BOPs of a quantized model, from its layer shapes
(``models.shapes``) and its ``QuantPolicy`` — the accounting of a bit budget.

- ``avg_w_bits``: over the layers the policy decides on (block convs and shortcut
  convs; the first conv and last linear layer are not counted), weighted by each
  layer's weight elements.
- ``avg_a_bits``: over the same layers, weighted by each layer's input activation
  elements per image.
- ``weight_size_bytes``: every conv/linear weight at its bit width (the first and last
  layer at ``first_last_bits``, a full-precision layer at 32), every other parameter
  (batch-norm scale and shift, biases) at 32 bits; divided by 8.
- ``bops``: the sum over every conv/linear layer of MACs x weight bits x input bits per
  image; the first and last layer's inputs are not quantized (32 bits).

A full-precision layer counts 32 bits everywhere. A DAMBQ layer's bits differ from channel
to channel: given the ``model``, its layer counts its mean bits over output channels
(weights) and over input channels (activations), which weighs each channel by its
parameters or input elements (the BOPs of a dense layer, ``Σ_{co,ci} MACs/(Co·Ci) · w_co ·
a_ci``, are then exactly ``MACs · mean w · mean a``; a grouped or depthwise conv, whose output
channel c reads only its own input channels, is counted the same way, which is exact only
when its channels' bits are alike). Nothing here builds a model.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from .levels import FULL_PRECISION

__all__ = ["BitCost", "layer_bits_of", "bit_cost", "budget_excess", "BUDGET_KEYS"]

BUDGET_KEYS = ("avg_w_bits", "avg_a_bits")


@dataclass(frozen=True)
class BitCost:
    avg_w_bits: float
    avg_a_bits: float
    weight_size_bytes: float
    bops: float

    def as_dict(self) -> dict:
        return asdict(self)


def layer_bits_of(policy, shape, model=None) -> dict:
    """``{name: (w_bits, a_bits)}`` of every layer of ``shape`` under ``policy``; with the
    ``model``, its DAMBQ layers' mean bits (their bits as they are now)."""
    out = {}
    for name in shape.layers:
        if name in (shape.first, shape.last):
            out[name] = (policy.first_last_bits, FULL_PRECISION)
        else:
            spec = policy.spec_for(name)
            out[name] = (spec.w_bits, spec.a_bits)
    if model is not None:
        from .dambq import mean_bits
        for name, (w, a) in mean_bits(model).items():
            if name in out:
                out[name] = (out[name][0] if w is None else w, out[name][1] if a is None else a)
    return out


def bit_cost(policy, shape, model=None) -> BitCost:
    """The cost of ``policy`` over ``shape``; with the ``model``, of its DAMBQ layers'
    current bits."""
    bits = layer_bits_of(policy, shape, model)
    counted = [n for n in shape.layers if n not in (shape.first, shape.last)]
    w_total = sum(shape.layers[n].params for n in counted)
    a_total = sum(shape.layers[n].in_elems for n in counted)
    avg_w = sum(shape.layers[n].params * bits[n][0] for n in counted) / w_total if w_total else float(FULL_PRECISION)
    avg_a = sum(shape.layers[n].in_elems * bits[n][1] for n in counted) / a_total if a_total else float(FULL_PRECISION)
    size_bits = sum(s.params * bits[n][0] for n, s in shape.layers.items()) + 32 * shape.other_params
    bops = sum(s.macs * bits[n][0] * bits[n][1] for n, s in shape.layers.items())
    return BitCost(avg_w, avg_a, size_bits / 8, float(bops))


def budget_excess(cost: BitCost, budget: dict | None) -> dict:
    """``{key: average - limit}`` for each key the budget sets (> 0: over budget)."""
    return {k: getattr(cost, k) - float(v) for k, v in (budget or {}).items() if v is not None}
