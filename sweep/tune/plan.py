"""What a stage will run: its arms, the trials they expand to, the searched keys, and
the conversion of our distributions into Ray Tune's search space or an Optuna
define-by-run function.

Arms (``search.variants``) are handled in ONE Tuner per stage, so every arm's trials
share the cluster at once:

- grid / random: the param space is ``{"tree": grid_search([arm tree, ...])}`` where
  each arm tree holds Ray domains at its searched leaves. Ray expands a grid value
  that itself holds grids or domains, so each arm is crossed with its own
  distributions only (apot: 1 trial; ngrid with z in 5 values: 5 trials), and
  ``num_samples`` repeats every arm's grid (``num_samples`` samples per arm).
- optuna: a define-by-run space that picks the arm (a categorical ``arm`` when there
  are several) and suggests that arm's distributions; ``num_samples`` x arms trials.

The trainable always receives ``config["tree"]``: the concrete ``{data, model, quant,
train}`` tree of its trial. Imports no Ray at module level (``--dry-run`` uses it).
"""
from __future__ import annotations

import copy
import functools
import itertools
import json
import math

from sweep.config import ConfigError, Experiment, get_dotted, set_dotted
from sweep.config.budget import arch_cost, draw_within_budget, has_budget, quant_cost
from sweep.config.space import (Choice, Distribution, Grid, LogUniform, QUniform, RandInt, Uniform,
                         find_distributions, to_plain)
from sweep.tune.lineage import describe_init

__all__ = ["StagePlan", "plan_stage", "ray_space", "optuna_space", "searched_values",
           "concrete_candidates"]

_MAX_LISTED = 64            # trials printed one by one by --dry-run


class StagePlan:
    """One stage of an experiment, ready to be described or run."""

    def __init__(self, exp: Experiment, stage_name: str):
        self.name = stage_name
        self.search = exp.stage_search(stage_name)
        self.resources = exp.stage_resources(stage_name)
        self.arms = list(exp.stage_search(stage_name).variants)      # dotted key -> value
        self.arm_trees = exp.trial_spaces(stage_name)                # one per arm (or one)
        tree = exp.stage_tree(stage_name)
        self.init = tree["train"]["init"]                            # as the stage sets it
        self.sets = {k: v for k, v in exp.stage(stage_name).overrides.items()
                     if k not in ("train.init", "search.variants")}
        keys: list[str] = []
        for arm, arm_tree in zip(self.arms or [{}], self.arm_trees):
            if len(self.arm_trees) > 1:
                keys += list(arm)
            keys += [".".join(p) for p, _ in find_distributions(arm_tree)]
        self.searched = list(dict.fromkeys(keys))                    # in order, unique
        # With a quant.budget, grid and random trials are drawn here, seeded: over-budget
        # draws are rejected and drawn again (Optuna's are rejected by the searcher).
        self.budgeted = any(has_budget(t) for t in self.arm_trees)
        self.draws = None
        if self.budgeted and self.search.algorithm != "optuna":
            self.draws = draw_within_budget(self.arm_trees, self.search.num_samples, self.search.seed)
            if self.draws.infeasible:
                combo = "  ".join(f"{k}={v}" for k, v in self.draws.infeasible[0].items())
                raise ConfigError(exp.file, "quant.budget", (
                    f"stage {stage_name}: no draw of the sampled keys was within the budget in "
                    f"{len(self.draws.infeasible)} case(s){', e.g. ' + combo if combo else ''}; "
                    "raise the budget or allow fewer bits"))

    # ---- counts and limits ---------------------------------------------------------
    def grid_size(self, arm_tree: dict) -> int:
        return math.prod(len(d.values) for _, d in find_distributions(arm_tree)
                         if isinstance(d, Grid))

    def num_trials(self) -> int:
        n = self.search.num_samples
        if self.search.algorithm == "optuna":
            return n * len(self.arm_trees)
        return n * sum(self.grid_size(t) for t in self.arm_trees)

    def max_epochs(self) -> int:
        """ASHA's max_t: the largest ``train.epochs`` any trial can have."""
        best = 1
        for arm_tree in self.arm_trees:
            value = get_dotted(arm_tree, "train.epochs")
            cands = value.candidates() if isinstance(value, Distribution) else [value]
            best = max(best, *(int(c) for c in cands))
        return best

    def has_sampled(self) -> bool:
        return any(not isinstance(d, Grid) for t in self.arm_trees
                   for _, d in find_distributions(t))

    # ---- description (--dry-run) ----------------------------------------------------
    def rejected(self) -> int | None:
        """Draws over the budget rejected while drawing this stage's trials (grid/random)."""
        return self.draws.rejected if self.draws is not None else None

    def describe(self) -> list[str]:
        s, r = self.search, self.resources
        sched = (f"asha (grace_period {s.scheduler.grace_period} epochs, reduction_factor "
                 f"{s.scheduler.reduction_factor:g}, max_t {self.max_epochs()} epochs)"
                 if s.scheduler.type == "asha" else "fifo")
        init = describe_init(self.init)
        lines = [f"stage {self.name}: {self.num_trials()} trial(s), search {s.algorithm} "
                 f"(num_samples {s.num_samples}, seed {s.seed}), metric {s.metric} ({s.mode}), "
                 f"scheduler {sched}",
                 f"  resources per trial: {r.cpus_per_trial:g} CPU, {r.gpus_per_trial:g} GPU"
                 + (f"; at most {s.max_concurrent} at once" if s.max_concurrent else ""),
                 f"  init: {init or 'random (train.init not set)'}"]
        if self.sets:
            lines.append("  stage sets: " + "  ".join(f"{k}={_short(to_plain(v))}"
                                                      for k, v in self.sets.items()))
        if len(self.arm_trees) > 1:
            for i, arm in enumerate(self.arms):
                lines.append(f"  arm {i}: {_short(to_plain(arm))}")
        if self.draws is not None:
            lines.append(f"  budget: {self.draws.rejected} draw(s) over the budget rejected and drawn "
                         f"again (seed {s.seed}); trials:")
            lines += self._rows(self.draws.trees)
            return lines
        if self.search.algorithm == "optuna" or self.has_sampled():
            for i, arm_tree in enumerate(self.arm_trees):
                where = f"arm {i} " if len(self.arm_trees) > 1 else ""
                for path, dist in find_distributions(arm_tree):
                    lines.append(f"  {where}space: {'.'.join(path)} ~ {_short(dist.to_plain())}")
            how = ("Optuna picks each trial" if s.algorithm == "optuna"
                   else f"seeded random samples (seed {s.seed})")
            lines.append(f"  trials: {self.num_trials()} from the space above, {how}")
            if self.budgeted:
                lines.append("  budget: Optuna's points over the budget are reported infeasible and "
                             "drawn again, never trained")
                lines += [f"  {line}" for line in self._feasible_share()]
            return lines
        if not self.searched:
            lines.append(f"  trials: {self.num_trials()} (nothing searched)")
            return lines
        lines.append("  trials:")
        return lines + self._rows(self.expand_grid())

    def _feasible_share(self) -> list[str]:
        """How many of each arm's quant.* combinations are within the budget, and the
        range of their averages (when the combinations can be listed)."""
        out = []
        for i, arm_tree in enumerate(self.arm_trees):
            trees = concrete_candidates(arm_tree, "quant", limit=4096)
            if trees is None or not has_budget(arm_tree):
                continue
            costs = [quant_cost(t) for t in trees]
            ok = [c for c, excess in costs if all(v <= 1e-9 for v in excess.values())]
            where = f"arm {i}: " if len(self.arm_trees) > 1 else ""
            line = f"{where}{len(ok)} of {len(costs)} quant combinations within the budget"
            if ok:
                line += (f"; their avg_w_bits {min(c.avg_w_bits for c in ok):.3f}-"
                         f"{max(c.avg_w_bits for c in ok):.3f}, avg_a_bits "
                         f"{min(c.avg_a_bits for c in ok):.3f}-{max(c.avg_a_bits for c in ok):.3f}")
            out.append(line)
        return out

    def _rows(self, trees: list) -> list[str]:
        """One line per trial: its searched values and, for a quantized trial, its average
        bits (``quant.cost``)."""
        lines = []
        for i, tree in enumerate(trees[:_MAX_LISTED]):
            row = _applying(tree, searched_values(tree, self.searched))
            lines.append(f"    {i:>3}  " + "  ".join(f"{k}={_short(v)}" for k, v in row.items())
                         + _averages(tree))
        if len(trees) > _MAX_LISTED:
            lines.append(f"    ... {len(trees) - _MAX_LISTED} more")
        return lines

    def expand_grid(self) -> list[dict]:
        """Every concrete tree of a grid-only stage (num_samples repeats included)."""
        out = []
        for _ in range(self.search.num_samples):
            for arm_tree in self.arm_trees:
                found = find_distributions(arm_tree)
                for combo in itertools.product(*(d.values for _, d in found)):
                    tree = copy.deepcopy(arm_tree)
                    for (path, _), value in zip(found, combo):
                        set_dotted(tree, ".".join(path), copy.deepcopy(value))
                    out.append(tree)
        return out


def plan_stage(exp: Experiment, stage_name: str) -> StagePlan:
    return StagePlan(exp, stage_name)


def searched_values(tree: dict, keys) -> dict:
    return {k: get_dotted(tree, k, None) for k in keys}


def _applying(tree: dict, row: dict) -> dict:
    """The searched values of a trial that apply to it (``sweep.config.applies``): an arm
    without a bit allocation does not list ``quant.allocation.*``, nor a DAMBQ arm the
    alpha settings. The row unchanged when the tree does not resolve."""
    from sweep.config import resolve_trial
    from sweep.config.applies import applicable
    try:
        keys = applicable(resolve_trial(tree))
    except Exception:       # noqa: BLE001 - the dry run reports a bad tree on its own
        return row
    return {k: v for k, v in row.items() if k in keys or any(a.startswith(k + ".") for a in keys)}


def _averages(tree: dict) -> str:
    """A trial's averages; with a bit allocation, where it starts and what it lowers them to."""
    from sweep.config.trial import quant_policy
    policy = quant_policy(tree["quant"], tree["model"]["arch"], check_budget=False)
    cost = arch_cost(policy, tree["model"]["arch"])
    if cost.avg_w_bits == 32 and cost.avg_a_bits == 32:
        return ""
    line = f"  | avg_w_bits {cost.avg_w_bits:.3f}  avg_a_bits {cost.avg_a_bits:.3f}"
    if policy.allocation.method != "none":
        margin = policy.allocation.margin
        line += (f" at the start; {policy.allocation.method} lowers them to "
                 + ", ".join(f"{k} <= {v + margin:g}" for k, v in policy.budget.items()))
    return line


def _short(value) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    text = text.replace('"', "")
    return text if len(text) <= 90 else text[:87] + "..."


def concrete_candidates(arm_tree: dict, section: str, limit: int = 16) -> list[dict] | None:
    """Concrete trees covering every value the distributions under ``section`` can take
    (other distributions at their first candidate); None when a distribution there is
    continuous or the combinations exceed ``limit``."""
    found = find_distributions(arm_tree)
    inside = [(p, d) for p, d in found if p[0] == section]
    if any(isinstance(d, (Uniform, LogUniform, QUniform)) for _, d in inside):
        return None
    cands = [d.candidates() for _, d in inside]
    if any(isinstance(d, RandInt) and len(c) != d.hi - d.lo + 1 for (_, d), c in zip(inside, cands)):
        return None
    if math.prod(len(c) for c in cands) > limit:
        return None
    out = []
    for combo in itertools.product(*cands):
        tree = copy.deepcopy(arm_tree)
        for path, dist in found:
            set_dotted(tree, ".".join(path), copy.deepcopy(dist.candidates()[0]))
        for (path, _), value in zip(inside, combo):
            set_dotted(tree, ".".join(path), copy.deepcopy(value))
        out.append(tree)
    return out


# ---------------------------------------------------------------- Ray and Optuna

def _ray_domain(dist: Distribution):
    from ray import tune
    if isinstance(dist, Grid):
        return tune.grid_search(list(dist.values))
    if isinstance(dist, Choice):
        return tune.choice(list(dist.values))
    if isinstance(dist, Uniform):
        return tune.uniform(dist.lo, dist.hi)
    if isinstance(dist, LogUniform):
        return tune.loguniform(dist.lo, dist.hi)
    if isinstance(dist, RandInt):
        return tune.randint(dist.lo, dist.hi + 1)      # Ray excludes hi; ours includes it
    if isinstance(dist, QUniform):
        return tune.quniform(dist.lo, dist.hi, dist.q)
    raise TypeError(f"no Ray domain for {dist!r}")


def _with_domains(tree: dict) -> dict:
    out = copy.deepcopy(tree)
    for path, dist in find_distributions(tree):
        set_dotted(out, ".".join(path), _ray_domain(dist))
    return out


def ray_space(plan: StagePlan) -> dict:
    """``{"tree": ...}`` for BasicVariantGenerator (grid and random search)."""
    from ray import tune
    if plan.draws is not None:          # drawn within the budget: one grid value per trial
        return {"tree": tune.grid_search(plan.draws.trees)}
    trees = [_with_domains(t) for t in plan.arm_trees]
    return {"tree": trees[0] if len(trees) == 1 else tune.grid_search(trees)}


def _suggest(trial, name: str, dist: Distribution):
    if isinstance(dist, Choice):
        values = list(dist.values)
        if all(v is None or isinstance(v, (bool, int, float, str)) for v in values):
            return trial.suggest_categorical(name, values)
        return copy.deepcopy(values[trial.suggest_categorical(name, list(range(len(values))))])
    if isinstance(dist, Uniform):
        return trial.suggest_float(name, dist.lo, dist.hi)
    if isinstance(dist, LogUniform):
        return trial.suggest_float(name, dist.lo, dist.hi, log=True)
    if isinstance(dist, RandInt):
        return trial.suggest_int(name, dist.lo, dist.hi)
    if isinstance(dist, QUniform):
        lo, hi = math.ceil(dist.lo / dist.q) * dist.q, math.floor(dist.hi / dist.q) * dist.q
        return round(trial.suggest_float(name, lo, hi, step=dist.q) / dist.q) * dist.q
    raise TypeError(f"{dist.name} cannot be used with optuna; write {{choice: [...]}}")


def _define_by_run(trial, arm_trees: list) -> dict:
    """Optuna define-by-run space (module level: it is pickled with the searcher)."""
    index = trial.suggest_categorical("arm", list(range(len(arm_trees)))) if len(arm_trees) > 1 else 0
    tree = copy.deepcopy(arm_trees[index])
    prefix = f"arm{index}:" if len(arm_trees) > 1 else ""
    for path, dist in find_distributions(arm_trees[index]):
        key = ".".join(path)
        set_dotted(tree, key, _suggest(trial, prefix + key, dist))
    return {"tree": tree}


def optuna_space(plan: StagePlan):
    return functools.partial(_define_by_run, arm_trees=plan.arm_trees)
