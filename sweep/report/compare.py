"""Published results to compare a sweep with: the rows of a ``--compare-to`` file and
how they pair with the report's rows.

A file is a YAML list of rows ``{model, dataset, w_bits, a_bits, scheme, z?, accuracy,
split: test|train, source}`` (``search_spaces/published/``). Names match loosely
(``ResNet-20`` is ``resnet20``); a 32-bit row matches whatever the scheme, and is the
*baseline* of the rows with the same model, dataset, source and split: drop = baseline −
accuracy. Our numbers are always test-set numbers (``Trial.reported``), so a published
``train`` row is paired for display but never subtracted (``Comparison.split_mismatch``).
"""
from __future__ import annotations

import dataclasses
import math

import yaml

from sweep import labels
from sweep.metrics import best_of
from sweep.report.results import ReportError, Row, Stat, norm_name as _norm

__all__ = ["Comparison", "Published", "compare", "differences", "load_published"]


@dataclasses.dataclass(frozen=True)
class Published:
    """One row of a --compare-to file."""
    model: str
    dataset: str
    w_bits: float
    a_bits: float
    scheme: str
    z: float | None
    accuracy: float
    split: str                  # test | train
    source: str

    @property
    def full_precision(self) -> bool:
        return labels.is_full_precision(self.w_bits, self.a_bits)

    @property
    def bits_label(self) -> str:
        return labels.bits_label(self.w_bits, self.a_bits)     # FP32, W4A4


_REQUIRED = ("model", "dataset", "w_bits", "a_bits", "scheme", "accuracy", "split", "source")
_OPTIONAL = ("z",)


def load_published(path: str) -> list[Published]:
    """The rows of a --compare-to YAML file; ReportError naming the file, the row and
    the key on anything wrong."""
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except OSError as exc:
        raise ReportError(f"--compare-to {path}: cannot read it ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        raise ReportError(f"--compare-to {path}: not valid YAML ({exc})") from None
    if isinstance(data, dict) and isinstance(data.get("rows"), list):
        data = data["rows"]
    if not isinstance(data, list) or not data:
        raise ReportError(f"--compare-to {path}: expected a list of rows "
                          f"{{{', '.join(_REQUIRED)}, z?}}")
    out = []
    for i, item in enumerate(data):
        where = f"--compare-to {path}: row {i}"
        if not isinstance(item, dict):
            raise ReportError(f"{where}: expected a mapping, got {item!r}")
        missing = [k for k in _REQUIRED if k not in item]
        if missing:
            raise ReportError(f"{where}: missing {', '.join(missing)}")
        unknown = sorted(set(item) - set(_REQUIRED) - set(_OPTIONAL))
        if unknown:
            raise ReportError(f"{where}: unknown key {', '.join(unknown)} "
                              f"(valid: {', '.join(_REQUIRED + _OPTIONAL)})")
        values = {}
        for key in ("w_bits", "a_bits", "accuracy", "z"):
            value = item.get(key)
            if value is None and key == "z":
                values[key] = None
                continue
            try:
                values[key] = float(value)
            except (TypeError, ValueError):
                raise ReportError(f"{where}: {key} = {value!r} is not a number") from None
        split = str(item["split"]).lower()
        if split not in ("test", "train"):
            raise ReportError(f"{where}: split = {item['split']!r}; write test or train")
        out.append(Published(str(item["model"]), str(item["dataset"]), values["w_bits"],
                             values["a_bits"], str(item["scheme"]).lower(), values["z"],
                             values["accuracy"], split, str(item["source"])))
    return out


def _matches(row: Row, pub: Published) -> bool:
    if _norm(row.model) != _norm(pub.model) or _norm(row.dataset) != _norm(pub.dataset):
        return False
    w, a = row.bits
    if w is None or a is None or not (math.isclose(w, pub.w_bits) and math.isclose(a, pub.a_bits)):
        return False
    if pub.full_precision:                  # the scheme of a 32-bit row means nothing
        return True
    if str(row.scheme).lower() != pub.scheme:
        return False
    if pub.z is None:
        return row.z is None
    return isinstance(row.z, (int, float)) and math.isclose(row.z, pub.z)


@dataclasses.dataclass
class Comparison:
    row: Row
    pub: Published
    pub_baseline: Published | None
    our_baseline: Row | None

    @property
    def split_mismatch(self) -> bool:
        return self.pub.split != "test"       # ours is always a test-set number

    @property
    def ours(self) -> Stat | None:
        return self.row.reported

    @property
    def difference(self) -> float | None:
        if self.split_mismatch or self.ours is None:
            return None
        return self.ours.mean - self.pub.accuracy

    @property
    def pub_drop(self) -> float | None:
        return None if self.pub_baseline is None else self.pub_baseline.accuracy - self.pub.accuracy

    @property
    def our_baseline_acc(self) -> float | None:
        b = self.our_baseline.reported if self.our_baseline is not None else None
        return None if b is None else b.mean

    @property
    def our_drop(self) -> float | None:
        if self.our_baseline_acc is None or self.ours is None:
            return None
        return self.our_baseline_acc - self.ours.mean


def compare(rows: list[Row], published: list[Published],
            baseline_rows: list[Row] | None = None) -> tuple[list[Comparison], list[Published]]:
    """(one Comparison per published row that some row matches, published rows that match
    no row). A published row is paired with the *best* matching row (by reported test
    accuracy; the first in table order on ties), so each published figure appears once
    however many configurations of its model, bits, scheme and Z were tried. A published
    row's baseline is the 32-bit row of its model, dataset, source and split; ours is the
    best full-precision row (by reported accuracy) of the same model and dataset among
    ``baseline_rows`` (default ``rows``), from any stage."""
    pool = baseline_rows if baseline_rows is not None else rows

    def our_baseline(row: Row) -> Row | None:
        fp = [r for r in pool if r.full_precision and r.reported is not None
              and _norm(r.model) == _norm(row.model) and _norm(r.dataset) == _norm(row.dataset)]
        return best_of(fp, lambda r: r.reported.mean, "max")

    def pub_baseline(pub: Published) -> Published | None:
        return next((p for p in published if p.full_precision and p.source == pub.source
                     and p.split == pub.split and _norm(p.model) == _norm(pub.model)
                     and _norm(p.dataset) == _norm(pub.dataset)), None)

    out, unmatched = [], []
    for pub in published:
        matching = [r for r in rows if _matches(r, pub)]
        if not matching:
            unmatched.append(pub)
            continue
        row = best_of(matching, lambda r: r.reported.mean if r.reported else None, "max",
                      default=matching[0])
        out.append(Comparison(row, pub, pub_baseline(pub), our_baseline(row)))
    order = {id(r): i for i, r in enumerate(rows)}
    out.sort(key=lambda c: order[id(c.row)])
    return out, unmatched


def differences(rows: list[Row], published: list[Published]) -> list[str]:
    """Why published rows match none of ours: each field (model, dataset, bits, scheme,
    Z) on which the two sides share no value, with both sides' values."""
    def values(items, get):
        return {get(x) for x in items if get(x) not in (None, "")}

    fields = [
        ("model", lambda r: r.model, lambda p: p.model, _norm),
        ("dataset", lambda r: r.dataset, lambda p: p.dataset, _norm),
        ("bits", lambda r: r.bits_label, lambda p: p.bits_label, str),
        ("scheme", lambda r: None if r.full_precision else r.scheme,
         lambda p: None if p.full_precision else p.scheme, lambda x: str(x).lower()),
        ("Z", lambda r: r.z, lambda p: p.z, lambda x: float(x)),
    ]
    out = []
    for name, ours_of, theirs_of, norm in fields:
        ours, theirs = values(rows, ours_of), values(published, theirs_of)
        if ours and theirs and not ({norm(x) for x in ours} & {norm(x) for x in theirs}):
            fmt = lambda xs: ", ".join(sorted(map(str, xs)))
            hint = (" (set data.name to say what a dataset file holds, e.g. "
                    "data.name: cifar10)" if name == "dataset" else "")
            out.append(f"{name}: published {fmt(theirs)}, ours {fmt(ours)}{hint}")
    return out
