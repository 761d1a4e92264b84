"""A sweep's results read back from MLflow: one ``Trial`` per child run, one ``Row`` per
configuration (trials that differ only in ``train.seed``).

Reads what ``sweep.track.recorder.SweepRecorder`` writes (docs/mlflow.md, "What MLflow
holds"): stage runs tagged ``sweep.role=stage``; trial runs tagged ``sweep.role=trial``,
``sweep.stage``, ``sweep.trial_id``, whose parameters are the flattened config and whose
metrics are logged per epoch (``step`` = epoch, 1-based; step 0 is an evaluation before
training and never a "best" epoch, as in ``sweep.train.engine``).

Epoch choice: a trial's chosen epoch is the best epoch of the stage's search metric
(``search.metric``/``search.mode`` from the stage run's params or tags, else
``val_acc``/``max``), the earliest one on ties. ``val_acc`` is measured on the held-out
part of the training set when ``data.val_fraction > 0`` and on the test set otherwise, so
each trial also records which split its ``val_acc`` is.

    reader = ExperimentResults.load(MlflowClient(uri), "ngrid_z")   # LookupError: no such experiment
    rows = group_rows(reader.trials)                      # finished trials, aggregated
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
import statistics
import tempfile
from typing import Any, Iterable

from mlflow import MlflowClient

from sweep import labels
from sweep.metrics import best_of
from sweep.track.store import paged
from sweep.track.names import (ALPHAS_ARTIFACT, BITS_ARTIFACT, ERROR_TAG, FAILURE_TAG, ROLE_TAG,
                            STAGE_TAG, STOPPED_EARLY_TAG, TRIAL_TAG)

__all__ = ["ExperimentResults", "ReportError", "Row", "Stat", "Trial", "group_rows", "COST_KEYS",
           "natural_key", "norm_name",
           "parse_param", "read_alphas", "alpha_history", "ACC_KEY", "TEST_KEY"]

ACC_KEY = "val_acc"            # the accuracy the table reports (split: see Trial.split)
TEST_KEY = "test_acc"          # scored every epoch when a validation split exists
DEFAULT_METRIC, DEFAULT_MODE = "val_acc", "max"

# Params that do not make a configuration different: the seed (aggregated over) and
# where things are (the data folder, the device).
NOT_CONFIG = ("train.seed", "data.root", "train.device")
LAYERS_PREFIX = "quant.layers."
# A trial's average bits, weight size and BOPs, logged once at step 0 (quant.cost).
COST_KEYS = ("avg_w_bits", "avg_a_bits", "weight_size_bytes", "bops")


class ReportError(Exception):
    """Bad input to a report (an unknown stage or run, a bad --compare-to file): one
    message for the user, exit status 2."""


def parse_param(text: str) -> Any:
    """An MLflow parameter value back to what was logged (``flatten_params`` writes
    non-strings as JSON): ``"0.04"`` -> 0.04, ``"null"`` -> None, ``"apot"`` -> "apot"."""
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return text


def norm_name(name: Any) -> str:
    """'ResNet-20' and 'resnet20' are one model; 'CIFAR-10' and 'cifar10' one dataset."""
    return "".join(ch for ch in str(name).lower() if ch.isalnum())


def natural_key(text: str) -> list:
    """Sort key that puts ``layer1.2`` before ``layer1.10``."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", text)]


@dataclasses.dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation (n - 1) of one number over seeds."""
    mean: float
    std: float | None          # None for a single value
    n: int

    @classmethod
    def of(cls, values: Iterable[float | None]) -> "Stat | None":
        vals = [v for v in values if v is not None and math.isfinite(v)]
        if not vals:
            return None
        return cls(statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else None,
                   len(vals))


@dataclasses.dataclass
class Trial:
    """One child run, with its epoch choice made."""
    run_id: str
    run_name: str
    stage: str
    trial_id: str
    status: str                        # FINISHED | FAILED | KILLED | RUNNING
    stopped_early: bool
    failure: str | None                # sweep.failure (e.g. nan_loss)
    error: str | None                  # sweep.error
    params: dict[str, Any]             # parsed values, dotted keys
    metric: str                        # the search metric that chose the epoch
    mode: str
    history: dict[str, dict[int, float]]   # metric -> {epoch: value}
    start_time: int = 0
    bits: tuple[float, float] | None = None   # averages from bits.json (mixed precision)
    cost: dict | None = None                  # COST_KEYS -> value, when the trial logged them

    # ---- config ------------------------------------------------------------------
    def get(self, key: str, default: Any = None) -> Any:
        return self.params.get(key, default)

    @property
    def mixed(self) -> bool:
        """Per-layer bits: ``quant.layers`` entries, or a bit allocation (``quant.allocation``)
        that moves each layer's bits away from ``quant.w_bits``/``a_bits`` while it trains."""
        return any(k.startswith(LAYERS_PREFIX) for k in self.params) or \
            self.params.get("quant.allocation.method") not in (None, "none")

    @property
    def seed(self) -> Any:
        return self.params.get("train.seed")

    @property
    def dataset(self) -> Any:
        """What the images are: ``data.name`` when the config says, else ``data.dataset``."""
        return self.params.get("data.name") or self.params.get("data.dataset")

    @property
    def split(self) -> str:
        """Which data ``val_acc`` measures: ``val`` (held out from train) or ``test``."""
        frac = self.params.get("data.val_fraction") or 0
        return "val" if isinstance(frac, (int, float)) and frac > 0 else "test"

    def config_key(self) -> tuple:
        return (self.stage,) + tuple(sorted(
            (k, json.dumps(v, sort_keys=True)) for k, v in self.params.items()
            if k not in NOT_CONFIG))

    # ---- epochs ------------------------------------------------------------------
    def _series(self, key: str) -> dict[int, float]:
        return {e: v for e, v in self.history.get(key, {}).items() if e >= 1}

    @property
    def epochs_run(self) -> int:
        steps = [e for key in (self.metric, ACC_KEY) for e in self._series(key)]
        return max(steps, default=0)

    @property
    def best_epoch(self) -> int | None:
        series = sorted((e, v) for e, v in self._series(self.metric).items() if math.isfinite(v))
        best = best_of(series, lambda ev: ev[1], self.mode)     # the earliest of equals
        return None if best is None else best[0]

    def at(self, key: str, epoch: int | None) -> float | None:
        return None if epoch is None else self.history.get(key, {}).get(epoch)

    @property
    def best_acc(self) -> float | None:
        """``val_acc`` at the chosen epoch."""
        return self.at(ACC_KEY, self.best_epoch)

    @property
    def test_at_best(self) -> float | None:
        """``test_acc`` at the epoch the (validation) metric chose; None without one."""
        return self.at(TEST_KEY, self.best_epoch) if self.split == "val" else None

    @property
    def last_acc(self) -> float | None:
        series = self._series(ACC_KEY)
        return series[max(series)] if series else None

    @property
    def reported(self) -> float | None:
        """The test-set number a paper would print: test accuracy at the epoch validation
        chose, or (no validation split) the best epoch's ``val_acc``, which is test."""
        return self.test_at_best if self.split == "val" else self.best_acc


@dataclasses.dataclass
class Row:
    """One configuration of one stage: its finished trials (seeds) aggregated."""
    trials: list[Trial]                # FINISHED, sorted by seed
    failed: list[Trial]                # FAILED/KILLED trials of the same configuration
    order: int = 0                     # the stage's position (start time of its run)

    @property
    def first(self) -> Trial:
        return self.trials[0]

    def get(self, key: str, default: Any = None) -> Any:
        return self.first.get(key, default)

    stage = property(lambda self: self.first.stage)
    model = property(lambda self: self.first.get("model.arch"))
    dataset = property(lambda self: self.first.dataset)
    scheme = property(lambda self: self.first.get("quant.scheme"))
    z = property(lambda self: self.first.get("quant.z"))
    lr = property(lambda self: self.first.get("train.lr"))
    weight_decay = property(lambda self: self.first.get("train.weight_decay"))
    split = property(lambda self: self.first.split)
    metric = property(lambda self: self.first.metric)
    mode = property(lambda self: self.first.mode)
    mixed = property(lambda self: self.first.mixed)

    @property
    def bits(self) -> tuple[float | None, float | None]:
        """(weight, activation) bits: the config's, or for mixed precision the averages
        over the layers of bits.json (None when no trial logged it)."""
        if self.mixed:
            return next((t.bits for t in self.trials if t.bits), (None, None))
        return self.first.get("quant.w_bits"), self.first.get("quant.a_bits")

    @property
    def cost(self) -> dict | None:
        """Average bits, weight size and BOPs (the same for every seed of a configuration)."""
        return next((t.cost for t in self.trials if t.cost), None)

    @property
    def full_precision(self) -> bool:
        return not self.mixed and labels.is_full_precision(self.get("quant.w_bits"),
                                                           self.get("quant.a_bits"))

    @property
    def bits_label(self) -> str:
        """``FP32``, ``W2A2``, ``MIXED(w2.50,a2.00)`` or ``MIXED`` (no bits.json):
        ``sweep.labels``, as in the lineage tags."""
        w, a = self.bits
        return labels.bits_label(w, a, mixed=self.mixed)

    @property
    def seeds(self) -> list:
        return [t.seed for t in self.trials]

    best = property(lambda self: Stat.of(t.best_acc for t in self.trials))
    test_at_best = property(lambda self: Stat.of(t.test_at_best for t in self.trials))
    last = property(lambda self: Stat.of(t.last_acc for t in self.trials))
    reported = property(lambda self: Stat.of(t.reported for t in self.trials))
    best_epochs = property(lambda self: [t.best_epoch for t in self.trials])
    epochs_run = property(lambda self: [t.epochs_run for t in self.trials])
    n_stopped = property(lambda self: sum(t.stopped_early for t in self.trials))

    def sort_key(self) -> tuple:
        w, a = self.bits
        return (self.order, str(self.model), str(self.dataset), -(w or 0), -(a or 0),
                str(self.scheme), self.z if isinstance(self.z, (int, float)) else -1,
                self.lr or 0, self.weight_decay or 0)


def group_rows(trials: Iterable[Trial], stage_order: dict[str, int] | None = None) -> list[Row]:
    """FINISHED trials grouped by (stage, config without seed), FAILED/KILLED ones attached
    to the row of their configuration when it has one. Rows in table order."""
    finished: dict[tuple, list[Trial]] = {}
    failed: dict[tuple, list[Trial]] = {}
    for t in trials:
        if t.status == "FINISHED":
            finished.setdefault(t.config_key(), []).append(t)
        elif t.status in ("FAILED", "KILLED"):
            failed.setdefault(t.config_key(), []).append(t)
    order = stage_order or {}
    rows = [Row(sorted(ts, key=lambda t: (str(t.seed), t.start_time)), failed.get(key, []),
                order.get(ts[0].stage, len(order)))
            for key, ts in finished.items()]
    return sorted(rows, key=Row.sort_key)


# --------------------------------------------------------------------------- reading

class ExperimentResults:
    """Every stage and trial run of one experiment, read once."""

    def __init__(self, client: MlflowClient, experiment):
        self.client = client
        self.experiment = experiment
        self.stage_runs: dict[str, Any] = {}        # stage name -> Run (first created)
        self.trials: list[Trial] = []

    @classmethod
    def load(cls, client: MlflowClient, name: str, stages: Iterable[str] | None = None
             ) -> "ExperimentResults":
        """LookupError naming the experiments the store holds when ``name`` is not one."""
        exp = client.get_experiment_by_name(name)
        if exp is None or exp.lifecycle_stage != "active":
            names = sorted(e.name for e in paged(client.search_experiments))
            raise LookupError(names)
        self = cls(client, exp)
        runs = list(paged(client.search_runs, [exp.experiment_id]))
        for run in sorted(runs, key=lambda r: r.info.start_time or 0):
            tags = run.data.tags
            if tags.get(ROLE_TAG) == "stage":
                self.stage_runs.setdefault(tags.get(STAGE_TAG, run.info.run_name), run)
        wanted = set(stages) if stages is not None else None
        for run in runs:
            tags = run.data.tags
            if tags.get(ROLE_TAG) != "trial":
                continue
            stage = tags.get(STAGE_TAG, "")
            if wanted is not None and stage not in wanted:
                continue
            self.trials.append(self._trial(run, stage))
        return self

    @property
    def stage_order(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.stage_runs)}

    @property
    def stages(self) -> list[str]:
        seen = dict.fromkeys(self.stage_runs)
        seen.update(dict.fromkeys(t.stage for t in self.trials))
        return list(seen)

    def search_metric(self, stage: str) -> tuple[str, str]:
        """(metric, mode) of a stage: its run's ``search.metric``/``search.mode`` param or
        tag, else val_acc/max."""
        run = self.stage_runs.get(stage)
        if run is None:
            return DEFAULT_METRIC, DEFAULT_MODE
        data = {**run.data.tags, **run.data.params}
        metric = parse_param(data.get("search.metric", DEFAULT_METRIC))
        mode = parse_param(data.get("search.mode", DEFAULT_MODE))
        return str(metric), ("min" if mode == "min" else "max")

    def _trial(self, run, stage: str) -> Trial:
        tags, info = run.data.tags, run.info
        metric, mode = self.search_metric(stage)
        if metric not in run.data.metrics:
            metric, mode = DEFAULT_METRIC, DEFAULT_MODE
        history = {key: self._history(info.run_id, key)
                   for key in dict.fromkeys((metric, ACC_KEY, TEST_KEY))
                   if key in run.data.metrics}
        trial = Trial(
            run_id=info.run_id, run_name=info.run_name or "", stage=stage,
            trial_id=tags.get(TRIAL_TAG, info.run_name or info.run_id), status=info.status,
            stopped_early=tags.get(STOPPED_EARLY_TAG, "").lower() == "true",
            failure=tags.get(FAILURE_TAG), error=tags.get(ERROR_TAG),
            params={k: parse_param(v) for k, v in run.data.params.items()},
            metric=metric, mode=mode, history=history, start_time=info.start_time or 0)
        cost = {k: run.data.metrics[k] for k in COST_KEYS if k in run.data.metrics}
        trial.cost = cost or None
        if trial.mixed and trial.status == "FINISHED":
            # the weighted averages (parameters, input elements) when logged, else bits.json's
            trial.bits = ((cost["avg_w_bits"], cost["avg_a_bits"]) if "avg_a_bits" in cost
                          else read_bits(self.client, info.run_id))
        return trial

    def _history(self, run_id: str, key: str) -> dict[int, float]:
        out: dict[int, tuple[int, float]] = {}
        for m in self.client.get_metric_history(run_id, key):
            if m.step not in out or m.timestamp >= out[m.step][0]:
                out[m.step] = (m.timestamp, m.value)
        return {step: v for step, (_, v) in sorted(out.items())}


# ------------------------------------------------------------------------ artifacts

def _read_json_artifact(client: MlflowClient, run_id: str, name: str) -> Any:
    if not any(f.path == name for f in client.list_artifacts(run_id)):
        return None
    with tempfile.TemporaryDirectory(prefix="sweep-report-") as tmp:
        with open(client.download_artifacts(run_id, name, tmp)) as f:
            return json.load(f)


def read_bits(client: MlflowClient, run_id: str) -> tuple[float, float] | None:
    """Average (weight, activation) bits over the layers ``bits.json`` lists
    (``sweep.train.bits.layer_bits``: ``{layer: {w_bits, a_bits, scheme, ...}}``, or
    ``{layer: [w_bits, a_bits]}``), leaving out the first and last layer (scheme
    ``fixed`` or none: they follow ``quant.first_last_bits``), like the ``MIXED(w..,a..)``
    lineage label. None when absent."""
    try:
        data = _read_json_artifact(client, run_id, BITS_ARTIFACT)
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    data = data.get("layers", data) if isinstance(data.get("layers"), dict) else data
    w, a = [], []
    for value in data.values():
        if isinstance(value, (list, tuple)) and len(value) >= 2:
            w.append(value[0])
            a.append(value[1])
        elif (isinstance(value, dict) and "w_bits" in value and "a_bits" in value
              and not ("scheme" in value and value["scheme"] in (None, "fixed"))):
            w.append(value["w_bits"])
            a.append(value["a_bits"])
    try:
        return (sum(map(float, w)) / len(w), sum(map(float, a)) / len(a)) if w else None
    except (TypeError, ValueError):
        return None


def _split_alpha(key: str) -> tuple[str, str] | None:
    """``alpha/weight/<layer>`` or ``weight/<layer>`` -> ("weight", layer)."""
    key = key[len("alpha/"):] if key.startswith("alpha/") else key
    kind, _, layer = key.partition("/")
    return (kind, layer) if kind in ("weight", "act") and layer else None


def read_alphas(client: MlflowClient, run) -> tuple[dict[str, dict[str, float]], str]:
    """``({"weight": {layer: alpha}, "act": {...}}, source)`` of a run: the artifact
    ``alphas.json`` (the final alphas), else the last logged ``alpha/*`` metrics."""
    out: dict[str, dict[str, float]] = {"weight": {}, "act": {}}
    try:
        data = _read_json_artifact(client, run.info.run_id, ALPHAS_ARTIFACT)
    except (OSError, ValueError):
        data = None
    if isinstance(data, dict):
        flat = {}
        for key, value in data.items():
            if isinstance(value, dict):            # {"weight": {layer: a}, "act": {...}}
                flat.update({f"{key}/{layer}": v for layer, v in value.items()})
            else:
                flat[key] = value
        for key, value in flat.items():
            part = _split_alpha(key)
            if part and isinstance(value, (int, float)):
                out[part[0]][part[1]] = float(value)
        if out["weight"] or out["act"]:
            return out, ALPHAS_ARTIFACT
    for key, value in run.data.metrics.items():
        part = _split_alpha(key) if key.startswith("alpha/") else None
        if part:
            out[part[0]][part[1]] = float(value)
    return out, "last logged alpha/* metrics"


def alpha_history(client: MlflowClient, run) -> dict[str, dict[str, dict[int, float]]]:
    """``{"weight": {layer: {epoch: alpha}}, "act": {...}}`` from the ``alpha/*`` metrics."""
    out: dict[str, dict[str, dict[int, float]]] = {"weight": {}, "act": {}}
    for key in run.data.metrics:
        part = _split_alpha(key) if key.startswith("alpha/") else None
        if part:
            out[part[0]][part[1]] = {m.step: m.value
                                     for m in client.get_metric_history(run.info.run_id, key)}
    return out

