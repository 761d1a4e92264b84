"""One trial's ``TrialConfig`` from a concrete tree: defaults filled in, every value
checked, the data cross-checks, and the ``quant`` section built as a ``QuantPolicy``
(which checks bits, schemes, Z and the layer overrides itself); layer globs are matched
against the architecture's layers."""
from __future__ import annotations

import dataclasses
import functools

from quant.levels import QuantConfigError, default_act_scheme
from quant.policy import QuantPolicy, check_layer_globs, quantized_layer_names
from sweep.config.checks import Invalid, join_key
from sweep.config.errors import ConfigError
from sweep.config.keys import KEYS, TRIAL_SECTIONS, check_leaf, leaves
from sweep.config.schema import DataConfig, InitFrom, ModelConfig, SyntheticConfig, TrainConfig, TrialConfig
from sweep.config.space import has_distributions

_EXPERIMENT_KEYS = ("name", "stages", "search", "resources", "tracking")
_TRIAL_DEFAULTS = {k: f.default for k, f in KEYS.items() if k.split(".")[0] in TRIAL_SECTIONS}


def resolve_trial(tree: dict, cwd: str | None = None, check_budget: bool = True) -> TrialConfig:
    """The TrialConfig of a concrete tree (no distributions left). Missing keys take their
    defaults; ``name``, ``stages``, ``search``, ``resources`` and ``tracking`` (experiment-
    level) are ignored. Relative paths are made absolute against ``cwd`` when it is given.
    A tree over its ``quant.budget`` is an error unless ``check_budget`` is false (a search
    space's validation, which decides what over-budget points mean for its algorithm)."""
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
    return _build_trial(values, check_budget)


def _build_trial(v: dict, check_budget: bool = True) -> TrialConfig:
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
    quant = quant_policy({**sec("quant"), "allocation": sec("quant.allocation")}, v["model.arch"], check_budget)
    train = sec("train")
    train["milestones"] = tuple(train["milestones"])
    if isinstance(train["init"], dict):
        train["init"] = InitFrom(train["init"]["best_of"], tuple(train["init"].get("match") or ()))
    if quant.allocation.method != "none" and train["compile"] is True:
        raise ConfigError(None, "train.compile", f"quant.allocation {quant.allocation.method} records "
                          "per-channel errors with autograd hooks, which torch.compile does not "
                          "trace; use train.compile: auto (eager while allocating) or false")
    return TrialConfig(DataConfig(**data), ModelConfig(**sec("model")), quant, TrainConfig(**train))


def quant_policy(values: dict, arch: str, check_budget: bool = True) -> QuantPolicy:
    """The checked ``QuantPolicy`` of the ``quant`` keys, ``act_scheme`` resolved; its
    errors as ConfigErrors at ``quant.<key>``; over ``quant.budget``, an error at
    ``quant.budget`` (when ``check_budget``)."""
    try:
        policy = QuantPolicy.from_dict(values)
    except QuantConfigError as exc:
        raise ConfigError(None, f"quant.{exc.key}" if exc.key else "quant", str(exc)) from None
    if policy.layers:
        try:
            check_layer_globs(_layer_names(arch), [g for g, _ in policy.layers], arch)
        except QuantConfigError as exc:
            raise ConfigError(None, f"quant.{exc.key}", str(exc)) from None
    if policy.start_budget and check_budget:
        from sweep.config.budget import over_budget
        problem = over_budget(policy, arch)
        if problem:
            raise ConfigError(None, "quant.budget", problem)
    granularity = policy.granularity or ("channel" if policy.scheme == "dambq" else None)
    return dataclasses.replace(policy, act_scheme=policy.act_scheme or default_act_scheme(policy.scheme),
                               granularity=granularity)


@functools.lru_cache(maxsize=None)
def _layer_names(arch: str) -> tuple:
    """The quantizable layer names of an architecture (built once, float, on the CPU)."""
    import models
    return tuple(quantized_layer_names(models.get_entry(arch).fn()))
