"""run_sweep.py on a real two-node Ray cluster — a head and a second node started with
`ray start`, 1 CPU each, token authentication — recording to a real `mlflow server`
with an artifacts destination: the trials run on both nodes and each is recorded once,
its checkpoint behind the server; a driver without the cluster's token, and a storage
folder the second node does not see (its own mount namespace), are refused before any
trial; the second node lost mid-sweep (its
raylet killed by PID) costs no run, no epoch logged twice and no run left RUNNING.
One cluster and one server serve the module (the second node is restarted for a test
when it is gone); all of it is stopped by PID at the end, also on failure."""
from __future__ import annotations

import concurrent.futures
import os
import re
import pathlib
import signal
import subprocess
import time
import types

import pytest
from mlflow import MlflowClient

from models.checkpoint import is_project_checkpoint, read_checkpoint
from tests.support.mlflow_server import start_mlflow_server, stop_mlflow_server
from tests.support.ray_cluster import Cluster
from tests.support.sweeps import RUN, env, runs, steps, sweep, write

pytestmark = pytest.mark.slow

# 4 trials of 1 CPU: two at a time, one on each node; full precision (no quantizer
# kernels to compile), FIFO so that every trial runs every epoch.
SWEEP = """
name: {name}
data:
  dataset: synthetic
  synthetic: {{train_size: {train_size}, test_size: 64, image_size: 16}}
model: {{arch: resnet20}}
quant: {{w_bits: 32, a_bits: 32}}
train: {{epochs: {epochs}, batch_size: 64, lr: {{grid: [0.01, 0.02, 0.05, 0.1]}}, device: cpu}}
search: {{algorithm: grid, scheduler: {{type: fifo}}}}
resources: {{cpus_per_trial: 1}}
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    root = tmp_path_factory.mktemp("lab")
    with concurrent.futures.ThreadPoolExecutor(2) as pool:     # the two start side by side
        server = pool.submit(start_mlflow_server, f"sqlite:///{root}/server.db",
                             root / "artifacts", log_path=root / "server.log")
        cluster = pool.submit(Cluster, root, os.environ)
        concurrent.futures.wait([server, cluster])
    try:
        proc, url = server.result()
        try:
            yield types.SimpleNamespace(cluster=cluster.result(), url=url, root=root,
                                        client=MlflowClient(tracking_uri=url, registry_uri=url))
        finally:
            stop_mlflow_server(proc)
    finally:
        if cluster.exception() is None:
            cluster.result().stop()


def args(lab, tmp_path) -> list:
    return ["s.yaml", "--address", lab.cluster.address, "--storage", tmp_path / "shared",
            "--mlflow-uri", lab.url]


def assert_each_trial_once_and_ended(lab, name: str, epochs: int) -> list:
    """4 trial runs, one per trial, FINISHED, each epoch logged once; no run RUNNING."""
    _, trials = runs(lab.client, name, "trial")
    assert sorted(r.data.tags["sweep.trial_id"] for r in trials) == \
        sorted({r.data.tags["sweep.trial_id"] for r in trials}) and len(trials) == 4
    for run in trials:
        assert run.info.status == "FINISHED", run.info.run_name
        for key in ("val_acc", "train_loss", "epoch_time_s"):
            assert steps(lab.client, run.info.run_id, key) == list(range(1, epochs + 1)), key
    _, everything = runs(lab.client, name)
    assert not [r.info.run_name for r in everything if r.info.status == "RUNNING"]
    return trials


def test_a_sweep_on_two_nodes_records_every_trial_once_with_its_checkpoint_behind_the_server(
        lab, tmp_path):
    cluster = lab.cluster
    cluster.start_second()
    ids = cluster.node_ids()
    write(tmp_path, SWEEP.format(name="two_nodes", train_size=128, epochs=2))
    proc = sweep(tmp_path, *args(lab, tmp_path), extra_env=cluster.auth_env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not (tmp_path / "shared" / "mlflow.db").exists()      # records went to the server

    trials = assert_each_trial_once_and_ended(lab, "two_nodes", epochs=2)
    assert {r.data.tags["sweep.node_id"] for r in trials} == {ids["head"], ids["second"]}
    assert {r.data.tags["sweep.device"] for r in trials} == {"cpu"}
    assert all(r.data.tags["sweep.node_ip"] for r in trials)
    for run in trials:       # the checkpoint went to the server's artifacts destination
        assert run.info.artifact_uri.startswith("mlflow-artifacts:/"), run.info.artifact_uri
        local = lab.client.download_artifacts(run.info.run_id, "checkpoint/model.pt",
                                              str(tmp_path / run.info.run_id))
        stored = list((lab.root / "artifacts").rglob(f"{run.info.run_id}/artifacts/checkpoint/model.pt"))
        assert len(stored) == 1 and pathlib.Path(local).read_bytes() == stored[0].read_bytes()
        ckpt = read_checkpoint(local)
        assert is_project_checkpoint(ckpt) and ckpt["model"]["arch"] == "resnet20"


def test_a_driver_without_the_clusters_token_is_refused_with_what_to_do(lab, tmp_path):
    write(tmp_path, SWEEP.format(name="no_token", train_size=128, epochs=1))
    cases = {"none": {}, "wrong": {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64}}
    procs = {case: subprocess.Popen([*RUN, *map(str, args(lab, tmp_path / case))], cwd=tmp_path,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    env=env(extra)) for case, extra in cases.items()}
    out = {case: proc.communicate(timeout=120) for case, proc in procs.items()}
    where = f"s.yaml: --address: the Ray cluster at {lab.cluster.address}"
    assert procs["none"].returncode == 2 and out["none"][1].startswith(
        f"{where} asks for a token and this driver sends none (RAY_AUTH_MODE is not 'token'); "
        "export RAY_AUTH_MODE=token"), out["none"]
    assert procs["wrong"].returncode == 2 and out["wrong"][1].startswith(
        f"{where} refused this driver's token"), out["wrong"]
    assert lab.client.get_experiment_by_name("no_token") is None


def test_a_storage_folder_a_node_does_not_see_is_refused_before_any_trial(lab, tmp_path):
    cluster = lab.cluster
    cluster.start_second()
    if cluster.unshared is None:
        pytest.skip("this machine gives no node a mount namespace of its own (unshare -m)")
    write(tmp_path, SWEEP.format(name="unshared", train_size=128, epochs=1))
    proc = sweep(tmp_path, "s.yaml", "--address", cluster.address, "--storage",
                 cluster.unshared / "sweeps", "--mlflow-uri", lab.url,
                 extra_env=cluster.auth_env, timeout=240)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    second = cluster.node_ids()["second"][:12]
    assert proc.stderr.startswith("s.yaml: --storage: node ") and f"(Ray node {second})" in \
        proc.stderr and "does not see" in proc.stderr, proc.stderr
    assert not (cluster.unshared / "sweeps" / "unshared").exists()         # nothing left
    assert lab.client.get_experiment_by_name("unshared") is None           # nor recorded


def _first_epoch_on(lab, name: str, node_id: str, proc, timeout_s: float = 180, epochs: int = 1) -> str:
    """The trial id of a run tagged with ``node_id`` once it has logged ``epochs`` epochs."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the sweep ended before a trial reported from the node"
        exp = lab.client.get_experiment_by_name(name)
        if exp is not None:
            for run in lab.client.search_runs(
                    [exp.experiment_id], filter_string=f"tags.`sweep.node_id` = '{node_id}'"):
                if "val_acc" in run.data.metrics and len(
                        lab.client.get_metric_history(run.info.run_id, "val_acc")) >= epochs:
                    return run.data.tags["sweep.trial_id"]
        time.sleep(0.3)
    pytest.fail(f"no trial logged an epoch on node {node_id} within {timeout_s:g} s")


def test_a_lost_node_mid_sweep_costs_no_run_no_epoch_twice_and_leaves_none_running(lab, tmp_path):
    cluster = lab.cluster
    second = cluster.start_second()
    ids = cluster.node_ids()
    write(tmp_path, SWEEP.format(name="lost_node", train_size=256, epochs=5))
    out = tmp_path / "out.txt"
    with open(out, "w") as log:
        proc = subprocess.Popen([*RUN, *map(str, args(lab, tmp_path))], cwd=tmp_path, stdout=log,
                                stderr=subprocess.STDOUT, env=env(cluster.auth_env))
    try:
        # two epochs logged: the first one's checkpoint is surely registered with Ray
        moved = _first_epoch_on(lab, "lost_node", ids["second"], proc, epochs=2)
        os.kill(second.raylet_pid(), signal.SIGKILL)          # the node is gone
        assert proc.wait(timeout=300) == 0, out.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    rows = [line for line in out.read_text().splitlines() if moved in line]
    assert any("RETRY" in r for r in rows) and any("(resumed; epochs 1-" in r for r in rows), rows
    # it went on from its last checkpoint, not from the start: the first epoch it reports
    # again is past epoch 1, and at most one epoch (the one whose report was in flight when
    # the node died, its checkpoint not yet registered) is replayed, and not logged again
    after = rows[next(i for i, r in enumerate(rows) if "RETRY" in r):]
    epochs_after = [int(m.group(1)) for r in after if (m := re.search(r"RUNNING\s+(\d+)/5", r))]
    assert epochs_after and epochs_after[0] > 1, rows
    assert sum("replayed" in r for r in rows) <= 1, rows

    trials = assert_each_trial_once_and_ended(lab, "lost_node", epochs=5)
    by_trial = {r.data.tags["sweep.trial_id"]: r for r in trials}
    assert by_trial[moved].data.tags["sweep.node_id"] == ids["head"]    # it finished on the head
