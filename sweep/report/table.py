"""The paper-style results table of a sweep as Markdown (and CSV): one row per
configuration of each stage (trials that differ only in ``train.seed`` are aggregated:
mean ± sample std over the seeds, and how many), with the accuracy at the epoch the
stage's search metric chose, the last epoch's accuracy, the epochs run and how the
trials ended; failed runs are listed under the table, and a comparison with published
numbers (with each row's drop from its full-precision baseline) can follow.
"""
from __future__ import annotations

import csv
import dataclasses
import os
from typing import Any, Iterable

from sweep.report.compare import differences, Comparison, Published
from sweep.report.results import (ACC_KEY, COST_KEYS, ExperimentResults, Row, Stat, Trial,
                                  norm_name as _norm)

__all__ = ["markdown_report", "write_csv", "write_compare_csv", "compare_csv_path"]

DASH = "—"
MISMATCH = "†"                 # a published number measured on another split


# ----------------------------------------------------------------------- formatting

def _num(x: Any) -> str:
    """0.04 -> '0.04', 1e-4 -> '0.0001', 5e-5 -> '5e-05', 2.0 -> '2', None -> '—'."""
    if x is None:
        return DASH
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return str(x)
    return f"{x:g}"


def _pct(x: float | None) -> str:
    return DASH if x is None else f"{x:.2f}"


def _stat(s: Stat | None) -> str:
    if s is None:
        return DASH
    return f"{s.mean:.2f}" if s.std is None else f"{s.mean:.2f} ± {s.std:.2f}"


def cost_cells(row: Row) -> list[str]:
    """Average bits (w / a), weight size in KiB, BOPs in G: ``quant.cost`` as logged."""
    c = row.cost
    if not c:
        return [DASH, DASH, DASH]
    bits = (f"{c['avg_w_bits']:.2f} / {c['avg_a_bits']:.2f}"
            if "avg_w_bits" in c and "avg_a_bits" in c else DASH)
    size = f"{c['weight_size_bytes'] / 1024:.1f}" if "weight_size_bytes" in c else DASH
    bops = f"{c['bops'] / 1e9:.3f}" if "bops" in c else DASH
    return [bits, size, bops]


COST_HEADERS = ["avg bits w / a", "weight size KiB", "GBOPs"]


def _list(values: Iterable) -> str:
    vals = [DASH if v is None else str(v) for v in values]
    return vals[0] if len(set(vals)) == 1 else ", ".join(vals)


def scheme_label(row: Row) -> str:
    """The weight scheme, plus the activation scheme when it is not the default one
    (``quant.levels.default_act_scheme``: the weight scheme, apot for ngrid)."""
    scheme, act = row.scheme, row.get("quant.act_scheme")
    if row.full_precision:
        return DASH
    default = "apot" if scheme == "ngrid" else scheme   # without importing quant (torch)
    return f"{scheme} (act {act})" if act and act != default else str(scheme)


def z_label(row: Row) -> str:
    return _num(row.z) if row.z is not None else DASH


def status_label(row: Row) -> str:
    n, stopped = len(row.trials), row.n_stopped
    if stopped == 0:
        text = "finished"
    elif stopped == n:
        text = "stopped early"
    else:
        text = f"{n - stopped} finished, {stopped} stopped early"
    if row.failed:
        text += f"; {len(row.failed)} failed (below)"
    return text


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _md_table(headers: list[str], lines: list[list[str]]) -> str:
    out = ["| " + " | ".join(_cell(h) for h in headers) + " |",
           "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(_cell(c) for c in line) + " |" for line in lines]
    return "\n".join(out)


# ---------------------------------------------------------------------- the table

_SHOWN = {"model.arch", "data.dataset", "data.name", "quant.w_bits", "quant.a_bits", "quant.scheme",
          "quant.act_scheme", "quant.z", "train.lr", "train.weight_decay"}


def _other_settings(rows: list[Row]) -> dict[int, str]:
    """For each row, the config keys that differ between rows of the table and have no
    column of their own (``train.init*`` left out: the stage column says it); a key that
    does not apply to a row (not among its parameters) is left out of that row."""
    keys = {k for r in rows for k in r.first.params}
    varying = sorted(
        k for k in keys
        if k not in _SHOWN and not k.startswith(("quant.layers.", "train.init"))
        and k not in ("train.seed", "data.root", "train.device")
        and len({repr(r.get(k)) for r in rows}) > 1)
    return {id(r): ", ".join(f"{k}={_num(r.get(k))}" for k in varying if r.get(k) is not None)
            for r in rows}


@dataclasses.dataclass
class Columns:
    """Headers that name the split and the epoch choice of every accuracy."""
    acc: str            # what val_acc measures, as the header calls it
    metric: str         # the search metric that chose the epoch
    mixed_split: bool   # rows differ in split: a column says which
    with_test: bool     # some rows have a validation split: a test-at-best column

    @classmethod
    def of(cls, rows: list[Row]) -> "Columns":
        splits = {r.split for r in rows}
        metrics = {r.metric for r in rows}
        acc = {frozenset({"test"}): "test acc", frozenset({"val"}): "val acc"}.get(
            frozenset(splits), "val_acc")
        metric = metrics.pop() if len(metrics) == 1 else "search metric"
        return cls(acc, metric, len(splits) > 1, "val" in splits)

    @property
    def best(self) -> str:
        if self.metric == ACC_KEY:
            return f"best {self.acc} % (epoch)"
        return f"{self.acc} % at best {self.metric} (epoch)"

    @property
    def test(self) -> str:
        return f"test acc % at best-{'val' if self.metric == ACC_KEY else self.metric} epoch"

    @property
    def last(self) -> str:
        return f"last {self.acc} %"


def table_lines(rows: list[Row]) -> tuple[list[str], list[list[str]]]:
    cols = Columns.of(rows)
    other = _other_settings(rows)
    headers = ["stage", "model", "dataset", "bits", "scheme", "Z", "lr", "weight decay"]
    if any(other.values()):
        headers.append("other settings")
    headers += ["seeds (n)"]
    if cols.mixed_split:
        headers.append("val_acc on")
    headers.append(cols.best)
    if cols.with_test:
        headers.append(cols.test)
    with_cost = any(r.cost for r in rows)
    if with_cost:
        headers += COST_HEADERS
    headers += [cols.last, "epochs run", "status"]
    lines = []
    for r in rows:
        line = [r.stage, _num(r.model), _num(r.dataset), r.bits_label, scheme_label(r),
                z_label(r), _num(r.lr), _num(r.weight_decay)]
        if any(other.values()):
            line.append(other[id(r)] or DASH)
        line.append(f"{', '.join(_num(s) for s in r.seeds)} ({len(r.trials)})")
        if cols.mixed_split:
            line.append(_split_words(r))
        best = _stat(r.best)
        if r.best is not None:
            best += f" ({', '.join(_num(e) for e in r.best_epochs)})"
        line.append(best)
        if cols.with_test:
            line.append(_stat(r.test_at_best) if r.split == "val" else DASH)
        if with_cost:
            line += cost_cells(r)
        line += [_stat(r.last), _list(r.epochs_run), status_label(r)]
        lines.append(line)
    return headers, lines


def _split_words(row: Row) -> str:
    if row.split == "val":
        return f"val ({_num(100 * row.get('data.val_fraction'))}% of train)"
    return "test"


def table_notes(rows: list[Row], results: ExperimentResults) -> list[str]:
    cols = Columns.of(rows)
    notes = ["Accuracies in %: mean ± sample std over the seeds counted in *seeds (n)* "
             "(no ± for one seed); epochs in parentheses are each seed's chosen epoch, "
             "counted from 1."]
    stages = dict.fromkeys(r.stage for r in rows)
    choice = "; ".join(f"{s}: {results.search_metric(s)[0]} ({results.search_metric(s)[1]})"
                       for s in stages)
    notes.append(f"Epoch choice: the best epoch of each stage's search metric ({choice}).")
    if any(r.split == "test" for r in rows):
        notes.append("Without a validation split (data.val_fraction = 0), `val_acc` is scored "
                     "on the test set, so the best epoch is picked on test data, as the "
                     "published CIFAR tables do.")
    if cols.with_test:
        notes.append("With a validation split, *" + cols.test + "* is the test accuracy at "
                     "the epoch validation chose: the number to quote.")
    if any(r.mixed for r in rows):
        notes.append("Mixed precision (quant.layers): MIXED(w..,a..) gives the average weight and "
                     "activation bits over the quantized layers (weighted by parameters and by "
                     "input elements when the run logged avg_w_bits/avg_a_bits, else the plain "
                     "mean over the layers of its bits.json; MIXED alone: neither was logged).")
    if any(r.cost for r in rows):
        notes.append("*avg bits w / a*: over the block and shortcut convs, weight bits weighted by "
                     "parameter count, activation bits by input elements per image (first and last "
                     "layer not counted); *weight size*: every weight at its bits, the first and "
                     "last layer at quant.first_last_bits, batch-norm and biases at 32 bits; "
                     "*GBOPs*: MACs x weight bits x input bits per image, summed over all layers, "
                     "in 10^9.")
    return notes


def failed_section(trials: list[Trial]) -> str:
    bad = [t for t in trials if t.status in ("FAILED", "KILLED")]
    if not bad:
        return ""
    headers = ["stage", "trial", "run id", "model", "bits", "scheme", "Z", "lr",
               "weight decay", "seed", "status", "reason", "epochs logged", "last val_acc %"]
    lines = []
    for t in sorted(bad, key=lambda t: (t.stage, t.trial_id)):
        r = Row([t], [])
        lines.append([t.stage, t.trial_id, t.run_id, _num(r.model), r.bits_label,
                      scheme_label(r), z_label(r), _num(r.lr), _num(r.weight_decay),
                      _num(t.seed), t.status, _reason(t), str(t.epochs_run), _pct(t.last_acc)])
    return f"**Failed runs** ({len(bad)}, not in the table above):\n\n" + _md_table(headers, lines)


def _reason(t: Trial) -> str:
    if t.failure:
        return t.failure
    if t.error:
        last = [l.strip() for l in t.error.strip().splitlines() if l.strip()]
        text = last[-1] if last else t.error
        return text if len(text) <= 100 else text[:97] + "..."
    return "ended " + t.status


def _signed(x: float | None) -> str:
    return DASH if x is None else f"{x:+.2f}"


def compare_section(comps: list[Comparison], unmatched: list[Published], rows: list[Row],
                    path: str) -> str:
    title = f"### Compared with published results ({os.path.basename(path)})"
    if not comps:
        why = "; ".join(differences(rows, unmatched))
        return (f"{title}\n\nNo published row matches a configuration of this table"
                + (f": {why}." if why else "."))
    headers = ["stage", "model", "dataset", "bits", "scheme", "Z", "source",
               "published split", "published baseline %", "published accuracy %",
               "published drop", "our baseline % (FP32, test)", "our test acc %",
               "our drop", "Δ accuracy (ours − published)"]
    lines = []
    for c in comps:
        m = MISMATCH if c.split_mismatch else ""
        pb = c.pub_baseline
        lines.append([
            c.row.stage, _num(c.row.model), _num(c.row.dataset), c.row.bits_label,
            scheme_label(c.row), z_label(c.row), c.pub.source, c.pub.split + m,
            (_pct(pb.accuracy) + m) if pb else DASH, _pct(c.pub.accuracy) + m,
            (_pct(c.pub_drop) + m) if c.pub_drop is not None else DASH,
            _pct(c.our_baseline_acc), _stat(c.ours) + f" (n={len(c.row.trials)}"
            + (", stopped early)" if c.row.n_stopped else ")"),
            _pct(c.our_drop), _signed(c.difference) if not m else f"not compared {MISMATCH}"])
    notes = ["One line per published row, paired with our best configuration (by test "
             "accuracy) of that model, dataset, bits, scheme and Z; the others are in the "
             "table above. "
             "*our test acc*: test-set accuracy at the epoch the stage's search metric chose "
             "(the best test epoch when there is no validation split, as the published CIFAR "
             "tables; else the epoch validation chose), mean ± std over n seeds. "
             "*our baseline*: the best full-precision configuration of the same model and "
             "dataset in this experiment. drop = baseline − accuracy; Δ = ours − published."]
    if any(c.split_mismatch for c in comps):
        notes.append(f"{MISMATCH} The published figure is *training*-set accuracy (the APoT "
                     "MNIST tables, for one, score the 60,000 training digits); ours is "
                     "test-set accuracy: shown side by side, not compared.")
    near = {(_norm(r.model), _norm(r.dataset)) for r in rows}
    relevant = [p for p in unmatched if (_norm(p.model), _norm(p.dataset)) in near]
    if relevant:
        listed = "; ".join(f"{p.model} {p.dataset} {p.bits_label} {p.scheme}"
                           f"{f' Z={_num(p.z)}' if p.z is not None else ''} ({p.source})"
                           for p in relevant)
        notes.append(f"Published rows of these models with no run here: {listed}.")
    return "\n\n".join([title, _md_table(headers, lines)] + notes)


# ---------------------------------------------------------------------------- CSV

CSV_FIELDS = ["stage", "model", "dataset", "w_bits", "a_bits", "mixed", "scheme", "act_scheme",
              "z", "lr", "weight_decay", "seeds", "n_seeds", "val_acc_split", "metric", "mode",
              "best_acc_mean", "best_acc_std", "best_epochs", "test_acc_at_best_mean",
              "test_acc_at_best_std", "last_acc_mean", "last_acc_std", "epochs_run",
              *COST_KEYS, "n_stopped_early", "n_failed", "status", "run_ids"]


def _csv_num(x: Any) -> Any:
    return "" if x is None else x


def csv_record(r: Row) -> dict[str, Any]:
    w, a = r.bits
    best, test, last = r.best, r.test_at_best, r.last
    return {
        "stage": r.stage, "model": r.model, "dataset": r.dataset, "w_bits": _csv_num(w),
        "a_bits": _csv_num(a), "mixed": r.mixed, "scheme": r.scheme,
        "act_scheme": _csv_num(r.get("quant.act_scheme")), "z": _csv_num(r.z),
        "lr": _csv_num(r.lr), "weight_decay": _csv_num(r.weight_decay),
        "seeds": " ".join(_num(s) for s in r.seeds), "n_seeds": len(r.trials),
        "val_acc_split": r.split, "metric": r.metric, "mode": r.mode,
        "best_acc_mean": _csv_num(best and best.mean), "best_acc_std": _csv_num(best and best.std),
        "best_epochs": " ".join(_num(e) for e in r.best_epochs),
        "test_acc_at_best_mean": _csv_num(test and test.mean),
        "test_acc_at_best_std": _csv_num(test and test.std),
        "last_acc_mean": _csv_num(last and last.mean), "last_acc_std": _csv_num(last and last.std),
        "epochs_run": " ".join(str(e) for e in r.epochs_run),
        **{k: _csv_num((r.cost or {}).get(k)) for k in COST_KEYS},
        "n_stopped_early": r.n_stopped, "n_failed": len(r.failed), "status": status_label(r),
        "run_ids": " ".join(t.run_id for t in r.trials)}


def write_csv(path: str, rows: list[Row]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, CSV_FIELDS)
        w.writeheader()
        w.writerows(csv_record(r) for r in rows)


COMPARE_FIELDS = ["stage", "model", "dataset", "w_bits", "a_bits", "scheme", "z", "source",
                  "published_split", "split_mismatch", "published_baseline",
                  "published_accuracy", "published_drop", "our_baseline", "our_accuracy_mean",
                  "our_accuracy_std", "n_seeds", "our_drop", "difference"]


def write_compare_csv(path: str, comps: list[Comparison]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, COMPARE_FIELDS)
        w.writeheader()
        for c in comps:
            bw, ba = c.row.bits
            w.writerow({
                "stage": c.row.stage, "model": c.row.model, "dataset": c.row.dataset,
                "w_bits": _csv_num(bw), "a_bits": _csv_num(ba), "scheme": c.row.scheme,
                "z": _csv_num(c.row.z), "source": c.pub.source, "published_split": c.pub.split,
                "split_mismatch": c.split_mismatch,
                "published_baseline": _csv_num(c.pub_baseline and c.pub_baseline.accuracy),
                "published_accuracy": c.pub.accuracy, "published_drop": _csv_num(c.pub_drop),
                "our_baseline": _csv_num(c.our_baseline_acc),
                "our_accuracy_mean": _csv_num(c.ours and c.ours.mean),
                "our_accuracy_std": _csv_num(c.ours and c.ours.std),
                "n_seeds": len(c.row.trials), "our_drop": _csv_num(c.our_drop),
                "difference": _csv_num(c.difference)})


def compare_csv_path(path: str) -> str:
    stem, ext = os.path.splitext(path)
    return f"{stem}_compare{ext or '.csv'}"


# ------------------------------------------------------------------------ report

def markdown_report(results: ExperimentResults, rows: list[Row], trials: list[Trial],
                    comparison: tuple[list[Comparison], list[Published], str] | None = None
                    ) -> str:
    name = results.experiment.name
    parts = [f"## {name}: results"]
    if rows:
        headers, lines = table_lines(rows)
        parts.append(_md_table(headers, lines))
        parts.append("\n".join(f"- {n}" for n in table_notes(rows, results)))
    failed = failed_section(trials)
    if failed:
        parts.append(failed)
    running = [t for t in trials if t.status == "RUNNING"]
    if running:
        parts.append(f"Still RUNNING ({len(running)}, not in the table): "
                     + ", ".join(f"{t.stage}/{t.trial_id}" for t in running))
    if comparison is not None:
        comps, unmatched, path = comparison
        parts.append(compare_section(comps, unmatched, rows, path))
    return "\n\n".join(parts) + "\n"
