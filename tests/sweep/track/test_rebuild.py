"""SweepRecorder on --resume with tracking.json missing or damaged: the trial -> run and
stage -> run maps are rebuilt from the runs' tags in a real MLflow store; no second run
for a trial, no epoch logged twice, no run left RUNNING."""
from __future__ import annotations

import json

import pytest

from sweep.track import store
from sweep.track.recorder import SweepRecorder
from tests.sweep.track.test_tracking import children, epoch_metrics, runs


@pytest.fixture(scope="module")
def uri(tmp_path_factory):
    uri = store.default_tracking_uri(tmp_path_factory.mktemp("store") / "sweeps")
    store.prepare_store(uri)
    return uri


def killed_sweep(uri, name, state):
    """Three trials with two epochs each, the driver gone without close()."""
    first = SweepRecorder(uri, name, state, provenance={})
    parent = first.stage_run("main", {"train.lr": 0.1})
    ids = {f"t{i}": first.trial_run(f"t{i}", "main", {"seed": i}) for i in range(3)}
    for tid in ids:
        for epoch in (1, 2):
            first.log_epoch(tid, epoch, epoch_metrics(epoch))
    first.finish_trial("t2")
    return first.client, parent, ids


@pytest.mark.parametrize("damage, said", [
    ("missing", "is missing"),
    ("truncated", "is unreadable (JSONDecodeError)"),
    ("not a state", "is unreadable (ValueError)"),
])
def test_resume_rebuilds_the_map_from_mlflow(uri, tmp_path, damage, said):
    name = "rebuild_" + damage.replace(" ", "_")
    state = tmp_path / "tracking.json"
    client, parent, ids = killed_sweep(uri, name, state)
    if damage == "missing":
        state.unlink()
    elif damage == "truncated":
        state.write_text(state.read_text()[:40])
    else:
        state.write_text(json.dumps({"trials": {"t0": {"stage": "main"}}}))

    second = SweepRecorder(uri, name, state, provenance={}, resume=True)
    assert second.rebuilt.startswith(f"{state} {said}: rebuilt the trial -> run map from MLflow")
    # a trial Ray finished while the driver was dead is closed without being re-opened:
    # its history is replayed, and only the epochs MLflow lacks are logged
    assert second.log_epoch("t1", 2, epoch_metrics(2)) is False
    assert second.log_epoch("t1", 3, epoch_metrics(3)) is True
    assert [m.step for m in client.get_metric_history(ids["t1"], "val_acc")] == [1, 2, 3]
    assert second.stage_run("main", {"train.lr": 0.1}) == parent
    for tid, run_id in ids.items():
        if tid != "t1":
            assert second.trial_run(tid, "main", {"seed": int(tid[1:])}) == run_id
    assert second.run_id("t1") == ids["t1"] and second.last_epoch("t0") == 2
    assert second.log_epoch("t0", 2, epoch_metrics(2)) is False       # logged before the kill
    assert second.log_epoch("t0", 3, epoch_metrics(3)) is True
    assert [m.step for m in client.get_metric_history(ids["t0"], "val_acc")] == [1, 2, 3]
    assert len(children(client, second.experiment_id)) == 3            # no second run
    second.close("KILLED")
    assert runs(client, second.experiment_id, "attributes.status = 'RUNNING'") == []
    assert json.loads(state.read_text())["trials"]["t1"]["run_id"] == ids["t1"]


def test_a_fresh_sweep_is_not_rebuilt(uri, tmp_path):
    rec = SweepRecorder(uri, "rebuild_fresh", tmp_path / "tracking.json", provenance={})
    assert rec.rebuilt is None and not rec.resumed
    rec.close()
