"""What a researcher reads and reuses after a sweep, on real CIFAR-10 images: a two-stage
progressive sweep (fp32 -> W4A4, two learning rates each, a validation split) of
ResNet-20 on part of the CIFAR-10 subset, run once for the module, then

- ``sweep.report --compare-to search_spaces/published/apot_cifar10.yaml``: one
  comparison line per published row the experiment covers;
- the registered W4A4 model loaded by ``mlflow.pytorch.load_model("models:/...")``
  scores the test images exactly as ``sweep.evaluate models:/...`` does;
- every trial run holds the figures to quote, a readable name and only the parameters
  that apply; every stage run its best trial's figures.
"""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import yaml
from mlflow import MlflowClient

from tests.support.sweeps import REPO, env, runs, sweep, write

pytestmark = pytest.mark.slow

NAME = "c10prog"
SPEC = f"""
name: {NAME}
data: {{dataset: npz, path: c10.npz, name: cifar10, val_fraction: 0.2}}
model: {{arch: resnet20}}
quant: {{scheme: apot}}
train: {{epochs: 2, batch_size: 64, lr: {{grid: [0.05, 0.1]}}, device: cpu}}
search: {{algorithm: grid, metric: val_acc, mode: max, scheduler: {{type: fifo}}}}
resources: {{cpus_per_trial: 1}}
stages:
  - name: fp32
    set: {{quant.w_bits: 32, quant.a_bits: 32}}
  - name: w4a4
    set: {{quant.w_bits: 4, quant.a_bits: 4, train.init: {{best_of: fp32}}}}
"""
PUBLISHED = REPO / "search_spaces" / "published" / "apot_cifar10.yaml"


@pytest.fixture(scope="module")
def done(cifar_npz, tmp_path_factory):
    """(folder, client, sweep output): the sweep, run once; 400 training and 200 test
    images of the CIFAR-10 subset, written as an npz file of their own."""
    root = tmp_path_factory.mktemp("c10prog")
    with np.load(cifar_npz) as d:
        np.savez(root / "c10.npz", x_train=d["x_train"][:400], y_train=d["y_train"][:400],
                 x_test=d["x_test"][:200], y_test=d["y_test"][:200], classes=d["classes"],
                 mean=d["mean"], std=d["std"])
    write(root, SPEC)
    proc = sweep(root, "s.yaml", timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    uri = f"sqlite:///{root}/sweeps/mlflow.db"
    return root, MlflowClient(tracking_uri=uri, registry_uri=uri), proc.stdout


def _report(root, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sweep.report", NAME, *map(str, args)],
                          cwd=root, capture_output=True, text=True, timeout=300, env=env())


def test_compare_to_gives_one_line_per_covered_published_row(done):
    root, client, _ = done
    proc = _report(root, "--compare-to", PUBLISHED, "--plots", root / "plots", "--format", "svg",
                   "--no-log")
    assert proc.returncode == 0, proc.stderr
    section = proc.stdout[proc.stdout.index("### Compared with published results"):]
    lines = [l for l in section.splitlines() if l.startswith("| ") and "| stage |" not in l]
    # the published rows this experiment covers: ResNet-20 CIFAR-10 at 32 and 4 bits (APoT)
    published = yaml.safe_load(PUBLISHED.read_text())
    covered = [p for p in published if p["model"] == "resnet20" and p["dataset"] == "cifar10"
               and (p["w_bits"], p["a_bits"], p["scheme"]) in ((32, 32, "fp"), (4, 4, "apot"))]
    assert len(covered) == 4
    assert sorted((l.split(" | ")[3], l.split(" | ")[6]) for l in lines) == sorted(
        ("FP32" if p["w_bits"] == 32 else "W4A4", p["source"]) for p in covered)
    # each is paired with our best configuration of its bits: the higher test accuracy
    _, trials = runs(client, NAME, "trial")
    for stage in ("fp32", "w4a4"):
        best = max(r.data.metrics["test_acc_at_best"] for r in trials
                   if r.data.tags["sweep.stage"] == stage)
        ours = {l.split(" | ")[12] for l in lines if l.startswith(f"| {stage} |")}
        assert ours == {f"{best:.2f} (n=1)"}, (stage, ours, best)
    svg = (root / "plots" / "acc_vs_bits.svg").read_text()
    assert svg.lstrip().startswith("<?xml") and "published (APoT README)" in svg


def test_registered_model_loads_in_mlflow_and_scores_as_sweep_evaluate(done):
    import mlflow
    import mlflow.pytorch
    import torch
    root, client, out = done
    uri = client.tracking_uri
    model_uri = f"models:/{NAME}-resnet20@w4a4-best"
    assert f"python -m sweep.evaluate models:/{NAME}-resnet20/" in out
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    info = mlflow.models.get_model_info(model_uri)
    assert info.signature is not None and info.saved_input_example_info is not None
    model = mlflow.pytorch.load_model(model_uri)          # an exported graph, in eval mode
    with np.load(root / "c10.npz") as d:
        x = torch.from_numpy(d["x_test"]).permute(0, 3, 1, 2).float().contiguous()   # 0-255
        y = torch.from_numpy(d["y_test"])
    with torch.no_grad():
        correct = int((model(x).argmax(1) == y).sum())

    version = client.get_model_version_by_alias(f"{NAME}-resnet20", "w4a4-best")
    for source in (model_uri, f"runs:/{version.run_id}"):
        proc = subprocess.run([sys.executable, "-m", "sweep.evaluate", source, "--json",
                               "--mlflow-uri", uri], cwd=root, capture_output=True, text=True,
                              timeout=300, env=env())
        assert proc.returncode == 0, proc.stderr
        scored = json.loads(proc.stdout.strip().splitlines()[-1])
        assert (scored["correct"], scored["total"]) == (correct, len(y)), source
        assert scored["accuracy"] == pytest.approx(100.0 * correct / len(y))
    assert version.source == f"runs:/{version.run_id}/model"
    assert version.tags["bits"] == "W4A4" and version.tags["sweep.stage"] == "w4a4"
    run = client.get_run(version.run_id)
    assert float(version.tags["test_acc_at_best"]) == run.data.metrics["test_acc_at_best"]
    assert version.tags["lineage.init_run_id"] == run.data.tags["lineage.init_run_id"]


NOT_APPLYING = ("data.synthetic.", "data.root", "train.milestones", "train.gamma")


def test_runs_carry_the_figures_to_quote_readable_names_and_applying_params(done):
    _, client, _ = done
    _, trials = runs(client, NAME, "trial")
    _, stages = runs(client, NAME, "stage")
    assert len(trials) == 4 and len(stages) == 2
    for run in trials:
        m, params = run.data.metrics, run.data.params
        val = {h.step: h.value for h in client.get_metric_history(run.info.run_id, "val_acc")}
        test = {h.step: h.value for h in client.get_metric_history(run.info.run_id, "test_acc")}
        best = max(sorted(val), key=lambda e: (val[e], -e))            # earliest of equals
        assert (m["best_epoch"], m["best_val_acc"], m["test_acc_at_best"]) == (
            best, val[best], test[best])
        assert run.info.run_name == f"lr={float(params['train.lr']):g}"
        assert not [k for k in params if k.startswith(NOT_APPLYING)], sorted(params)
        assert "null" not in params.values()
        fp = run.data.tags["sweep.stage"] == "fp32"
        assert fp == (not any(k.startswith("train.alpha_") for k in params))
        assert params["data.name"] == "cifar10"
        inputs = run.inputs.dataset_inputs                 # the dataset, with its digest
        assert [(i.dataset.name, len(i.dataset.digest)) for i in inputs] == [("cifar10", 16)]
        assert run.data.tags["mlflow.source.name"] == "run_sweep.py"
    for stage in stages:
        name = stage.data.tags["sweep.stage"]
        mine = [r for r in trials if r.data.tags["sweep.stage"] == name]
        top = max(r.data.metrics["best_val_acc"] for r in mine)
        best = next(r for r in mine if r.info.run_id == stage.data.tags["sweep.best_run_id"])
        assert best.data.metrics["best_val_acc"] == top
        assert stage.data.tags["sweep.best_trial"] == best.info.run_name
        files = {f.path for f in client.list_artifacts(stage.info.run_id, "experiment")}
        assert files == {"experiment/s.yaml", "experiment/command.txt"}   # what was run
        for key in ("best_epoch", "best_val_acc", "test_acc_at_best"):
            assert stage.data.metrics[key] == best.data.metrics[key], (name, key)


def test_progress_lines_links_views_and_thresholds_before_training(done):
    """What the sweep printed (a start-up line, stage lines with an ETA, the links) and
    what it saved for the MLflow UI; the thresholds at step 0 are the ones training
    started from: for W4A4 from full precision, the quantizers' initial values."""
    import re
    from quant.quantizers import ACT_ALPHA_INIT, WEIGHT_ALPHA_INIT
    _, client, out = done
    first = out.splitlines()[0]
    assert first.startswith("starting Ray (a local cluster) and the MLflow store sqlite:///"), out
    for stage in ("fp32", "w4a4"):
        lines = [l.split(None, 1)[1] for l in out.splitlines() if f" stage {stage}: " in l]
        assert lines[-1] == f"stage {stage}: 2 done, 0 running, 0 pending", lines
        # when the first trial ends: the other one still due, timed by measured epochs
        one = [l for l in lines if ": 1 done, " in l]       # (then maybe again, when quiet)
        assert one and re.fullmatch(
            rf"stage {stage}: 1 done, (1 running, 0|0 running, 1) pending; ETA \d+:\d\d "
            r"\(\d epoch\(s\) left at \d+\.\d s/epoch, 1 at a time\)", one[0]), lines
    exp, trials = runs(client, NAME, "trial")
    _, stages = runs(client, NAME, "stage")
    for stage in stages:
        name = stage.data.tags["sweep.stage"]
        view = json.loads(exp.tags[f"mlflow.sharedViewState.sweep-best-{name}"])
        state = json.loads(view["state"])
        assert state["searchFilter"] == f"attributes.run_id = '{stage.data.tags['sweep.best_run_id']}'"
        assert (f"#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning"
                f"&compareRunsMode=CHART&viewStateShareKey=sweep-best-{name}") in out
        version = client.get_model_version_by_alias(f"{NAME}-resnet20", f"{name}-best")
        assert (f"#/models/{NAME}-resnet20/versions/{version.version}"
                "?workflowType=machine_learning") in out
    assert "viewStateShareKey=sweep-runs" in out and "mlflow.sharedViewState.sweep-runs" in exp.tags
    for run in trials:
        history = {k: {m.step: m.value for m in client.get_metric_history(run.info.run_id, k)}
                   for k in run.data.metrics if k.startswith("alpha/")}
        if run.data.tags["sweep.stage"] == "fp32":
            assert not history
            continue
        assert len(history) == 2 * 20       # weight and act: 18 block and 2 shortcut convs
        for key, steps in history.items():
            assert sorted(steps) == [0, 1, 2], key
            start = WEIGHT_ALPHA_INIT if key.startswith("alpha/weight/") else ACT_ALPHA_INIT["cifar"]
            assert steps[0] == start and steps[2] != start, (key, steps)
