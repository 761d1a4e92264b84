"""Where a trial's initial weights come from (``train.init``), from the stage loop's view
to each trial's: the best trial of an earlier stage with the same ``model.*`` and
``data.*`` (``{best_of: stage, match: [...]}``), or a path, ``runs:/`` or ``models:/``
source that the driver resolves to a local file before the stages (``init_files``); and
the lineage tags each choice records (docs/mlflow.md, "A trial's run").

The checks of the key's value itself live with the config (``sweep.config``). Imports
neither Ray nor MLflow at module level: ``run_sweep.py`` checks ``--stages`` with it
before either is loaded.

    check_sources(plans, resuming)       before anything starts: a stage's source stage is run
    resolve_init_files(plans, client, cache)   the driver: path/runs:/models:/ -> local files
    blocked(plan, state)                 the driver, per stage: why it cannot start
    init_candidates(plan, state)         the driver, per stage: what its trials may start from
    init_source(cfg, meta)               each trial (and its record): file, tags, problem
"""
from __future__ import annotations

import copy
import json
import math
from typing import TYPE_CHECKING

from sweep.config import ConfigError, InitFrom, TrialConfig, get_dotted, set_dotted
from sweep.config.space import Distribution, has_distributions
from sweep.metrics import best_of
from sweep.track.names import (CHECKPOINT_ARTIFACT, INIT_BITS_TAG, INIT_CHECKPOINT_TAG,
                               INIT_RUN_TAG, INIT_STAGE_TAG,
                               INIT_TRIAL_TAG)

if TYPE_CHECKING:
    from sweep.tune.plan import StagePlan
    from sweep.tune.state import SweepState

__all__ = ["data_key", "match_keys", "describe_init", "check_sources", "checkpoint_label",
           "resolve_init_files", "init_candidates", "blocked", "pick_init", "init_source"]

ALWAYS_MATCHED = ("model", "data")       # a trial starts only from the same model and data


def data_key(data_cfg) -> str:
    """The identity of a dataset config (a ``DataConfig`` or its dict)."""
    d = data_cfg.to_dict() if hasattr(data_cfg, "to_dict") else data_cfg
    return json.dumps(d, sort_keys=True, default=str)


# ---------------------------------------------------------------- {best_of: stage}

def _best_of(init) -> tuple[str, tuple] | None:
    """``(source stage, match keys)`` of an ``InitFrom`` or its dict form, else None."""
    if isinstance(init, InitFrom):
        return init.best_of, tuple(init.match)
    if isinstance(init, dict) and init.get("best_of"):
        return init["best_of"], tuple(init.get("match") or ())
    return None


def match_keys(init) -> list[str]:
    """The dotted keys a source trial must share: ``model``, ``data`` and ``match``."""
    found = _best_of(init)
    return [*ALWAYS_MATCHED, *(found[1] if found else ())]


def _cut(config: dict, keys: list[str]) -> dict:
    """The part of a config (dict) that ``keys`` select (a copy)."""
    cut: dict = {}
    for key in keys:
        set_dotted(cut, key, copy.deepcopy(get_dotted(config, key, None)))
    return cut


def _match_view(config: dict, keys: list[str]) -> str:
    """``_cut`` as comparable text: two configs match when their views are equal."""
    return json.dumps(_cut(config, keys), sort_keys=True, default=str)


def _same_what(init) -> str:
    keys = match_keys(init)[len(ALWAYS_MATCHED):]
    return "the same model.* and data.*" + (f" and {', '.join(keys)}" if keys else "")


def describe_init(init) -> str | None:
    """How ``--dry-run`` says where a stage's trials start (None: random weights)."""
    found = _best_of(init)
    if found is None:
        return None if init is None else str(init)
    match = f", match {list(found[1])}" if found[1] else ""
    return f"best trial of stage {found[0]!r} with the same model.* and data.*{match}"


def check_sources(plans: list["StagePlan"], resuming: bool) -> None:
    """A stage started from a stage that --stages leaves out needs that stage's results
    (only a resumed sweep has them) or a checkpoint: ConfigError otherwise."""
    names = {p.name for p in plans}
    for plan in plans:
        found = _best_of(plan.init)
        source = found[0] if found else None
        if source and source not in names and not resuming:
            raise ConfigError("--stages", plan.name, (
                f"starts from the best trial of stage {source} (train.init: {{best_of: {source}}}), "
                f"which --stages leaves out; add it, or start from a checkpoint: "
                f"--set train.init=PATH (or runs:/<run_id>, models:/<name>@<alias>)"))


# ---------------------------------------------------------------- paths, runs:/, models:/

def checkpoint_label(path) -> str | None:
    """``lineage.init_bits`` of a checkpoint file (``sweep.labels``); None for a
    reference checkpoint or a file that cannot be read (the trial reports that)."""
    from sweep.train.bits import checkpoint_bits_label      # torch: the driver only
    try:
        return checkpoint_bits_label(path)
    except Exception:               # noqa: BLE001 - an unreadable file is the trial's error
        return None


def _source_texts(plans) -> list[str]:
    """Every path / ``runs:/`` / ``models:/`` value ``train.init`` can take in the stages."""
    values = set()
    for plan in plans:
        for tree in plan.arm_trees:
            value = tree["train"]["init"]
            for v in value.candidates() if isinstance(value, Distribution) else [value]:
                if isinstance(v, str):
                    values.add(v)
    return sorted(values)


def resolve_init_files(plans, client, cache: str) -> dict:
    """``{train.init text: {path, lineage}}`` for the stages' paths, ``runs:/`` and
    ``models:/`` sources, each resolved (downloaded into ``cache``) once by the driver.
    Raises OSError, ValueError or MlflowException for a missing file, run or model."""
    from sweep.track.resolve import resolve_init
    out = {}
    for text in _source_texts(plans):
        path, lineage = resolve_init(text, client, cache)
        label = checkpoint_label(path)
        if label:
            lineage[INIT_BITS_TAG] = label
        out[text] = {"path": path, "lineage": lineage}
    return out


# ---------------------------------------------------------------- the stage loop

def init_candidates(plan: "StagePlan", state: "SweepState") -> list[dict]:
    """The trials a ``best_of`` stage can start from: of the source stage, the best one
    per group of the same match keys (``match_keys``), each config cut to those keys
    (every trial's config carries the list)."""
    found = _best_of(plan.init)
    if found is None:
        return []
    keys = match_keys(plan.init)
    groups: dict[str, list] = {}
    for cand in state.candidates():
        if cand["stage"] == found[0]:
            groups.setdefault(_match_view(cand["config"], keys), []).append(cand)
    bests = (best_of(cands, lambda c: c["metric"], plan.search.mode) for cands in groups.values())
    return [{**best, "config": _cut(best["config"], keys)} for best in bests if best is not None]


def blocked(plan: "StagePlan", state: "SweepState") -> str | None:
    """Why a stage cannot start (its init stage has no usable trial), or None."""
    from sweep.config import resolve_trial
    from sweep.tune.plan import concrete_candidates
    found = _best_of(plan.init)
    if found is None:
        return None
    source = found[0]
    entry = state.data["stages"].get(source)
    if entry is None or entry.get("status") != "finished":
        return (f"it starts from stage {source}, which has not finished in this sweep "
                f"(run it too, or give a checkpoint: --set train.init=PATH)")
    if not entry.get("best"):
        return f"stage {source} has no finished trial to start from"
    candidates = init_candidates(plan, state)
    for i, tree in enumerate(plan.arm_trees):
        if any(has_distributions(tree[sec]) for sec in ALWAYS_MATCHED):
            continue                    # checked per trial by the trainable
        cfg = resolve_trial(concrete_candidates(tree, None)[0], check_budget=False)
        if pick_init(cfg, cfg.train.init, candidates, plan.search.mode) is None:
            arm = f"arm {i}: " if len(plan.arm_trees) > 1 else ""
            return f"{arm}no finished trial of stage {source} has {_same_what(plan.init)}"
    return None


# ---------------------------------------------------------------- each trial

def pick_init(cfg: TrialConfig, init: InitFrom, candidates: list, mode: str) -> dict | None:
    """The best finished trial of stage ``init.best_of`` with the same ``model.*`` and
    ``data.*`` as ``cfg`` (and the same ``init.match`` keys); None when there is none.
    A candidate is ``{stage, trial_id, run_id, checkpoint, metric, config, bits}``."""
    keys = match_keys(init)
    mine = _match_view(cfg.to_dict(), keys)
    same = [c for c in candidates if c["stage"] == init.best_of and c.get("checkpoint")
            and math.isfinite(c["metric"]) and _match_view(c["config"], keys) == mine]
    return best_of(same, lambda c: c["metric"], mode)


def init_source(cfg: TrialConfig, meta: dict) -> tuple[str | None, dict, str | None]:
    """``(local checkpoint file or None, lineage tags, problem)`` of a trial's
    ``train.init``; ``problem`` says why no source fits. ``meta`` is the stage's
    ``config["_sweep"]`` (``mode``, ``init_candidates``, ``init_files``)."""
    init = cfg.train.init
    if init is None:
        return None, {}, None
    if isinstance(init, InitFrom):
        cand = pick_init(cfg, init, meta.get("init_candidates", []), meta["mode"])
        if cand is None:
            return None, {}, (f"train.init: no finished trial of stage {init.best_of!r} has "
                              f"model {cfg.model.to_dict()}, the same data.*"
                              + (f" and {', '.join(init.match)}" if init.match else ""))
        # a URI any machine with the store resolves, rather than this machine's path
        where = (f"runs:/{cand['run_id']}/{CHECKPOINT_ARTIFACT}" if cand.get("run_id")
                 else cand["checkpoint"])
        tags = {INIT_RUN_TAG: cand.get("run_id"), INIT_CHECKPOINT_TAG: where,
                INIT_BITS_TAG: cand.get("bits"), INIT_STAGE_TAG: init.best_of,
                INIT_TRIAL_TAG: cand["trial_id"]}
        return cand["checkpoint"], {k: v for k, v in tags.items() if v}, None
    entry = meta.get("init_files", {}).get(str(init))
    if entry is None:
        return str(init), {INIT_CHECKPOINT_TAG: str(init)}, None
    return entry["path"], dict(entry["lineage"]), None
