"""run_sweep.py end to end: a real local Ray cluster, a real MLflow SQLite store, real
files, each sweep a subprocess in its own working directory (ResNet-20 on a few hundred
16x16 synthetic images, 1 CPU per trial, so that each sweep takes well under a minute)."""
from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from tests.support.sweeps import REPO, runs, start_until_an_epoch, steps, store, sweep, write

pytestmark = pytest.mark.slow


def assert_provenance(tags: dict) -> None:
    """The provenance tags of a trial run: this checkout's commit and state, and the
    versions of the libraries the driver ran with."""
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip()
    assert tags["sweep.git_commit"] == commit
    assert tags["sweep.git_dirty"] in ("true", "false")
    for lib in ("torch", "ray", "mlflow", "optuna"):
        assert tags[f"sweep.version.{lib}"] == str(__import__(lib).__version__), lib


def test_smoke_sweep_end_to_end(tmp_path):
    t0 = time.monotonic()
    proc = sweep(tmp_path, REPO / "search_spaces" / "smoke.yaml")
    took = time.monotonic() - t0
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "== results" in out and "python -m sweep.evaluate" in out
    assert "workflowType=machine_learning" in out and "mlflow ui --backend-store-uri" in out
    assert "Traceback" not in proc.stderr and "WARNING" not in proc.stderr, proc.stderr
    assert (tmp_path / "sweeps" / "mlflow.db").is_file()
    assert (tmp_path / "sweeps" / "smoke" / "sweep.json").is_file()

    client = store(tmp_path)
    exp, trials = runs(client, "smoke", "trial")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    assert len(trials) == 4                               # 2 arms x 2 learning rates
    _, everything = runs(client, "smoke")
    assert not [r for r in everything if r.info.status == "RUNNING"]
    for run in trials:
        assert run.info.status == "FINISHED"
        history = steps(client, run.info.run_id)
        assert history == list(range(1, len(history) + 1)) and history
        best = max(m.value for m in client.get_metric_history(run.info.run_id, "val_acc"))
        assert best > 10.0, (run.info.run_name, best)     # above chance (10 classes)
        assert run.data.params["model.arch"] == "resnet20"
        assert "alpha/weight/layer1.0.conv1" in run.data.metrics
        arts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"checkpoint", "bits.json", "alphas.json"} <= arts
        stopped = run.data.tags.get("sweep.stopped_early") == "true"
        assert stopped == (len(history) < 3)
        assert_provenance(run.data.tags)
    version = client.get_model_version_by_alias("smoke-resnet20", "main-best")
    assert version.source.startswith("runs:/")
    print(f"smoke sweep: {took:.1f} s")

    again = sweep(tmp_path, REPO / "search_spaces" / "smoke.yaml", timeout=60)
    assert again.returncode == 2
    assert "--resume" in again.stderr and "--restart" in again.stderr


KILL = """
name: killme
data:
  dataset: synthetic
  synthetic: {train_size: 256, test_size: 64, image_size: 16}
model: {arch: resnet20}
quant: {w_bits: 4, a_bits: 4}
train: {epochs: 4, batch_size: 32, lr: {grid: [0.05, 0.1]}, device: cpu}
search: {algorithm: grid, scheduler: {type: fifo}}
resources: {cpus_per_trial: 1}
stages:
  - name: first
  - name: second
    set: {quant.w_bits: 2, quant.a_bits: 2, train.epochs: 1, train.lr: 0.05,
          train.init: {best_of: first}, train.init_alphas: mse, train.bn_reestimate_batches: 2}
"""


def test_kill_9_then_resume_finishes_every_trial_once(tmp_path):
    write(tmp_path, KILL)
    proc = start_until_an_epoch(tmp_path)                # an epoch result is in the table
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()

    resumed = sweep(tmp_path, "s.yaml", "--resume")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "continuing from" in resumed.stdout

    client = store(tmp_path)
    _, trials = runs(client, "killme", "trial")
    assert sorted(r.data.tags["sweep.stage"] for r in trials) == ["first", "first", "second"]
    _, everything = runs(client, "killme")
    assert not [r for r in everything if r.info.status == "RUNNING"]
    assert len(everything) == 5                           # 2 stage runs, 3 trial runs
    for run in trials:
        assert run.info.status == "FINISHED"
        want = [1] if run.data.tags["sweep.stage"] == "second" else [1, 2, 3, 4]
        for key in ("val_acc", "train_loss", "lr"):
            assert steps(client, run.info.run_id, key) == want, (run.info.run_name, key)
        # the thresholds also at step 0 (before training), logged once too
        assert sorted(steps(client, run.info.run_id, "alpha/act/layer1.0.conv1")) == [0, *want]
        assert {"checkpoint", "bits.json", "alphas.json"} <= {
            a.path for a in client.list_artifacts(run.info.run_id)}
    # train.init_alphas: mse: the second stage starts from thresholds fitted at 2 bits, not
    # from any value the first stage's checkpoints hold
    key = "alpha/weight/layer1.0.conv1"
    first = {m.value for r in trials if r.data.tags["sweep.stage"] == "first"
             for m in client.get_metric_history(r.info.run_id, key)}
    second = next(r for r in trials if r.data.tags["sweep.stage"] == "second")
    assert second.data.params["train.init_alphas"] == "mse"
    start = [m.value for m in client.get_metric_history(second.info.run_id, key) if m.step == 0]
    assert len(start) == 1 and start[0] not in first, (start, first)

    again = sweep(tmp_path, "s.yaml", "--resume")       # nothing left to do: no Ray
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.startswith("every stage finished earlier: not starting Ray")
    assert again.stdout.count("finished earlier, not rerun") == 2
    assert "== results" in again.stdout and "stage second" in again.stdout
    assert len(runs(client, "killme")[1]) == 5


PROGRESSIVE = """
name: prog
data:
  dataset: synthetic
  synthetic: {train_size: 256, test_size: 64, image_size: 16}
model: {arch: resnet20}
train: {epochs: 2, batch_size: 32, lr: 0.05, device: cpu}
search: {algorithm: grid, scheduler: {type: fifo}}
resources: {cpus_per_trial: 1}
stages:
  - name: fp32
    set: {quant.w_bits: 32, quant.a_bits: 32, train.lr: {grid: [0.05, 1.0e6]}}
  - name: w4a4
    set: {quant.w_bits: 4, quant.a_bits: 4, train.epochs: 1, train.init: {best_of: fp32}}
"""


def test_progressive_stages_lineage_and_a_nan_trial(tmp_path):
    write(tmp_path, PROGRESSIVE)
    proc = sweep(tmp_path, "s.yaml")
    out = proc.stdout
    assert proc.returncode == 1, out + proc.stderr       # the NaN trial failed
    assert "RETRY" not in out                             # a NaN loss is not retried
    assert "failed trials (1)" in out and "nan_loss" in out

    client = store(tmp_path)
    _, fp32 = runs(client, "prog", "trial")
    by_stage = {}
    for run in fp32:
        by_stage.setdefault(run.data.tags["sweep.stage"], []).append(run)
    assert len(by_stage["fp32"]) == 2 and len(by_stage["w4a4"]) == 1
    failed = [r for r in by_stage["fp32"] if r.info.status == "FAILED"]
    good = [r for r in by_stage["fp32"] if r.info.status == "FINISHED"]
    assert len(failed) == 1 and len(good) == 1
    assert failed[0].data.tags["sweep.failure"] == "nan_loss"
    assert failed[0].data.params["train.lr"] == "1000000.0"
    assert "error.txt" in {a.path for a in client.list_artifacts(failed[0].info.run_id)}

    child = by_stage["w4a4"][0]
    assert child.info.status == "FINISHED"
    tags = child.data.tags
    assert tags["lineage.init_run_id"] == good[0].info.run_id
    assert tags["lineage.init_bits"] == "FP32"
    assert tags["lineage.init_checkpoint"] == f"runs:/{good[0].info.run_id}/checkpoint/model.pt"
    for stage, run in (("fp32", good[0]), ("w4a4", child)):
        version = client.get_model_version_by_alias("prog-resnet20", f"{stage}-best")
        assert version.run_id == run.info.run_id
    _, everything = runs(client, "prog")
    assert not [r for r in everything if r.info.status == "RUNNING"]


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU")
def test_gpus_on_a_cpu_cluster_exit_2_saying_how_to_run_on_cpu(tmp_path):
    proc = sweep(tmp_path, REPO / "search_spaces" / "smoke.yaml", "--set",
                 "resources.gpus_per_trial=0.5", timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "--set resources.gpus_per_trial=0" in proc.stderr
    assert not (tmp_path / "sweeps").exists()


ONE_STAGE = """
name: badinit
data:
  dataset: synthetic
  synthetic: {train_size: 64, test_size: 32, image_size: 16}
model: {arch: resnet20}
train: {epochs: 1, batch_size: 32, lr: 0.05, device: cpu}
resources: {cpus_per_trial: 1}
"""


def test_refused_at_start_leaves_no_results_behind(tmp_path):
    """An unknown MLflow run as train.init is found only once the sweep starts: exit 2,
    and the corrected command is not told that results already exist."""
    write(tmp_path, ONE_STAGE)
    proc = sweep(tmp_path, "s.yaml", "--set", "train.init=runs:/0123456789abcdef")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "train.init" in proc.stderr and "0123456789abcdef" in proc.stderr
    assert not (tmp_path / "sweeps" / "badinit").exists()
    proc = sweep(tmp_path, "s.yaml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
