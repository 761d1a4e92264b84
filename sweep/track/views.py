"""Saved views of a sweep's experiment in the MLflow UI, so that its links open on the
figures to quote and on accuracy and loss first.

The MLflow 3.17 UI keeps a view of the experiment page (the runs table's columns, the
search filter, the chart sections and their charts) as an experiment tag
``mlflow.sharedViewState.<id>`` holding ``{"name", "createdAt", "updatedAt", "state"}``,
``state`` being the page's state as JSON; it lists them by name among the experiment's
saved views, and a link with ``viewStateShareKey=<id>`` opens one. A sweep writes two
kinds, the way the UI's own "Save as new view" does:

- ``RUNS_VIEW``: the runs table with the figures to quote (``test_acc_at_best``,
  ``best_val_acc``, ``best_epoch``) and the searched parameters as columns;
- ``charts_view_id(stage)``: the charts of a stage's best trial, in sections in this
  order: accuracy and loss (``val_acc``, ``test_acc``, ``train_acc``, then the losses),
  the figures to quote, the other metrics (``lr``, ``epoch_time_s``, costs), then the
  clipping thresholds (``alpha/weight/...``, ``alpha/act/...``), which the UI would
  otherwise put first (it sorts sections by name, its "Model metrics" last).

Without a view the UI orders a run's charts by name; the run page's own chart tab keeps
its layout in the browser only, so these views are what a project can set.
"""
from __future__ import annotations

import json
import re
import time
from typing import Iterable

from sweep.track.names import BEST_EPOCH_METRIC, BEST_VAL_METRIC, TEST_AT_BEST_METRIC

__all__ = ["VIEW_TAG_PREFIX", "RUNS_VIEW", "charts_view_id", "runs_table_state",
           "charts_state", "save_view"]

VIEW_TAG_PREFIX = "mlflow.sharedViewState."
RUNS_VIEW = "sweep-runs"
MAX_TAG_CHARS = 20_000                      # an experiment tag's value, MLflow's limit

FIGURES = (TEST_AT_BEST_METRIC, BEST_VAL_METRIC, BEST_EPOCH_METRIC)
ACCURACY_AND_LOSS = ("val_acc", "test_acc", "train_acc", "val_loss", "test_loss", "train_loss")
# The UI's own names: metrics without a "/" go to "Model metrics"; "alpha/weight/x" to
# the section "alpha/weight".
OTHER_METRICS = "Model metrics"
SECTIONS = (("accuracy and loss", ACCURACY_AND_LOSS), ("the figures to quote", FIGURES),
            (OTHER_METRICS, ()), ("alpha/weight", ()), ("alpha/act", ()))


def charts_view_id(stage: str) -> str:
    """The id of the view of a stage's best trial's charts."""
    return "sweep-best-" + re.sub(r"[^\w\-]", "_", stage)


def _column(kind: str, key: str) -> str:
    return f"{kind}.`{key}`"                  # the UI's column key: metrics.`val_acc`


def runs_table_state(params: Iterable[str]) -> dict:
    """The runs table: the dataset, the figures to quote, ``params`` (dotted keys), the
    models, in this order (the UI would put metrics and parameters after its own
    columns, out of sight); newest runs first (the UI's default order)."""
    columns = [_column("attributes", "Dataset"), *(_column("metrics", m) for m in FIGURES),
               *(_column("params", p) for p in dict.fromkeys(params)),
               _column("attributes", "Models")]
    return {"selectedColumns": columns, "columnOrder": columns,
            "columnWidths": {_column("attributes", "Dataset"): 170}}


def _line_chart(uuid: str, section: str, metric: str) -> dict:
    """A line chart of ``metric`` against the step (the epoch), with the fields the UI
    gives a chart it generates."""
    return {"uuid": uuid, "type": "LINE", "runsCountToCompare": 10, "metricSectionId": section,
            "deleted": False, "isGenerated": True, "metricKey": metric, "lineSmoothness": 0,
            "xAxisScaleType": "linear", "scaleType": "linear", "range": {},
            "xAxisKey": "step", "selectedXAxisMetricKey": "", "yAxisKey": "metric",
            "yAxisExpressions": [], "ignoreOutliers": False, "useGlobalXaxisKey": True,
            "useGlobalLineSmoothing": True}


def charts_state(run_id: str) -> dict:
    """One run's charts (the search filter keeps that run alone), in the sections of
    ``SECTIONS``; the UI adds a chart for every other metric the run has, in the section
    its name gives, and keeps the sections in this order (``isAccordionReordered``)."""
    sections, charts = [], []
    for i, (name, metrics) in enumerate(SECTIONS):
        section = f"sweep-section-{i}"
        sections.append({"uuid": section, "name": name, "display": True, "isReordered": False})
        charts += [_line_chart(f"sweep-chart-{metric}", section, metric) for metric in metrics]
    # Ordered by name, not by start time: the UI then does not fetch the run's parent,
    # which would show as a collapsed row hiding the run from the charts.
    return {"searchFilter": f"attributes.run_id = '{run_id}'",
            "orderByKey": "tags.`mlflow.runName`", "orderByAsc": True,
            "compareRunSections": sections, "compareRunCharts": charts,
            "isAccordionReordered": True}


def save_view(client, experiment_id: str, view_id: str, name: str, state: dict) -> None:
    """Write (or rewrite) a saved view as the UI does; the UI shows it as ``name``."""
    now = int(time.time() * 1000)
    key = VIEW_TAG_PREFIX + view_id
    old = client.get_experiment(experiment_id).tags.get(key)
    try:
        created = json.loads(old)["createdAt"] if old else now
    except (ValueError, TypeError, KeyError):
        created = now
    value = json.dumps({"name": name, "createdAt": created, "updatedAt": now,
                        "state": json.dumps(state, separators=(",", ":"))},
                       separators=(",", ":"))
    if len(value) > MAX_TAG_CHARS:
        raise ValueError(f"the MLflow view {name!r} takes {len(value)} characters, over the "
                         f"{MAX_TAG_CHARS} an experiment tag holds")
    client.set_experiment_tag(experiment_id, key, value)
