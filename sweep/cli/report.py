"""The paper-style results table of a sweep, from its MLflow records.

    python -m sweep.report EXPERIMENT [--mlflow-uri URI] [--stage NAME ...] [--csv FILE]
                           [--compare-to FILE.yaml] [--plots DIR [--run RUN_ID] [--no-log]]

Prints Markdown: one row per configuration of each stage (trials that differ only in
``train.seed`` are aggregated: mean ± sample std over the seeds, and how many), with the
accuracy at the epoch the stage's search metric chose, the last epoch's accuracy, the
epochs run and how the trials ended; failed runs are listed under the table.
``--compare-to`` adds a table against published numbers (``search_spaces/published/``)
with the drop of each row from its full-precision baseline. ``--plots`` writes PNGs
(``sweep.report.plots``) and logs each to the parent run of the stage(s) it draws from, under
``report/``. Exit status: 0; 1 when the experiment has no finished trial (or reading
failed); 2 for an unknown experiment, stage or run, or an invalid ``--compare-to`` file.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from sweep.report.compare import compare, load_published
from sweep.report.results import ExperimentResults, ReportError, group_rows
from sweep.report.table import compare_csv_path, markdown_report, write_compare_csv, write_csv
from sweep.track.store import default_tracking_uri, sqlite_path

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m sweep.report",
        description="Print a sweep's results table (Markdown) from MLflow; optionally CSV, "
                    "a comparison with published numbers, and plots.")
    p.add_argument("experiment", help="the experiment name (the search-space file's `name`)")
    p.add_argument("--mlflow-uri", default=None,
                   help="tracking URI (default: sqlite:///<cwd>/sweeps/mlflow.db)")
    p.add_argument("--stage", action="append", default=None, metavar="NAME",
                   help="only this stage (repeatable)")
    p.add_argument("--csv", metavar="FILE", help="also write the table's rows as CSV "
                   "(with --compare-to, the comparison goes to FILE_compare.csv)")
    p.add_argument("--compare-to", metavar="FILE",
                   help="YAML list of published rows {model, dataset, w_bits, a_bits, scheme, "
                        "z?, accuracy, split: test|train, source}")
    p.add_argument("--plots", metavar="DIR", help="write PNG plots into DIR and log them to "
                   "the stages' parent runs under report/")
    p.add_argument("--run", metavar="RUN_ID", help="the run whose per-layer alphas are "
                   "plotted (default: the best trial of each stage)")
    p.add_argument("--format", default="png", choices=["png", "pdf", "svg"],
                   help="with --plots: the file format (PNG at 300 dpi; PDF and SVG vector)")
    p.add_argument("--no-log", action="store_true",
                   help="with --plots: do not log the PNGs to MLflow")
    return p


def _fail(code: int, message: str) -> int:
    print(f"sweep.report: {message}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        return _run(args)
    except ReportError as exc:
        return _fail(2, str(exc))
    except KeyboardInterrupt:
        return _fail(130, "interrupted")
    except Exception as exc:                          # the user gets a line, not a traceback
        return _fail(1, f"{type(exc).__name__}: {exc}")


def _run(args) -> int:
    uri = args.mlflow_uri or default_tracking_uri(os.path.join(os.getcwd(), "sweeps"))
    db = sqlite_path(uri)
    if db is not None and not os.path.isfile(db):
        raise ReportError(f"no MLflow store at {db}: run the sweep from this directory "
                          "first, or name the store with --mlflow-uri")
    if args.run and not args.plots:
        raise ReportError("--run picks the run whose alphas --plots draws; add --plots DIR")
    published = load_published(args.compare_to) if args.compare_to else None

    from mlflow import MlflowClient
    client = MlflowClient(tracking_uri=uri)
    try:
        results = ExperimentResults.load(client, args.experiment)
    except LookupError as exc:
        names = exc.args[0]
        listing = ", ".join(names) if names else "none"
        raise ReportError(f"no experiment named {args.experiment!r} in {uri}; "
                          f"experiments there: {listing}") from None
    if args.stage:
        unknown = [s for s in args.stage if s not in results.stages]
        if unknown:
            raise ReportError(f"experiment {args.experiment!r} has no stage "
                              f"{', '.join(map(repr, unknown))}; its stages: "
                              f"{', '.join(results.stages) or 'none'}")
    all_rows = group_rows(results.trials, results.stage_order)
    keep = set(args.stage) if args.stage else None
    trials = [t for t in results.trials if keep is None or t.stage in keep]
    rows = [r for r in all_rows if keep is None or r.stage in keep]

    comparison = None
    if published is not None:
        comps, unmatched = compare(rows, published, baseline_rows=all_rows)
        comparison = (comps, unmatched, args.compare_to)
    print(markdown_report(results, rows, trials, comparison), end="", flush=True)
    if not rows:
        counts = {}
        for t in trials:
            counts[t.status] = counts.get(t.status, 0) + 1
        what = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no trial runs"
        where = f" in stage {', '.join(args.stage)}" if args.stage else ""
        return _fail(1, f"experiment {args.experiment!r} has no finished trial{where} "
                        f"({what}); nothing to tabulate")
    if args.csv:
        write_csv(args.csv, rows)
        print(f"sweep.report: wrote {args.csv}", file=sys.stderr)
        if comparison is not None:
            write_compare_csv(compare_csv_path(args.csv), comparison[0])
            print(f"sweep.report: wrote {compare_csv_path(args.csv)}", file=sys.stderr)
    if args.plots:
        from sweep.report import plots
        written = plots.write_plots(results, rows, args.plots, run_id=args.run,
                                    published=published, log=not args.no_log,
                                    fmt=args.format)
        for path, logged in written:
            where = f" (logged to run {', '.join(logged)} under report/)" if logged else ""
            print(f"sweep.report: wrote {path}{where}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
