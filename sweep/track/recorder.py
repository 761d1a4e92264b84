"""MLflow records of a sweep, written by the driver process alone.

Trials report to the driver through Ray; the driver hands every result to one
``SweepRecorder``, which talks to MLflow through an ``MlflowClient`` (no fluent
``mlflow.start_run`` state). What ends up in MLflow (docs/mlflow.md, "What MLflow
holds"):

- one experiment per sweep ``name``, tagged ``mlflow.experimentKind =
  custom_model_development``; with a SQLite store its artifacts live in
  ``<folder of mlflow.db>/mlartifacts/<name>/`` (an absolute ``file://`` location, so
  the working directory of whoever reads them does not matter);
- one parent run per stage (run name = stage, tags ``sweep.role=stage``,
  ``sweep.stage``) and one nested child run per trial (run name = trial id, tags
  ``mlflow.parentRunId``, ``sweep.role=trial``, ``sweep.stage``, ``sweep.trial_id``, and
  the provenance tags ``sweep.git_commit``, ``sweep.git_dirty``,
  ``sweep.version.<torch|ray|mlflow|optuna>`` of ``sweep.track.provenance``), whose
  parameters are the trial's config flattened to dotted keys;
- per epoch, all metrics of a trial in one ``log_batch`` call at ``step = epoch``;
- child run artifacts (constants below): ``checkpoint/model.pt`` (the best checkpoint,
  what ``runs:/<run_id>`` resolves to), ``bits.json``, ``alphas.json``, ``error.txt``;
- the best trial of a stage registered as ``models:/<name>-<arch>@<stage>-best``, the
  version's source being ``runs:/<run_id>/checkpoint``.

``--resume``: the trial -> run and stage -> run maps and the last logged epoch of every
trial are kept in a JSON state file, rewritten atomically after every change. A
recorder built on an existing state file re-opens the runs it names (never a second run
for a trial) and does not log an epoch at or below the last one MLflow already holds.
"""
from __future__ import annotations

import json
import logging
import os
import pathlib
import posixpath
import re
import shutil
import tempfile
import threading
import time
from typing import Any, Iterator, Mapping

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from sweep.config.dotted import sanitize_key
from sweep.files import atomic_write_json
from sweep.track.names import (_END_TAGS, BEST_RUN_TAG, CHECKPOINT_ARTIFACT,
                               CHECKPOINT_DIR, CHECKPOINT_FILE, ERROR_ARTIFACT, MODEL_DIR, ERROR_TAG,
                               EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, FAILURE_TAG, PARENT_TAG,
                               REGISTERED_TAG, ROLE_TAG, STAGE_TAG, STOPPED_EARLY_TAG, TERMINAL_STATUSES,
                               TRIAL_TAG, stage_alias)
from sweep.track.provenance import provenance_tags
from sweep.track.store import paged, sqlite_path

__all__ = ["SweepRecorder", "flatten_params", "sanitize_key"]

_log = logging.getLogger(__name__)

# MLflow limits (mlflow/utils/validation.py).
_MAX_KEY = 250
_MAX_PARAM_VALUE = 6000
_MAX_TAG_VALUE = 8000
_ERROR_TAG_CHARS = 4000            # the full text goes to error.txt
_MAX_METRICS_PER_BATCH = 1000
_MAX_PARAMS_TAGS_PER_BATCH = 100
_STATE_VERSION = 1


# ------------------------------------------------------------------- params, keys

def _truncate(text: str, limit: int) -> str:
    mark = "...[truncated]"
    return text if len(text) <= limit else text[:limit - len(mark)] + mark


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return _truncate(text, _MAX_PARAM_VALUE)


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Dotted keys -> MLflow parameter values: nested mappings are flattened further,
    keys sanitized (``sanitize_key``), non-string values written as JSON, values cut to
    MLflow's 6000 characters. Keys that collide after sanitizing keep the last value."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            flat.update(flatten_params(value, full))
            continue
        clean = sanitize_key(full)
        if clean in flat:
            _log.warning("parameter %r is logged as %r, which another key also maps to",
                         full, clean)
        flat[clean] = _param_value(value)
    return flat


def _chunks(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):      # numpy arrays and scalars, torch tensors
        return obj.tolist()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=str)
    return str(obj)


def _not_found(exc: MlflowException) -> bool:
    return getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST"


def _now_ms() -> int:
    return int(time.time() * 1000)


# ----------------------------------------------------------------------- recorder

class SweepRecorder:
    """Driver-side MLflow writer for one sweep (one experiment); see the module doc.

    ``uri``: tracking URI (prepared with ``prepare_store``); ``experiment_name``: the
    sweep ``name``; ``state_path``: the resume state file in the sweep folder (loaded
    when it exists). ``artifact_root`` overrides where a new experiment keeps artifacts
    (default: ``mlartifacts/`` beside a SQLite database, the server's choice otherwise).
    ``step_key`` is the metric whose history tells, on resume, the last epoch logged.
    ``provenance``: the tags every trial run carries (default: ``provenance_tags()``,
    computed once per process).
    ``resume``: the sweep is being resumed; a state file that is missing or unreadable
    is then rebuilt from the runs' tags in MLflow (``rebuilt`` says so).
    Use as a context manager, or call ``close`` so that no run is left RUNNING.
    """

    def __init__(self, uri: str, experiment_name: str, state_path: str | os.PathLike, *,
                 artifact_root: str | None = None, step_key: str = "val_acc",
                 provenance: Mapping[str, str] | None = None, resume: bool = False):
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        self.uri = uri
        # the tags every trial run carries: git commit, dirty tree, library versions
        self.provenance = dict(provenance_tags() if provenance is None else provenance)
        self.experiment_name = experiment_name
        self.state_path = os.path.abspath(os.fspath(state_path))
        self.step_key = step_key
        self.client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        self._lock = threading.RLock()
        self._stages: dict[str, str] = {}
        self._trials: dict[str, dict[str, Any]] = {}
        self._checked: set[str] = set()       # trials whose last epoch was read from MLflow
        self.rebuilt: str | None = None        # why the maps were rebuilt from MLflow
        self.resumed = resume or os.path.exists(self.state_path)
        damaged = None
        if os.path.exists(self.state_path):
            damaged = self._load_state()
        elif resume:
            damaged = "is missing"
        self.experiment_id = self._experiment(artifact_root)
        if damaged:
            n = self._rebuild()
            self.rebuilt = (f"{self.state_path} {damaged}: rebuilt the trial -> run map from "
                            f"MLflow ({n} run(s) of experiment {experiment_name!r})")
            _log.warning("%s", self.rebuilt)
        self._save_state()

    # ---------------------------------------------------------------- experiment

    def _experiment(self, artifact_root: str | None) -> str:
        client, name = self.client, self.experiment_name
        exp = client.get_experiment_by_name(name)
        if exp is None:
            if artifact_root is None and (db := sqlite_path(self.uri)):
                folder = re.sub(r"[^\w.\-]", "_", name)
                artifact_root = pathlib.Path(db).parent.joinpath("mlartifacts", folder).as_uri()
            try:
                exp_id = client.create_experiment(
                    name, artifact_location=artifact_root,
                    tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
            except MlflowException:
                exp = client.get_experiment_by_name(name)   # created meanwhile
                if exp is None:
                    raise
                exp_id = exp.experiment_id
        else:
            exp_id = exp.experiment_id
            if exp.lifecycle_stage == "deleted":
                _log.warning("MLflow experiment %r was deleted; restoring it", name)
                client.restore_experiment(exp_id)
            if exp.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
                client.set_experiment_tag(exp_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return exp_id

    # --------------------------------------------------------------------- state

    def _load_state(self) -> str | None:
        """Read the state file; why it cannot be used (then it is rebuilt), else None."""
        try:
            with open(self.state_path, encoding="utf-8") as f:
                state = json.load(f)
            if not isinstance(state, dict) or not all(isinstance(state.get(k, {}), dict)
                                                      for k in ("stages", "trials")):
                raise ValueError("not a tracking state")
            trials = {k: dict(v) for k, v in state.get("trials", {}).items()}
            if not all(isinstance(v.get("run_id"), str) for v in trials.values()):
                raise ValueError("a trial without a run id")
        except (OSError, UnicodeDecodeError, ValueError, TypeError) as exc:
            return f"is unreadable ({type(exc).__name__})"
        if state.get("experiment_name") != self.experiment_name:
            raise ValueError(
                f"{self.state_path} records experiment {state.get('experiment_name')!r}, "
                f"not {self.experiment_name!r}; resume with the same name or restart")
        if state.get("tracking_uri") != self.uri:
            _log.warning("%s was written for MLflow store %s, resuming into %s: runs that "
                         "store lacks are created afresh", self.state_path,
                         state.get("tracking_uri"), self.uri)
        self._stages = dict(state.get("stages", {}))
        self._trials = trials
        return None

    def _rebuild(self) -> int:
        """The stage -> run and trial -> run maps from the runs' ``sweep.stage`` and
        ``sweep.trial_id`` tags (the earliest run of each, as ``_find`` picks); the last
        logged epoch of each trial is read back from MLflow when it is re-opened."""
        self._stages, self._trials = {}, {}
        runs = sorted((r for r in paged(self.client.search_runs, [self.experiment_id])
                       if ROLE_TAG in r.data.tags), key=lambda r: r.info.start_time or 0)
        for run in runs:
            tags = run.data.tags
            if tags.get(ROLE_TAG) == "stage" and STAGE_TAG in tags:
                self._stages.setdefault(tags[STAGE_TAG], run.info.run_id)
            elif tags.get(ROLE_TAG) == "trial" and TRIAL_TAG in tags:
                self._trials.setdefault(tags[TRIAL_TAG], {
                    "run_id": run.info.run_id, "stage": tags.get(STAGE_TAG),
                    "last_epoch": None, "status": run.info.status})
        return len(runs)

    def _save_state(self) -> None:
        state = {"version": _STATE_VERSION, "tracking_uri": self.uri,
                 "experiment_name": self.experiment_name,
                 "experiment_id": self.experiment_id, "stages": self._stages,
                 "trials": self._trials}
        atomic_write_json(self.state_path, state)

    # ---------------------------------------------------------------- run plumbing

    def _log_batch(self, run_id: str, params: Mapping[str, str] = (),
                   tags: Mapping[str, Any] = ()) -> None:
        p = [Param(k, v) for k, v in dict(params).items()]
        t = [RunTag(sanitize_key(k), _truncate(str(v), _MAX_TAG_VALUE))
             for k, v in dict(tags).items()]
        for chunk in _chunks(p, _MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(run_id, params=chunk, synchronous=True)
        for chunk in _chunks(t, _MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(run_id, tags=chunk, synchronous=True)

    def _create(self, run_name: str, params: Mapping[str, str], tags: dict[str, str]) -> str:
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags)
        self._log_batch(run.info.run_id, params=params)
        return run.info.run_id

    def _reopen(self, run_id: str, params: Mapping[str, str], tags: dict[str, str]):
        """Mark an existing run RUNNING again, clear how it last ended, and add the params
        and tags it lacks. None when the store does not hold it (a new one is due)."""
        try:
            run = self.client.get_run(run_id)
        except MlflowException as exc:
            if _not_found(exc):
                return None
            raise
        if run.info.lifecycle_stage != "active" or run.info.experiment_id != self.experiment_id:
            return None
        if run.info.status != "RUNNING":
            self.client.update_run(run_id, status="RUNNING")
        for key in _END_TAGS:
            if key in run.data.tags:
                self.client.delete_tag(run_id, key)
        old = run.data.params
        for key in sorted(k for k in params if k in old and old[k] != params[k]):
            _log.warning("run %s keeps parameter %s=%r (MLflow cannot change it to %r)",
                         run_id, key, old[key], params[key])
        self._log_batch(run_id, params={k: v for k, v in params.items() if k not in old},
                        tags={k: v for k, v in tags.items() if run.data.tags.get(k) != v})
        return run

    def _find(self, tag: str, value: str) -> str | None:
        """A run of this experiment carrying ``tag=value`` (a run a killed driver made
        but did not get to record in the state file)."""
        runs = self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.`{tag}` = '{value}'", max_results=1,
            order_by=["attributes.start_time ASC"])
        return runs[0].info.run_id if runs else None

    def _open(self, known: str | None, tag: str, value: str, run_name: str,
              params: Mapping[str, str], tags: dict[str, str]):
        """(run_id, Run or None): re-open ``known`` (or the run a resumed sweep finds by
        tag), else create a run."""
        candidates = [known] if known else []
        if not known and self.resumed and "'" not in value:
            candidates += [r for r in [self._find(tag, value)] if r]
        for run_id in candidates:
            run = self._reopen(run_id, params, tags)
            if run is not None:
                return run_id, run
            _log.warning("MLflow run %s (%s) is not in this experiment's store; "
                         "starting a new run", run_id, run_name)
        return self._create(run_name, params, tags), None

    def _run_of_trial(self, trial_id: str) -> str:
        try:
            return self._trials[trial_id]["run_id"]
        except KeyError:
            raise KeyError(f"trial {trial_id!r} has no MLflow run; call "
                           "SweepRecorder.trial_run first") from None

    # ------------------------------------------------------------------ public API

    def stage_run(self, stage_name: str, params: Mapping[str, Any] | None = None) -> str:
        """The parent run of a stage: created, or on resume re-opened. Returns its id."""
        with self._lock:
            tags = {**self.provenance, ROLE_TAG: "stage", STAGE_TAG: stage_name}
            run_id, _ = self._open(self._stages.get(stage_name), STAGE_TAG, stage_name,
                                   stage_name, flatten_params(params or {}), tags)
            self._stages[stage_name] = run_id
            self._save_state()
            return run_id

    def trial_run(self, trial_id: str, stage_name: str, flat_params: Mapping[str, Any],
                  tags: Mapping[str, Any] | None = None, run_name: str | None = None) -> str:
        """The child run of a trial under its stage's run: created, or re-opened when the
        trial restarts (a retry, or a resumed sweep). ``run_name``: what the UI shows
        (default: the trial id, which the tag ``sweep.trial_id`` holds anyway). Returns
        the run id."""
        with self._lock:
            parent = self._stages.get(stage_name) or self.stage_run(stage_name)
            all_tags = {**self.provenance,
                        **{sanitize_key(k): str(v) for k, v in (tags or {}).items()},
                        PARENT_TAG: parent,
                        ROLE_TAG: "trial", STAGE_TAG: stage_name, TRIAL_TAG: trial_id}
            rec = self._trials.get(trial_id, {})
            run_id, run = self._open(rec.get("run_id"), TRIAL_TAG, trial_id,
                                     run_name or trial_id, flatten_params(flat_params), all_tags)
            last = rec.get("last_epoch") if run is not None else None
            if run is not None and trial_id not in self._checked:
                # the driver may have died between log_batch and saving the state file
                logged = self._max_logged_step(run)
                if logged is not None and (last is None or logged > last):
                    last = logged
            self._checked.add(trial_id)
            self._trials[trial_id] = {"run_id": run_id, "stage": stage_name,
                                      "last_epoch": last, "status": "RUNNING"}
            if rec.get("once_logged"):           # log_once's metrics are in the run already
                self._trials[trial_id]["once_logged"] = True
            self._save_state()
            return run_id

    def _max_logged_step(self, run) -> int | None:
        metrics = run.data.metrics
        keys = [self.step_key] if self.step_key in metrics else list(metrics)
        steps = [m.step for key in keys
                 for m in self.client.get_metric_history(run.info.run_id, key)]
        return max(steps, default=None)

    def log_epoch(self, trial_id: str, epoch: int, metrics: Mapping[str, float]) -> bool:
        """All metrics of one epoch in one ``log_batch`` at ``step=epoch``. An epoch at or
        below the last one logged for the trial (a replay after a restart) is skipped:
        returns False then, True when logged. ``None`` values are left out."""
        with self._lock:
            run_id = self._run_of_trial(trial_id)
            rec = self._trials[trial_id]
            if self.resumed and trial_id not in self._checked:
                # a run known from the state file (or rebuilt) but not re-opened this time:
                # what MLflow holds, not the file, says which epochs are logged
                logged = self._max_logged_step(self.client.get_run(run_id))
                if logged is not None and (rec["last_epoch"] is None or logged > rec["last_epoch"]):
                    rec["last_epoch"] = logged
                self._checked.add(trial_id)
            epoch = int(epoch)
            if rec["last_epoch"] is not None and epoch <= rec["last_epoch"]:
                return False
            ts = _now_ms()
            batch = []
            for key, value in metrics.items():
                if value is None:
                    continue
                try:
                    value = float(value)
                except (TypeError, ValueError):
                    raise TypeError(f"metric {key!r} of trial {trial_id} is {value!r}, "
                                    "not a number") from None
                batch.append(Metric(sanitize_key(key), value, ts, epoch))
            for chunk in _chunks(batch, _MAX_METRICS_PER_BATCH):
                self.client.log_batch(run_id, metrics=chunk, synchronous=True)
            rec["last_epoch"] = epoch
            self._save_state()
            return True

    def log_once(self, trial_id: str, metrics: Mapping[str, float], step: int = 0) -> bool:
        """A trial's start (its average bits, size and BOPs, and the thresholds it trains
        from), logged once at ``step``; later calls for the same trial (a restart, a resumed
        sweep) log nothing and return False."""
        with self._lock:
            run_id = self._run_of_trial(trial_id)
            rec = self._trials[trial_id]
            if rec.get("once_logged"):
                return False
            ts = _now_ms()
            batch = [Metric(sanitize_key(k), float(v), ts, step) for k, v in metrics.items()
                     if v is not None]
            if batch:
                self.client.log_batch(run_id, metrics=batch, synchronous=True)
            rec["once_logged"] = True
            self._save_state()
            return True

    def last_epoch(self, trial_id: str) -> int | None:
        """The last epoch logged for a trial (None: none yet)."""
        return self._trials.get(trial_id, {}).get("last_epoch")

    def run_id(self, trial_id: str) -> str | None:
        return self._trials.get(trial_id, {}).get("run_id")

    def stage_run_id(self, stage_name: str) -> str | None:
        return self._stages.get(stage_name)

    def log_artifacts(self, trial_id: str,
                      files: Mapping[str, str | os.PathLike] | str | os.PathLike,
                      artifact_path: str | None = None) -> None:
        """Upload files to the trial's run. ``files`` is a folder (its content goes under
        ``artifact_path``), one file, or ``{artifact name: local path}`` where the name
        may hold folders (``checkpoint/model.pt``) and need not match the local name."""
        run_id = self._run_of_trial(trial_id)
        if not isinstance(files, Mapping):
            path = os.fspath(files)
            if os.path.isdir(path):
                self.client.log_artifacts(run_id, path, artifact_path)
            else:
                self.client.log_artifact(run_id, path, artifact_path)
            return
        for name, local in files.items():
            local = os.fspath(local)
            name = posixpath.join(artifact_path, name) if artifact_path else name
            folder, base = posixpath.split(name)
            if os.path.isdir(local):
                self.client.log_artifacts(run_id, local, name)
            elif os.path.basename(local) == base:
                self.client.log_artifact(run_id, local, folder or None)
            else:
                with tempfile.TemporaryDirectory(prefix="sweep-artifact-") as tmp:
                    staged = os.path.join(tmp, base)
                    try:
                        os.link(local, staged)
                    except OSError:
                        shutil.copyfile(local, staged)
                    self.client.log_artifact(run_id, staged, folder or None)

    def log_checkpoint(self, trial_id: str, checkpoint: str | os.PathLike) -> None:
        """Store the trial's best checkpoint as ``checkpoint/model.pt``; ``checkpoint`` is
        the file or a checkpoint folder holding ``model.pt``."""
        path = os.fspath(checkpoint)
        if os.path.isdir(path):
            path = os.path.join(path, CHECKPOINT_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no checkpoint file at {path}")
        self.log_artifacts(trial_id, {CHECKPOINT_ARTIFACT: path})

    def log_json(self, trial_id: str, name: str, obj: Any) -> None:
        """``obj`` as the JSON artifact ``name`` (numpy/torch values become lists/numbers)."""
        text = json.dumps(obj, indent=2, sort_keys=True, default=_json_default)
        self.client.log_text(self._run_of_trial(trial_id), text, name)

    def set_tags(self, trial_id: str, tags: Mapping[str, Any]) -> None:
        self._log_batch(self._run_of_trial(trial_id), tags=tags)

    def set_stage_tags(self, stage_name: str, tags: Mapping[str, Any]) -> None:
        self._log_batch(self._stages[stage_name], tags=tags)

    def log_input(self, trial_id: str, dataset_input) -> None:
        """A trial's dataset as an MLflow input (``sweep.track.inputs``)."""
        self.client.log_inputs(self._run_of_trial(trial_id), datasets=[dataset_input])

    def log_stage_file(self, stage_name: str, local: str | os.PathLike,
                       artifact_path: str | None = None) -> None:
        self.client.log_artifact(self._stages[stage_name], os.fspath(local), artifact_path)

    def log_stage_text(self, stage_name: str, text: str, name: str) -> None:
        self.client.log_text(self._stages[stage_name], text, name)

    def log_stage_metrics(self, stage_name: str, metrics: Mapping[str, float | None],
                          step: int = 0) -> None:
        """Metrics of a stage's run (its best trial's figures, ``rejected_over_budget``),
        ``None`` values left out."""
        with self._lock:
            ts = _now_ms()
            batch = [Metric(sanitize_key(k), float(v), ts, step) for k, v in metrics.items()
                     if v is not None]
            if batch:
                self.client.log_batch(self._stages[stage_name], metrics=batch, synchronous=True)

    def log_model_folder(self, run_id: str, folder: str | os.PathLike,
                         artifact_path: str = MODEL_DIR) -> None:
        """A saved MLflow model folder (``sweep.track.pytorch_model``) as an artifact of a
        run, under ``artifact_path``."""
        self.client.log_artifacts(run_id, os.fspath(folder), artifact_path)

    def finish_trial(self, trial_id: str, status: str = "FINISHED", error: str | None = None,
                     stopped_early: bool = False, failure: str | None = None) -> None:
        """End a trial's run: ``stopped_early`` (ASHA, status FINISHED) tags
        ``sweep.stopped_early=true``; ``error`` goes to tag ``sweep.error`` (cut) and to
        the artifact ``error.txt`` (whole); ``failure`` (e.g. ``nan_loss``) to
        ``sweep.failure``."""
        if status not in TERMINAL_STATUSES:
            raise ValueError(f"status {status!r} is not one of {', '.join(TERMINAL_STATUSES)}")
        with self._lock:
            run_id = self._run_of_trial(trial_id)
            tags = {}
            if stopped_early:
                tags[STOPPED_EARLY_TAG] = "true"
            if failure:
                tags[FAILURE_TAG] = failure
            if error:
                tags[ERROR_TAG] = _truncate(str(error), _ERROR_TAG_CHARS)
                self.client.log_text(run_id, str(error), ERROR_ARTIFACT)
            self._log_batch(run_id, tags=tags)
            self.client.set_terminated(run_id, status)
            self._trials[trial_id]["status"] = status
            self._save_state()

    def finish_stage(self, stage_name: str, status: str = "FINISHED") -> None:
        if status not in TERMINAL_STATUSES:
            raise ValueError(f"status {status!r} is not one of {', '.join(TERMINAL_STATUSES)}")
        with self._lock:
            self.client.set_terminated(self._stages[stage_name], status)

    def close(self, status: str = "KILLED") -> list[str]:
        """Give every run of this sweep still RUNNING the end ``status`` (trials before
        stages), so none outlives the driver. Returns the ids it ended."""
        if status not in TERMINAL_STATUSES:
            raise ValueError(f"status {status!r} is not one of {', '.join(TERMINAL_STATUSES)}")
        with self._lock:
            ours = {rec["run_id"]: tid for tid, rec in self._trials.items()}
            stage_ids = set(self._stages.values())
            running = [r for r in paged(self.client.search_runs, [self.experiment_id],
                                        filter_string="attributes.status = 'RUNNING'")
                       if r.info.run_id in ours or r.info.run_id in stage_ids
                       or ROLE_TAG in r.data.tags]
            running.sort(key=lambda r: r.data.tags.get(ROLE_TAG) == "stage")
            for run in running:
                self.client.set_terminated(run.info.run_id, status)
                if run.info.run_id in ours:
                    self._trials[ours[run.info.run_id]]["status"] = status
            self._save_state()
            return [r.info.run_id for r in running]

    def __enter__(self) -> "SweepRecorder":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close("FAILED" if exc_type is not None and not issubclass(
            exc_type, KeyboardInterrupt) else "KILLED")

    def register_best(self, stage_name: str, run_id: str, registered_name: str,
                      alias: str | None = None, artifact_path: str = CHECKPOINT_DIR,
                      tags: Mapping[str, Any] | None = None,
                      description: str | None = None) -> ModelVersion:
        """Register ``runs:/<run_id>/<artifact_path>`` as a new version of
        ``registered_name`` and point ``alias`` (default ``<stage>-best``) at it; the
        stage's run gets tags ``sweep.best_run_id`` and ``sweep.registered_model``.
        ``tags`` and ``description`` go on the new version (figures, bits, lineage).
        If the alias already names that source, that version is returned as it is."""
        alias = alias or stage_alias(stage_name)
        client = self.client
        folder = posixpath.dirname(artifact_path.rstrip("/"))
        if not any(f.path.rstrip("/") == artifact_path.rstrip("/")
                   for f in client.list_artifacts(run_id, folder or None)):
            raise FileNotFoundError(f"run {run_id} has no artifact {artifact_path!r}; "
                                    "log the checkpoint before registering it")
        source = f"runs:/{run_id}/{artifact_path}"
        try:
            aliases = client.get_registered_model(registered_name).aliases or {}
        except MlflowException as exc:
            if not _not_found(exc):
                raise
            client.create_registered_model(
                registered_name, tags={"sweep.experiment": self.experiment_name})
            aliases = {}
        if alias in aliases:
            current = client.get_model_version(registered_name, aliases[alias])
            if current.run_id == run_id and current.source == source:
                return current
        version_tags = {STAGE_TAG: stage_name,
                        **{sanitize_key(k): _truncate(str(v), _MAX_TAG_VALUE)
                           for k, v in (tags or {}).items() if v is not None}}
        version = client.create_model_version(registered_name, source=source, run_id=run_id,
                                              tags=version_tags, description=description)
        client.set_registered_model_alias(registered_name, alias, version.version)
        if stage_name in self._stages:
            self.set_stage_tags(stage_name, {BEST_RUN_TAG: run_id,
                                             REGISTERED_TAG: f"models:/{registered_name}@{alias}"})
        return client.get_model_version(registered_name, version.version)
