"""One trial's ``TrialConfig`` from a concrete tree: defaults filled in, every value
checked, and the cross-field checks (bits, schemes, Z, layer globs)."""
from __future__ import annotations

import functools

from quant.levels import QuantConfigError, check_act, check_weight, default_act_scheme
from quant.policy import check_layer_globs, quantized_layer_names
from sweep.config.errors import ConfigError
from sweep.config.fields import FIELDS, TRIAL_SECTIONS, Invalid, check_leaf, join_key, leaves
from sweep.config.space import has_distributions
from sweep.config.tree import (DataConfig, InitFrom, LayerOverride, ModelConfig, QuantConfig,
                               SyntheticConfig, TrainConfig, TrialConfig)

_EXPERIMENT_KEYS = ("name", "stages", "search", "resources", "tracking")
_TRIAL_DEFAULTS = {k: f.default for k, f in FIELDS.items() if k.split(".")[0] in TRIAL_SECTIONS}



def resolve_trial(tree: dict, cwd: str | None = None) -> TrialConfig:
    """The TrialConfig of a concrete tree (no distributions left). Missing keys take their
    defaults; ``name``, ``stages``, ``search``, ``resources`` and ``tracking`` (experiment-
    level) are ignored. Relative paths are made absolute against ``cwd`` when it is given."""
    if not isinstance(tree, dict):
        raise ConfigError(None, None, f"a trial config is a mapping of sections, got {tree!r}")
    try:
        pairs = leaves({k: v for k, v in tree.items() if k not in _EXPERIMENT_KEYS}, TRIAL_SECTIONS)
    except Invalid as exc:
        raise ConfigError(None, exc.sub, exc.message) from None
    values = dict(_TRIAL_DEFAULTS)
    if cwd is not None:
        values["data.root"] = check_leaf("data.root", values["data.root"], cwd)
    for key, value in pairs:
        try:
            values[key] = check_leaf(key, value, cwd)
        except Invalid as exc:
            raise ConfigError(None, join_key(key, exc.sub), exc.message) from None
        if has_distributions(values[key]):
            raise ConfigError(None, key, f"is a distribution ({values[key]!r}); a trial needs "
                              "concrete values: sample the search space first")
    return _build_trial(values)


def _build_trial(v: dict) -> TrialConfig:
    def sec(prefix):
        return {k[len(prefix) + 1:]: x for k, x in v.items()
                if k.startswith(prefix + ".") and "." not in k[len(prefix) + 1:]}

    def tup(x):
        return tuple(x) if isinstance(x, list) else x

    data = sec("data")
    if data["dataset"] in ("npz", "imagefolder") and data["path"] is None:
        what = "the .npz file" if data["dataset"] == "npz" else "the image folder (one sub-folder per class)"
        raise ConfigError(None, "data.path", f"data.dataset: {data['dataset']} needs data.path, {what}")
    if data["mean"] is not None and data["std"] is not None and len(data["mean"]) != len(data["std"]):
        raise ConfigError(None, "data.std", f"has {len(data['std'])} values but data.mean has "
                          f"{len(data['mean'])}; give one per channel in both")
    data.update(mean=tup(data["mean"]), std=tup(data["std"]),
                synthetic=SyntheticConfig(**sec("data.synthetic")))
    quant = sec("quant")
    quant["act_scheme"] = _check_quant(quant)
    _check_layer_globs(v["model.arch"], quant["layers"])
    quant["layers"] = tuple(LayerOverride(p, **e) for p, e in quant["layers"].items())
    train = sec("train")
    train["milestones"] = tuple(train["milestones"])
    if isinstance(train["init"], dict):
        train["init"] = InitFrom(train["init"]["best_of"], tuple(train["init"].get("match") or ()))
    return TrialConfig(DataConfig(**data), ModelConfig(**sec("model")),
                       QuantConfig(**quant), TrainConfig(**train))


def _check_quant(q: dict) -> str:
    """Cross-checks of bits, schemes, Z and the layer overrides; returns the act scheme."""
    w, a, scheme, z = q["w_bits"], q["a_bits"], q["scheme"], q["z"]
    act = q["act_scheme"] or default_act_scheme(scheme)

    def check(key, fn, *args):
        try:
            fn(*args)
        except QuantConfigError as exc:
            raise ConfigError(None, key, str(exc)) from None

    if w == 1 and q["budget"] is None:
        raise ConfigError(None, "quant.w_bits", "w_bits=1 (binary weights) is for per-layer bit "
                          "allocation only: set it on layers in quant.layers, or give quant.budget")
    zkey = "quant.z" if scheme == "ngrid" and w == 2 else "quant.w_bits"
    check(zkey, check_weight, w, scheme, z if scheme == "ngrid" else None)
    check("quant.act_scheme" if q["act_scheme"] else "quant.a_bits", check_act, a, act)
    for pattern, entry in q["layers"].items():
        lw, ls = entry.get("w_bits", w), entry.get("scheme", scheme)
        if "w_bits" in entry or "scheme" in entry:
            own = "w_bits" if "w_bits" in entry else "scheme"
            key = "quant.z" if ls == "ngrid" and lw == 2 else f"quant.layers.{pattern}.{own}"
            check(key, check_weight, lw, ls, z if ls == "ngrid" else None)
        if "a_bits" in entry:
            check(f"quant.layers.{pattern}.a_bits", check_act, entry["a_bits"], act)
    ngrid_used = scheme == "ngrid" or any(e.get("scheme") == "ngrid" for e in q["layers"].values())
    if z is not None and not ngrid_used:
        raise ConfigError(None, "quant.z", f"z={z:g} belongs to scheme 'ngrid' only (quant.scheme is "
                          f"{scheme!r}); remove quant.z, or set quant.scheme: ngrid")
    return act


@functools.lru_cache(maxsize=None)
def _layer_names(arch: str) -> tuple:
    """The quantizable layer names of an architecture (built once, float, on the CPU)."""
    import models
    return tuple(quantized_layer_names(models.get_entry(arch).fn()))


def _check_layer_globs(arch: str, layers: dict) -> None:
    if layers:
        try:
            check_layer_globs(_layer_names(arch), list(layers), arch)
        except QuantConfigError as exc:
            raise ConfigError(None, f"quant.layers.{exc.args[1]}", exc.args[0]) from None


