"""A two-stage progressive sweep recorded on a real `mlflow server` on 127.0.0.1.

The server is started by the test (its own process group) and stopped by its PID."""
from __future__ import annotations

import pytest
from mlflow import MlflowClient

from tests.support.mlflow_server import start_mlflow_server, stop_mlflow_server
from tests.support.sweeps import runs, steps, sweep, write

pytestmark = pytest.mark.slow

TWO_STAGE = """
name: prog_server
data:
  dataset: synthetic
  synthetic: {train_size: 256, test_size: 64, image_size: 16}
model: {arch: resnet20}
train: {epochs: 2, batch_size: 32, lr: 0.05, device: cpu}
search: {algorithm: grid, scheduler: {type: fifo}}
resources: {cpus_per_trial: 1}
stages:
  - name: fp32
    set: {quant.w_bits: 32, quant.a_bits: 32, train.lr: {grid: [0.02, 0.05]}}
  - name: w4a4
    set: {quant.w_bits: 4, quant.a_bits: 4, quant.scheme: {grid: [apot, uniform]},
          train.init: {best_of: fp32}}
"""

EPOCH_METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_time_s")


def test_two_stage_sweep_on_a_real_server_carries_lineage_and_complete_metrics(tmp_path):
    server, url = start_mlflow_server(f"sqlite:///{tmp_path}/server.db", tmp_path / "artifacts",
                                      log_path=tmp_path / "server.log")
    try:
        write(tmp_path, TWO_STAGE)
        proc = sweep(tmp_path, "s.yaml", "--mlflow-uri", url)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert not (tmp_path / "sweeps" / "mlflow.db").exists()   # everything went to the server

        client = MlflowClient(tracking_uri=url, registry_uri=url)
        _, trials = runs(client, "prog_server", "trial")
        by_stage = {}
        for run in trials:
            by_stage.setdefault(run.data.tags["sweep.stage"], []).append(run)
        assert len(by_stage["fp32"]) == 2 and len(by_stage["w4a4"]) == 2

        best_fp32 = client.get_model_version_by_alias("prog_server-resnet20", "fp32-best").run_id
        assert best_fp32 in {r.info.run_id for r in by_stage["fp32"]}
        for child in by_stage["w4a4"]:
            tags = child.data.tags
            assert tags["lineage.init_run_id"] == best_fp32
            assert tags["lineage.init_bits"] == "FP32"
            assert tags["lineage.init_checkpoint"].endswith("model.pt")
            assert tags["mlflow.parentRunId"]
            assert child.data.params["quant.w_bits"] == "4"
            # complete per-epoch metrics: every epoch once, every layer's two alphas
            for key in EPOCH_METRICS:
                assert steps(client, child.info.run_id, key) == [1, 2], key
            alpha_keys = [k for k in child.data.metrics if k.startswith("alpha/")]
            assert len([k for k in alpha_keys if k.startswith("alpha/weight/")]) == 20
            assert len([k for k in alpha_keys if k.startswith("alpha/act/")]) == 20
            key = "alpha/act/layer2.0.downsample.0"         # and at step 0, before training
            assert sorted(steps(client, child.info.run_id, key)) == [0, 1, 2]
            artifacts = {a.path for a in client.list_artifacts(child.info.run_id)}
            assert {"checkpoint", "bits.json", "alphas.json"} <= artifacts
        for run in by_stage["fp32"]:     # a full-precision model has no alphas to record
            assert not [k for k in run.data.metrics if k.startswith("alpha/")]
        _, everything = runs(client, "prog_server")
        assert len(everything) == 4 + 2                       # trials + one parent run per stage
        assert not [r for r in everything if r.info.status == "RUNNING"]
    finally:
        stop_mlflow_server(server)
    assert server.poll() is not None
