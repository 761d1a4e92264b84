"""An experiment from its YAML file: read with unique keys, defaults <- file <- the
stage's ``set`` <- ``--set``, where each value was written (for error messages), the
stages, and every arm's space validated before anything runs.

    exp = load_experiment("search_spaces/x.yaml", ["train.lr=0.01"])
    for stage in exp.stages:
        spaces = exp.trial_spaces(stage.name)   # one tree per arm, with distributions

Every error is a ConfigError naming the file, the key path and what is wrong.
"""
from __future__ import annotations

import copy
import dataclasses
import itertools
import math
import os

import yaml

from sweep.config.dotted import flatten, get_dotted, set_dotted
from sweep.config.errors import ConfigError
from sweep.config.checks import (RESERVED_EXPERIMENT_NAMES, RESERVED_STAGE_NAMES, Invalid,
                                 check_name, is_uri, join_key)
from sweep.config.keys import KEYS, TOP_SECTIONS, check_leaf, leaves
from sweep.config.space import Grid, find_distributions, has_distributions
from sweep.config.files import check_data, check_init
from sweep.config.budget import budget_offenders, has_budget
from sweep.config.trial import resolve_trial
from sweep.config.schema import (STAGE_TOPS, TRIAL_SECTIONS, InitFrom, ResourcesConfig, SchedulerConfig,
                                 SearchConfig, TrackingConfig, TrialConfig)

_MAX_COMBOS = 2048          # concrete trees tried per arm when validating a space
_MAX_LISTED_OFFENDERS = 32  # grid combinations over the budget named in the error


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
            raise ConfigError("--set", key, f"value {raw!r} is not valid YAML: "
                              f"{' '.join(str(exc).split())[:300]}") from None
        if key == "name":
            out.append(("name", _checked_name(value, "--set")))
            continue
        if key == "stages":
            raise ConfigError("--set", key, "stages cannot be set from the command line; edit the file")
        out.extend(_checked_pairs({key: value}, TOP_SECTIONS, cwd, "--set", ""))
    return out


def _checked_name(value, file):
    try:
        return check_name(value, "the experiment's name (also a directory name)",
                          RESERVED_EXPERIMENT_NAMES)
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
    for key, field in KEYS.items():
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
    per_stage, trials = {}, {}
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
        seen = _StageTrials()
        for i, arm_tree in enumerate(expand_variants(trial_tree, arms)):
            aprov = dict(sprov)
            if arms:
                aprov.update({k: (vfile, f"{vkey}[{i}].{k}") for k in arms[i]})
            _validate_space(arm_tree, search, stage.name, earlier, [s.name for s in stages], aprov,
                            shown, seen, trials)
        trials[stage.name] = seen

    return Experiment(
        name=name, file=file, base=base, stages=tuple(stages),
        search=_search_config(base["search"], tuple(base["search"]["variants"] or ())),
        resources=ResourcesConfig(**base["resources"]), tracking=TrackingConfig(**base["tracking"]),
        overrides=cli, _per_stage=per_stage)


def _search_config(s: dict, arms: tuple) -> SearchConfig:
    sched = SchedulerConfig(**s["scheduler"])
    return SearchConfig(**{**s, "scheduler": sched, "variants": tuple(dict(a) for a in arms)})


_MAX_FILE = 1 << 20          # bytes: a search-space file is a page or two of YAML


def _read_yaml(file: str, shown: str) -> dict:
    try:
        if os.path.isdir(file):
            raise ConfigError(shown, None, "is a directory; give the experiment's YAML file")
        size = os.path.getsize(file)
        if size > _MAX_FILE:
            raise ConfigError(shown, None, f"is {size / 2**20:.1f} MiB; a search-space file is a "
                              f"YAML text file of at most {_MAX_FILE >> 10} KiB (is this the right file?)")
        with open(file, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        raise ConfigError(shown, None, "file not found") from None
    except OSError as exc:
        raise ConfigError(shown, None, f"cannot be read: {exc.strerror or exc}") from None
    try:
        if b"\0" in data:
            raise UnicodeDecodeError("utf-8", data, data.index(b"\0"), data.index(b"\0") + 1, "NUL byte")
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(shown, None, f"is not a UTF-8 text file (byte {exc.start} is binary; a "
                          "checkpoint or archive given as the YAML file?)") from None
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        first = " ".join(str(exc).split())
        raise ConfigError(shown, None, f"not valid YAML: {first[:300]}") from None
    except (RecursionError, ValueError, TypeError) as exc:
        raise ConfigError(shown, None, f"not valid YAML ({type(exc).__name__}: "
                          f"{str(exc)[:200]})") from None
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
            name = check_name(entry.get("name"), "a stage name", RESERVED_STAGE_NAMES)
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


@dataclasses.dataclass
class _StageTrials:
    """The resolved trials a stage can run (as dicts), for ``best_of`` matching; ``unsure``:
    dotted keys whose values were not all tried (ranges, or too many combinations: "")."""
    configs: list = dataclasses.field(default_factory=list)
    unsure: set = dataclasses.field(default_factory=set)
    _views: dict = dataclasses.field(default_factory=dict)

    def views(self, keys: tuple) -> set:
        if keys not in self._views:
            self._views[keys] = {repr(sorted(_view(c, keys).items())) for c in self.configs}
        return self._views[keys]


def _validate_space(tree, search, stage, earlier, all_stages, prov, shown, seen, trials):
    """Every concrete tree an arm can produce (within reason) resolves; files exist and fit
    the model; init refers to an earlier stage that has a trial to match; no grid under
    Optuna; no test_* metric without a validation split."""
    found = find_distributions(tree)
    seen.unsure.update(".".join(p) for p, d in found if not hasattr(d, "values"))
    if math.prod(len(d.candidates()) for _, d in found) > _MAX_COMBOS:
        seen.unsure.add("")
    if search.algorithm == "optuna":
        for path, dist in found:
            if isinstance(dist, Grid):
                raise _locate(ConfigError(None, ".".join(path), (
                    "grid cannot be used with search.algorithm: optuna (Ray cannot convert grid "
                    "search for Optuna); write {choice: [...]} instead, or use search.algorithm: "
                    "grid or random")), prov, shown)
    for concrete in _concrete_trees(tree, found):
        try:
            cfg = resolve_trial(concrete, check_budget=False)
        except ConfigError as exc:
            raise _locate(exc, prov, shown) from None
        problem = (_check_files_and_refs(cfg, stage, earlier, all_stages)
                   or _check_metric(cfg, search) or check_data(cfg) or check_init(cfg)
                   or _check_best_of(cfg, stage, trials, seen))
        if problem:
            raise _locate(ConfigError(None, *problem), prov, shown)
        seen.configs.append(cfg.to_dict())
    if has_budget(tree):
        problem = _budget_problem(tree)
        if problem:
            raise _locate(ConfigError(None, "quant.budget", problem), prov, shown)


def _budget_problem(tree) -> str | None:
    """What is wrong with a budgeted space: grid combinations over the budget (a grid is
    never resampled, so they are refused, listed), or no point within it at all."""
    offenders = budget_offenders(tree)
    if not offenders:
        return None
    if offenders[0][0] == {}:
        cost = offenders[0][1]
        if cost is not None:
            return (f"this configuration averages {cost.avg_w_bits:.3f} weight bits and "
                    f"{cost.avg_a_bits:.3f} activation bits, over the budget; raise the budget "
                    "or lower some layers' bits")
        return ("no configuration of this space is within the budget; raise the budget or "
                "allow fewer bits")
    total = math.prod(len(d.values) for p, d in find_distributions(tree)
                      if isinstance(d, Grid) and (p[0] == "quant" or tuple(p[:2]) == ("model", "arch")))
    lines = [f"{len(offenders)} of {total} grid combination(s) are over the budget and would never be "
             "trained; remove them from the grid, or raise the budget:"]
    for combo, cost in offenders[:_MAX_LISTED_OFFENDERS]:
        avg = f"  (avg_w_bits {cost.avg_w_bits:.3f}, avg_a_bits {cost.avg_a_bits:.3f})" if cost else ""
        lines.append("    " + "  ".join(f"{k}={v}" for k, v in combo.items()) + avg)
    if len(offenders) > _MAX_LISTED_OFFENDERS:
        lines.append(f"    ... {len(offenders) - _MAX_LISTED_OFFENDERS} more")
    return "\n".join(lines)


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


def _check_metric(cfg: TrialConfig, search):
    if search.metric.startswith("test_") and cfg.data.val_fraction == 0:
        return "search.metric", (f"{search.metric} exists only with a validation split: with "
                                 "data.val_fraction 0, val_acc and val_loss are measured on the test "
                                 f"set; use search.metric: val_{search.metric[5:]}, or hold out a "
                                 "split (data.val_fraction: 0.1)")
    return None


def _check_best_of(cfg: TrialConfig, stage, trials, seen):
    """(key, message) when ``{best_of: S}`` can find no trial of S with this trial's
    model.*, data.* and ``match`` keys (where every value of both stages was tried)."""
    init = cfg.train.init
    if not isinstance(init, InitFrom) or init.best_of not in trials:
        return None
    source = trials[init.best_of]
    keys = ("model", "data", *init.match)
    unsure = source.unsure | seen.unsure
    if "" in unsure or any(u == k or u.startswith(k + ".") or k.startswith(u + ".")
                           for u in unsure for k in keys):
        return None
    mine = cfg.to_dict()
    view = _view(mine, keys)
    if repr(sorted(view.items())) in source.views(keys):
        return None
    other = _view(source.configs[0], keys) if source.configs else {}
    diff = [f"{k}={view.get(k)!r} (stage {init.best_of!r}: {other.get(k)!r})"
            for k in sorted(set(view) | set(other)) if view.get(k) != other.get(k)]
    return "train.init", (f"best_of: {init.best_of!r} can never match: no trial of stage "
                          f"{init.best_of!r} has the same {', '.join(keys)} as stage {stage!r}'s "
                          f"trial; they differ in {'; '.join(diff[:4])}. Make them equal, or "
                          "start from a checkpoint (train.init: PATH, runs:/..., models:/...)")


def _view(config: dict, keys) -> dict:
    return {k: v for k, v in flatten(config).items()
            if any(k == key or k.startswith(key + ".") for key in keys)}
