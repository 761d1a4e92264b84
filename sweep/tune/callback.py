"""The Ray Tune callback of a stage.

``SweepCallback`` only forwards to the live ``StageRun`` registered under its key,
because Ray pickles callbacks into the experiment folder (``tuner.pkl``) and a restored
Tuner brings back that pickled copy: the copy finds the live objects of the new driver
by the same key.
"""
from __future__ import annotations

import contextlib

from ray import tune

from sweep.tune.records import StageRun

__all__ = ["SweepCallback", "count_rejection", "register"]

_LIVE: dict[str, StageRun] = {}


class SweepCallback(tune.Callback):
    """Forwards Ray Tune's trial events to the live ``StageRun`` of ``key``."""

    def __init__(self, key: str):
        self.key = key

    def __getstate__(self):
        return {"key": self.key}

    def __setstate__(self, state):
        self.key = state["key"]

    def _call(self, what: str, fn, *args, redone: bool = True, **kwargs):
        run = _LIVE.get(self.key)
        if run is None:
            return
        try:
            fn(run, *args, **kwargs)
        except Exception as exc:                # noqa: BLE001 - never stop the sweep for a record
            run._warn(what + (" (it is redone when the stage ends)" if redone else ""), exc)

    def on_step_end(self, iteration, trials, **info):
        self._call("printing the stage line", StageRun.heartbeat, redone=False)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._call(f"trial {trial.trial_id}: opening its MLflow run", StageRun.trial_started,
                   trial.trial_id, trial.config)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._call(f"trial {trial.trial_id}: logging an epoch", StageRun.trial_result,
                   trial.trial_id, trial.config, result)

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._call(f"trial {trial.trial_id}", StageRun.trial_retrying, trial.trial_id,
                   trial.config, trial.num_failures, _latest_error(trial))

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._call(f"trial {trial.trial_id}: closing its MLflow run", StageRun.trial_done,
                   trial.trial_id, trial.config, trial.last_result, _kept(trial))

    def on_trial_error(self, iteration, trials, trial, **info):
        error = trial.get_error()
        self._call(f"trial {trial.trial_id}: closing its MLflow run", StageRun.trial_done,
                   trial.trial_id, trial.config, trial.last_result, _kept(trial),
                   error=str(error) if error is not None else "the trial failed")


def _latest_error(trial) -> str | None:
    """The text of the trial's latest failure: Ray writes it to the trial's folder on
    this machine at once (``trial.error_file``), to the storage (``get_error``) later."""
    with contextlib.suppress(OSError, TypeError):
        with open(trial.error_file, encoding="utf-8", errors="replace") as f:
            return f.read().rpartition("Failure # ")[2].partition("\n")[2] or None
    error = trial.get_error()
    return None if error is None else str(error)


def _kept(trial) -> list:
    """(checkpoint, metrics) of the checkpoints Ray keeps for a trial."""
    with contextlib.suppress(AttributeError):
        return [(r.checkpoint, r.metrics) for r in
                trial.run_metadata.checkpoint_manager._checkpoint_results]
    return [(trial.checkpoint, trial.last_result)]


def count_rejection(key: str, cost) -> None:
    """A configuration over the budget was rejected by the stage's searcher (never trained)."""
    run = _LIVE.get(key)
    if run is not None:
        run.count_rejection(cost)


def register(key: str, run: StageRun | None) -> None:
    if run is None:
        _LIVE.pop(key, None)
    else:
        _LIVE[key] = run
