"""SweepRecorder against a real SQLite store and a real local ``mlflow server``."""
from __future__ import annotations

import json
import os
import re

import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric

from sweep.track import names, resolve, store
from sweep.track.recorder import flatten_params
from tests.support import mlflow_server
from sweep.track.recorder import SweepRecorder

ALPHA_LAYERS = ["layer1.0.conv1", "layer1.0.conv2", "layer2.0.downsample.0"]


def epoch_metrics(epoch: int) -> dict[str, float]:
    metrics = {"train_loss": 2.0 / epoch, "train_acc": 10.0 * epoch, "val_loss": 1.5 / epoch,
               "val_acc": 9.0 * epoch, "lr": 0.1, "epoch_time_s": 1.25}
    for i, layer in enumerate(ALPHA_LAYERS):
        metrics[f"alpha/weight/{layer}"] = 0.1 * (i + 1) + epoch
        metrics[f"alpha/act/{layer}"] = 1.0 * (i + 1) + epoch
    return metrics


@pytest.fixture(scope="module")
def uri(tmp_path_factory):
    """One SQLite store for the module (schema creation is the slow part)."""
    sweeps = tmp_path_factory.mktemp("store") / "sweeps"
    uri = store.default_tracking_uri(sweeps)
    store.prepare_store(uri)
    return uri


@pytest.fixture
def name(request):
    return re.sub(r"\W", "_", request.node.name)


@pytest.fixture
def recorder(uri, name, tmp_path):
    rec = SweepRecorder(uri, name, tmp_path / "tracking_state.json")
    yield rec
    rec.close()


def runs(client: MlflowClient, experiment_id: str, flt: str = "") -> list:
    return client.search_runs([experiment_id], filter_string=flt, max_results=1000)


def children(client, experiment_id):
    return runs(client, experiment_id, "tags.`sweep.role` = 'trial'")


def test_uris_and_links(tmp_path):
    uri = store.default_tracking_uri(tmp_path / "sweeps")
    assert uri == f"sqlite:///{tmp_path}/sweeps/mlflow.db" and uri.startswith("sqlite:////")
    with pytest.raises(ValueError, match="pass --mlflow-uri"):
        store.default_tracking_uri("s3://bucket/sweeps")
    assert store.ui_command(uri) == \
        f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000"
    assert store.ui_command("http://127.0.0.1:5000") is None
    assert store.experiment_link("http://127.0.0.1:5000/", "7") == \
        "http://127.0.0.1:5000/#/experiments/7?workflowType=machine_learning"
    assert names.registered_model_name("ngrid_z", "resnet20") == "ngrid_z-resnet20"
    assert names.stage_alias("w4a4") == "w4a4-best"
    with pytest.raises(ConnectionError, match="does not answer"):
        store.prepare_store(f"http://127.0.0.1:{mlflow_server.free_port()}", timeout_s=2)


def test_flatten_params_sanitizes_keys_and_values():
    flat = flatten_params({
        "quant.layers": {"layer2.*": {"w_bits": 3}, "layer[12].conv1": {"a_bits": 4}},
        "train.lr": 0.04, "train.init": None, "search.variants": [{"quant.scheme": "apot"}],
        "data.path": "x" * 7000, "quant.first_last_bits": 8, "train.flag": True})
    assert flat["quant.layers.layer2._.w_bits"] == "3"
    assert flat["quant.layers.layer_12_.conv1.a_bits"] == "4"
    assert flat["train.lr"] == "0.04" and flat["train.init"] == "null"
    assert flat["train.flag"] == "true"
    assert json.loads(flat["search.variants"]) == [{"quant.scheme": "apot"}]
    assert len(flat["data.path"]) == 6000 and flat["data.path"].endswith("[truncated]")
    assert all("*" not in k and "[" not in k for k in flat)


def test_parent_child_structure(recorder, uri):
    client = recorder.client
    exp = client.get_experiment(recorder.experiment_id)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    db_dir = os.path.dirname(uri[len("sqlite:///"):])
    assert exp.artifact_location.startswith(f"file://{db_dir}/mlartifacts/")

    parent = recorder.stage_run("fp32", {"train.lr": 0.1})
    ids = [recorder.trial_run(f"t{i}", "fp32", {"quant.scheme": "apot", "train.seed": i},
                              {"sweep.variant": "0"}) for i in range(2)]
    assert len(set(ids)) == 2 and parent not in ids
    got = {r.info.run_name: r for r in children(client, recorder.experiment_id)}
    assert set(got) == {"t0", "t1"}
    for i, run_id in enumerate(ids):
        run = got[f"t{i}"]
        assert run.info.run_id == run_id and run.info.status == "RUNNING"
        assert run.data.tags["mlflow.parentRunId"] == parent
        assert run.data.tags["sweep.stage"] == "fp32"
        assert run.data.params == {"quant.scheme": "apot", "train.seed": str(i)}
    stage = client.get_run(parent)
    assert stage.info.run_name == "fp32" and stage.data.params == {"train.lr": "0.1"}
    assert run.info.artifact_uri.startswith(exp.artifact_location)


def test_one_log_batch_per_epoch_and_no_replay(recorder, monkeypatch):
    recorder.stage_run("fp32")
    run_id = recorder.trial_run("t0", "fp32", {"a": 1})
    calls = []
    real = recorder.client.log_batch

    def counting(run_id, metrics=(), params=(), tags=(), synchronous=None):
        calls.append(list(metrics))
        return real(run_id, metrics=metrics, params=params, tags=tags, synchronous=synchronous)

    monkeypatch.setattr(recorder.client, "log_batch", counting)
    for epoch in (1, 2, 3):
        assert recorder.log_epoch("t0", epoch, epoch_metrics(epoch)) is True
    assert len(calls) == 3
    for epoch, batch in zip((1, 2, 3), calls):
        assert {m.step for m in batch} == {epoch}
        assert {m.key for m in batch} == set(epoch_metrics(epoch))
    # a restart from the epoch-2 checkpoint replays epoch 3: nothing is logged again
    assert recorder.log_epoch("t0", 2, epoch_metrics(2)) is False
    assert recorder.log_epoch("t0", 3, epoch_metrics(3)) is False
    assert len(calls) == 3 and recorder.last_epoch("t0") == 3
    client = recorder.client
    for key, value in epoch_metrics(3).items():
        history = client.get_metric_history(run_id, key)
        assert [m.step for m in history] == [1, 2, 3], key
        assert history[-1].value == pytest.approx(value)
    with pytest.raises(KeyError, match="trial_run first"):
        recorder.log_epoch("nope", 1, {"val_acc": 1.0})


def test_resume_reuses_runs_and_epochs(uri, name, tmp_path):
    state = tmp_path / "tracking_state.json"
    first = SweepRecorder(uri, name, state)
    parent = first.stage_run("fp32", {"train.lr": 0.1})
    ids = {f"t{i}": first.trial_run(f"t{i}", "fp32", {"seed": i}) for i in range(3)}
    for tid in ids:
        for epoch in (1, 2):
            first.log_epoch(tid, epoch, epoch_metrics(epoch))
    client = first.client
    # the driver dies after logging epoch 3 of t0 but before saving its state, and
    # after creating t9's run but before recording it: no close(), runs stay RUNNING
    client.log_batch(ids["t0"], metrics=[Metric(k, v, 0, 3) for k, v in epoch_metrics(3).items()])
    orphan = client.create_run(first.experiment_id, run_name="t9", tags={
        "mlflow.parentRunId": parent, "sweep.role": "trial", "sweep.stage": "fp32",
        "sweep.trial_id": "t9"}).info.run_id
    client.set_terminated(ids["t2"], "KILLED")    # or closed as KILLED by an interrupted driver
    assert json.loads(state.read_text())["trials"]["t0"]["last_epoch"] == 2

    second = SweepRecorder(uri, name, state)
    assert second.resumed and second.experiment_id == first.experiment_id
    assert second.stage_run("fp32", {"train.lr": 0.1}) == parent
    for tid, run_id in ids.items():
        assert second.trial_run(tid, "fp32", {"seed": int(tid[1:])}) == run_id
    assert second.trial_run("t9", "fp32", {"seed": 9}) == orphan
    assert client.get_run(ids["t2"]).info.status == "RUNNING"
    assert second.last_epoch("t0") == 3 and second.last_epoch("t1") == 2
    assert second.log_epoch("t0", 3, epoch_metrics(3)) is False
    assert second.log_epoch("t0", 4, epoch_metrics(4)) is True
    assert second.log_epoch("t1", 2, epoch_metrics(2)) is False
    assert sorted(m.step for m in client.get_metric_history(ids["t0"], "val_acc")) == [1, 2, 3, 4]
    assert len(children(client, second.experiment_id)) == 4
    assert len(runs(client, second.experiment_id, "tags.`sweep.role` = 'stage'")) == 1
    saved = json.loads(state.read_text())
    assert saved["trials"]["t0"] == {"run_id": ids["t0"], "stage": "fp32", "last_epoch": 4,
                                     "status": "RUNNING"}
    ended = second.close("KILLED")
    assert set(ended) == set(ids.values()) | {orphan, parent}
    assert runs(client, second.experiment_id, "attributes.status = 'RUNNING'") == []


def test_finish_tags_and_close(recorder):
    client = recorder.client
    recorder.stage_run("w4a4")
    for tid in ("ok", "asha", "crash", "nan", "lost"):
        recorder.trial_run(tid, "w4a4", {"x": 1})
    recorder.finish_trial("ok")
    recorder.finish_trial("asha", stopped_early=True)
    error = "Traceback (most recent call last):\n" + "  frame\n" * 2000 + "RuntimeError: boom"
    recorder.finish_trial("crash", "FAILED", error=error)
    recorder.finish_trial("nan", "FAILED", error="loss is nan at epoch 3", failure="nan_loss")
    with pytest.raises(ValueError, match="not one of FINISHED, FAILED, KILLED"):
        recorder.finish_trial("ok", "DONE")

    def run(tid):
        return client.get_run(recorder.run_id(tid))

    assert run("ok").info.status == "FINISHED" and "sweep.stopped_early" not in run("ok").data.tags
    assert run("asha").info.status == "FINISHED"
    assert run("asha").data.tags["sweep.stopped_early"] == "true"
    crash = run("crash")
    assert crash.info.status == "FAILED"
    assert crash.data.tags["sweep.error"].startswith("Traceback")
    assert len(crash.data.tags["sweep.error"]) <= 4000
    local = client.download_artifacts(crash.info.run_id, "error.txt")
    with open(local) as f:
        assert f.read() == error
    assert run("nan").data.tags["sweep.failure"] == "nan_loss"
    assert run("lost").info.status == "RUNNING"

    ended = recorder.close("KILLED")
    assert set(ended) == {recorder.run_id("lost"), recorder.stage_run_id("w4a4")}
    assert run("lost").info.status == "KILLED"
    assert client.get_run(recorder.stage_run_id("w4a4")).info.status == "KILLED"
    assert runs(client, recorder.experiment_id, "attributes.status = 'RUNNING'") == []


def test_context_manager_fails_open_runs_on_error(uri, name, tmp_path):
    with pytest.raises(RuntimeError, match="driver crashed"):
        with SweepRecorder(uri, name, tmp_path / "state.json") as rec:
            rec.trial_run("t0", "fp32", {})
            raise RuntimeError("driver crashed")
    client = rec.client
    assert {r.info.status for r in runs(client, rec.experiment_id)} == {"FAILED"}


def test_register_best_and_resolve_init(recorder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)            # nothing may land in the working directory
    client = recorder.client
    recorder.stage_run("fp32")
    ckpt = tmp_path / "ray_ckpt"
    ckpt.mkdir()
    payload = {}
    for tid in ("a", "b"):
        recorder.trial_run(tid, "fp32", {})
        payload[tid] = f"weights of {tid}".encode() * 100
        (ckpt / "model.pt").write_bytes(payload[tid])
        recorder.log_checkpoint(tid, ckpt)
        recorder.log_json(tid, names.BITS_ARTIFACT, {"layer1.0.conv1": [4, 4]})
    run_a = recorder.run_id("a")
    assert {f.path for f in client.list_artifacts(run_a)} == {"checkpoint", "bits.json"}
    with pytest.raises(FileNotFoundError, match="log the checkpoint"):
        recorder.register_best("fp32", run_a, "m-resnet20", artifact_path="nothing")

    name = names.registered_model_name(recorder.experiment_name, "resnet20")
    version = recorder.register_best("fp32", run_a, name)
    assert version.source == f"runs:/{run_a}/checkpoint" and version.aliases == ["fp32-best"]
    assert recorder.register_best("fp32", run_a, name).version == version.version
    stage_tags = client.get_run(recorder.stage_run_id("fp32")).data.tags
    assert stage_tags["sweep.best_run_id"] == run_a
    assert stage_tags["sweep.registered_model"] == f"models:/{name}@fp32-best"

    cache = tmp_path / "cache"
    for uri in (f"models:/{name}@fp32-best", f"models:/{name}/{version.version}",
                f"runs:/{run_a}", f"runs:/{run_a}/checkpoint",
                f"runs:/{run_a}/checkpoint/model.pt"):
        local, lineage = resolve.resolve_init(uri, client, cache)
        assert os.path.isabs(local) and open(local, "rb").read() == payload["a"], uri
        version_tag = ({"lineage.init_model_version": f"models:/{name}/{version.version}"}
                       if uri.startswith("models:/") else {})
        assert lineage == {"lineage.init_run_id": run_a, "lineage.init_checkpoint": uri,
                           **version_tag}

    # a better trial later: a new version, and the alias moves to it
    run_b = recorder.run_id("b")
    version_b = recorder.register_best("fp32", run_b, name)
    assert int(version_b.version) == int(version.version) + 1
    local, lineage = resolve.resolve_init(f"models:/{name}@fp32-best", recorder.uri, cache)
    assert open(local, "rb").read() == payload["b"] and lineage["lineage.init_run_id"] == run_b

    local, lineage = resolve.resolve_init(ckpt, None)
    assert local == str(ckpt / "model.pt") and lineage == {"lineage.init_checkpoint": local}
    with pytest.raises(FileNotFoundError, match="no file at"):
        resolve.resolve_init(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="names no registered model version"):
        resolve.resolve_init(f"models:/{name}@w2a2-best", client, cache)
    with pytest.raises(FileNotFoundError, match="no artifact"):
        resolve.resolve_init(f"runs:/{run_a}/nope.pt", client, cache)
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()


@pytest.mark.slow
def test_recorder_through_a_local_server(tmp_path):
    backend = store.default_tracking_uri(tmp_path / "server")
    proc, url = mlflow_server.start_mlflow_server(backend, tmp_path / "server" / "artifacts",
                                             log_path=tmp_path / "server.log")
    try:
        assert url.startswith("http://127.0.0.1:")
        store.prepare_store(url)
        rec = SweepRecorder(url, "served", tmp_path / "state.json")
        exp = rec.client.get_experiment(rec.experiment_id)
        assert exp.artifact_location.startswith("mlflow-artifacts:")
        assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
        parent = rec.stage_run("fp32", {"train.lr": 0.1})
        run_id = rec.trial_run("t0", "fp32", {"quant.layers.layer2.*.w_bits": 3})
        for epoch in (1, 2, 2):
            rec.log_epoch("t0", epoch, epoch_metrics(epoch))
        (tmp_path / "best.pt").write_bytes(b"served weights")
        rec.log_artifacts("t0", {names.CHECKPOINT_ARTIFACT: tmp_path / "best.pt"})
        rec.finish_trial("t0", stopped_early=True)
        rec.register_best("fp32", run_id, "served-resnet20")
        rec.trial_run("t1", "fp32", {})
        assert set(rec.close()) == {rec.run_id("t1"), parent}

        client = rec.client
        run = client.get_run(run_id)
        assert run.data.tags["mlflow.parentRunId"] == parent
        assert run.data.params == {"quant.layers.layer2._.w_bits": "3"}
        assert [m.step for m in client.get_metric_history(run_id, "alpha/act/layer1.0.conv1")] \
            == [1, 2]
        assert run.info.status == "FINISHED" and run.data.tags["sweep.stopped_early"] == "true"
        local, lineage = resolve.resolve_init("models:/served-resnet20@fp32-best", client,
                                               tmp_path / "cache")
        assert open(local, "rb").read() == b"served weights"
        assert lineage["lineage.init_run_id"] == run_id
        assert runs(client, rec.experiment_id, "attributes.status = 'RUNNING'") == []
        assert list((tmp_path / "server" / "artifacts").rglob("model.pt"))
    finally:
        mlflow_server.stop_mlflow_server(proc)
    with pytest.raises(ProcessLookupError):
        os.killpg(proc.pid, 0)


def test_trial_runs_carry_provenance_tags(uri, name, tmp_path):
    """Every run carries the git commit, the dirty flag, the library versions and the
    source tags MLflow's UI shows, computed once per process."""
    import subprocess
    from sweep.track import provenance
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True,
                            text=True).stdout.strip()
    tags = provenance.provenance_tags()
    assert tags[names.GIT_COMMIT_TAG] == commit
    assert tags[names.GIT_DIRTY_TAG] == str(provenance.git_dirty()).lower()
    for lib in names.PROVENANCE_LIBRARIES:
        assert tags[names.version_tag(lib)] == str(__import__(lib).__version__), lib
    with SweepRecorder(uri, name, tmp_path / "state.json") as rec:
        rec.trial_run("t0", "fp32", {"train.lr": 0.1})
        rec.finish_trial("t0")
        child = rec.client.get_run(rec.run_id("t0"))
        stage = rec.client.get_run(rec.stage_run_id("fp32"))
    assert {k: child.data.tags.get(k) for k in tags} == tags
    assert {k: stage.data.tags.get(k) for k in tags} == tags
    assert set(tags) - {"mlflow.user"} == {
        "sweep.git_commit", "sweep.git_dirty", "sweep.version.torch", "sweep.version.ray",
        "sweep.version.mlflow", "sweep.version.optuna", "mlflow.source.name",
        "mlflow.source.type", "mlflow.source.git.commit"}
    assert tags["mlflow.source.git.commit"] == commit


def test_paged_reads_every_page_and_delete_experiment_runs(uri, name, tmp_path):
    with SweepRecorder(uri, name, tmp_path / "state.json", provenance={}) as rec:
        for i in range(5):
            rec.trial_run(f"t{i}", "fp32", {"i": i})
            rec.finish_trial(f"t{i}")
        exp_id = rec.experiment_id
        client = rec.client
    got = list(store.paged(client.search_runs, [exp_id], page_size=2))
    assert len(got) == 6 and len({r.info.run_id for r in got}) == 6    # 5 trials + the stage
    assert store.delete_experiment_runs(uri, name) == 6
    assert list(store.paged(client.search_runs, [exp_id], page_size=2)) == []
    assert store.delete_experiment_runs(uri, "no_such_experiment") == 0


def test_saved_views_are_experiment_tags_the_ui_lists(recorder):
    """The views a sweep saves: the envelope the MLflow UI writes and lists, a state whose
    search filter and order MLflow's search accepts, accuracy and loss first."""
    from sweep.track import views
    client, exp_id = recorder.client, recorder.experiment_id
    recorder.stage_run("w4a4")
    run_id = recorder.trial_run("t0", "w4a4", {"train.lr": 0.1})
    recorder.trial_run("t1", "w4a4", {"train.lr": 0.2})
    views.save_view(client, exp_id, views.charts_view_id("w4a4"), "w4a4 best: charts",
                    views.charts_state(run_id))
    views.save_view(client, exp_id, views.RUNS_VIEW, "runs", views.runs_table_state(["train.lr"]))
    tags = client.get_experiment(exp_id).tags
    saved = json.loads(tags["mlflow.sharedViewState.sweep-best-w4a4"])
    assert saved["name"] == "w4a4 best: charts" and isinstance(saved["createdAt"], int)
    state = json.loads(saved["state"])
    # what the filter and the order select: that run alone, as the UI asks MLflow
    found = client.search_runs([exp_id], filter_string=state["searchFilter"],
                               order_by=[state["orderByKey"] + " ASC"])
    assert [r.info.run_id for r in found] == [run_id]
    sections = {s["uuid"]: s["name"] for s in state["compareRunSections"]}
    assert list(sections.values()) == ["accuracy and loss", "the figures to quote",
                                       "Model metrics", "alpha/weight", "alpha/act"]
    assert state["isAccordionReordered"] is True            # the UI keeps this order
    first = [c["metricKey"] for c in state["compareRunCharts"]
             if sections[c["metricSectionId"]] == "accuracy and loss"]
    assert first == ["val_acc", "test_acc", "train_acc", "val_loss", "test_loss", "train_loss"]
    runs_state = json.loads(json.loads(tags["mlflow.sharedViewState.sweep-runs"])["state"])
    assert runs_state["selectedColumns"][1:5] == [
        "metrics.`test_acc_at_best`", "metrics.`best_val_acc`", "metrics.`best_epoch`",
        "params.`train.lr`"]
    # saved again (a resumed sweep): the same view, created when it was first saved
    views.save_view(client, exp_id, views.RUNS_VIEW, "runs", views.runs_table_state(["a"]))
    again = json.loads(client.get_experiment(exp_id).tags["mlflow.sharedViewState.sweep-runs"])
    assert again["createdAt"] == json.loads(tags["mlflow.sharedViewState.sweep-runs"])["createdAt"]
    with pytest.raises(ValueError, match="over the 20000"):
        views.save_view(client, exp_id, "big", "big", views.runs_table_state(
            [f"p{i}" * 40 for i in range(200)]))
    assert store.view_link("http://h:5000/", "3", "sweep-runs", charts=True) == (
        "http://h:5000/#/experiments/3/runs?workflowType=machine_learning"
        "&compareRunsMode=CHART&viewStateShareKey=sweep-runs")
