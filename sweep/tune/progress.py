"""The live table a sweep prints instead of Ray's output: one line per trial status
change or epoch result, each starting with the time since the table was made; an
epoch is shown as ``k/N``, with the epoch's seconds and, with a validation split, its
test accuracy after the columns.

    elapsed  trial        quant.w_bits  train.lr  status    epoch  val_acc   best
    0:12     8e1c2_00000  2             0.05      RUNNING       -        -      -
    0:31     8e1c2_00000  2             0.05      RUNNING     1/3    23.44  23.44  (17.9 s/epoch)
    0:49     8e1c2_00000  2             0.05      STOPPED     2/3    20.31  23.44  (ASHA)
    0:49     stage w2a2: 1 done, 1 running, 2 pending; ETA 2:23 (8 epoch(s) left at 17.9 s/epoch, 1 at a time)

The stage lines (``stage_line``) come after each trial that ends, whenever the table
has been quiet for ``HEARTBEAT_S`` and at least every ``STATUS_EVERY_S``: the trials
done, running and pending, and the time the epochs still due would take at the epoch
times measured so far.
"""
from __future__ import annotations

import math
import sys
import time
from typing import TextIO

from sweep.metrics import is_better

__all__ = ["ProgressTable", "fmt", "clock", "stage_line", "HEARTBEAT_S", "STATUS_EVERY_S"]

HEARTBEAT_S = 60.0          # a stage line after this long without any line
STATUS_EVERY_S = 300.0      # and after this long without a stage line


def fmt(value, width: int = 0) -> str:
    """A compact cell: floats with 4 significant digits (2 decimals for percentages)."""
    if value is None:
        text = "-"
    elif isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, float):
        if math.isnan(value):
            text = "nan"
        elif value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
            text = f"{value:.3g}"
        elif abs(value) >= 1:
            text = f"{value:.2f}".rstrip("0").rstrip(".") if value != int(value) else f"{value:g}"
        else:
            text = f"{value:.4g}"
    elif isinstance(value, (list, tuple, dict)):
        text = str(value).replace(" ", "")
    else:
        text = str(value)
    return text.rjust(width) if width else text


def clock(seconds: float) -> str:
    """``m:ss``, or ``h:mm:ss`` past an hour."""
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def stage_line(stage: str, done: int, running: int, pending: int, epochs_left: int,
               epoch_s: float | None, at_once: int, early_stop: bool = False,
               into_s: float = 0.0) -> str:
    """``stage w4a4: 1 done, 2 running, 1 pending; ETA 3:10 (...)``: the ETA is the
    ``epochs_left`` of the running and pending trials at ``epoch_s`` seconds an epoch
    (as measured), less the ``into_s`` seconds the running trials have spent on their
    current epochs, ``at_once`` trials at a time; an upper bound (``≤``) when a
    scheduler may stop trials early."""
    head = f"stage {stage}: {done} done, {running} running, {pending} pending"
    if not running and not pending:
        return head
    if epoch_s is None:
        return f"{head}; ETA once an epoch is measured"
    eta = max(epochs_left * epoch_s - into_s, 0.0) / max(at_once, 1)
    bound = "≤ " if early_stop else ""
    note = "; ASHA may stop trials sooner" if early_stop else ""
    return (f"{head}; ETA {bound}{clock(eta)} ({epochs_left} epoch(s) left at "
            f"{epoch_s:.1f} s/epoch, {max(at_once, 1)} at a time{note})")


class ProgressTable:
    """Prints rows to ``out``; ``params`` are the searched dotted keys shown as columns."""

    def __init__(self, metric: str, mode: str, params: list[str], out: TextIO | None = None):
        self.metric, self.mode, self.params = metric, mode, list(params)
        self.out = out or sys.stdout
        self.best: dict[str, float] = {}
        self.widths = [11] + [max(len(p), 6) for p in self.params] + [9, 7, max(len(metric), 7), 7]
        self.header_done = False
        self.t0 = self.printed = self.status_at = time.monotonic()

    def elapsed(self) -> str:
        """``m:ss`` (``h:mm:ss`` past an hour) since the table was made."""
        return clock(int(time.monotonic() - self.t0))

    def due(self, quiet_s: float = HEARTBEAT_S, every_s: float = STATUS_EVERY_S) -> bool:
        """True when the table has printed nothing for ``quiet_s``, or no stage line for
        ``every_s`` (then the time counts from now: True again only after as long)."""
        now = time.monotonic()
        if now - self.printed < quiet_s and now - self.status_at < every_s:
            return False
        self.printed = self.status_at = now
        return True

    def status(self, text: str) -> None:
        """A stage line (``stage_line``)."""
        self.line(text)
        self.status_at = self.printed

    def _emit(self, cells: list[str], note: str = "", clock: str | None = None) -> None:
        if not self.header_done:
            self.header_done = True
            self._emit(["trial", *self.params, "status", "epoch", self.metric, "best"],
                       clock="elapsed")
        parts = [(clock or self.elapsed()).ljust(7), cells[0].ljust(self.widths[0])]
        parts += [c.ljust(w) for c, w in zip(cells[1:1 + len(self.params)], self.widths[1:])]
        status, rest = cells[1 + len(self.params)], cells[2 + len(self.params):]
        parts.append(status.ljust(self.widths[1 + len(self.params)]))
        parts += [c.rjust(w) for c, w in zip(rest, self.widths[2 + len(self.params):])]
        line = "  ".join(parts).rstrip() + (f"  {note}" if note else "")
        print(line, file=self.out, flush=True)
        self.printed = time.monotonic()

    def _best(self, trial_id: str, value) -> float | None:
        if value is None or not isinstance(value, (int, float)) or math.isnan(value):
            return self.best.get(trial_id)
        old = self.best.get(trial_id)
        if is_better(value, old, self.mode):
            self.best[trial_id] = float(value)
        return self.best[trial_id]

    def row(self, trial_id: str, values: dict, status: str, epoch=None, metric=None,
            note: str = "", epochs: int | None = None) -> None:
        """``epochs``: the trial's number of epochs, shown as ``epoch/epochs``."""
        best = self._best(trial_id, metric)
        shown = f"{epoch}/{epochs}" if epoch is not None and epochs else fmt(epoch)
        self._emit([trial_id, *(fmt(values.get(p)) for p in self.params), status,
                    shown, fmt(metric), fmt(best)], note)

    def line(self, text: str) -> None:
        """A line of its own (a stage starting its trials, a stage line), with the
        elapsed time."""
        print(f"{self.elapsed().ljust(7)}  {text}", file=self.out, flush=True)
        self.printed = time.monotonic()
