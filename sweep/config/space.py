"""The search distributions of a search-space file, and plain-number parsing.
(``sweep.config.keys`` holds every dotted key with its default and value check.)

A distribution is exactly a one-key mapping whose key is one of six names:

    {grid: [...]}            every value, crossed with the other grids
    {choice: [...]}          one value at random per sample
    {uniform: [lo, hi]}      real, lo <= x < hi
    {loguniform: [lo, hi]}   real, log-uniform, 0 < lo
    {randint: [lo, hi]}      integer, BOTH ends included (Ray's own randint excludes hi:
                             convert with ``tune.randint(lo, hi + 1)``)
    {quniform: [lo, hi, q]}  real, rounded to a multiple of q

The classes are small frozen module-level dataclasses, so they pickle (Ray ships the
config to its workers). Nothing here imports Ray: the search module converts them.
Plain values are checked as they will be used; a distribution's values (or bounds) are
checked as if each were the plain value.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import re
from typing import Any, Callable, ClassVar

_NUMBER_RE = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


class SpaceError(ValueError):
    """A malformed distribution; the message says what shape was expected."""


def parse_number(value: Any) -> int | float:
    """A real number from YAML: ints and floats as they are, and number-like strings
    such as ``1e-4`` (YAML 1.1 reads those as strings) converted. Raises SpaceError."""
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        raise SpaceError(f"expected a number, got {value!r}")
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        value = float(value)
    elif isinstance(value, str) and _NUMBER_RE.match(value.strip()):
        text = value.strip()
        value = int(text) if text.lstrip("+-").isdigit() else float(text)
    else:
        raise SpaceError(f"expected a number, got {value!r}")
    if not math.isfinite(value):
        raise SpaceError(f"expected a finite number, got {value!r}")
    return value


def parse_int(value: Any) -> int:
    """An integer (``True`` is not one); integral floats and strings like ``1e3`` are accepted."""
    if isinstance(value, str) or (isinstance(value, numbers.Real) and not isinstance(value, bool)):
        try:
            number = parse_number(value)
        except SpaceError:
            number = None
        if number is not None and float(number).is_integer():
            return int(number)
    raise SpaceError(f"expected an integer, got {value!r}")


class Distribution:
    """Base of the six distributions. ``name`` is the key written in YAML. The six
    classes are siblings (none subclasses another), so ``isinstance`` tells them apart."""

    name: ClassVar[str] = ""
    continuous: ClassVar[bool] = False   # samples reals: only for real-valued keys

    def candidates(self) -> list:
        """The values a validator should try: every value of a finite set, the bounds
        (as the sampler would produce them) of a range."""
        raise NotImplementedError

    def to_plain(self) -> dict:
        """The YAML form, e.g. ``{"grid": [1, 2]}``."""
        return {self.name: [_plain(v) for v in dataclasses.astuple(self)]}

    def map_values(self, fn: Callable[[Any], Any]) -> "Distribution":
        """The same distribution with every value replaced by ``fn(value)`` (finite sets;
        a range is returned as it is)."""
        return self


class _Finite(Distribution):
    values: tuple

    def candidates(self) -> list:
        return list(self.values)

    def to_plain(self) -> dict:
        return {self.name: [_plain(v) for v in self.values]}

    def map_values(self, fn):
        return type(self)(tuple(fn(v) for v in self.values))


@dataclasses.dataclass(frozen=True)
class Grid(_Finite):
    values: tuple
    name: ClassVar[str] = "grid"


@dataclasses.dataclass(frozen=True)
class Choice(_Finite):
    values: tuple
    name: ClassVar[str] = "choice"


@dataclasses.dataclass(frozen=True)
class Uniform(Distribution):
    lo: float
    hi: float
    name: ClassVar[str] = "uniform"
    continuous: ClassVar[bool] = True

    def candidates(self) -> list:
        return [self.lo, self.hi]


@dataclasses.dataclass(frozen=True)
class LogUniform(Distribution):
    lo: float
    hi: float
    name: ClassVar[str] = "loguniform"
    continuous: ClassVar[bool] = True

    def candidates(self) -> list:
        return [self.lo, self.hi]


@dataclasses.dataclass(frozen=True)
class RandInt(Distribution):
    """Integers lo..hi, both included."""
    lo: int
    hi: int
    name: ClassVar[str] = "randint"

    def candidates(self) -> list:
        if self.hi - self.lo <= 64:
            return list(range(self.lo, self.hi + 1))
        return [self.lo, self.hi]


@dataclasses.dataclass(frozen=True)
class QUniform(Distribution):
    """Reals in [lo, hi] rounded to a multiple of q (Ray's rule: round(x / q) * q)."""
    lo: float
    hi: float
    q: float
    name: ClassVar[str] = "quniform"
    continuous: ClassVar[bool] = True

    def candidates(self) -> list:
        return [round(self.lo / self.q) * self.q, round(self.hi / self.q) * self.q]


DISTRIBUTIONS: dict[str, type[Distribution]] = {
    cls.name: cls for cls in (Grid, Choice, Uniform, LogUniform, RandInt, QUniform)}

_SHAPES = {"grid": "a non-empty list of values", "choice": "a non-empty list of values",
           "uniform": "[lo, hi] with lo < hi", "loguniform": "[lo, hi] with 0 < lo < hi",
           "randint": "[lo, hi] with integers lo <= hi (both included)",
           "quniform": "[lo, hi, q] with lo < hi and q > 0"}


def is_distribution(value: Any) -> bool:
    """A Distribution object, or its YAML form: a one-key mapping named like a distribution."""
    if isinstance(value, Distribution):
        return True
    return isinstance(value, dict) and len(value) == 1 and next(iter(value)) in DISTRIBUTIONS


def parse_distribution(value: Any) -> Distribution | None:
    """The Distribution that ``value`` writes, or None when it is not one. Raises SpaceError
    for a distribution of the wrong shape."""
    if isinstance(value, Distribution):
        return value
    if not is_distribution(value):
        return None
    (name, args), = value.items()
    cls = DISTRIBUTIONS[name]
    if not isinstance(args, (list, tuple)):
        raise SpaceError(f"{name} takes {_SHAPES[name]}; got {args!r}")
    if cls in (Grid, Choice):
        if not args:
            raise SpaceError(f"{name} takes {_SHAPES[name]}; the list is empty")
        return cls(tuple(args))
    want = 3 if cls is QUniform else 2
    if len(args) != want:
        raise SpaceError(f"{name} takes {_SHAPES[name]}; got {list(args)!r}")
    try:
        bounds = [parse_int(a) if cls is RandInt else float(parse_number(a)) for a in args]
    except SpaceError as exc:
        raise SpaceError(f"{name} takes {_SHAPES[name]}; {exc}") from None
    lo, hi = bounds[:2]
    if (cls is RandInt and lo > hi) or (cls is not RandInt and lo >= hi):
        raise SpaceError(f"{name} takes {_SHAPES[name]}; got lo={lo} > hi={hi}"
                         if lo > hi else f"{name} takes {_SHAPES[name]}; got lo = hi = {lo}")
    if cls is LogUniform and lo <= 0:
        raise SpaceError(f"loguniform takes {_SHAPES[name]}; got lo={lo}, and the log of "
                         f"{lo} does not exist (use uniform, or a small positive lo)")
    if cls is QUniform and bounds[2] <= 0:
        raise SpaceError(f"quniform takes {_SHAPES[name]}; got q={bounds[2]}")
    return cls(*bounds)


def _plain(value: Any) -> Any:
    if isinstance(value, Distribution):
        return value.to_plain()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def to_plain(tree: Any) -> Any:
    """``tree`` with every Distribution written back in its YAML form (for printing, logging)."""
    return _plain(tree)


def has_distributions(tree: Any) -> bool:
    """Whether any Distribution object is left anywhere in ``tree``."""
    if isinstance(tree, Distribution):
        return True
    if isinstance(tree, dict):
        return any(has_distributions(v) for v in tree.values())
    if isinstance(tree, (list, tuple)):
        return any(has_distributions(v) for v in tree)
    return False


def find_distributions(tree: dict, prefix: tuple = ()) -> list[tuple[tuple, Distribution]]:
    """(path, distribution) for every Distribution inside nested dicts, in order."""
    found = []
    for key, value in tree.items():
        if isinstance(value, Distribution):
            found.append((prefix + (key,), value))
        elif isinstance(value, dict):
            found.extend(find_distributions(value, prefix + (key,)))
    return found
