"""Per-layer quantization policy and its application to a float model.

A ``QuantPolicy`` holds the model-wide settings (``quant.w_bits``, ``quant.a_bits``,
``quant.scheme``, ``quant.act_scheme``, ``quant.family``, ``quant.z``,
``quant.first_last_bits``, ``quant.alpha_grad_scale``, ``quant.granularity``), the
per-layer overrides of ``quant.layers``: globs on module names mapped to ``w_bits``,
``a_bits``, ``scheme``, ``act_scheme``; the last matching pattern wins, key by key; the
average-bit ``quant.budget``; and ``quant.allocation`` (``Allocation``), the bit
allocation a training runs (DAMBQ's LBA, ``quant.lba``).

``quantize_model(model, policy)`` swaps every ``nn.Conv2d`` / ``nn.Linear`` for its
quantized counterpart, by fully-qualified name, like torchao's ``quantize_``. The
model names its first and last layer (``model.first_layer``, ``model.last_layer``);
those follow ``first_last_bits`` (fixed-point weights, inputs not quantized).
"""
from __future__ import annotations

import dataclasses
import fnmatch
from dataclasses import dataclass, field

import torch
from torch import nn

from .cost import BUDGET_KEYS
from .layers import QuantConv2d, QuantLinear
from .levels import (FULL_PRECISION, QuantConfigError, check_act, check_scheme, check_weight,
                     check_z, default_act_scheme, z_without_ngrid)
from .dambq import DambqActQuantizer, DambqWeightQuantizer
from .quantizers import ActQuantizer, FixedPointWeight, WeightQuantizer

FAMILIES = ("cifar", "imagenet")    # the reference's two quantized-conv families
LAYER_KEYS = ("w_bits", "a_bits", "scheme", "act_scheme")   # what a quant.layers entry may set
GRANULARITIES = ("channel", "layer")   # dambq: bits and clip per channel, or one per layer
ALLOCATION_METHODS = ("none", "lba")


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


# ---- the checks of one value of a key (the values already parsed: ints, floats, strings)

def _w_bits(n):
    check_weight(n, "uniform")          # 1..5 or 32; w_bits 1 model-wide is refused below
    return n


def _a_bits(n):
    check_act(n, "uniform")
    return n


def _act_scheme(name):
    check_act(FULL_PRECISION, name)
    return name


def _family(name):
    if name not in FAMILIES:
        raise QuantConfigError(f"unknown family {name!r}; expected one of: {', '.join(FAMILIES)} "
                               "(or leave it out: the architecture's own)")
    return name


def _first_last_bits(n):
    if isinstance(n, bool) or not (n in range(2, 9) or n == FULL_PRECISION):
        raise QuantConfigError(f"first_last_bits={n} is not supported; the first conv and last "
                               "linear layer take 2 to 8 bits, or 32 (not quantized)")
    return n


def _grad_scale(x):
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not (0 < x < float("inf")):
        raise QuantConfigError(f"alpha_grad_scale={x!r}: expected a positive number (the factor on "
                               "every clipping threshold's gradient), or null for none")
    return float(x)


def _layers(layers):
    """``{glob: {key: value}}`` or ``((glob, {...}), ...)`` -> ``((glob, {...}), ...)``."""
    pairs = layers.items() if isinstance(layers, dict) else layers
    out = []
    for glob, override in pairs:
        if not isinstance(override, dict):
            raise QuantConfigError(f"layers[{glob!r}]: expected a mapping of {', '.join(LAYER_KEYS)}, "
                                   f"got {override!r}", f"layers.{glob}")
        unknown = sorted(set(override) - set(LAYER_KEYS))
        if unknown:
            raise QuantConfigError(f"layers[{glob!r}]: unknown key(s) {', '.join(unknown)}; "
                                   f"allowed: {', '.join(LAYER_KEYS)}", f"layers.{glob}.{unknown[0]}")
        out.append((str(glob), dict(override)))
    return tuple(out)


def _budget(budget):
    """``{avg_w_bits: B_w, avg_a_bits: B_a}`` (either may be left out) -> the same with floats."""
    keys = BUDGET_KEYS
    if not isinstance(budget, dict) or not budget:
        raise QuantConfigError(f"expected a mapping with avg_w_bits and/or avg_a_bits, e.g. "
                               f"{{avg_w_bits: 3.0, avg_a_bits: 3.0}}; got {budget!r}")
    out = {}
    for key, value in budget.items():
        if key not in keys:
            raise QuantConfigError(f"unknown budget key {key!r}; allowed: {', '.join(keys)}", f"budget.{key}")
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 1 <= value <= FULL_PRECISION:
            raise QuantConfigError(f"expected an average number of bits from 1 to {FULL_PRECISION}, "
                                   f"got {value!r}", f"budget.{key}")
        out[key] = float(value)
    return out or None


def _granularity(name):
    if name not in GRANULARITIES:
        raise QuantConfigError(f"unknown granularity {name!r}; expected one of: {', '.join(GRANULARITIES)}")
    return name


def _method(name):
    if name not in ALLOCATION_METHODS:
        raise QuantConfigError(f"unknown allocation method {name!r}; expected one of: "
                               f"{', '.join(ALLOCATION_METHODS)}")
    return name


def _number(x, what: str, lo: float, hi: float | None = None, lo_open: bool = False):
    if isinstance(x, bool) or not isinstance(x, (int, float)) or x != x or x < lo or (lo_open and x == lo) \
            or (hi is not None and x > hi):
        span = f"in {'(' if lo_open else '['}{lo}, {hi}]" if hi is not None else f"{'>' if lo_open else '>='} {lo}"
        raise QuantConfigError(f"{what} must be a number {span}, got {x!r}")
    return float(x)


def _ratio(x):
    return _number(x, "the fraction of channels lowered at an epoch's end", 0.0, 1.0)


def _schedule_epochs(n):
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise QuantConfigError(f"schedule_epochs must be an integer >= 1 (LBA lowers bits at the end "
                               f"of 0-based epochs 0 to schedule_epochs), got {n!r}")
    return n


def _margin(x):
    return _number(x, "margin (average bits allowed above the budget)", 0.0)


def _key(default, kind, check, null=False):
    """A ``quant.*`` key: its default, which values it parses to (``int``, ``float``, ``any``:
    also which search distributions fit it), its check, and whether ``None`` is allowed. The
    configuration derives its ``quant.*`` keys from these (``sweep.config.keys``): each key
    is declared only here."""
    return field(default=default, metadata={"kind": kind, "check": check, "null": null})


def _check_fields(obj) -> None:
    """Check and normalise every field of a frozen dataclass declared with ``_key``
    (errors name the field in ``QuantConfigError.key``)."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if value is not None or not f.metadata["null"]:
            try:
                object.__setattr__(obj, f.name, f.metadata["check"](value))
            except QuantConfigError as exc:
                raise QuantConfigError(str(exc), exc.key or f.name) from None


def _from_dict(cls, d: dict | None, what: str):
    d = dict(d or {})
    unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise QuantConfigError(f"unknown {what} key(s) {', '.join(unknown)}; allowed: "
                               f"{', '.join(f.name for f in dataclasses.fields(cls))}", unknown[0])
    return cls(**d)


@dataclass(frozen=True)
class Allocation:
    """The ``quant.allocation`` section: a bit allocation run during training, lowering the
    bits of DAMBQ channels towards ``quant.budget`` (``quant.lba``). ``method: none`` (the
    default) allocates nothing; ``lba`` is DAMBQ's loss-aware allocation with its
    reference's schedule as defaults (``quant.lba.lba_ratio``)."""
    method: str = _key("none", "any", _method)
    ratio_start: float = _key(0.01, "float", _ratio)      # fraction lowered after epoch 0
    ratio_end: float = _key(0.30, "float", _ratio)        # ... after epoch schedule_epochs
    schedule_epochs: int = _key(150, "int", _schedule_epochs)   # lowering in epochs 0..this
    margin: float = _key(0.07, "float", _margin)          # stop at budget + margin

    def __post_init__(self):
        _check_fields(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> "Allocation":
        return _from_dict(cls, d, "allocation")

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def _allocation(value):
    """``quant.allocation`` as a mapping (the YAML's, a checkpoint's) or an ``Allocation``."""
    if isinstance(value, Allocation):
        return value
    if value is not None and not isinstance(value, dict):
        raise QuantConfigError(f"expected a mapping such as {{method: lba}}, got {value!r}")
    try:
        return Allocation.from_dict(value)
    except QuantConfigError as exc:
        raise QuantConfigError(str(exc), f"allocation.{exc.key}" if exc.key else "allocation") from None


@dataclass(frozen=True)
class QuantPolicy:
    """The ``quant`` section: model-wide settings and per-layer overrides, checked on
    construction (every error names its key below ``quant`` in ``QuantConfigError.key``)."""
    w_bits: int = _key(FULL_PRECISION, "int", _w_bits)       # 2..5; 32 = full precision
    a_bits: int = _key(FULL_PRECISION, "int", _a_bits)
    scheme: str = _key("apot", "any", check_scheme)
    act_scheme: str | None = _key(None, "any", _act_scheme, null=True)   # None: from scheme
    family: str | None = _key(None, "any", _family, null=True)   # None: the architecture's
    z: float | None = _key(None, "float", check_z, null=True)     # ngrid's Z (2-bit weights)
    first_last_bits: int = _key(8, "int", _first_last_bits)  # first conv, last linear
    alpha_grad_scale: float | None = _key(None, "float", _grad_scale, null=True)   # on alpha grads
    layers: tuple = _key((), "layers", _layers)   # ((glob, {key: value}), ...) in file order
    # {avg_w_bits, avg_a_bits}: the most average bits a trial may have (quant.cost); the
    # averages need the architecture's layer shapes, so the configuration checks them
    budget: dict | None = _key(None, "budget", _budget, null=True)
    # dambq only: bits and clip per channel (default) or one per layer; None: the scheme's own
    granularity: str | None = _key(None, "any", _granularity, null=True)
    # a sub-section (its keys are quant.allocation.*); with method lba, budget is its target
    allocation: Allocation = field(default=Allocation(), metadata={
        "section": Allocation, "kind": "section", "check": _allocation, "null": False})

    def __post_init__(self):
        _check_fields(self)
        self._check_combinations()

    @property
    def start_budget(self) -> dict | None:
        """The budget a configuration must meet before it is trained: ``budget``, or None
        when an allocation lowers the bits to it during training."""
        return self.budget if self.allocation.method == "none" else None

    def _uses_dambq(self) -> bool:
        return self.scheme == "dambq" or any(e.get("scheme") == "dambq" for _, e in self.layers)

    def _check_combinations(self):
        w, a, scheme, z = self.w_bits, self.a_bits, self.scheme, self.z
        act = self.act_scheme or default_act_scheme(scheme)

        def check(key, fn, *args):
            try:
                fn(*args)
            except QuantConfigError as exc:
                raise QuantConfigError(str(exc), key) from None

        if w == 1:
            raise QuantConfigError("w_bits=1 (binary weights) is for per-layer bit allocation only: "
                                   "set it on layers in quant.layers", "w_bits")
        _dambq_pair(scheme, self.act_scheme, "act_scheme" if self.act_scheme else "scheme")
        for glob, entry in self.layers:
            ls = entry.get("scheme", scheme)
            las = entry.get("act_scheme") or self.act_scheme          # as spec_for
            own = "act_scheme" if entry.get("act_scheme") else "scheme"
            if "scheme" in entry or "act_scheme" in entry:
                _dambq_pair(ls, las, f"layers.{glob}.{own}")
        if self.granularity is not None and not self._uses_dambq():
            raise QuantConfigError(f"granularity applies to scheme 'dambq' only (quant.scheme is "
                                   f"{scheme!r}); remove quant.granularity", "granularity")
        self._check_allocation()
        check("z" if scheme == "ngrid" and w == 2 else "w_bits", check_weight, w, scheme,
              z if scheme == "ngrid" else None)
        check("act_scheme" if self.act_scheme else "a_bits", check_act, a, act)
        for glob, entry in self.layers:
            lw, ls = entry.get("w_bits", w), entry.get("scheme", scheme)
            if "w_bits" in entry or "scheme" in entry:
                own = "w_bits" if "w_bits" in entry else "scheme"
                key = "z" if ls == "ngrid" and lw == 2 else f"layers.{glob}.{own}"
                check(key, check_weight, lw, ls, z if ls == "ngrid" else None)
            if "a_bits" in entry or "act_scheme" in entry:
                own = "act_scheme" if entry.get("act_scheme") else "a_bits"
                las = entry.get("act_scheme") or self.act_scheme or default_act_scheme(ls)   # as spec_for
                check(f"layers.{glob}.{own}", check_act, entry.get("a_bits", a), las)
        if z is not None and scheme != "ngrid" and not any(e.get("scheme") == "ngrid" for _, e in self.layers):
            raise z_without_ngrid(z, scheme)

    def _check_allocation(self):
        if self.allocation.method == "none":
            return
        if not self.budget:
            raise QuantConfigError(f"allocation method {self.allocation.method!r} lowers the bits to "
                                   "quant.budget; set it, e.g. quant.budget: {avg_w_bits: 2.0, "
                                   "avg_a_bits: 2.0}", "allocation.method")
        quantized = self.w_bits != FULL_PRECISION or self.a_bits != FULL_PRECISION or self.layers
        if not (self._uses_dambq() and quantized):
            raise QuantConfigError(f"allocation method {self.allocation.method!r} lowers the bits of "
                                   "DAMBQ channels; use quant.scheme: dambq with w_bits/a_bits of 2 "
                                   "to 4 (every channel starts there)", "allocation.method")

    @classmethod
    def from_dict(cls, d: dict | None) -> "QuantPolicy":
        """The policy of a ``quant`` mapping: the YAML section, ``to_dict()``, or the ``quant``
        entry of a project checkpoint (``layers`` as a mapping or as ``[[glob, {...}], ...]``,
        ``allocation`` as a mapping); missing keys take their defaults."""
        return _from_dict(cls, d, "quant")

    def to_dict(self, layer_pairs: bool = False) -> dict:
        """Plain values by key; ``layers`` as ``{glob: {...}}`` (the YAML's shape), or with
        ``layer_pairs`` as ``[[glob, {...}], ...]`` (a checkpoint's: the order survives any
        serialiser); ``allocation`` as a mapping."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["layers"] = ([[g, dict(o)] for g, o in self.layers] if layer_pairs
                         else {g: dict(o) for g, o in self.layers})
        out["allocation"] = self.allocation.to_dict()
        return out

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


def _dambq_pair(scheme: str, act_scheme: str | None, key: str) -> None:
    """DAMBQ's weights and activations go together (``act_scheme`` None: from ``scheme``)."""
    if (scheme == "dambq") != ((act_scheme or default_act_scheme(scheme)) == "dambq"):
        raise QuantConfigError(f"scheme {scheme!r} with act_scheme {act_scheme!r}: DAMBQ quantizes "
                               "weights and activations together; use scheme: dambq with act_scheme "
                               "dambq (or null), or neither", key)


def _quantizers(spec: LayerSpec, module: nn.Module, policy: "QuantPolicy"):
    if spec.scheme == "dambq":
        per_channel = (policy.granularity or "channel") == "channel"
        out = getattr(module, "out_channels", None) or module.out_features
        inp = getattr(module, "in_channels", None) or module.in_features
        wq = None if spec.w_bits == FULL_PRECISION else DambqWeightQuantizer(out if per_channel else 1, spec.w_bits)
        aq = None if spec.a_bits == FULL_PRECISION else DambqActQuantizer(inp if per_channel else 1, spec.a_bits)
        return wq, aq
    kw = dict(family=policy.family or "cifar", grad_scale=policy.alpha_grad_scale)
    wq = None if spec.w_bits == FULL_PRECISION else WeightQuantizer(spec.w_bits, spec.scheme, spec.z, **kw)
    aq = None if spec.a_bits == FULL_PRECISION else ActQuantizer(spec.a_bits, spec.act_scheme, **kw)
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
                                   f"like {', '.join(names[:2])}, {names[-1]}", f"layers.{glob}")


def quantize_model(model: nn.Module, policy: QuantPolicy) -> nn.Module:
    """Swap the float conv/linear layers of ``model`` for quantized ones, in place (in the
    policy's family; ``cifar`` when it names none: ``models.build_model`` fills in the
    architecture's own)."""
    first, last = getattr(model, "first_layer", None), getattr(model, "last_layer", None)
    try:
        check_layer_globs(quantized_layer_names(model), [g for g, _ in policy.layers],
                          getattr(model, "arch", type(model).__name__))
    except QuantConfigError as exc:
        raise QuantConfigError(f"quant.layers pattern {exc.key[len('layers.'):]!r} {exc}") from None
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
            wq, aq = _quantizers(spec, module, policy)
            new = cls.from_float(module, weight_quantizer=wq, act_quantizer=aq)
        _set_module(model, name, new)
    model.quant_policy = policy
    return model


def alphas(model: nn.Module) -> dict[str, float]:
    """Every learned clipping threshold, named ``weight/<layer>`` and ``act/<layer>`` (a
    DAMBQ layer's weight clip is a per-channel buffer, not learned, and not listed)."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, WeightQuantizer):
            out[f"weight/{name.rsplit('.weight_quant', 1)[0]}"] = float(m.wgt_alpha.detach())
        elif isinstance(m, (ActQuantizer, DambqActQuantizer)):
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
