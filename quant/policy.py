"""Per-layer quantization policy and its application to a float model.

A ``QuantPolicy`` holds the model-wide settings (``quant.w_bits``, ``quant.a_bits``,
``quant.scheme``, ``quant.act_scheme``, ``quant.z``, ``quant.first_last_bits``) and the
per-layer overrides of ``quant.layers``: globs on module names mapped to ``w_bits``,
``a_bits``, ``scheme``, ``act_scheme``; the last matching pattern wins, key by key.

``quantize_model(model, policy)`` swaps every ``nn.Conv2d`` / ``nn.Linear`` for its
quantized counterpart, by fully-qualified name, like torchao's ``quantize_``. The
model names its first and last layer (``model.first_layer``, ``model.last_layer``);
those follow ``first_last_bits`` (fixed-point weights, inputs not quantized).
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

import torch
from torch import nn

from .layers import QuantConv2d, QuantLinear
from .levels import (FULL_PRECISION, QuantConfigError, check_act, check_scheme, check_weight,
                     default_act_scheme)
from .quantizers import ActQuantizer, FixedPointWeight, WeightQuantizer

FAMILIES = ("cifar", "imagenet")
LAYER_KEYS = ("w_bits", "a_bits", "scheme", "act_scheme")
FIRST_LAST_BITS = tuple(range(2, 9)) + (FULL_PRECISION,)


@dataclass(frozen=True)
class LayerSpec:
    """The resolved quantization of one layer."""
    w_bits: int
    a_bits: int
    scheme: str
    act_scheme: str
    z: float | None = None

    @property
    def quantized(self) -> bool:
        return self.w_bits != FULL_PRECISION or self.a_bits != FULL_PRECISION


@dataclass(frozen=True)
class QuantPolicy:
    w_bits: int = FULL_PRECISION
    a_bits: int = FULL_PRECISION
    scheme: str = "apot"
    act_scheme: str | None = None
    z: float | None = None
    layers: tuple = ()              # ((glob, {key: value}), ...) in file order
    first_last_bits: int = 8
    family: str = "cifar"

    def __post_init__(self):
        if isinstance(self.layers, dict):
            object.__setattr__(self, "layers", tuple(self.layers.items()))
        object.__setattr__(self, "layers", tuple((g, dict(o)) for g, o in self.layers))
        if self.family not in FAMILIES:
            raise QuantConfigError(f"family {self.family!r} is unknown; expected one of: "
                                   f"{', '.join(FAMILIES)}")
        if self.family == "imagenet":
            raise QuantConfigError("family 'imagenet' (the reference's ImageNet/MNIST quantized "
                                   "conv) is not available yet; use family: cifar")
        if self.first_last_bits not in FIRST_LAST_BITS:
            raise QuantConfigError(f"first_last_bits={self.first_last_bits!r} is not supported; "
                                   "use 2-8 (fixed point) or 32 (not quantized)")
        check_scheme(self.scheme)
        if self.z is not None and self.scheme != "ngrid" and not any(
                o.get("scheme") == "ngrid" for _, o in self.layers):
            raise QuantConfigError(f"z={self.z!r} belongs to scheme 'ngrid' only; remove quant.z "
                                   "or set quant.scheme: ngrid")
        for glob, override in self.layers:
            unknown = sorted(set(override) - set(LAYER_KEYS))
            if unknown:
                raise QuantConfigError(f"layers[{glob!r}]: unknown key(s) {', '.join(unknown)}; "
                                       f"allowed: {', '.join(LAYER_KEYS)}")
        self.spec_for("")  # the model-wide setting itself must be valid

    def spec_for(self, name: str) -> LayerSpec:
        """The quantization of the module called ``name`` (a fully-qualified name)."""
        values = {"w_bits": self.w_bits, "a_bits": self.a_bits, "scheme": self.scheme,
                  "act_scheme": self.act_scheme}
        where = "quant"
        for glob, override in self.layers:
            if name and fnmatch.fnmatchcase(name, glob):
                values.update(override)
                where = f"quant.layers[{glob!r}] for {name}"
        scheme = values["scheme"]
        act_scheme = values["act_scheme"] or default_act_scheme(scheme)
        z = self.z if scheme == "ngrid" else None
        try:
            check_weight(values["w_bits"], scheme, z)
            check_act(values["a_bits"], act_scheme)
        except QuantConfigError as exc:
            raise QuantConfigError(f"{where}: {exc}") from None
        return LayerSpec(values["w_bits"], values["a_bits"], scheme, act_scheme, z)

    def average_bits(self, names) -> tuple[float, float]:
        specs = [self.spec_for(n) for n in names]
        return (sum(s.w_bits for s in specs) / len(specs), sum(s.a_bits for s in specs) / len(specs))


def _quantizers(spec: LayerSpec):
    wq = None if spec.w_bits == FULL_PRECISION else WeightQuantizer(spec.w_bits, spec.scheme, spec.z)
    aq = None if spec.a_bits == FULL_PRECISION else ActQuantizer(spec.a_bits, spec.act_scheme)
    return wq, aq


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def quantized_layer_names(model: nn.Module) -> list[str]:
    """Names of the layers the policy decides on (every conv and linear but first/last)."""
    edge = {getattr(model, "first_layer", None), getattr(model, "last_layer", None)}
    return [n for n, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear)) and n not in edge]


def check_layer_globs(names, globs, arch: str = "this model") -> None:
    """Raise QuantConfigError for the first glob of ``quant.layers`` matching none of ``names``."""
    for glob in globs:
        if not any(fnmatch.fnmatchcase(n, glob) for n in names):
            raise QuantConfigError(f"matches no quantizable layer of {arch}; its layers are named "
                                   f"like {', '.join(names[:2])}, {names[-1]}", glob)


def quantize_model(model: nn.Module, policy: QuantPolicy) -> nn.Module:
    """Swap the float conv/linear layers of ``model`` for quantized ones, in place."""
    first, last = getattr(model, "first_layer", None), getattr(model, "last_layer", None)
    try:
        check_layer_globs(quantized_layer_names(model), [g for g, _ in policy.layers],
                          getattr(model, "arch", type(model).__name__))
    except QuantConfigError as exc:
        raise QuantConfigError(f"quant.layers pattern {exc.args[1]!r} {exc.args[0]}") from None
    for name, module in list(model.named_modules()):
        if not isinstance(module, (nn.Conv2d, nn.Linear)) or isinstance(module, (QuantConv2d, QuantLinear)):
            continue
        cls = QuantConv2d if isinstance(module, nn.Conv2d) else QuantLinear
        if name in (first, last):
            if policy.first_last_bits == FULL_PRECISION:
                continue
            new = cls.from_float(module, weight_quantizer=FixedPointWeight(policy.first_last_bits))
        else:
            spec = policy.spec_for(name)
            if not spec.quantized:
                continue
            wq, aq = _quantizers(spec)
            new = cls.from_float(module, weight_quantizer=wq, act_quantizer=aq)
        _set_module(model, name, new)
    model.quant_policy = policy
    return model


def alphas(model: nn.Module) -> dict[str, float]:
    """Every clipping threshold, named ``weight/<layer>`` and ``act/<layer>``."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, WeightQuantizer):
            out[f"weight/{name.rsplit('.weight_quant', 1)[0]}"] = float(m.wgt_alpha.detach())
        elif isinstance(m, ActQuantizer):
            out[f"act/{name.rsplit('.act_quant', 1)[0]}"] = float(m.act_alpha.detach())
    return out


@torch.no_grad()
def clamp_alphas_(model: nn.Module, floor: float = 1e-3) -> None:
    """Keep every clipping threshold at or above ``floor`` (call after optimiser steps)."""
    for m in model.modules():
        if isinstance(m, (WeightQuantizer, ActQuantizer)):
            m.alpha.clamp_(min=floor)


def alpha_parameters(model: nn.Module) -> tuple[list, list, list]:
    """(activation alphas, weight alphas, every other parameter), for optimiser groups."""
    act = [m.act_alpha for m in model.modules() if isinstance(m, ActQuantizer)]
    wgt = [m.wgt_alpha for m in model.modules() if isinstance(m, WeightQuantizer)]
    ids = {id(p) for p in act + wgt}
    return act, wgt, [p for p in model.parameters() if id(p) not in ids]
