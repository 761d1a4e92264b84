"""The average-bit budget of a search space (``quant.budget``).

A trial's averages are ``quant.cost`` over the architecture's layer shapes at 32x32
(for these ResNets the averages do not depend on the image size, the classes or the
input channels: only the first and last layer change with them, and those are not
counted). Here:

- ``over_budget``: the message for a concrete trial over its budget (``resolve_trial``
  refuses such a trial);
- ``budget_offenders``: the grid combinations of a space for which no value of its
  sampled keys meets the budget (the space is refused when it is read);
- ``draw_within_budget``: the trials of a random (or grid) search drawn in the driver,
  seeded, every draw over the budget rejected and drawn again, and counted.

With ``quant.allocation`` (LBA) the budget is the target the training lowers the bits
to, not a bound on the starting configuration (``QuantPolicy.start_budget``): such a
trial is never over it here.

Imports no Ray or MLflow.
"""
from __future__ import annotations

import copy
import itertools
import math
import random
from dataclasses import dataclass

from quant.cost import BitCost, bit_cost, budget_excess
from sweep.config.dotted import set_dotted
from sweep.config.space import (Choice, Distribution, Grid, LogUniform, QUniform, RandInt, Uniform,
                                find_distributions)

__all__ = ["arch_cost", "over_budget", "tree_cost", "quant_cost", "has_budget", "budget_offenders",
           "draw_within_budget", "Draws", "MAX_DRAWS"]

MAX_DRAWS = 1000            # draws for one trial before its grid combination is called infeasible
_MAX_ENUMERATED = 4096      # combinations enumerated to find grid combinations over budget
_TOLERANCE = 1e-9


def arch_cost(policy, arch: str) -> BitCost:
    """Average bits, size and BOPs of ``policy`` on ``arch`` (32x32, 10 classes, 3 channels)."""
    from models.shapes import arch_shape
    return bit_cost(policy, arch_shape(arch))


def _over(excess: dict) -> bool:
    return any(v > _TOLERANCE for v in excess.values())


def over_budget(policy, arch: str) -> str | None:
    cost = arch_cost(policy, arch)
    excess = budget_excess(cost, policy.start_budget)
    if not _over(excess):
        return None
    limits = ", ".join(f"{k} {v:g}" for k, v in policy.budget.items())
    return (f"this configuration averages {cost.avg_w_bits:.3f} weight bits and {cost.avg_a_bits:.3f} "
            f"activation bits on {arch}, over the budget ({limits})")


def tree_cost(tree: dict) -> tuple[BitCost, dict]:
    """(cost, excess over the budget by key) of a concrete trial tree."""
    from sweep.config.trial import resolve_trial
    cfg = resolve_trial(tree, check_budget=False)
    cost = arch_cost(cfg.quant, cfg.model.arch)
    return cost, budget_excess(cost, cfg.quant.start_budget)


def quant_cost(tree: dict) -> tuple[BitCost, dict]:
    """(cost, excess) of a tree whose quant section and model.arch are concrete (cheaper
    than resolving the whole tree)."""
    from sweep.config.trial import quant_policy
    policy = quant_policy(tree["quant"], tree["model"]["arch"], check_budget=False)
    cost = arch_cost(policy, tree["model"]["arch"])
    return cost, budget_excess(cost, policy.start_budget)


def _quant_excess(tree: dict) -> dict:
    return quant_cost(tree)[1]


def has_budget(arm_tree: dict) -> bool:
    """Whether a space's trials must meet a budget before training (not when an allocation
    lowers their bits to it during training: ``QuantPolicy.start_budget``)."""
    quant = arm_tree.get("quant", {})
    method = (quant.get("allocation") or {}).get("method", "none")
    if isinstance(method, str) and method != "none":
        return False
    value = quant.get("budget")
    if isinstance(value, Distribution):
        return any(c for c in value.candidates())
    return bool(value)


def _relevant(path) -> bool:
    return path[0] == "quant" or tuple(path[:2]) == ("model", "arch")


def _with(tree: dict, pairs) -> dict:
    out = copy.deepcopy(tree)
    for path, value in pairs:
        set_dotted(out, ".".join(path), copy.deepcopy(value))
    return out


def budget_offenders(arm_tree: dict) -> list[tuple[dict, BitCost | None]] | None:
    """``[({dotted key: value}, cost), ...]`` of the grid combinations (of the keys the averages
    depend on: ``quant.*``, ``model.arch``) that no value of the sampled keys brings within
    the budget (the cost when the combination has no sampled key); with no grid, ``[({}, ..)]``
    when no point of the space is within it. None when the combinations are too many to
    enumerate (the draws find out instead)."""
    found = [(p, d) for p, d in find_distributions(arm_tree) if _relevant(p)]
    if any(d.continuous for _, d in found):
        return None
    grids = [(p, d) for p, d in found if isinstance(d, Grid)]
    sampled = [(p, d) for p, d in found if not isinstance(d, Grid)]
    cands = [d.candidates() for _, d in found]
    if any(isinstance(d, RandInt) and len(c) != d.hi - d.lo + 1 for (_, d), c in zip(found, cands)):
        return None
    if math.prod(len(c) for c in cands) > _MAX_ENUMERATED:
        return None
    base = _with(arm_tree, [(p, d.candidates()[0]) for p, d in find_distributions(arm_tree)
                            if not _relevant(p)])
    offenders = []
    for combo in itertools.product(*(d.values for _, d in grids)):
        fixed = list(zip((p for p, _ in grids), combo))
        costs = [quant_cost(_with(base, fixed + list(zip((p for p, _ in sampled), pick))))
                 for pick in itertools.product(*(d.candidates() for _, d in sampled))]
        if all(_over(excess) for _, excess in costs):
            offenders.append(({".".join(p): v for p, v in fixed}, costs[0][0] if len(costs) == 1 else None))
    return offenders


def _draw(dist: Distribution, rng: random.Random):
    if isinstance(dist, Choice):
        return copy.deepcopy(dist.values[rng.randrange(len(dist.values))])
    if isinstance(dist, Uniform):
        return rng.uniform(dist.lo, dist.hi)
    if isinstance(dist, LogUniform):
        return math.exp(rng.uniform(math.log(dist.lo), math.log(dist.hi)))
    if isinstance(dist, RandInt):
        return rng.randint(dist.lo, dist.hi)
    if isinstance(dist, QUniform):
        return round(rng.uniform(dist.lo, dist.hi) / dist.q) * dist.q
    raise TypeError(f"cannot draw from {dist!r}")


@dataclass
class Draws:
    trees: list              # concrete trees, every one within its budget
    rejected: int            # draws over the budget, drawn again
    infeasible: list         # grid combinations for which MAX_DRAWS draws all failed


def draw_within_budget(arm_trees: list, num_samples: int, seed: int) -> Draws:
    """The trials of a grid/random stage with a budget: for each repeat, arm and grid
    combination, the sampled keys drawn (seeded) until the trial is within its budget."""
    rng = random.Random(seed)
    out = Draws([], 0, [])
    for _ in range(num_samples):
        for arm_tree in arm_trees:
            found = find_distributions(arm_tree)
            grids = [(p, d) for p, d in found if isinstance(d, Grid)]
            sampled = [(p, d) for p, d in found if not isinstance(d, Grid)]
            for combo in itertools.product(*(d.values for _, d in grids)):
                fixed = list(zip((p for p, _ in grids), combo))
                for _attempt in range(MAX_DRAWS):
                    tree = _with(arm_tree, fixed + [(p, _draw(d, rng)) for p, d in sampled])
                    if not has_budget(tree) or not _over(_quant_excess(tree)):
                        out.trees.append(tree)
                        break
                    if not sampled:      # a grid combination over budget: refused, not drawn again
                        out.infeasible.append({".".join(p): v for p, v in fixed})
                        break
                    out.rejected += 1
                else:
                    out.infeasible.append({".".join(p): v for p, v in fixed})
    return out
