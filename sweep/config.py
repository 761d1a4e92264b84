"""The one typed configuration tree of an experiment, resolved once.

Precedence, lowest first: the defaults below, the YAML file, the stage's ``set``, the
command line's ``--set key=value``. Dotted keys (``quant.w_bits``) are the public
names: the same in the file, in ``--set``, in ``search.variants`` and as MLflow
parameters. Any leaf of ``data``/``model``/``quant``/``train`` may be a distribution
(``sweep.keys``, ``sweep.space``).

    exp = load_experiment("search_spaces/x.yaml", ["train.lr=0.01"])
    for stage in exp.stages:
        spaces = exp.trial_spaces(stage.name)   # one tree per arm, with distributions
    cfg = resolve_trial(concrete_tree)          # in the trainable: a TrialConfig

Needs PyYAML and torch (``quant`` checks the bits and layer globs, ``models`` the
architecture names); no Ray or MLflow.
Every error is a ConfigError naming the file, the key path and what is wrong.
"""
from __future__ import annotations

import copy
import dataclasses
import fnmatch
import functools
import itertools
import math
import os
import re

import yaml

from quant.levels import QuantConfigError, check_act, check_weight, default_act_scheme
from quant.policy import check_layer_globs, quantized_layer_names
from sweep.keys import (FIELDS, STAGE_TOPS, TOP_SECTIONS, TRIAL_SECTIONS, Invalid, check_leaf,
                        check_name, is_uri, join_key, leaves)
from sweep.space import Grid, find_distributions, has_distributions

__all__ = [
    "ConfigError", "Experiment", "Stage", "TrialConfig", "DataConfig", "SyntheticConfig",
    "ModelConfig", "QuantConfig", "LayerOverride", "TrainConfig", "InitFrom", "SearchConfig",
    "SchedulerConfig", "ResourcesConfig", "TrackingConfig", "load_experiment",
    "resolve_trial", "expand_variants", "flatten", "get_dotted", "set_dotted",
    "has_distributions", "parse_overrides"]

class ConfigError(Exception):
    """An invalid file or override: ``file`` (or ``--set``), ``key`` (dotted path such as
    ``stages[1].set.quant.z``) and ``message``; ``str()`` reads ``file: key: message``."""

    def __init__(self, file: str | None, key: str | None, message: str):
        super().__init__(file, key, message)
        self.file, self.key, self.message = file, key, message

    def __str__(self) -> str:
        return ": ".join(p for p in (self.file, self.key, self.message) if p)


# ---------------------------------------------------------------- typed sections

def _plain(value):
    if dataclasses.is_dataclass(value):
        return value.to_dict()
    return list(value) if isinstance(value, tuple) else value


class _Section:
    def to_dict(self) -> dict:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}


@dataclasses.dataclass(frozen=True)
class SyntheticConfig(_Section):
    train_size: int
    test_size: int
    image_size: int
    channels: int
    num_classes: int


@dataclasses.dataclass(frozen=True)
class DataConfig(_Section):
    dataset: str
    root: str
    path: str | None
    val_fraction: float
    split_seed: int
    mean: tuple | None
    std: tuple | None
    crop_pad: int | None
    flip: bool | None
    synthetic: SyntheticConfig


@dataclasses.dataclass(frozen=True)
class ModelConfig(_Section):
    arch: str
    num_classes: int | None
    in_channels: int | None


@dataclasses.dataclass(frozen=True)
class LayerOverride:
    pattern: str                 # glob on module names; the last matching pattern wins
    w_bits: int | None = None
    a_bits: int | None = None
    scheme: str | None = None


@dataclasses.dataclass(frozen=True)
class QuantConfig(_Section):
    w_bits: int
    a_bits: int
    scheme: str
    act_scheme: str              # resolved: default_act_scheme(scheme) when not given
    family: str | None           # None: the architecture's default
    z: float | None
    first_last_bits: int
    layers: tuple                # of LayerOverride, in file order
    budget: float | None

    def for_layer(self, module_name: str) -> tuple[int, int, str]:
        """(w_bits, a_bits, scheme) of a quantized layer: the last matching glob wins."""
        w, a, scheme = self.w_bits, self.a_bits, self.scheme
        for layer in self.layers:
            if fnmatch.fnmatchcase(module_name, layer.pattern):
                w = layer.w_bits if layer.w_bits is not None else w
                a = layer.a_bits if layer.a_bits is not None else a
                scheme = layer.scheme or scheme
        return w, a, scheme

    def to_dict(self) -> dict:
        out = super().to_dict()
        out["layers"] = {l.pattern: {k: v for k, v in dataclasses.asdict(l).items()
                                     if k != "pattern" and v is not None} for l in self.layers}
        return out


@dataclasses.dataclass(frozen=True)
class InitFrom(_Section):
    best_of: str                 # an earlier stage
    match: tuple = ()            # dotted keys that must match too (model.* and data.* always do)


@dataclasses.dataclass(frozen=True)
class TrainConfig(_Section):
    epochs: int
    batch_size: int
    lr: float
    momentum: float
    nesterov: bool
    weight_decay: float
    schedule: str
    milestones: tuple
    gamma: float
    warmup_epochs: int
    alpha_lr_act: float
    alpha_lr_weight: float
    alpha_weight_decay: float
    alpha_floor: float
    seed: int
    init: str | InitFrom | None
    eval_before: bool
    device: str
    precision: str
    channels_last: bool
    compile: bool | str       # true, false or 'auto' (on for CUDA)


@dataclasses.dataclass(frozen=True)
class TrialConfig:
    """Everything one trial reads. ``to_dict()`` round-trips through resolve_trial."""
    data: DataConfig
    model: ModelConfig
    quant: QuantConfig
    train: TrainConfig

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name).to_dict() for f in dataclasses.fields(self)}

    def flatten(self) -> dict:
        return flatten(self.to_dict())


@dataclasses.dataclass(frozen=True)
class SchedulerConfig:
    type: str                    # asha | fifo
    grace_period: int | None     # epochs (asha)
    reduction_factor: float | None


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    algorithm: str
    num_samples: int
    seed: int
    metric: str
    mode: str
    scheduler: SchedulerConfig
    max_concurrent: int | None
    variants: tuple              # of {dotted key: value or Distribution}


@dataclasses.dataclass(frozen=True)
class ResourcesConfig:
    cpus_per_trial: float
    gpus_per_trial: float


@dataclasses.dataclass(frozen=True)
class TrackingConfig:
    mlflow_uri: str | None


def _schema_names(cls, prefix):
    for f in dataclasses.fields(cls):
        sub = {"synthetic": SyntheticConfig}.get(f.name)
        yield from _schema_names(sub, f"{prefix}.{f.name}") if sub else [f"{prefix}.{f.name}"]


assert set(FIELDS) == {n for name, cls in [("data", DataConfig), ("model", ModelConfig),
                                           ("quant", QuantConfig), ("train", TrainConfig),
                                           ("search", SearchConfig), ("resources", ResourcesConfig),
                                           ("tracking", TrackingConfig)]
                       for n in _schema_names(cls, name)}, "sweep.keys.FIELDS and the dataclasses differ"


# ---------------------------------------------------------------- dotted keys

_MISSING = object()


def get_dotted(tree: dict, key: str, default=_MISSING):
    node = tree
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            if default is _MISSING:
                raise KeyError(key)
            return default
        node = node[part]
    return node


def set_dotted(tree: dict, key: str, value) -> None:
    *parents, last = key.split(".")
    node = tree
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value


def flatten(tree: dict, prefix: str = "") -> dict:
    """Dotted keys -> values (MLflow parameters). A ``quant.layers`` glob becomes one key
    part with ``*`` (and other characters MLflow refuses) written ``_``:
    ``quant.layers.layer2._.w_bits``. Lists and distributions stay values."""
    out = {}
    for key, value in tree.items():
        if prefix == "quant.layers":
            key = re.sub(r"[^A-Za-z0-9_\-. /]", "_", str(key))
        full = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out.update(flatten(value, full))
        elif not (isinstance(value, dict) and full == "quant.layers"):
            out[full] = value
    return out


_EXPERIMENT_KEYS = ("name", "stages", "search", "resources", "tracking")
_TRIAL_DEFAULTS = {k: f.default for k, f in FIELDS.items() if k.split(".")[0] in TRIAL_SECTIONS}
_MAX_COMBOS = 2048          # concrete trees tried per arm when validating a space


# ---------------------------------------------------------------- one trial

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


# ---------------------------------------------------------------- trees and arms

def expand_variants(tree: dict, variants) -> list[dict]:
    """One tree per arm, the arm's dotted keys applied over a copy of ``tree``;
    ``[copy of tree]`` when there are no variants."""
    if not variants:
        return [copy.deepcopy(tree)]
    out = []
    for arm in variants:
        arm_tree = copy.deepcopy(tree)
        for key, value in arm.items():
            set_dotted(arm_tree, key, copy.deepcopy(value))
        out.append(arm_tree)
    return out


def parse_overrides(overrides, cwd: str | None = None) -> list[tuple[str, object]]:
    """``["a.b=c", ...]`` -> ``[(dotted key, checked value), ...]``; values read as YAML."""
    out = []
    for text in [overrides] if isinstance(overrides, str) else overrides:
        if not isinstance(text, str) or "=" not in text or not text.partition("=")[0].strip():
            raise ConfigError("--set", str(text), "expected key=value, e.g. --set train.lr=0.01 "
                              "or --set quant.z='{grid: [1, 2]}'")
        key, _, raw = text.partition("=")
        key = key.strip()
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError("--set", key, f"value {raw!r} is not valid YAML: {exc}") from None
        if key == "name":
            out.append(("name", _checked_name(value, "--set")))
            continue
        if key == "stages":
            raise ConfigError("--set", key, "stages cannot be set from the command line; edit the file")
        out.extend(_checked_pairs({key: value}, TOP_SECTIONS, cwd, "--set", ""))
    return out


def _checked_name(value, file):
    try:
        return check_name(value, "the experiment's name (also a directory name)")
    except Invalid as exc:
        raise ConfigError(file, "name", exc.message) from None


def _checked_pairs(mapping, tops, cwd, file, where):
    """leaves() of a mapping, each value checked; errors located at ``file``/``where``."""
    try:
        pairs = leaves(mapping, tops)
    except Invalid as exc:
        raise ConfigError(file, join_key(where, exc.sub), exc.message) from None
    out = []
    for key, value in pairs:
        try:
            out.append((key, check_leaf(key, value, cwd)))
        except Invalid as exc:
            raise ConfigError(file, join_key(join_key(where, key), exc.sub), exc.message) from None
    return out


# ---------------------------------------------------------------- the experiment

@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    overrides: dict          # dotted key -> value: the stage's ``set``


@dataclasses.dataclass(frozen=True, eq=False)
class Experiment:
    """A validated experiment. ``base`` is defaults <- file <- --set as a nested dict
    (distribution objects at searched leaves); ``search``/``resources``/``tracking`` are
    the base's, ``stage_search(name)``/``stage_resources(name)`` a stage's own."""
    name: str
    file: str                # absolute path of the YAML file
    base: dict
    stages: tuple
    search: SearchConfig
    resources: ResourcesConfig
    tracking: TrackingConfig
    overrides: dict          # --set, dotted key -> value
    _per_stage: dict = dataclasses.field(repr=False, default_factory=dict)

    has_distributions = staticmethod(has_distributions)

    def stage(self, stage_name: str) -> Stage:
        for stage in self.stages:
            if stage.name == stage_name:
                return stage
        raise KeyError(f"no stage {stage_name!r}; stages: {', '.join(s.name for s in self.stages)}")

    def stage_tree(self, stage_name: str) -> dict:
        """The full tree of a stage: base <- its ``set`` <- --set (``search.variants`` holds
        the arms as the stage runs them: keys that the stage or --set override dropped)."""
        tree = copy.deepcopy(self.base)
        for key, value in itertools.chain(self.stage(stage_name).overrides.items(), self.overrides.items()):
            set_dotted(tree, key, copy.deepcopy(value))
        arms = self._per_stage[stage_name][2]
        set_dotted(tree, "search.variants", [dict(a) for a in arms] if arms else None)
        return tree

    def stage_search(self, stage_name: str) -> SearchConfig:
        return self._per_stage[stage_name][0]

    def stage_resources(self, stage_name: str) -> ResourcesConfig:
        return self._per_stage[stage_name][1]

    def trial_spaces(self, stage_name: str) -> list[dict]:
        """One ``{data, model, quant, train}`` tree per arm of the stage, distributions kept."""
        tree = self.stage_tree(stage_name)
        return expand_variants({k: tree[k] for k in TRIAL_SECTIONS}, self._per_stage[stage_name][2])


def load_experiment(path, overrides=(), cwd: str | None = None) -> Experiment:
    """Read, merge and validate an experiment; raises ConfigError (one message naming the
    file, the key path and what is wrong) before anything else is touched."""
    cwd = os.path.abspath(cwd if cwd is not None else os.getcwd())
    shown = str(path)
    file = os.path.normpath(os.path.join(cwd, os.path.expanduser(shown)))
    raw = _read_yaml(file, shown)
    has_stages = "stages" in raw
    stages_raw, name = raw.pop("stages", None), raw.pop("name", None)

    base, prov = {}, {}
    for key, field in FIELDS.items():
        set_dotted(base, key, check_leaf(key, copy.deepcopy(field.default), cwd))
    for key, value in _checked_pairs(raw, TOP_SECTIONS, cwd, shown, ""):
        set_dotted(base, key, value)
        prov[key] = (shown, key)
    if name is not None:
        name = _checked_name(name, shown)
    cli = {}
    for key, value in parse_overrides(overrides, cwd):
        if key == "name":
            name = value
            continue
        cli[key] = value
        set_dotted(base, key, value)
        prov[key] = ("--set", key)
    if name is None:
        raise ConfigError(shown, "name", "is required: the experiment's name in Ray and MLflow "
                          "(letters, digits, '-', '_', '.')")

    stages = _parse_stages(stages_raw, has_stages, shown, cwd)
    per_stage = {}
    for index, stage in enumerate(stages):
        sprov = dict(prov)
        sprov.update({k: (shown, f"stages[{index}].set.{k}") for k in stage.overrides})
        sprov.update({k: ("--set", k) for k in cli})
        level = {k: 1 for k in stage.overrides} | {k: 2 for k in cli}
        tree = copy.deepcopy(base)
        for key, value in itertools.chain(stage.overrides.items(), cli.items()):
            set_dotted(tree, key, copy.deepcopy(value))
        # An arm is part of where search.variants was written: keys set later win over it.
        vlevel = level.get("search.variants", 0)
        arms = tuple({k: v for k, v in arm.items() if level.get(k, 0) <= vlevel}
                     for arm in (get_dotted(tree, "search.variants") or ()))
        search = _search_config(tree["search"], arms)
        per_stage[stage.name] = (search, ResourcesConfig(**tree["resources"]), arms)
        vfile, vkey = sprov.get("search.variants", (shown, "search.variants"))
        earlier = [s.name for s in stages[:index]]
        trial_tree = {k: tree[k] for k in TRIAL_SECTIONS}
        for i, arm_tree in enumerate(expand_variants(trial_tree, arms)):
            aprov = dict(sprov)
            if arms:
                aprov.update({k: (vfile, f"{vkey}[{i}].{k}") for k in arms[i]})
            _validate_space(arm_tree, search, stage.name, earlier, [s.name for s in stages], aprov, shown)

    return Experiment(
        name=name, file=file, base=base, stages=tuple(stages),
        search=_search_config(base["search"], tuple(base["search"]["variants"] or ())),
        resources=ResourcesConfig(**base["resources"]), tracking=TrackingConfig(**base["tracking"]),
        overrides=cli, _per_stage=per_stage)


def _search_config(s: dict, arms: tuple) -> SearchConfig:
    sched = SchedulerConfig(**s["scheduler"])
    return SearchConfig(**{**s, "scheduler": sched, "variants": tuple(dict(a) for a in arms)})


def _read_yaml(file: str, shown: str) -> dict:
    try:
        with open(file, encoding="utf-8") as fh:
            raw = yaml.load(fh, Loader=_UniqueKeyLoader)
    except FileNotFoundError:
        raise ConfigError(shown, None, "file not found") from None
    except OSError as exc:
        raise ConfigError(shown, None, f"cannot be read: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(shown, None, f"not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(shown, None, "expected a mapping at the top (name:, data:, model:, "
                          f"quant:, train:, search:, ...), got {type(raw).__name__}")
    return raw


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key written twice in one mapping (YAML keeps the last)."""


def _construct_mapping(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            duplicate = key in seen and key != "<<"
            seen.add(key)
        except TypeError:
            continue
        if duplicate:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} is written twice in one mapping", key_node.start_mark)
    return loader.construct_mapping(node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _parse_stages(raw, present: bool, shown: str, cwd: str) -> list[Stage]:
    if not present:
        return [Stage("main", {})]
    if not isinstance(raw, list) or not raw:
        raise ConfigError(shown, "stages", "expected a non-empty list of {name, set} "
                          "(or no stages key: one stage named 'main')")
    stages, seen = [], {}
    for i, entry in enumerate(raw):
        where = f"stages[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(shown, where, f"expected a mapping {{name, set}}, got {entry!r}")
        for key in entry:
            if key not in ("name", "set"):
                hint = "; did you mean set?" if key in ("overrides", "sets", "config") else ""
                raise ConfigError(shown, f"{where}.{key}", f"unknown key{hint} (a stage has name and set)")
        try:
            name = check_name(entry.get("name"), "a stage name")
        except Invalid as exc:
            raise ConfigError(shown, f"{where}.name", exc.message) from None
        if name in seen:
            raise ConfigError(shown, f"{where}.name", f"stage name {name!r} is already used by "
                              f"stages[{seen[name]}]; stage names must be unique")
        seen[name] = i
        sets = entry.get("set") or {}
        if not isinstance(sets, dict):
            raise ConfigError(shown, f"{where}.set", f"expected a mapping of dotted keys, got {sets!r}")
        stages.append(Stage(name, dict(_checked_pairs(sets, STAGE_TOPS, cwd, shown, f"{where}.set"))))
    return stages


def _locate(err: ConfigError, prov: dict, shown: str) -> ConfigError:
    """A resolve_trial error (key relative to the tree) placed where the user wrote the key."""
    key = err.key or ""
    best = max((p for p in prov if key == p or key.startswith(p + ".")), key=len, default=None)
    if best is None:
        return ConfigError(shown, key or None, err.message)
    file, where = prov[best]
    return ConfigError(file, where + key[len(best):], err.message)


def _validate_space(tree, search, stage, earlier, all_stages, prov, shown):
    """Every concrete tree an arm can produce (within reason) resolves; files exist; init
    refers to an earlier stage; no grid under Optuna."""
    found = find_distributions(tree)
    if search.algorithm == "optuna":
        for path, dist in found:
            if isinstance(dist, Grid):
                raise _locate(ConfigError(None, ".".join(path), (
                    "grid cannot be used with search.algorithm: optuna (Ray cannot convert grid "
                    "search for Optuna); write {choice: [...]} instead, or use search.algorithm: "
                    "grid or random")), prov, shown)
    for concrete in _concrete_trees(tree, found):
        try:
            cfg = resolve_trial(concrete)
        except ConfigError as exc:
            raise _locate(exc, prov, shown) from None
        problem = _check_files_and_refs(cfg, stage, earlier, all_stages)
        if problem:
            raise _locate(ConfigError(None, *problem), prov, shown)


def _concrete_trees(tree, found):
    if not found:
        yield tree
        return
    cands = [d.candidates() for _, d in found]
    first = [c[0] for c in cands]

    def make(pick):
        concrete = copy.deepcopy(tree)
        for (path, _), value in zip(found, pick):
            node = concrete
            for part in path[:-1]:
                node = node[part]
            node[path[-1]] = value
        return concrete

    def one_at_a_time(indices):
        for i in indices:
            for value in cands[i][1:]:
                yield make(first[:i] + [value] + first[i + 1:])

    if math.prod(len(c) for c in cands) <= _MAX_COMBOS:
        yield from (make(list(p)) for p in itertools.product(*cands))
        return
    # Too many: cross the keys that constrain each other, vary the rest one at a time.
    coupled = [i for i, (p, _) in enumerate(found) if p[0] == "quant" or p[:2] in (
        ("data", "dataset"), ("data", "path"))]
    others = [i for i in range(len(found)) if i not in coupled]
    if math.prod(len(cands[i]) for i in coupled) <= _MAX_COMBOS:
        for combo in itertools.product(*(cands[i] for i in coupled)):
            pick = list(first)
            for i, value in zip(coupled, combo):
                pick[i] = value
            yield make(pick)
    else:
        yield make(first)
        yield from one_at_a_time(coupled)
    yield from one_at_a_time(others)


def _check_files_and_refs(cfg: TrialConfig, stage, earlier, all_stages):
    """(key, message) of the first problem with named files or stage references, else None."""
    data, init = cfg.data, cfg.train.init
    if data.dataset == "npz" and not os.path.isfile(data.path):
        return "data.path", f"npz file {data.path} does not exist (paths are relative to the directory the command runs in)"
    if data.dataset == "imagefolder" and not os.path.isdir(data.path):
        return "data.path", f"image folder {data.path} does not exist"
    if isinstance(init, str) and not is_uri(init) and not os.path.exists(init):
        return "train.init", f"checkpoint {init} does not exist"
    if isinstance(init, InitFrom) and init.best_of not in earlier:
        before = ", ".join(earlier) if earlier else "none (it is the first stage)"
        if init.best_of in all_stages:
            return "train.init", (f"best_of: {init.best_of!r} is not a stage before {stage!r}; "
                                  f"a stage starts from an earlier one; stages before {stage!r}: {before}")
        return "train.init", (f"best_of: {init.best_of!r} is not a stage of this file; "
                              f"stages before {stage!r}: {before}")
    return None
