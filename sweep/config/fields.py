"""Every dotted key of a search-space file with its default and the check of one value
(``FIELDS``), and the walk that turns a nested mapping into checked leaves.
``sweep.config`` builds the typed tree and the experiment from these; a distribution's
values (or bounds) are checked as if each were the plain value.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import re
from typing import Any, Callable

from quant.levels import check_act, check_scheme, check_weight, check_z
from sweep.config.space import (RandInt, SpaceError, _Finite, has_distributions, is_distribution,
                         parse_distribution, parse_int, parse_number)

# Every dotted key with its default and the check of one plain value. A check returns the
# value normalised (numbers parsed, paths made absolute) or raises Invalid.

TOP_SECTIONS = ("data", "model", "quant", "train", "search", "resources", "tracking")
TRIAL_SECTIONS = ("data", "model", "quant", "train")      # searchable; what a trial reads
STAGE_TOPS = TRIAL_SECTIONS + ("search", "resources")     # what a stage's `set` may change
DATASETS = ("cifar10", "cifar100", "mnist", "npz", "imagefolder", "synthetic")
METRICS = ("val_acc", "val_loss", "test_acc", "test_loss", "train_acc", "train_loss")
LAYER_KEYS = ("w_bits", "a_bits", "scheme")
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
_GLOB_RE = re.compile(r"^[A-Za-z0-9_.*?\[\]!-]+$")
_URI_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
# Names people write for a key, to suggest the real one.
_ALIASES = {"learning_rate": "lr", "wd": "weight_decay", "bits": "w_bits", "weight_bits": "w_bits",
            "wbits": "w_bits", "act_bits": "a_bits", "abits": "a_bits", "activation_bits": "a_bits",
            "bs": "batch_size", "num_epochs": "epochs", "n_epochs": "epochs", "lr_schedule": "schedule",
            "dataset_path": "path", "file": "path", "model": "arch", "samples": "num_samples"}


class Invalid(Exception):
    """A bad value; ``sub`` is the key path below the checked key (``.type``, ``[2].quant.z``)."""

    def __init__(self, message: str, sub: str = ""):
        super().__init__(message, sub)
        self.message, self.sub = message, sub


def join_key(prefix: str, sub: str) -> str:
    if not prefix or not sub:
        return (prefix or sub).lstrip(".")
    return prefix + sub if sub[0] in ".[" else f"{prefix}.{sub}"


def _call(fn, *args):
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
    default: Any
    check: Callable[[Any, str | None], Any]   # (value, cwd) -> normalised value
    kind: str = "any"                         # int | float | any: which distributions fit
    null: bool = False                        # None allowed

    def __call__(self, value, cwd=None):
        return None if value is None and self.null else self.check(value, cwd)


def _int(default, lo=None, hi=None, null=False):
    return Field(default, lambda v, cwd: _bounded(_call(parse_int, v), lo, hi), "int", null)


def _float(default, lo=None, hi=None, lo_open=False, hi_open=False, null=False, keep_int=False):
    def check(v, cwd):
        n = _call(parse_number, v)
        return _bounded(n if keep_int else float(n), lo, hi, lo_open, hi_open)
    return Field(default, check, "float", null)


def _enum_check(names, what="value"):
    def check(v, cwd):
        if isinstance(v, str) and v in names:
            return v
        guess = difflib.get_close_matches(str(v), names, 1, 0.6)
        hint = f"did you mean {guess[0]}? " if guess else ""
        raise Invalid(f"unknown {what} {v!r}; {hint}expected one of: {', '.join(names)}")
    return check


def _enum(default, names, null=False, what="value"):
    return Field(default, _enum_check(names, what), "any", null)


def _bool(default, null=False):
    def check(v, cwd):
        if isinstance(v, bool):
            return v
        raise Invalid(f"expected true or false, got {v!r}")
    return Field(default, check, "any", null)


def _bool_or_auto(v, cwd):
    if isinstance(v, bool) or v == "auto":
        return v
    raise Invalid(f"expected true, false or auto, got {v!r}")


def _path(v, cwd):
    if isinstance(v, os.PathLike):
        v = os.fspath(v)
    if not isinstance(v, str) or not v.strip():
        raise Invalid(f"expected a path, got {v!r}")
    v = os.path.expanduser(v.strip())
    return os.path.normpath(os.path.join(cwd, v)) if cwd and not os.path.isabs(v) else v


def is_uri(text: str) -> bool:
    """``runs:/``, ``models:/``, ``sqlite:///``...: not a local path (one-letter schemes
    are Windows drives)."""
    m = _URI_RE.match(text)
    return bool(m) and len(m.group(0)) > 2


def check_name(v, what: str) -> str:
    if not isinstance(v, str) or not _NAME_RE.match(v) or set(v) == {"."}:
        raise Invalid(f"{what} may use letters, digits, '-', '_' and '.' only; got {v!r}")
    return v


def _floats(positive):
    def check(v, cwd):
        if not isinstance(v, (list, tuple)) or not v:
            raise Invalid(f"expected a list of numbers (one per channel), got {v!r}")
        return [_bounded(float(_call(parse_number, x)), 0 if positive else None, lo_open=True) for x in v]
    return check


def _milestones(v, cwd):
    if not isinstance(v, (list, tuple)):
        raise Invalid(f"expected a list of epochs, e.g. [150, 225], got {v!r}")
    out = [_bounded(_call(parse_int, x), 1) for x in v]
    if any(b <= a for a, b in zip(out, out[1:])):
        raise Invalid(f"epochs must be increasing, got {out}")
    return out


def _arch(v, cwd):
    from models import list_models       # the registry; imported only when checked
    names = list(list_models())
    return _enum_check(names, "model")(v, cwd)


def _layers(v, cwd):
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise Invalid("expected a mapping of layer globs to {w_bits, a_bits, scheme}, "
                      f"e.g. {{'layer2.*': {{w_bits: 3}}}}; got {v!r}")
    out = {}
    for pattern, entry in v.items():
        sub = f".{pattern}"
        if not isinstance(pattern, str) or not _GLOB_RE.match(pattern):
            raise Invalid(f"{pattern!r} is not a layer glob: module names such as layer3.0.conv1, "
                          "with * ? [...] wildcards", sub)
        if not isinstance(entry, dict) or not entry:
            raise Invalid(f"expected a non-empty mapping with w_bits, a_bits and/or scheme, got {entry!r}", sub)
        out[pattern] = {}
        for key, value in entry.items():
            if key not in LAYER_KEYS:
                raise Invalid(_unknown_message(str(key), LAYER_KEYS), f"{sub}.{key}")
            try:
                out[pattern][key] = check_leaf(f"quant.{key}", value, cwd)
            except Invalid as exc:
                raise Invalid(exc.message, f"{sub}.{key}{exc.sub}") from None
    return out


def _init(v, cwd):
    if isinstance(v, dict):
        for key in v:
            if key not in ("best_of", "match"):
                raise Invalid(_unknown_message(str(key), ("best_of", "match")), f".{key}")
        best = v.get("best_of")
        if not isinstance(best, str) or not best:
            raise Invalid(f"expected the name of an earlier stage, got {best!r}", ".best_of")
        match = v.get("match") or []
        if not isinstance(match, (list, tuple)):
            raise Invalid(f"expected a list of dotted keys, e.g. [quant.scheme], got {match!r}", ".match")
        trial_names = [k for k in (*FIELDS, *SECTIONS) if k.split(".")[0] in TRIAL_SECTIONS]
        for i, key in enumerate(match):
            if key not in trial_names:
                raise Invalid(_unknown_message(str(key), trial_names), f".match[{i}]")
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
        return _path(text, cwd)
    raise Invalid(f"expected a checkpoint path, runs:/..., models:/..., or {{best_of: <stage>}}, got {v!r}")


def _scheduler(v, cwd):
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
                   else _unknown_message(str(key), allowed))
            raise Invalid(msg, f".{key}")
    if kind == "fifo":
        return {"type": "fifo", "grace_period": None, "reduction_factor": None}
    try:
        grace = _bounded(_call(parse_int, v.get("grace_period", 1)), 1)      # epochs
    except Invalid as exc:
        raise Invalid(exc.message, ".grace_period") from None
    try:
        factor = _bounded(_call(parse_number, v.get("reduction_factor", 4)), 1, lo_open=True)
    except Invalid as exc:
        raise Invalid(exc.message, ".reduction_factor") from None
    return {"type": "asha", "grace_period": grace, "reduction_factor": factor}


def _variants(v, cwd):
    if v is None:
        return None
    if not isinstance(v, (list, tuple)):
        raise Invalid(f"expected a list of arms, each a mapping of dotted keys "
                      f"(- {{quant.scheme: apot}}), got {v!r}")
    if not v:
        raise Invalid("an empty list has no arms: give at least one, or remove search.variants")
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


def _uri(v, cwd):
    if not isinstance(v, str) or not v.strip():
        raise Invalid(f"expected an MLflow tracking URI or path, got {v!r}")
    return v.strip() if is_uri(v.strip()) else _path(v, cwd)


def _device(v, cwd):
    if isinstance(v, str) and re.match(r"^(auto|cpu|cuda|cuda:\d+)$", v):
        return v
    raise Invalid(f"unknown device {v!r}; expected auto, cpu, cuda or cuda:N")


def _w_bits(v, cwd):
    n = _call(parse_int, v)
    _call(check_weight, n, "uniform")
    return n


def _a_bits(v, cwd):
    n = _call(parse_int, v)
    _call(check_act, n, "uniform")
    return n


def _first_last(v, cwd):
    n = _call(parse_int, v)
    if not (2 <= n <= 8 or n == 32):
        raise Invalid(f"first_last_bits={n} is not supported; the first conv and last linear "
                      "layer take 2 to 8 bits, or 32 (not quantized)")
    return n


FIELDS: dict[str, Field] = {
    "data.dataset": _enum("cifar10", DATASETS, what="dataset"),
    "data.root": Field("./data", _path),                 # torchvision datasets live/download here
    "data.path": Field(None, _path, null=True),          # the .npz file / the image folder
    "data.val_fraction": _float(0.0, 0, 1, hi_open=True),  # of train, held out for selection
    "data.split_seed": _int(0, 0),
    "data.mean": Field(None, _floats(False), null=True),   # None: the dataset's default
    "data.std": Field(None, _floats(True), null=True),
    "data.crop_pad": _int(None, 0, null=True),            # pixels; None: the dataset's default
    "data.flip": _bool(None, null=True),
    "data.synthetic.train_size": _int(2048, 1),            # images
    "data.synthetic.test_size": _int(512, 1),
    "data.synthetic.image_size": _int(32, 1),              # pixels per side
    "data.synthetic.channels": _int(3, 1),
    "data.synthetic.num_classes": _int(10, 2),
    "model.arch": Field("resnet20", _arch),
    "model.num_classes": _int(None, 1, null=True),         # None: from the dataset
    "model.in_channels": _int(None, 1, null=True),
    "quant.w_bits": Field(32, _w_bits, "int"),             # 2..5, 32 = full precision
    "quant.a_bits": Field(32, _a_bits, "int"),
    "quant.scheme": Field("apot", lambda v, cwd: _call(check_scheme, v)),
    "quant.act_scheme": Field(None, lambda v, cwd: (_call(check_act, 32, v), v)[1], null=True),
    "quant.family": _enum(None, ("cifar", "imagenet"), null=True, what="family"),
    "quant.z": Field(None, lambda v, cwd: _call(check_z, _call(parse_number, v)), "float", null=True),
    "quant.first_last_bits": Field(8, _first_last, "int"),
    "quant.layers": Field({}, _layers),
    "quant.budget": _float(None, 0, 32, lo_open=True, null=True),   # average bits per weight
    "train.epochs": _int(200, 1),
    "train.batch_size": _int(128, 1),
    "train.lr": _float(0.1, 0, lo_open=True),
    "train.momentum": _float(0.9, 0, 1, hi_open=True),
    "train.nesterov": _bool(False),
    "train.weight_decay": _float(1e-4, 0),
    "train.schedule": _enum("cosine", ("cosine", "step", "constant"), what="schedule"),
    "train.milestones": Field([150, 225], _milestones),      # epochs, for schedule: step
    "train.gamma": _float(0.1, 0, lo_open=True),            # lr factor at each milestone
    "train.warmup_epochs": _int(0, 0),
    "train.alpha_lr_act": _float(0.1, 0),                   # absolute lr of activation alphas (reference 0.1)
    "train.alpha_lr_weight": _float(0.02, 0),               # absolute lr of weight alphas (reference 0.02)
    "train.alpha_weight_decay": _float(1e-4, 0),
    "train.alpha_floor": _float(1e-3, 0),                   # thresholds kept >= this
    "train.seed": _int(0, 0),
    "train.init": Field(None, _init, null=True),
    "train.eval_before": _bool(False),
    "train.device": Field("auto", _device),
    "train.precision": _enum("fp32", ("fp32", "bf16"), what="precision"),
    "train.channels_last": _bool(False),
    "train.compile": Field("auto", _bool_or_auto, "any"),   # auto: on for CUDA, off on the CPU
    "search.algorithm": _enum("grid", ("grid", "random", "optuna"), what="algorithm"),
    "search.num_samples": _int(1, 1),
    "search.seed": _int(0, 0),
    "search.metric": _enum("val_acc", METRICS, what="metric"),
    "search.mode": _enum("max", ("max", "min"), what="mode"),
    "search.scheduler": Field({"type": "fifo"}, _scheduler),
    "search.max_concurrent": _int(None, 1, null=True),
    "search.variants": Field(None, _variants, null=True),
    "resources.cpus_per_trial": _float(1, 0, lo_open=True, keep_int=True),
    "resources.gpus_per_trial": _float(0, 0, keep_int=True),  # fractions pack trials on a GPU
    "tracking.mlflow_uri": Field(None, _uri, null=True),
}
SECTIONS = {key.rsplit(".", i)[0] for key in FIELDS for i in range(1, key.count(".") + 1)}


def _unknown_message(key: str, names) -> str:
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
                                              (full in FIELDS or full in SECTIONS)):
                raise Invalid(f"cannot be set here; only {', '.join(t + '.*' for t in tops)} keys can", full)
            if full in FIELDS:
                out.append((full, value))
            elif full in SECTIONS:
                if not isinstance(value, dict) and value is not None:
                    raise Invalid(f"is a section: expected a mapping of its keys, got {value!r}", full)
                out.extend(walk(value or {}, full))
            else:
                names = [n for n in (*FIELDS, *SECTIONS) if n.split(".")[0] in tops]
                raise Invalid(_unknown_message(full, names + (["name", "stages"] if not prefix else [])), full)
        return out
    return walk(mapping, "")


def check_leaf(key: str, value: Any, cwd: str | None = None) -> Any:
    """The checked, normalised value of one dotted key: a plain value, or a Distribution
    whose every value (or both bounds) passes the key's check."""
    field = FIELDS[key]
    if not is_distribution(value):
        return field(value, cwd)
    if key.split(".")[0] not in TRIAL_SECTIONS:
        raise Invalid("distributions are only allowed in data.*, model.*, quant.* and train.* "
                      "keys (and in search.variants)")
    dist = _call(parse_distribution, value)
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
