"""Level sets of the quantization schemes and their exact float32 decision thresholds.

Pure functions, no autograd and no modules. ``B`` is the number of magnitude bits:
``w_bits - 1`` for weights (one bit is the sign), ``a_bits`` for activations.

A projection onto a level set is a sorted table of thresholds: an input ``x`` maps to
``levels[i]`` where ``i`` is the number of thresholds ``<= x``. The thresholds are not
the naive midpoints: each one is the smallest float32 for which the reference's own
float32 rule (``argmin |x - v|`` for power sets, ``round(x * n) / n`` for uniform)
picks the upper level, so the projection agrees with the reference on every float32
input except exact ties.
"""
from __future__ import annotations

import functools
import itertools
import math

import numpy as np

SCHEMES = ("apot", "pot", "uniform", "ngrid", "dambq")
WEIGHT_BITS = (1, 2, 3, 4, 5)   # 1 = binary weights, for per-layer bit allocation only
ACT_BITS = (2, 3, 4, 5)
DAMBQ_MAX_BITS = 4              # dambq's codes exist for 0..4 bits (quant.dambq); 0 only by LBA
FULL_PRECISION = 32

# Additive base sets of APoT, per magnitude-bit count B: exponents k of the terms 2^-k.
# Each set also contains 0. docs/quantization.md, "Level sets".
_APOT_BASES = {
    2: ((1, 2, 3),),
    3: ((1, 2, 4), (3,)),
    4: ((1, 3, 5), (2, 4, 6)),
    5: ((1, 3, 6), (2, 4, 7), (5,)),
    6: ((1, 4, 7), (2, 5, 8), (3, 6, 9)),
}


class QuantConfigError(ValueError):
    """An unsupported combination of bits, scheme and Z. ``key`` is the offending key
    below ``quant`` (``w_bits``, ``z``, ``layers.layer2.*.w_bits``) when one is known."""

    def __init__(self, message: str, key: str | None = None):
        super().__init__(message)
        self.key = key

    def __reduce__(self):
        return type(self), (str(self), self.key)


def _fmt(values) -> str:
    return ", ".join(str(v) for v in values)


def check_scheme(scheme: str, what: str = "scheme") -> str:
    if scheme not in SCHEMES:
        raise QuantConfigError(f"unknown {what} {scheme!r}; expected one of: {_fmt(SCHEMES)}")
    return scheme


def check_weight(bits: int, scheme: str, z: float | None = None) -> None:
    """Raise QuantConfigError unless (bits, scheme, z) is a supported weight quantizer."""
    check_scheme(scheme)
    if bits == FULL_PRECISION:
        return
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in WEIGHT_BITS:
        raise QuantConfigError(
            f"w_bits={bits!r} is not supported; weights take {_fmt(WEIGHT_BITS[1:])} bits, "
            f"{FULL_PRECISION} (full precision), or 1 (binary, for per-layer bit allocation)")
    if scheme == "ngrid":
        if bits != 2:
            raise QuantConfigError(
                f"scheme 'ngrid' is a 2-bit weight grid; got w_bits={bits}. "
                "Use w_bits: 2 with ngrid, or another scheme (apot, pot, uniform)")
        check_z(z)
    elif scheme == "dambq" and bits > DAMBQ_MAX_BITS:
        raise QuantConfigError(f"scheme 'dambq' has weight codes of 1 to {DAMBQ_MAX_BITS} bits; "
                               f"got w_bits={bits}")
    elif z is not None:
        raise z_without_ngrid(z, scheme)


def z_without_ngrid(z, scheme: str) -> QuantConfigError:
    """The error of a Z given where no layer uses scheme 'ngrid' (the one wording of it)."""
    shown = f"{z:g}" if isinstance(z, (int, float)) and not isinstance(z, bool) else repr(z)
    return QuantConfigError(f"z={shown} belongs to scheme 'ngrid' only (quant.scheme is {scheme!r}); "
                            "remove quant.z, or set quant.scheme: ngrid", "z")


def check_z(z) -> float:
    if z is None:
        raise QuantConfigError("scheme 'ngrid' needs quant.z, a real number > 0 (e.g. 1, 2, 4, 10)")
    if isinstance(z, bool) or not isinstance(z, (int, float)) or not math.isfinite(z) or z <= 0:
        raise QuantConfigError(f"z={z!r} is not allowed; ngrid's Z must be a real number > 0")
    return float(z)


def check_act(bits: int, scheme: str) -> None:
    """Raise QuantConfigError unless (bits, scheme) is a supported activation quantizer."""
    if scheme == "ngrid":
        raise QuantConfigError(
            "act_scheme 'ngrid' does not exist (ngrid is a weight-only grid); "
            f"use one of: {_fmt(s for s in SCHEMES if s != 'ngrid')}")
    check_scheme(scheme, "act_scheme")
    if bits == FULL_PRECISION:
        return
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in ACT_BITS:
        raise QuantConfigError(
            f"a_bits={bits!r} is not supported; activations take {_fmt(ACT_BITS)} bits "
            f"or {FULL_PRECISION} (full precision)")
    if scheme == "dambq" and bits > DAMBQ_MAX_BITS:
        raise QuantConfigError(f"act_scheme 'dambq' takes 2 to {DAMBQ_MAX_BITS} activation bits; "
                               f"got a_bits={bits}")


def default_act_scheme(scheme: str) -> str:
    """Activations follow the weight scheme, except ngrid (weight-only), whose default is apot
    (dambq's activations are its own uniform rule, ``quant.dambq``)."""
    return "apot" if scheme == "ngrid" else scheme


@functools.lru_cache(maxsize=None)
def _apot_levels(B: int) -> tuple[float, ...]:
    if B not in _APOT_BASES:
        raise QuantConfigError(f"apot has no level set for {B} magnitude bits (2-6 exist)")
    bases = [(0.0,) + tuple(2.0 ** -k for k in ks) for ks in _APOT_BASES[B]]
    return tuple(sorted({sum(terms) for terms in itertools.product(*bases)}))


def magnitude_levels(B: int, scheme: str, z: float | None = None) -> tuple[float, ...]:
    """Sorted, not yet normalised level set for B magnitude bits (float64 values).

    ``uniform``: k / (2^B - 1); ``pot``: {0} U {2^-k, k = 1 .. 2^B - 1};
    ``apot``: the additive sums; ``ngrid`` (B = 1): {2^-Z, 1}; B = 0: {1}.
    ``LevelSet`` divides pot and apot by their maximum the reference's way.
    """
    if scheme == "dambq":
        raise QuantConfigError("scheme 'dambq' has no level set here: its per-channel codes are "
                               "quant.dambq's")
    if B == 0:
        return (1.0,)  # binary weights: sign times alpha
    if scheme == "ngrid":
        if B != 1:
            raise QuantConfigError("ngrid exists for 2-bit weights (1 magnitude bit) only")
        return (2.0 ** -check_z(z), 1.0)
    if scheme == "uniform" or B == 1:
        n = 2 ** B - 1
        return tuple(k / n for k in range(n + 1))
    if scheme == "pot":
        return tuple(sorted([0.0] + [2.0 ** -k for k in range(1, 2 ** B)]))
    if scheme == "apot":
        return _apot_levels(B)
    check_scheme(scheme)
    raise AssertionError(scheme)


def _as_f32(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float64).astype(np.float32)


def _normalise_f32(values) -> np.ndarray:
    """values / max(values) the reference's way: float32 values times float32 (1 / max)."""
    v = _as_f32(values)
    return v * (np.float32(1.0) / v.max())


def _first_true(lo: np.float32, hi: np.float32, upper) -> np.float32:
    """Smallest float32 x in (lo, hi] with upper(x) true; upper is monotone in x."""
    # Non-negative float32 values are ordered like their bit patterns.
    a = int(np.float32(lo).view(np.int32))
    b = int(np.float32(hi).view(np.int32))
    while b - a > 1:
        m = (a + b) // 2
        if upper(np.int32(m).view(np.float32)):
            b = m
        else:
            a = m
    return np.int32(b).view(np.float32)


def thresholds(levels, rule: str = "nearest") -> np.ndarray:
    """float32 thresholds t_i such that x >= t_i picks levels[i+1] over levels[i].

    ``rule='nearest'``: the reference's ``argmin |x - v|`` on float32 values (the
    apot/pot/ngrid projection). ``rule='round'``: ``round(x * n) / n`` with
    ``n = len(levels) - 1`` (the reference's uniform projection).
    """
    lv = _as_f32(levels)
    n = np.float32(len(lv) - 1)
    out = []
    for lo, hi in zip(lv[:-1], lv[1:]):
        if rule == "round":
            k = np.float32(np.round(lo * n))
            upper = lambda x, k=k: np.round(np.float32(x) * n) > k
        else:
            upper = lambda x, lo=lo, hi=hi: abs(np.float32(x) - hi) < abs(np.float32(x) - lo)
        out.append(_first_true(lo, hi, upper))
    return np.asarray(out, dtype=np.float32)


class LevelSet:
    """A magnitude level set with its projection table (float32, sorted).

    ``levels`` are the values the quantizer outputs (times alpha and the sign),
    ``thresholds`` the decision points between consecutive levels.
    """

    def __init__(self, B: int, scheme: str, z: float | None = None):
        self.B, self.scheme, self.z = B, scheme, z
        values = magnitude_levels(B, scheme, z)
        self.levels = _normalise_f32(values) if scheme in ("apot", "pot") and B > 1 else _as_f32(values)
        rule = "round" if scheme == "uniform" else "nearest"
        self.thresholds = thresholds(self.levels, rule) if len(values) > 1 else np.zeros(0, np.float32)

    def __len__(self) -> int:
        return len(self.levels)

    def __repr__(self) -> str:
        z = f", z={self.z}" if self.z is not None else ""
        return f"LevelSet(B={self.B}, scheme={self.scheme!r}{z}, n={len(self)})"


@functools.lru_cache(maxsize=None)
def weight_levels(bits: int, scheme: str, z: float | None = None) -> LevelSet:
    """The magnitude level set of a ``bits``-bit weight quantizer.

    2-bit apot and pot fall back to uniform ({0, 1}: ternary weights), as the
    reference does; 2-bit ngrid is {2^-Z, 1}; 1-bit is binary ({1}).
    """
    check_weight(bits, scheme, z)
    if bits == FULL_PRECISION:
        raise QuantConfigError("full-precision weights have no level set")
    if bits == 2 and scheme in ("apot", "pot"):
        scheme = "uniform"
    return LevelSet(bits - 1, scheme, z if scheme == "ngrid" else None)


@functools.lru_cache(maxsize=None)
def act_levels(bits: int, scheme: str) -> LevelSet:
    """The level set of a ``bits``-bit activation quantizer (non-negative inputs)."""
    check_act(bits, scheme)
    if bits == FULL_PRECISION:
        raise QuantConfigError("full-precision activations have no level set")
    return LevelSet(bits, scheme)
