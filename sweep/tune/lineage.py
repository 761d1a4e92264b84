"""Where a trial's initial weights come from (``train.init``): the best trial of an
earlier stage with the same ``model.*`` and ``data.*`` (``{best_of: stage}``), or a
path, ``runs:/`` or ``models:/`` source that the driver resolved to a local file
before the stage (``init_files``); and the lineage tags each choice records.
"""
from __future__ import annotations

import json
import math

from sweep.config import InitFrom, TrialConfig, get_dotted

__all__ = ["data_key", "pick_init", "init_source"]


def data_key(data_cfg) -> str:
    """The identity of a dataset config (a ``DataConfig`` or its dict)."""
    d = data_cfg.to_dict() if hasattr(data_cfg, "to_dict") else data_cfg
    return json.dumps(d, sort_keys=True, default=str)


def _same(a, b) -> bool:
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def pick_init(cfg: TrialConfig, init: InitFrom, candidates: list, mode: str) -> dict | None:
    """The best finished trial of stage ``init.best_of`` with the same ``model.*`` and
    ``data.*`` as ``cfg`` (and the same ``init.match`` keys); None when there is none.
    A candidate is ``{trial_id, run_id, checkpoint, metric, config, bits}``."""
    mine = cfg.to_dict()
    keys = ["model", "data", *init.match]
    same = [c for c in candidates if c["stage"] == init.best_of and c.get("checkpoint")
            and math.isfinite(c["metric"])
            and all(_same(get_dotted(mine, k, None), get_dotted(c["config"], k, None)) for k in keys)]
    if not same:
        return None
    sign = 1 if mode == "max" else -1
    return max(same, key=lambda c: sign * c["metric"])


def init_source(cfg: TrialConfig, meta: dict) -> tuple[str | None, dict, str | None]:
    """``(local checkpoint file or None, lineage tags, problem)`` of a trial's
    ``train.init``; ``problem`` says why no source fits."""
    init = cfg.train.init
    if init is None:
        return None, {}, None
    if isinstance(init, InitFrom):
        cand = pick_init(cfg, init, meta.get("init_candidates", []), meta["mode"])
        if cand is None:
            return None, {}, (f"train.init: no finished trial of stage {init.best_of!r} has "
                              f"model {cfg.model.to_dict()}, the same data.*"
                              + (f" and {', '.join(init.match)}" if init.match else ""))
        tags = {"lineage.init_run_id": cand.get("run_id"), "lineage.init_checkpoint": cand["checkpoint"],
                "lineage.init_bits": cand.get("bits"), "lineage.init_stage": init.best_of,
                "lineage.init_trial": cand["trial_id"]}
        return cand["checkpoint"], {k: v for k, v in tags.items() if v}, None
    entry = meta.get("init_files", {}).get(str(init))
    if entry is None:
        return str(init), {"lineage.init_checkpoint": str(init)}, None
    return entry["path"], dict(entry["lineage"]), None


