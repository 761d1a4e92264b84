"""The best by a metric and its mode (``max`` | ``min``): one rule for every place that
picks a best epoch, trial or checkpoint. Pure Python (the train wing imports it too).

A value that is None or NaN is never better than anything, and anything finite is
better than no value yet; among equal values the first one stays the best.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable, TypeVar

__all__ = ["MODES", "check_mode", "is_better", "best_of"]

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
