"""Optuna under an average-bit budget: every point Optuna proposes is costed
(``sweep.config.budget``) before Ray sees it. A point over ``quant.budget`` is given its
constraint values (``Trial.set_constraint``: average minus limit, > 0 infeasible), told
to the study as pruned, so that TPE ranks it among the infeasible points, and a new point
is asked for in its place; it is never trained. The rejections are counted, per stage,
and handed to the stage's live records through the callback registry.
"""
from __future__ import annotations

from ray.tune.search.optuna import OptunaSearch

from sweep.config.budget import MAX_DRAWS, tree_cost
from sweep.config.errors import ConfigError

__all__ = ["BudgetedOptunaSearch"]


class BudgetedOptunaSearch(OptunaSearch):
    def __init__(self, *args, stage_key: str = "", **kwargs):
        super().__init__(*args, **kwargs)
        self.stage_key = stage_key
        self.rejected = 0

    def suggest(self, trial_id: str):
        from optuna.trial import TrialState
        from sweep.tune.callback import count_rejection
        for _ in range(MAX_DRAWS):
            params = super().suggest(trial_id)
            if not isinstance(params, dict) or "tree" not in params:
                return params
            ot_trial = self._ot_trials[trial_id]
            cost, excess = tree_cost(params["tree"])
            for key, value in excess.items():
                ot_trial.set_constraint(key, float(value))
            if all(v <= 1e-9 for v in excess.values()):
                return params
            self._ot_study.tell(ot_trial, state=TrialState.PRUNED)
            del self._ot_trials[trial_id]
            self.rejected += 1
            count_rejection(self.stage_key, cost)
        raise ConfigError(None, "quant.budget", f"Optuna proposed {MAX_DRAWS} points in a row over "
                          "the budget; raise the budget or allow fewer bits")
