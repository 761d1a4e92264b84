"""The dotted-key table, derived from the schema's dataclasses, and the walk that turns a
nested and/or dotted mapping into checked leaves.

``KEYS`` maps every dotted key (``train.lr``, ``quant.layers``) to its ``Field``;
``SUBSECTIONS`` names the sections (``data``, ``data.synthetic``). A distribution's values
(or bounds) are checked as if each were the plain value.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any

from quant.policy import LAYER_KEYS
from sweep.config.checks import Field, Invalid, checked, unknown_message
from sweep.config.schema import SECTIONS, TRIAL_SECTIONS
from sweep.config.space import (RandInt, _Finite, has_distributions, is_distribution, parse_distribution,
                                parse_int, parse_number)

TOP_SECTIONS = tuple(SECTIONS)
_GLOB_RE = re.compile(r"^[A-Za-z0-9_.*?\[\]!-]+$")
_PARSE = {"int": parse_int, "float": parse_number}


def _from_policy(f: dataclasses.Field) -> Field:
    """A ``quant.*`` key: ``QuantPolicy`` declares default, kind and check of a value; here
    the value is parsed to its kind first, and ``quant.layers`` walked key by key."""
    meta = f.metadata
    if meta["kind"] == "layers":
        return Field({}, _layers)
    if meta["kind"] == "budget":
        return Field(f.default, _budget, "any", meta["null"])
    parse = _PARSE.get(meta["kind"])

    def check(v, cwd):
        return checked(meta["check"], checked(parse, v) if parse else v)
    return Field(f.default, check, meta["kind"], meta["null"])


def _table(cls, prefix: str, keys: dict, sections: set) -> None:
    sections.add(prefix)
    for f in dataclasses.fields(cls):
        full = f"{prefix}.{f.name}"
        if "section" in f.metadata:
            _table(f.metadata["section"], full, keys, sections)
        elif "key" in f.metadata:
            keys[full] = f.metadata["key"]
        elif "check" in f.metadata:
            keys[full] = _from_policy(f)


def trial_names() -> list[str]:
    """Every key and section a trial reads (what ``train.init.match`` may name)."""
    return [k for k in (*KEYS, *SUBSECTIONS) if k.split(".")[0] in TRIAL_SECTIONS]


def _layers(v, cwd):
    """``quant.layers``: globs mapped to per-layer ``quant.*`` keys, each checked as that key."""
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise Invalid(f"expected a mapping of layer globs to {{{', '.join(LAYER_KEYS)}}}, "
                      f"e.g. {{'layer2.*': {{w_bits: 3}}}}; got {v!r}")
    out = {}
    for pattern, entry in v.items():
        sub = f".{pattern}"
        if not isinstance(pattern, str) or not _GLOB_RE.match(pattern):
            raise Invalid(f"{pattern!r} is not a layer glob: module names such as layer3.0.conv1, "
                          "with * ? [...] wildcards", sub)
        if not isinstance(entry, dict) or not entry:
            raise Invalid(f"expected a non-empty mapping with {', '.join(LAYER_KEYS[:-1])} and/or "
                          f"{LAYER_KEYS[-1]}, got {entry!r}", sub)
        out[pattern] = {}
        for name, value in entry.items():
            if name not in LAYER_KEYS:
                raise Invalid(unknown_message(str(name), LAYER_KEYS), f"{sub}.{name}")
            try:
                out[pattern][name] = check_leaf(f"quant.{name}", value, cwd)
            except Invalid as exc:
                raise Invalid(exc.message, f"{sub}.{name}{exc.sub}") from None
    return out


def _budget(v, cwd):
    """``quant.budget``: a mapping of average bits, each value parsed as a number first."""
    from quant.levels import QuantConfigError
    from quant.policy import _budget as check
    if isinstance(v, dict):
        parsed = {}
        for name, value in v.items():
            try:
                parsed[name] = None if value is None else parse_number(value)
            except ValueError as exc:
                raise Invalid(str(exc), f".{name}") from None
        v = parsed
    try:
        return check(v)
    except QuantConfigError as exc:
        sub = exc.key[len("budget"):] if exc.key and exc.key.startswith("budget.") else ""
        raise Invalid(str(exc), sub) from None


def leaves(mapping: dict, tops) -> list[tuple[str, Any]]:
    """(dotted key, value) of every key in a nested and/or dotted mapping, knowing which
    keys are sections and which are leaves (``quant.layers`` is a leaf holding a mapping).
    Keys outside the sections ``tops`` are errors (Invalid, ``sub`` = the dotted key)."""
    def walk(node, prefix):
        out = []
        for key, value in node.items():
            full = f"{prefix}.{key}" if prefix else str(key)
            top = full.split(".")[0]
            if not isinstance(key, str) or not key:
                raise Invalid(f"keys are names, got {key!r}", full)
            if full in ("name", "stages") or (top in TOP_SECTIONS and top not in tops and
                                              (full in KEYS or full in SUBSECTIONS)):
                raise Invalid(f"cannot be set here; only {', '.join(t + '.*' for t in tops)} keys can", full)
            if full in KEYS:
                out.append((full, value))
            elif full in SUBSECTIONS:
                if not isinstance(value, dict) and value is not None:
                    raise Invalid(f"is a section: expected a mapping of its keys, got {value!r}", full)
                out.extend(walk(value or {}, full))
            else:
                names = [n for n in (*KEYS, *SUBSECTIONS) if n.split(".")[0] in tops]
                raise Invalid(unknown_message(full, names + (["name", "stages"] if not prefix else [])), full)
        return out
    return walk(mapping, "")


def check_leaf(key: str, value: Any, cwd: str | None = None) -> Any:
    """The checked, normalised value of one dotted key: a plain value, or a Distribution
    whose every value (or both bounds) passes the key's check."""
    field = KEYS[key]
    if not is_distribution(value):
        return field(value, cwd)
    if key.split(".")[0] not in TRIAL_SECTIONS:
        raise Invalid("distributions are only allowed in data.*, model.*, quant.* and train.* "
                      "keys (and in search.variants)")
    dist = checked(parse_distribution, value)
    if dist.continuous and field.kind != "float" or isinstance(dist, RandInt) and field.kind == "any":
        use = "{randint: [lo, hi]} or {choice: [...]}" if field.kind == "int" else "{choice: [...]} or {grid: [...]}"
        raise Invalid(f"{dist.name} samples {'real numbers' if dist.continuous else 'integers'}, "
                      f"which {key} does not take; use {use}")
    if isinstance(dist, _Finite):
        dist = dist.map_values(lambda v: field(v, cwd))
        if has_distributions(dist.values):
            raise Invalid(f"the values of {dist.name} must be plain values, not distributions; "
                          "put the distribution at the inner key instead")
        return dist
    for candidate in dist.candidates():
        field(candidate, cwd)
    return dist


KEYS: dict[str, Field] = {}          # every dotted key -> its Field, in schema order
SUBSECTIONS: set[str] = set()        # data, data.synthetic, quant, ...
for _name, _cls in SECTIONS.items():
    _table(_cls, _name, KEYS, SUBSECTIONS)
