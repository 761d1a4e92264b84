"""Driver-side bookkeeping of one stage's trials: their MLflow records (through the
``SweepRecorder``), the progress table, and the trial summaries kept in ``sweep.json``
(``SweepState``) that later stages and ``--resume`` read. Events come from
``sweep.tune.callback``.
"""
from __future__ import annotations

import logging
import math
import os
import sys
import time

from sweep.config import resolve_trial
from sweep.config.applies import applicable
from sweep.labels import run_label
from sweep.metrics import best_of
from sweep.tune.lineage import checkpoint_label, init_source
from sweep.tune.plan import StagePlan, searched_values
from sweep.tune.progress import ProgressTable, stage_line
from sweep.tune.state import SweepState
from sweep.tune.trainable import COST_KEYS, INITIAL_PREFIX, METRIC_KEYS, WHERE_KEYS
from sweep.track.inputs import dataset_input
from sweep.track.recorder import SweepRecorder
from sweep.track.views import ACCURACY_AND_LOSS, FIGURES
from sweep.track.names import (ALPHAS_ARTIFACT, BEST_EPOCH_METRIC, BEST_TRIAL_TAG,
                               BEST_VAL_METRIC, BITS_ARTIFACT, CHECKPOINT_FILE, DEVICE_TAG,
                               NODE_ID_TAG, NODE_IP_TAG, TEST_AT_BEST_METRIC)

__all__ = ["StageRun", "best_kept", "best_trial"]

log = logging.getLogger("sweep")

_WHERE_TAGS = dict(zip(WHERE_KEYS, (NODE_IP_TAG, NODE_ID_TAG, DEVICE_TAG)))


def _finite(x):
    return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else None


def _local_dir(checkpoint, cache: str) -> str:
    """A local folder holding the checkpoint's files (downloaded from remote storage)."""
    fs = getattr(checkpoint, "filesystem", None)
    if fs is None or getattr(fs, "type_name", "local") == "local":
        return checkpoint.path
    return checkpoint.to_directory(os.path.join(cache, os.path.basename(checkpoint.path)))


def _epoch_metrics(result: dict) -> dict:
    """What the recorder logs of one epoch's result: the ``METRIC_KEYS`` and every
    ``alpha/...`` and ``bits/...`` key that holds a number; ``bits/<cost key>`` (a bit
    allocation's averages, size and BOPs after the epoch) is logged as ``<cost key>``, whose
    step 0 holds the trial's start."""
    out = {k: v for k, v in result.items()
           if (k in METRIC_KEYS or str(k).startswith(("alpha/", "bits/"))) and isinstance(v, (int, float))}
    for key in COST_KEYS:
        if f"bits/{key}" in out:
            out[key] = out.pop(f"bits/{key}")
    return out


_FIRST = (*FIGURES, *ACCURACY_AND_LOSS)


def _shown_first(metrics: dict) -> dict:
    """The figures to quote, then accuracy and loss, then the rest, the thresholds last:
    the order a run's page lists its metrics in (the order they were first logged)."""
    rank = {k: i for i, k in enumerate(_FIRST)}
    return dict(sorted(metrics.items(), key=lambda kv: (
        rank.get(kv[0], len(rank)), str(kv[0]).startswith("alpha/"))))


def best_kept(kept: list) -> tuple:
    """(checkpoint, metrics) of the best epoch among Ray's kept checkpoints: the newest
    one reported with ``is_best=1`` (the engine's best so far), else the newest one."""
    kept = [(c, m or {}) for c, m in kept if c is not None]
    if not kept:
        return None, {}
    return max(kept, key=lambda cm: (int(cm[1].get("is_best", 0) or 0), cm[1].get("epoch", -1)))


def best_trial(summaries, mode: str) -> dict | None:
    """The best of a stage's trial summaries (``sweep.json``) by the search metric:
    finished, with a metric and a checkpoint."""
    done = [t for t in summaries
            if t["status"] == "FINISHED" and t["metric"] is not None and t["checkpoint"]]
    return best_of(done, lambda t: t["metric"], mode)


class StageRun:
    def __init__(self, plan: StagePlan, recorder: SweepRecorder, state: SweepState, meta: dict,
                 cache_dir: str, out=None):
        self.plan, self.recorder, self.state, self.meta = plan, recorder, state, meta
        self.cache_dir = cache_dir
        self.table = ProgressTable(plan.search.metric, plan.search.mode, plan.searched, out)
        self.alphas: dict[str, dict] = {}
        self.at_best: dict[str, dict] = {}      # trial -> the figures to quote so far
        self.running: set[str] = set()           # trials started and not closed
        self.at_once = 1                         # the most trials seen running together
        self.epochs_done: dict[str, tuple[int, int | None]] = {}   # trial -> (epoch, of)
        self.epoch_s: dict[str, float] = {}      # trial -> its latest epoch's seconds
        self.where: dict[str, dict] = {}        # trial -> the node tags its run holds
        self.since: dict[str, float] = {}        # trial -> when its current epoch began
        self.entry = state.stage(plan.name)
        if plan.budgeted:         # draws rejected while planning (grid/random); Optuna's count on
            self.entry.setdefault("rejected_over_budget", plan.rejected() or 0)

    # ---- helpers -----------------------------------------------------------------
    def values(self, config: dict) -> dict:
        return searched_values(config["tree"], self.plan.searched)

    def _epochs(self, config: dict) -> int | None:
        epochs = ((config.get("tree") or {}).get("train") or {}).get("epochs")
        return epochs if isinstance(epochs, int) else None

    def run_name(self, trial_id: str, config: dict) -> str:
        """What varies, readable (``w4a4 lr=0.01``); when nothing does, the trial's bits
        (``w2a2``), or its trial id when its layers have bits of their own."""
        quant = (config.get("tree") or {}).get("quant") or {}
        bits = {} if quant.get("layers") else {
            k: quant.get(k.split(".")[1]) for k in ("quant.w_bits", "quant.a_bits")}
        return run_label(self.values(config)) or run_label(bits) or trial_id

    def _at_best(self, trial_id: str, result: dict) -> dict:
        """``best_epoch``, ``best_val_acc``, ``test_acc_at_best`` after this epoch's
        result: the epoch the engine marked best (``is_best``, by the search metric), its
        ``val_acc``, and its ``test_acc`` (``val_acc`` without a validation split, where
        val is the test set). Empty until an epoch was marked best."""
        if result.get("is_best") and result.get("epoch"):
            val = _finite(result.get("val_acc"))
            test = _finite(result.get("test_acc")) if "test_acc" in result else val
            self.at_best[trial_id] = {BEST_EPOCH_METRIC: int(result["epoch"]),
                                      BEST_VAL_METRIC: val, TEST_AT_BEST_METRIC: test}
        return dict(self.at_best.get(trial_id, {}))

    def _warn(self, what: str, exc: BaseException) -> None:
        log.exception("%s", what)
        print(f"warning: {what}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)

    def _log_cost(self, trial_id: str, result: dict) -> None:
        """What a trial logs once, at step 0: its cost metrics and its clipping thresholds
        before training."""
        once = {k[len(INITIAL_PREFIX):]: v for k, v in result.items()
                if str(k).startswith(INITIAL_PREFIX) and _finite(v) is not None}
        if once:
            self.recorder.log_once(trial_id, once, step=0)

    def _tag_where(self, trial_id: str, result: dict) -> None:
        """Tag the run with the node (IP, Ray node id) and device of this result, when
        they are new for the trial (its first epoch, or a retry on another node)."""
        where = {tag: str(result[k]) for k, tag in _WHERE_TAGS.items()
                 if isinstance(result.get(k), str) and result[k]}
        if where and where != self.where.get(trial_id):
            self.recorder.set_tags(trial_id, where)
            self.where[trial_id] = where

    def count_rejection(self, cost) -> None:
        """The searcher rejected a configuration over the budget (it is never trained)."""
        self.entry["rejected_over_budget"] = self.entry.get("rejected_over_budget", 0) + 1
        self.state.save()
        print(f"rejected (over quant.budget, not trained): avg_w_bits {cost.avg_w_bits:.3f}  "
              f"avg_a_bits {cost.avg_a_bits:.3f}; {self.entry['rejected_over_budget']} so far "
              f"in stage {self.plan.name}", flush=True)

    # ---- events ------------------------------------------------------------------
    def trial_started(self, trial_id: str, config: dict) -> None:
        if trial_id in self.entry["trials"]:
            return              # closed already; Ray restarts it after a killed driver
        self.running.add(trial_id)
        self.since[trial_id] = time.monotonic()
        self.at_once = max(self.at_once, len(self.running))
        cfg = resolve_trial(config["tree"])
        _, lineage, _ = init_source(cfg, config["_sweep"])
        tags = {**lineage, "sweep.experiment": self.recorder.experiment_name}
        self.recorder.trial_run(trial_id, self.plan.name, applicable(cfg), tags=tags,
                                run_name=self.run_name(trial_id, config))
        last = self.recorder.last_epoch(trial_id)
        if not last:
            try:
                self.recorder.log_input(trial_id, dataset_input(cfg.data))
            except Exception as exc:         # noqa: BLE001 - the trial is recorded anyway
                self._warn(f"trial {trial_id}: logging its dataset input failed", exc)
        self.table.row(trial_id, self.values(config), "RUNNING",
                       note=f"(resumed; epochs 1-{last} logged)" if last else "")

    def trial_result(self, trial_id: str, config: dict, result: dict) -> None:
        if result.get("failure") or trial_id in self.entry["trials"]:
            return                               # reported at completion / closed already
        metrics = _epoch_metrics(result)
        self.alphas[trial_id] = {k[len("alpha/"):]: v for k, v in metrics.items() if k.startswith("alpha/")}
        metrics = _shown_first({**metrics, **self._at_best(trial_id, result)})
        if self.recorder.run_id(trial_id) is None:
            self.trial_started(trial_id, config)
        self._tag_where(trial_id, result)
        logged = self.recorder.log_epoch(trial_id, result["epoch"], metrics)
        self._log_cost(trial_id, result)     # after: the run page lists metrics as logged
        extra = [f"{result['epoch_time_s']:.1f} s/epoch"] if _finite(result.get("epoch_time_s")) else []
        if _finite(result.get("test_acc")) is not None and self.plan.search.metric != "test_acc":
            extra.append(f"test_acc {result['test_acc']:.2f}")
        note = f"({', '.join(extra)})" if extra else ""
        self.epochs_done[trial_id] = (int(result["epoch"]), self._epochs(config))
        self.since[trial_id] = time.monotonic()
        if _finite(result.get("epoch_time_s")):
            self.epoch_s[trial_id] = float(result["epoch_time_s"])
        self.table.row(trial_id, self.values(config), "RUNNING", result["epoch"],
                       result.get(self.plan.search.metric),
                       note if logged else "(replayed, not logged again)",
                       epochs=self._epochs(config))

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
                # a DataFrame row: NaN where the epoch had no such key
                metrics = {k: v for k, v in _epoch_metrics(row).items()
                           if not (isinstance(v, float) and math.isnan(v))}
                self.recorder.log_epoch(trial_id, row["epoch"],
                                        {**metrics, **self._at_best(trial_id, row)})
        self._log_cost(trial_id, last)
        self._tag_where(trial_id, last)
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
                if os.path.isfile(os.path.join(folder, BITS_ARTIFACT)):
                    self.recorder.log_artifacts(trial_id, {BITS_ARTIFACT: os.path.join(folder, BITS_ARTIFACT)})
                bits = checkpoint_label(model_file)
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
            "run_name": self.run_name(trial_id, config),
            "val_acc_at_best": self.at_best.get(trial_id, {}).get(BEST_VAL_METRIC),
            "test_acc_at_best": self.at_best.get(trial_id, {}).get(TEST_AT_BEST_METRIC),
            "config": cfg.to_dict(), "values": self.values(config)}
        self.entry["trials"][trial_id] = summary
        self.state.save()
        try:
            self.roll_up()
        except Exception as exc:            # noqa: BLE001 - the trial is recorded anyway
            self._warn(f"stage {self.plan.name}: rolling up its best trial failed", exc)
        shown = "STOPPED" if stopped else status
        note = "(ASHA)" if stopped else (f"({summary['failure']}: {summary['error']})" if status == "FAILED" else "")
        self.table.row(trial_id, summary["values"], shown, epoch, last.get(metric), note,
                       epochs=cfg.train.epochs)
        self.running.discard(trial_id)
        self.status()
        return summary

    # ---- the stage line ----------------------------------------------------------
    def status(self) -> None:
        """Print the stage line: trials done, running and pending, and the ETA of the
        epochs still due at the measured epoch times (``sweep.tune.progress``)."""
        done = len(self.entry["trials"])
        running = len(self.running)
        pending = max(self.plan.num_trials() - done - running, 0)
        most = self.plan.max_epochs()           # a trial not reported yet: the largest
        left = sum(max((self.epochs_done[t][1] or most) - self.epochs_done[t][0], 0)
                   if t in self.epochs_done else most for t in self.running)
        left += pending * most
        measured = list(self.epoch_s.values())
        epoch_s = sum(measured) / len(measured) if measured else None
        at_once = min(self.at_once, running + pending) or 1
        now = time.monotonic()          # how far the running trials are into their epochs
        into = sum(min(now - self.since.get(t, now), epoch_s or 0.0) for t in self.running)
        self.table.status(stage_line(self.plan.name, done, running, pending, left, epoch_s,
                                     at_once, self.plan.search.scheduler.type == "asha",
                                     into_s=into))

    def heartbeat(self) -> None:
        """The stage line again when it is due (``ProgressTable.due``)."""
        if self.table.due():
            self.status()

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
        return best_trial(self.entry["trials"].values(), self.plan.search.mode)

    def roll_up(self) -> None:
        """The stage run shows its best trial so far: its figures as metrics
        (``best_epoch``, ``best_val_acc``, ``test_acc_at_best``, and the search metric
        as ``best_<metric>`` when that is another) and its run name as a tag."""
        best = self.best()
        if best is None:
            return
        metric = self.plan.search.metric
        figures = {BEST_EPOCH_METRIC: best.get("best_epoch"),
                   BEST_VAL_METRIC: best.get("val_acc_at_best"),
                   TEST_AT_BEST_METRIC: best.get("test_acc_at_best")}
        if metric != "val_acc":
            figures[f"best_{metric}"] = best.get("metric")
        self.recorder.log_stage_metrics(self.plan.name, figures)
        self.recorder.set_stage_tags(self.plan.name, {
            BEST_TRIAL_TAG: best.get("run_name") or best["trial_id"],
            "sweep.best_run_id": best["run_id"]})


