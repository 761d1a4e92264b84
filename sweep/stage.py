"""Driver-side bookkeeping of one stage: the MLflow records of its trials (through the
``SweepRecorder``), the progress table, and the trial summaries kept in the sweep
state file (``sweep.json``) that later stages and ``--resume`` read.

``SweepCallback`` is the Ray Tune callback; it only forwards to the live ``StageRun``
registered under its key, because Ray pickles callbacks into the experiment folder
(``tuner.pkl``) and a restored Tuner brings back that pickled copy: the copy finds the
live objects of the new driver by the same key.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import tempfile

from ray import tune

from sweep.bits import checkpoint_bits_label
from sweep.config import resolve_trial
from sweep.plan import StagePlan, searched_values
from sweep.progress import ProgressTable
from sweep.trainable import BITS_FILE, CHECKPOINT_FILE, METRIC_KEYS, init_source
from sweep.tracking import ALPHAS_ARTIFACT, SweepRecorder

__all__ = ["SweepState", "StageRun", "SweepCallback", "register"]

log = logging.getLogger("sweep")
_LIVE: dict[str, "StageRun"] = {}


class SweepState:
    """``sweep.json``: per stage its status (running | finished), its trial summaries and
    its best trial; each ``save()`` rewrites it atomically (a temporary file, then a rename)."""

    def __init__(self, path: str):
        self.path = path
        self.data = {"version": 1, "stages": {}}
        if os.path.exists(path):
            with open(path) as fh:
                self.data = json.load(fh)

    def stage(self, name: str) -> dict:
        return self.data["stages"].setdefault(name, {"status": "running", "trials": {}})

    def save(self) -> None:
        folder = os.path.dirname(self.path)
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".sweep-", suffix=".tmp", dir=folder)
        with os.fdopen(fd, "w") as fh:
            json.dump(self.data, fh, indent=1, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)

    def candidates(self) -> list[dict]:
        """Finished trials of every stage, as ``pick_init`` candidates."""
        out = []
        for stage, entry in self.data["stages"].items():
            for t in entry["trials"].values():
                if t["status"] == "FINISHED" and t.get("checkpoint") and t.get("metric") is not None:
                    out.append({"stage": stage, **{k: t.get(k) for k in (
                        "trial_id", "run_id", "checkpoint", "metric", "config", "bits")}})
        return out


def _finite(x):
    return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else None


def _local_dir(checkpoint, cache: str) -> str:
    """A local folder holding the checkpoint's files (downloaded from remote storage)."""
    fs = getattr(checkpoint, "filesystem", None)
    if fs is None or getattr(fs, "type_name", "local") == "local":
        return checkpoint.path
    return checkpoint.to_directory(os.path.join(cache, os.path.basename(checkpoint.path)))


def best_kept(kept: list) -> tuple:
    """(checkpoint, metrics) of the best epoch among Ray's kept checkpoints: the newest
    one reported with ``is_best=1`` (the engine's best so far), else the newest one."""
    kept = [(c, m or {}) for c, m in kept if c is not None]
    if not kept:
        return None, {}
    return max(kept, key=lambda cm: (int(cm[1].get("is_best", 0) or 0), cm[1].get("epoch", -1)))


class StageRun:
    def __init__(self, plan: StagePlan, recorder: SweepRecorder, state: SweepState, meta: dict,
                 cache_dir: str, out=None):
        self.plan, self.recorder, self.state, self.meta = plan, recorder, state, meta
        self.cache_dir = cache_dir
        self.table = ProgressTable(plan.search.metric, plan.search.mode, plan.searched, out)
        self.alphas: dict[str, dict] = {}
        self.entry = state.stage(plan.name)

    # ---- helpers -----------------------------------------------------------------
    def values(self, config: dict) -> dict:
        return searched_values(config["tree"], self.plan.searched)

    def _warn(self, what: str, exc: BaseException) -> None:
        log.exception("%s", what)
        print(f"warning: {what}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)

    # ---- events ------------------------------------------------------------------
    def trial_started(self, trial_id: str, config: dict) -> None:
        if trial_id in self.entry["trials"]:
            return              # closed already; Ray restarts it after a killed driver
        cfg = resolve_trial(config["tree"])
        _, lineage, _ = init_source(cfg, config["_sweep"])
        tags = {**lineage, "sweep.experiment": self.recorder.experiment_name}
        self.recorder.trial_run(trial_id, self.plan.name, cfg.flatten(), tags=tags)
        last = self.recorder.last_epoch(trial_id)
        self.table.row(trial_id, self.values(config), "RUNNING",
                       note=f"(resumed; epochs 1-{last} logged)" if last else "")

    def trial_result(self, trial_id: str, config: dict, result: dict) -> None:
        if result.get("failure") or trial_id in self.entry["trials"]:
            return                               # reported at completion / closed already
        metrics = {k: v for k, v in result.items()
                   if (k in METRIC_KEYS or k.startswith("alpha/")) and isinstance(v, (int, float))}
        self.alphas[trial_id] = {k[len("alpha/"):]: v for k, v in metrics.items() if k.startswith("alpha/")}
        if self.recorder.run_id(trial_id) is None:
            self.trial_started(trial_id, config)
        logged = self.recorder.log_epoch(trial_id, result["epoch"], metrics)
        self.table.row(trial_id, self.values(config), "RUNNING", result["epoch"],
                       result.get(self.plan.search.metric), "" if logged else "(replayed, not logged again)")

    def trial_retrying(self, trial_id: str, config: dict, failures: int, error: str | None) -> None:
        last = ((error or "").strip().splitlines() or ["it raised"])[-1][:80]
        self.table.row(trial_id, self.values(config), "RETRY",
                       note=f"(failure {failures}; from its last checkpoint: {last})")

    def trial_done(self, trial_id: str, config: dict, last: dict | None, kept: list,
                   error: str | None = None, history: list | None = None) -> dict:
        """Close a trial's record (idempotent): artifacts, tags, end status, summary."""
        done = self.entry["trials"].get(trial_id)
        if done is not None:
            return done
        last = dict(last or {})
        cfg = resolve_trial(config["tree"])
        if self.recorder.run_id(trial_id) is None:
            self.trial_started(trial_id, config)
        for row in history or []:                # epochs a killed driver did not log
            if not row.get("failure") and row.get("epoch") is not None:
                self.recorder.log_epoch(trial_id, row["epoch"], {
                    k: v for k, v in row.items() if (k in METRIC_KEYS or str(k).startswith("alpha/"))
                    and isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v))})
        failure = last.get("failure") if not error else None
        status = "FAILED" if (error or failure) else "FINISHED"
        epoch = last.get("epoch") or 0
        stopped = status == "FINISHED" and epoch < cfg.train.epochs
        ckpt, ckpt_metrics = best_kept(kept)
        model_file = bits = None
        if ckpt is not None:
            try:
                folder = _local_dir(ckpt, self.cache_dir)
                model_file = os.path.join(folder, CHECKPOINT_FILE)
                self.recorder.log_checkpoint(trial_id, model_file)
                if os.path.isfile(os.path.join(folder, BITS_FILE)):
                    self.recorder.log_artifacts(trial_id, {BITS_FILE: os.path.join(folder, BITS_FILE)})
                bits = checkpoint_bits_label(model_file)
            except Exception as exc:            # noqa: BLE001 - record the trial anyway
                self._warn(f"trial {trial_id}: storing its checkpoint in MLflow failed", exc)
        alphas = self.alphas.get(trial_id) or {k[len("alpha/"):]: v for k, v in last.items()
                                               if k.startswith("alpha/")}
        self.recorder.log_json(trial_id, ALPHAS_ARTIFACT, alphas)   # {} for a float model
        text = error or last.get("error")
        self.recorder.finish_trial(trial_id, status, error=text, stopped_early=stopped, failure=failure)
        metric = self.plan.search.metric
        summary = {
            "trial_id": trial_id, "run_id": self.recorder.run_id(trial_id), "status": status,
            "failure": failure or ("error" if error else None),
            "error": (text or "").strip().splitlines()[-1][:300] if text else None,
            "stopped_early": stopped, "epochs": epoch, "arch": cfg.model.arch,
            "metric": _finite(last.get("best_metric", ckpt_metrics.get(metric))),
            "best_epoch": last.get("best_epoch"), "checkpoint": model_file, "bits": bits,
            "config": cfg.to_dict(), "values": self.values(config)}
        self.entry["trials"][trial_id] = summary
        self.state.save()
        shown = "STOPPED" if stopped else status
        note = "(ASHA)" if stopped else (f"({summary['failure']}: {summary['error']})" if status == "FAILED" else "")
        self.table.row(trial_id, summary["values"], shown, epoch, last.get(metric), note)
        return summary

    # ---- after the Tuner ---------------------------------------------------------
    def reconcile(self, results) -> None:
        """Close every trial of the ResultGrid not closed yet (trials that ended while a
        killed driver could not record them, or whose callback failed)."""
        for result in results:
            trial_id = os.path.basename(result.path.rstrip("/"))
            if trial_id in self.entry["trials"]:
                continue
            history = None
            df = result.metrics_dataframe
            if df is not None and "epoch" in df.columns:
                history = df.to_dict("records")
            error = None if result.error is None else str(result.error)
            self.trial_done(trial_id, result.config, result.metrics, result.best_checkpoints or [],
                            error=error, history=history)

    def best(self) -> dict | None:
        sign = 1 if self.plan.search.mode == "max" else -1
        done = [t for t in self.entry["trials"].values()
                if t["status"] == "FINISHED" and t["metric"] is not None and t["checkpoint"]]
        return max(done, key=lambda t: sign * t["metric"]) if done else None


class SweepCallback(tune.Callback):
    """Forwards Ray Tune's trial events to the live ``StageRun`` of ``key``."""

    def __init__(self, key: str):
        self.key = key

    def __getstate__(self):
        return {"key": self.key}

    def __setstate__(self, state):
        self.key = state["key"]

    def _call(self, what: str, fn, *args, **kwargs):
        run = _LIVE.get(self.key)
        if run is None:
            return
        try:
            fn(run, *args, **kwargs)
        except Exception as exc:                # noqa: BLE001 - never stop the sweep for a record
            run._warn(f"{what} (it is redone when the stage ends)", exc)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._call(f"trial {trial.trial_id}: opening its MLflow run", StageRun.trial_started,
                   trial.trial_id, trial.config)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._call(f"trial {trial.trial_id}: logging an epoch", StageRun.trial_result,
                   trial.trial_id, trial.config, result)

    def on_trial_recover(self, iteration, trials, trial, **info):
        error = trial.get_error()
        self._call(f"trial {trial.trial_id}", StageRun.trial_retrying, trial.trial_id,
                   trial.config, trial.num_failures, None if error is None else str(error))

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._call(f"trial {trial.trial_id}: closing its MLflow run", StageRun.trial_done,
                   trial.trial_id, trial.config, trial.last_result, _kept(trial))

    def on_trial_error(self, iteration, trials, trial, **info):
        error = trial.get_error()
        self._call(f"trial {trial.trial_id}: closing its MLflow run", StageRun.trial_done,
                   trial.trial_id, trial.config, trial.last_result, _kept(trial),
                   error=str(error) if error is not None else "the trial failed")


def _kept(trial) -> list:
    """(checkpoint, metrics) of the checkpoints Ray keeps for a trial."""
    with contextlib.suppress(AttributeError):
        return [(r.checkpoint, r.metrics) for r in
                trial.run_metadata.checkpoint_manager._checkpoint_results]
    return [(trial.checkpoint, trial.last_result)]


def register(key: str, run: StageRun | None) -> None:
    if run is None:
        _LIVE.pop(key, None)
    else:
        _LIVE[key] = run
