"""The checks of one value of a key: numbers within bounds, names from a list, paths,
URIs, devices, schedulers, ``train.init``, ``search.variants``. Each returns the value
normalised (numbers parsed, paths made absolute) or raises ``Invalid``; the helpers
(``integer``, ``real``, ``choice``, ``flag``, ``key``) declare a key on a dataclass field
of ``sweep.config.schema`` with its default and check.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import re
from typing import Any, Callable

from sweep.config.space import SpaceError, parse_int, parse_number

_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
_URI_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


class Invalid(Exception):
    """A bad value; ``sub`` is the key path below the checked key (``.type``, ``[2].quant.z``)."""

    def __init__(self, message: str, sub: str = ""):
        super().__init__(message, sub)
        self.message, self.sub = message, sub


def join_key(prefix: str, sub: str) -> str:
    if not prefix or not sub:
        return (prefix or sub).lstrip(".")
    return prefix + sub if sub[0] in ".[" else f"{prefix}.{sub}"


def checked(fn, *args):
    """fn(*args), its SpaceError or ValueError (QuantConfigError too) raised as Invalid."""
    try:
        return fn(*args)
    except (SpaceError, ValueError) as exc:   # QuantConfigError is a ValueError
        raise Invalid(str(exc)) from None


def _bounded(n, lo=None, hi=None, lo_open=False, hi_open=False):
    if (lo is not None and (n < lo or (lo_open and n == lo))) or (
            hi is not None and (n > hi or (hi_open and n == hi))):
        if lo is not None and hi is not None:
            want = f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
        else:
            want = f"{'>' if lo_open else '>='} {lo}" if lo is not None else f"{'<' if hi_open else '<='} {hi}"
        raise Invalid(f"must be {want}, got {n}")
    return n


@dataclasses.dataclass(frozen=True)
class Field:
    """One key: its default (as written in YAML), its check, which distributions fit it
    (``kind``: int | float | any) and whether ``None`` is allowed."""
    default: Any
    check: Callable[[Any, str | None], Any]   # (value, cwd) -> normalised value
    kind: str = "any"
    null: bool = False

    def __call__(self, value, cwd=None):
        return None if value is None and self.null else self.check(value, cwd)


def key(default, check, kind="any", null=False):
    """A dataclass field declaring a key: ``x: int = key(3, check)``."""
    return dataclasses.field(metadata={"key": Field(default, check, kind, null)})


def integer(default, lo=None, hi=None, null=False):
    return key(default, lambda v, cwd: _bounded(checked(parse_int, v), lo, hi), "int", null)


def real(default, lo=None, hi=None, lo_open=False, hi_open=False, null=False, keep_int=False):
    def check(v, cwd):
        n = checked(parse_number, v)
        return _bounded(n if keep_int else float(n), lo, hi, lo_open, hi_open)
    return key(default, check, "float", null)


def _enum_check(names, what="value"):
    def check(v, cwd):
        if isinstance(v, str) and v in names:
            return v
        guess = difflib.get_close_matches(str(v), names, 1, 0.6)
        hint = f"did you mean {guess[0]}? " if guess else ""
        raise Invalid(f"unknown {what} {v!r}; {hint}expected one of: {', '.join(names)}")
    return check


def choice(default, names, null=False, what="value"):
    return key(default, _enum_check(names, what), "any", null)


def flag(default, null=False):
    def check(v, cwd):
        if isinstance(v, bool):
            return v
        raise Invalid(f"expected true or false, got {v!r}")
    return key(default, check, "any", null)


def bool_or_auto(v, cwd):
    if isinstance(v, bool) or v == "auto":
        return v
    raise Invalid(f"expected true, false or auto, got {v!r}")


def local_path(v, cwd):
    if isinstance(v, os.PathLike):
        v = os.fspath(v)
    if not isinstance(v, str) or not v.strip():
        raise Invalid(f"expected a path, got {v!r}")
    v = os.path.expanduser(v.strip())
    return os.path.normpath(os.path.join(cwd, v)) if cwd and not os.path.isabs(v) else v


# Names people write for a key, to suggest the real one.
_ALIASES = {"learning_rate": "lr", "wd": "weight_decay", "bits": "w_bits", "weight_bits": "w_bits",
            "wbits": "w_bits", "act_bits": "a_bits", "abits": "a_bits", "activation_bits": "a_bits",
            "bs": "batch_size", "num_epochs": "epochs", "n_epochs": "epochs", "lr_schedule": "schedule",
            "dataset_path": "path", "file": "path", "model": "arch", "samples": "num_samples"}


def unknown_message(key: str, names) -> str:
    """'unknown key; did you mean X?' with the closest valid name among ``names``."""
    parent, _, leaf = key.rpartition(".")
    siblings = {n.rpartition(".")[2]: n for n in names if n.rpartition(".")[0] == parent}
    guess = None
    match = difflib.get_close_matches(leaf, [*siblings, *_ALIASES], 1, 0.6)
    if match:
        target = _ALIASES.get(match[0], match[0])
        guess = siblings.get(target) or next((n for n in names if n.rpartition(".")[2] == target), None)
    guess = guess or next((n for n in names if n.rpartition(".")[2] == leaf), None)
    guess = guess or next(iter(difflib.get_close_matches(key, list(names), 1, 0.75)), None)
    if guess:
        return f"unknown key; did you mean {guess}?"
    return f"unknown key; valid keys here: {', '.join(siblings.values()) or ', '.join(names)}"


def is_uri(text: str) -> bool:
    """``runs:/``, ``models:/``, ``sqlite:///``...: not a local path (one-letter schemes
    are Windows drives)."""
    m = _URI_RE.match(text)
    return bool(m) and len(m.group(0)) > 2


MAX_NAME = 100     # characters: a name is a folder, part of Ray's and MLflow's names
# Names the project itself gives files and folders: an experiment's folder sits beside
# the SQLite store and its artifacts; a stage's folder beside the sweep's own files.
RESERVED_EXPERIMENT_NAMES = ("mlflow.db", "mlflow.db-journal", "mlflow.db-wal", "mlflow.db-shm",
                             "mlartifacts")
RESERVED_STAGE_NAMES = ("sweep.json", "tracking.json", "driver.log", "driver.lock", "cache")


def check_name(v, what: str, reserved=()) -> str:
    if not isinstance(v, str) or not _NAME_RE.match(v) or set(v) == {"."}:
        raise Invalid(f"{what} may use letters, digits, '-', '_' and '.' only; got {v!r}")
    if len(v) > MAX_NAME:
        raise Invalid(f"{what} is {len(v)} characters long; at most {MAX_NAME}, please "
                      f"(it names folders and MLflow records): {v[:40]}...")
    if v.startswith(".") or v.lower() in reserved:
        raise Invalid(f"{what} {v!r} would collide with a file or folder the sweep writes "
                      f"({', '.join(reserved) or 'hidden files'}, or a name starting with '.'); "
                      "choose another")
    return v


def floats(positive):
    def check(v, cwd):
        if not isinstance(v, (list, tuple)) or not v:
            raise Invalid(f"expected a list of numbers (one per channel), got {v!r}")
        return [_bounded(float(checked(parse_number, x)), 0 if positive else None, lo_open=True) for x in v]
    return check


def milestones(v, cwd):
    if not isinstance(v, (list, tuple)):
        raise Invalid(f"expected a list of epochs, e.g. [150, 225], got {v!r}")
    out = [_bounded(checked(parse_int, x), 1) for x in v]
    if any(b <= a for a, b in zip(out, out[1:])):
        raise Invalid(f"epochs must be increasing, got {out}")
    return out


def arch(v, cwd):
    from models import list_models       # the registry; imported only when checked
    names = list(list_models())
    return _enum_check(names, "model")(v, cwd)


def init(v, cwd):
    if isinstance(v, dict):
        for key in v:
            if key not in ("best_of", "match"):
                raise Invalid(unknown_message(str(key), ("best_of", "match")), f".{key}")
        best = v.get("best_of")
        if not isinstance(best, str) or not best:
            raise Invalid(f"expected the name of an earlier stage, got {best!r}", ".best_of")
        match = v.get("match") or []
        if not isinstance(match, (list, tuple)):
            raise Invalid(f"expected a list of dotted keys, e.g. [quant.scheme], got {match!r}", ".match")
        from sweep.config.keys import trial_names     # the key table is built from the schema
        trial_names = trial_names()
        for i, key in enumerate(match):
            if key not in trial_names:
                raise Invalid(unknown_message(str(key), trial_names), f".match[{i}]")
        return {"best_of": best, "match": list(match)}
    text = v.strip() if isinstance(v, str) else v
    if isinstance(text, str) and text.startswith(("runs:/", "models:/")):
        if re.match(r"^runs:/[^/]+(/.+)?$", text) or re.match(r"^models:/[^/@]+(@[^/@]+|/\d+)$", text):
            return text
        raise Invalid(f"{text!r}: write runs:/<run_id>[/<artifact path>], "
                      "models:/<name>@<alias> or models:/<name>/<version>")
    if isinstance(text, str) and is_uri(text):
        raise Invalid(f"{text!r}: train.init takes a checkpoint path, runs:/..., models:/..., "
                      "or {best_of: <stage>}")
    if isinstance(text, (str, os.PathLike)):
        return local_path(text, cwd)
    raise Invalid(f"expected a checkpoint path, runs:/..., models:/..., or {{best_of: <stage>}}, got {v!r}")


def scheduler(v, cwd):
    v = {"type": v} if isinstance(v, str) else v
    if not isinstance(v, dict):
        raise Invalid(f"expected {{type: asha, grace_period: 10, reduction_factor: 3}} or {{type: fifo}}, got {v!r}")
    kind = _enum_check(("asha", "fifo"), "scheduler type")(v.get("type"), cwd) if "type" in v else None
    if kind is None:
        raise Invalid("needs type: asha or fifo", ".type")
    allowed = ("type", "grace_period", "reduction_factor") if kind == "asha" else ("type",)
    for key in v:
        if key not in allowed:
            msg = (f"only type: asha takes {key}" if key in ("grace_period", "reduction_factor")
                   else unknown_message(str(key), allowed))
            raise Invalid(msg, f".{key}")
    if kind == "fifo":
        return {"type": "fifo", "grace_period": None, "reduction_factor": None}
    try:
        grace = _bounded(checked(parse_int, v.get("grace_period", 1)), 1)      # epochs
    except Invalid as exc:
        raise Invalid(exc.message, ".grace_period") from None
    try:
        factor = _bounded(checked(parse_number, v.get("reduction_factor", 4)), 1, lo_open=True)
    except Invalid as exc:
        raise Invalid(exc.message, ".reduction_factor") from None
    return {"type": "asha", "grace_period": grace, "reduction_factor": factor}


def variants(v, cwd):
    if v is None:
        return None
    if not isinstance(v, (list, tuple)):
        raise Invalid(f"expected a list of arms, each a mapping of dotted keys "
                      f"(- {{quant.scheme: apot}}), got {v!r}")
    if not v:
        raise Invalid("an empty list has no arms: give at least one, or remove search.variants")
    from sweep.config.keys import TRIAL_SECTIONS, check_leaf, leaves
    arms = []
    for i, arm in enumerate(v):
        if not isinstance(arm, dict) or not arm:
            raise Invalid(f"an arm is a non-empty mapping of dotted keys, e.g. {{quant.scheme: apot}}; "
                          f"got {arm!r}", f"[{i}]")
        try:
            pairs = leaves(arm, TRIAL_SECTIONS)
        except Invalid as exc:
            raise Invalid(exc.message, join_key(f"[{i}]", exc.sub)) from None
        checked = {}
        for key, value in pairs:
            try:
                checked[key] = check_leaf(key, value, cwd)
            except Invalid as exc:
                raise Invalid(exc.message, f"[{i}].{key}{exc.sub}") from None
        arms.append(checked)
    return arms


def uri(v, cwd):
    if not isinstance(v, str) or not v.strip():
        raise Invalid(f"expected an MLflow tracking URI or path, got {v!r}")
    return v.strip() if is_uri(v.strip()) else local_path(v, cwd)


def device(v, cwd):
    if isinstance(v, str) and re.match(r"^(auto|cpu|cuda|cuda:\d+)$", v):
        return v
    raise Invalid(f"unknown device {v!r}; expected auto, cpu, cuda or cuda:N")
