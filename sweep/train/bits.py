"""The resolved bits of a model's layers and what they cost (``bits.json``: average bits,
weight size, BOPs, ``quant.cost``), and the short label of a checkpoint's precision used
in lineage tags: ``FP32``, ``W4A4`` or ``MIXED(w2.50,a3.00)`` (the averages of
``quant.budget``: weight bits weighted by parameters, activation bits by input elements
per 32x32 image). A DAMBQ layer's bits are its channels' bits as they
are in the model (``quant.dambq.mean_bits``), not its policy's starting bits."""
from __future__ import annotations

from torch import nn

import quant
from sweep import labels
from sweep.labels import FULL_PRECISION


def layer_bits(model: nn.Module) -> dict:
    """``{module name: {w_bits, a_bits, scheme, act_scheme, z}}`` for every conv and
    linear layer; the first and last layer follow ``first_last_bits`` (inputs not
    quantized: ``a_bits`` 32). A DAMBQ layer's ``w_bits``/``a_bits`` are its mean bits, and
    ``channel_w_bits`` (per output channel) and ``channel_a_bits`` (per input channel; one
    value each at ``quant.granularity: layer``) list them."""
    from quant.dambq import dambq_layers, mean_bits
    policy = getattr(model, "quant_policy", None) or quant.QuantPolicy()
    out = {}
    for name in quant.quantized_layer_names(model):
        spec = policy.spec_for(name)
        out[name] = {"w_bits": spec.w_bits, "a_bits": spec.a_bits, "scheme": spec.scheme,
                     "act_scheme": spec.act_scheme, "z": spec.z}
    means = mean_bits(model)
    for name, layer in dambq_layers(model):
        for side, attr, mean in zip("wa", ("weight_quant", "act_quant"), means[name]):
            if mean is not None:
                out[name][f"{side}_bits"] = mean
                out[name][f"channel_{side}_bits"] = getattr(layer, attr).bits.tolist()
    for edge in (getattr(model, "first_layer", None), getattr(model, "last_layer", None)):
        if edge:
            out[edge] = {"w_bits": policy.first_last_bits, "a_bits": FULL_PRECISION,
                         "scheme": "fixed" if policy.first_last_bits != FULL_PRECISION else None,
                         "act_scheme": None, "z": None}
    return out


def model_cost(model: nn.Module, image_size=(32, 32)):
    """(``quant.cost.BitCost``, ``models.shapes.ModelShape``) of a model built by
    ``models.build_model``, for images of ``image_size``; measured on the float
    architecture (CPU, cached), so the model itself is not run."""
    from models.shapes import arch_shape
    from quant.cost import bit_cost
    first = model.get_submodule(model.first_layer)
    last = model.get_submodule(model.last_layer)
    shape = arch_shape(model.arch, num_classes=last.out_features, in_channels=first.in_channels,
                       image_size=tuple(image_size))
    policy = getattr(model, "quant_policy", None) or quant.QuantPolicy()
    return bit_cost(policy, shape, model), shape


def bits_record(model: nn.Module, image_size=(32, 32)) -> dict:
    """``bits.json``: ``avg_w_bits``, ``avg_a_bits``, ``weight_size_bytes``, ``bops``, the
    ``image_size`` they are counted at, and ``layers``: ``layer_bits`` with each layer's
    ``params``, ``macs`` and ``in_elems`` (input activation elements) per image."""
    cost, shape = model_cost(model, image_size)
    layers = layer_bits(model)
    for name, s in shape.layers.items():
        if name in layers:
            layers[name].update(params=s.params, macs=s.macs, in_elems=s.in_elems)
    return {**cost.as_dict(), "image_size": list(shape.image_size), "layers": layers}


def bits_label(model: nn.Module) -> str:
    """``FP32``, ``W<w>A<a>`` when every decided layer agrees, else ``MIXED(w..,a..)``
    (``sweep.labels``)."""
    names = set(quant.quantized_layer_names(model))
    bits = [(layer["w_bits"], layer["a_bits"]) for n, layer in layer_bits(model).items() if n in names]
    if not bits:
        return labels.bits_label(FULL_PRECISION, FULL_PRECISION)
    ws, acts = {w for w, _ in bits}, {a for _, a in bits}
    if len(ws) == 1 and len(acts) == 1:
        return labels.bits_label(ws.pop(), acts.pop())
    cost, _ = model_cost(model)       # weighted as quant.budget counts them (search-space.md)
    return labels.bits_label(cost.avg_w_bits, cost.avg_a_bits, mixed=True)


def checkpoint_bits_label(path) -> str | None:
    """The label of a project checkpoint file; None for a reference checkpoint (which
    does not say how it was quantized)."""
    from models.checkpoint import is_project_checkpoint, load_weights, model_of, read_checkpoint

    ckpt = read_checkpoint(path)
    if not is_project_checkpoint(ckpt):
        return None
    model = model_of(ckpt)
    load_weights(model, ckpt["state_dict"], path)       # a DAMBQ model's bits are in its weights
    return bits_label(model)
