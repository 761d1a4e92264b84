"""The best by a metric and its mode (``max`` | ``min``): one rule for every place that
picks a best epoch, trial or checkpoint; and the Pareto front of (cost, value) points.
Pure Python (the train wing imports it too).

A value that is None or NaN is never better than anything, and anything finite is
better than no value yet; among equal values the first one stays the best.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable, TypeVar

__all__ = ["MODES", "check_mode", "is_better", "best_of", "pareto_front"]

MODES = ("max", "min")
T = TypeVar("T")


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"mode {mode!r}: write max or min")
    return mode


def _missing(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def is_better(new, old, mode: str) -> bool:
    """Whether ``new`` beats ``old`` under ``mode``; ties keep ``old``."""
    check_mode(mode)
    if _missing(new):
        return False
    if _missing(old):
        return True
    return new > old if mode == "max" else new < old


def best_of(items: Iterable[T], key: Callable[[T], float], mode: str,
            default: T | None = None) -> T | None:
    """The item whose ``key`` is best under ``mode`` (the first of equals); ``default``
    when no item has a value."""
    check_mode(mode)
    best, best_value = default, None
    for item in items:
        value = key(item)
        if is_better(value, best_value, mode):
            best, best_value = item, value
    return best


def pareto_front(items: Iterable[T], cost: Callable[[T], float], value: Callable[[T], float]) -> list[T]:
    """The items no other item beats: none has a lower-or-equal ``cost`` and a higher
    ``value`` (or an equal value at a lower cost). Sorted by cost; items missing either
    number are left out; of equal points the first stays."""
    points = [(cost(i), value(i), n, i) for n, i in enumerate(items)]
    points = [p for p in points if not _missing(p[0]) and not _missing(p[1])]
    front, best = [], None
    for c, v, _, item in sorted(points, key=lambda p: (p[0], -p[1], p[2])):
        if best is None or v > best:
            front.append(item)
            best = v
    return front
