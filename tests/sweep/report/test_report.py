"""sweep.report against real MLflow records written by SweepRecorder into a SQLite store."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from mlflow import MlflowClient

from sweep.track import names, store as track_store
from sweep.config import resolve_trial
from sweep.report.compare import load_published
from sweep.cli.report import main
from sweep.report.results import ReportError
from sweep.track.recorder import SweepRecorder

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
EXP = "demo"
LAYERS = ["layer1.0.conv1", "layer1.0.conv2", "layer2.0.conv1", "layer2.0.downsample.0",
          "layer3.10.conv1", "layer3.2.conv1"]


def flat_config(*, w=2, a=2, scheme="apot", z=None, lr=0.04, wd=1e-4, seed=0, val=0.0,
                layers=None, init=None) -> dict:
    """A trial's params exactly as the runner logs them: the resolved config, flattened."""
    quant = {"w_bits": w, "a_bits": a, "scheme": scheme, "z": z}
    if layers:
        quant["layers"] = layers
    tree = {"model": {"arch": "resnet20"}, "data": {"dataset": "cifar10", "val_fraction": val},
            "quant": quant, "train": {"lr": lr, "weight_decay": wd, "seed": seed, "epochs": 3,
                                      "init": init}}
    return resolve_trial(tree).flatten()


def record(rec: SweepRecorder, stage: str, tid: str, cfg: dict, val_acc: list, *,
           test_acc: list | None = None, alphas: bool = True, status: str = "FINISHED",
           **finish) -> str:
    run_id = rec.trial_run(tid, stage, cfg)
    for epoch, acc in enumerate(val_acc, start=1):
        m = {"train_loss": 1.0 / epoch, "train_acc": acc + 5, "val_loss": 2.0 / epoch,
             "val_acc": acc, "lr": 0.1, "epoch_time_s": 1.0}
        if test_acc:
            m.update(test_loss=2.1 / epoch, test_acc=test_acc[epoch - 1])
        if alphas:
            for i, layer in enumerate(LAYERS):
                m[f"alpha/weight/{layer}"] = 1.0 + 0.1 * i + 0.01 * epoch
                m[f"alpha/act/{layer}"] = 4.0 + 0.5 * i - 0.1 * epoch
        rec.log_epoch(tid, epoch, m)
    if status == "FINISHED" and alphas:
        rec.log_json(tid, names.ALPHAS_ARTIFACT,
                     {f"{kind}/{layer}": (1.5 if kind == "weight" else 3.0) + 0.1 * i
                      for i, layer in enumerate(LAYERS) for kind in ("weight", "act")})
    rec.finish_trial(tid, status=status, **finish)
    return run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """fp32 stage; w2a2 stage: apot (2 seeds), ngrid Z 1/2/4 (Z=4 stopped by ASHA, a
    second Z=2 seed ended nan_loss), a crashed Z=10, a mixed-precision apot; a w2a2_val
    stage with a validation split."""
    root = tmp_path_factory.mktemp("report")
    uri = track_store.default_tracking_uri(root / "sweeps")
    track_store.prepare_store(uri)
    ids = {}
    with SweepRecorder(uri, EXP, root / "state.json") as rec:
        rec.stage_run("fp32")                                   # no search.* params
        ids["fp"] = record(rec, "fp32", "fp_0", flat_config(w=32, a=32, lr=0.1, wd=5e-4),
                           [80.0, 90.0, 88.0], alphas=False)
        rec.finish_stage("fp32")
        rec.stage_run("w2a2", {"search.metric": "val_acc", "search.mode": "max"})
        init = {"best_of": "fp32"}
        ids["apot0"] = record(rec, "w2a2", "apot_0", flat_config(init=init), [70.0, 85.0, 84.0])
        ids["apot1"] = record(rec, "w2a2", "apot_1", flat_config(seed=1, init=init),
                              [72.0, 83.0, 86.0])
        ids["z1"] = record(rec, "w2a2", "ngrid_z1", flat_config(scheme="ngrid", z=1, init=init),
                           [60.0, 70.0, 75.0])
        ids["z2"] = record(rec, "w2a2", "ngrid_z2", flat_config(scheme="ngrid", z=2, init=init),
                           [65.0, 80.0, 79.0])
        ids["z4"] = record(rec, "w2a2", "ngrid_z4", flat_config(scheme="ngrid", z=4, init=init),
                           [50.0], stopped_early=True)
        ids["nan"] = record(rec, "w2a2", "ngrid_z2_s1",
                            flat_config(scheme="ngrid", z=2, seed=1, init=init), [10.0],
                            status="FAILED", failure="nan_loss", error="training loss is nan")
        ids["crash"] = record(rec, "w2a2", "ngrid_z10",
                              flat_config(scheme="ngrid", z=10, init=init), [],
                              status="FAILED", error="Traceback (most recent call last):\n"
                              "  File x\nRuntimeError: out of memory | again")
        ids["mixed"] = record(rec, "w2a2", "mixed_0",
                              flat_config(init=init, layers={"layer2.*": {"w_bits": 3}}),
                              [60.0, 61.0, 62.0])
        layer = {"scheme": "apot", "act_scheme": "apot", "z": None}    # sweep.train.bits.layer_bits
        rec.log_json("mixed_0", names.BITS_ARTIFACT, {
            "conv1": {"w_bits": 8, "a_bits": 32, "scheme": "fixed", "act_scheme": None, "z": None},
            "layer1.0.conv1": {"w_bits": 2, "a_bits": 2, **layer},
            "layer2.0.conv1": {"w_bits": 3, "a_bits": 2, **layer},
            "linear": {"w_bits": 8, "a_bits": 32, "scheme": "fixed", "act_scheme": None, "z": None}})
        rec.finish_stage("w2a2")
        rec.stage_run("w2a2_val")
        ids["val"] = record(rec, "w2a2_val", "val_0", flat_config(val=0.1, init=init),
                            [70.0, 82.0, 81.0], test_acc=[69.0, 80.0, 81.0])
        rec.finish_stage("w2a2_val")
        ids["stages"] = {s: rec.stage_run_id(s) for s in ("fp32", "w2a2", "w2a2_val")}
    return uri, ids, root


def report(capsys, uri, *args):
    code = main([EXP, "--mlflow-uri", uri, *args])
    out, err = capsys.readouterr()
    return code, out, err


HEADER_ALL = ("| stage | model | dataset | bits | scheme | Z | lr | weight decay | other settings "
              "| seeds (n) | val_acc on | best val_acc % (epoch) | test acc % at best-val epoch "
              "| last val_acc % | epochs run | status |")

ROWS_ALL = [
    "| fp32 | resnet20 | cifar10 | FP32 | — | — | 0.1 | 0.0005 | data.val_fraction=0 | 0 (1) "
    "| test | 90.00 (2) | — | 88.00 | 3 | finished |",
    "| w2a2 | resnet20 | cifar10 | MIXED(w2.50,a2.00) | apot | — | 0.04 | 0.0001 "
    "| data.val_fraction=0 | 0 (1) | test | 62.00 (3) | — | 62.00 | 3 | finished |",
    "| w2a2 | resnet20 | cifar10 | W2A2 | apot | — | 0.04 | 0.0001 | data.val_fraction=0 "
    "| 0, 1 (2) | test | 85.50 ± 0.71 (2, 3) | — | 85.00 ± 1.41 | 3 | finished |",
    "| w2a2 | resnet20 | cifar10 | W2A2 | ngrid | 1 | 0.04 | 0.0001 | data.val_fraction=0 "
    "| 0 (1) | test | 75.00 (3) | — | 75.00 | 3 | finished |",
    "| w2a2 | resnet20 | cifar10 | W2A2 | ngrid | 2 | 0.04 | 0.0001 | data.val_fraction=0 "
    "| 0 (1) | test | 80.00 (2) | — | 79.00 | 3 | finished; 1 failed (below) |",
    "| w2a2 | resnet20 | cifar10 | W2A2 | ngrid | 4 | 0.04 | 0.0001 | data.val_fraction=0 "
    "| 0 (1) | test | 50.00 (1) | — | 50.00 | 1 | stopped early |",
    "| w2a2_val | resnet20 | cifar10 | W2A2 | apot | — | 0.04 | 0.0001 | data.val_fraction=0.1 "
    "| 0 (1) | val (10% of train) | 82.00 (2) | 80.00 | 81.00 | 3 | finished |",
]


def test_markdown_table(store, capsys):
    uri, ids, _ = store
    code, out, err = report(capsys, uri)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "## demo: results"
    start = lines.index(HEADER_ALL)
    assert lines[start + 2:start + 2 + len(ROWS_ALL)] == ROWS_ALL
    assert lines[start + 2 + len(ROWS_ALL)] == ""
    assert "mean ± sample std over the seeds" in out
    assert "fp32: val_acc (max); w2a2: val_acc (max); w2a2_val: val_acc (max)" in out
    # failed runs: listed separately, with the reason, never aggregated
    failed = out[out.index("**Failed runs** (2, not in the table above)"):]
    assert (f"| w2a2 | ngrid_z10 | {ids['crash']} | resnet20 | W2A2 | ngrid | 10 | 0.04 | 0.0001 "
            "| 0 | FAILED | RuntimeError: out of memory \\| again | 0 | — |") in failed
    assert (f"| w2a2 | ngrid_z2_s1 | {ids['nan']} | resnet20 | W2A2 | ngrid | 2 | 0.04 | 0.0001 "
            "| 1 | FAILED | nan_loss | 1 | 10.00 |") in failed


def test_stage_filter_names_the_split_in_headers(store, capsys):
    uri, _, _ = store
    code, out, _ = report(capsys, uri, "--stage", "w2a2_val")
    assert code == 0
    assert ("| stage | model | dataset | bits | scheme | Z | lr | weight decay | seeds (n) "
            "| best val acc % (epoch) | test acc % at best-val epoch | last val acc % "
            "| epochs run | status |") in out
    assert ("| w2a2_val | resnet20 | cifar10 | W2A2 | apot | — | 0.04 | 0.0001 | 0 (1) "
            "| 82.00 (2) | 80.00 | 81.00 | 3 | finished |") in out
    assert "fp32" not in out and "Failed runs" not in out
    code, out, _ = report(capsys, uri, "--stage", "fp32")
    assert "| best test acc % (epoch) |" in out and "| last test acc % |" in out
    code, _, err = report(capsys, uri, "--stage", "w9a9")
    assert code == 2 and "no stage 'w9a9'; its stages: fp32, w2a2, w2a2_val" in err


def test_csv(store, capsys, tmp_path):
    uri, ids, _ = store
    path = tmp_path / "rows.csv"
    assert report(capsys, uri, "--csv", str(path))[0] == 0
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(ROWS_ALL)
    apot = rows[2]
    assert {k: apot[k] for k in ("stage", "model", "w_bits", "a_bits", "scheme", "z", "seeds",
                                 "n_seeds", "best_acc_mean", "best_epochs", "last_acc_mean",
                                 "epochs_run", "val_acc_split", "metric", "mode")} == {
        "stage": "w2a2", "model": "resnet20", "w_bits": "2", "a_bits": "2", "scheme": "apot",
        "z": "", "seeds": "0 1", "n_seeds": "2", "best_acc_mean": "85.5", "best_epochs": "2 3",
        "last_acc_mean": "85.0", "epochs_run": "3 3", "val_acc_split": "test",
        "metric": "val_acc", "mode": "max"}
    assert float(apot["best_acc_std"]) == pytest.approx(0.5 ** 0.5)
    assert apot["run_ids"].split() == [ids["apot0"], ids["apot1"]]
    assert rows[1]["w_bits"] == "2.5" and rows[1]["mixed"] == "True"
    assert rows[4]["n_failed"] == "1" and rows[5]["n_stopped_early"] == "1"
    assert rows[6]["test_acc_at_best_mean"] == "80.0" and rows[6]["val_acc_split"] == "val"


PUBLISHED = textwrap.dedent("""\
    - {model: ResNet-20, dataset: CIFAR-10, w_bits: 32, a_bits: 32, scheme: fp, accuracy: 92.0, split: test, source: Paper A}
    - {model: resnet20, dataset: cifar10, w_bits: 2, a_bits: 2, scheme: apot, accuracy: 86.0, split: test, source: Paper A}
    - {model: resnet20, dataset: cifar10, w_bits: 2, a_bits: 2, scheme: ngrid, z: 2, accuracy: 81.0, split: test, source: Paper A}
    - {model: resnet20, dataset: cifar10, w_bits: 2, a_bits: 2, scheme: ngrid, z: 4, accuracy: 78.0, split: test, source: Paper A}
    - {model: resnet20, dataset: cifar10, w_bits: 4, a_bits: 4, scheme: apot, accuracy: 91.0, split: test, source: Paper A}
    - {model: resnet20, dataset: cifar10, w_bits: 2, a_bits: 2, scheme: ngrid, z: 1, accuracy: 99.0, split: train, source: Train Paper}
    - {model: resnet56, dataset: cifar100, w_bits: 2, a_bits: 2, scheme: apot, accuracy: 60.0, split: test, source: Other}
    """)


def test_compare_to(store, capsys, tmp_path):
    uri, _, _ = store
    path = tmp_path / "published.yaml"
    path.write_text(PUBLISHED)
    csv_path = tmp_path / "t.csv"
    code, out, _ = report(capsys, uri, "--compare-to", str(path), "--csv", str(csv_path))
    assert code == 0
    sec = out[out.index("### Compared with published results (published.yaml)"):]
    assert ("| stage | model | dataset | bits | scheme | Z | source | published split "
            "| published baseline % | published accuracy % | published drop "
            "| our baseline % (FP32, test) | our test acc % | our drop "
            "| Δ accuracy (ours − published) |") in sec
    lines = [l for l in sec.splitlines() if l.startswith("| ") and "stage" not in l]
    assert lines == [
        "| fp32 | resnet20 | cifar10 | FP32 | — | — | Paper A | test | 92.00 | 92.00 | 0.00 "
        "| 90.00 | 90.00 (n=1) | 0.00 | -2.00 |",
        "| w2a2 | resnet20 | cifar10 | W2A2 | apot | — | Paper A | test | 92.00 | 86.00 | 6.00 "
        "| 90.00 | 85.50 ± 0.71 (n=2) | 4.50 | -0.50 |",
        "| w2a2 | resnet20 | cifar10 | W2A2 | ngrid | 1 | Train Paper | train† | — | 99.00† | — "
        "| 90.00 | 75.00 (n=1) | 15.00 | not compared † |",
        "| w2a2 | resnet20 | cifar10 | W2A2 | ngrid | 2 | Paper A | test | 92.00 | 81.00 | 11.00 "
        "| 90.00 | 80.00 (n=1) | 10.00 | -1.00 |",
        "| w2a2 | resnet20 | cifar10 | W2A2 | ngrid | 4 | Paper A | test | 92.00 | 78.00 | 14.00 "
        "| 90.00 | 50.00 (n=1, stopped early) | 40.00 | -28.00 |",
    ]       # one line per published row: w2a2_val's apot (80.00) is not the best W2A2 apot
    assert "† The published figure is *training*-set accuracy" in sec and "not compared." in sec
    assert "with no run here: ResNet-20 CIFAR-10" not in sec        # the FP row matched
    assert "with no run here: resnet20 cifar10 W4A4 apot (Paper A)." in sec
    assert "resnet56" not in sec
    with open(tmp_path / "t_compare.csv", newline="") as f:
        comp = list(csv.DictReader(f))
    assert [(r["scheme"], r["z"], r["split_mismatch"], r["difference"], r["our_drop"])
            for r in comp] == [
        ("apot", "", "False", "-2.0", "0.0"), ("apot", "", "False", "-0.5", "4.5"),
        ("ngrid", "1.0", "True", "", "15.0"), ("ngrid", "2.0", "False", "-1.0", "10.0"),
        ("ngrid", "4.0", "False", "-28.0", "40.0")]

    # --stage keeps the baseline from a stage it does not show
    code, out, _ = report(capsys, uri, "--compare-to", str(path), "--stage", "w2a2")
    assert "| 90.00 | 85.50 ± 0.71 (n=2) | 4.50 | -0.50 |" in out


@pytest.mark.parametrize("text, message", [
    ("- {model: r, dataset: c, w_bits: 2, a_bits: 2, scheme: apot, accuracy: 1, source: s}",
     "row 0: missing split"),
    ("- {model: r, dataset: c, w_bits: 2, a_bits: 2, scheme: apot, accuracy: 1, split: val, "
     "source: s}", "split = 'val'; write test or train"),
    ("- {model: r, dataset: c, w_bits: two, a_bits: 2, scheme: apot, accuracy: 1, split: test,"
     " source: s}", "w_bits = 'two' is not a number"),
    ("{a: 1}", "expected a list of rows"),
])
def test_compare_to_errors(store, capsys, tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    code, _, err = report(capsys, store[0], "--compare-to", str(path))
    assert code == 2 and message in err and str(path) in err


def test_published_files_load_and_mark_mnist_train_split():
    folder = os.path.join(REPO, "search_spaces", "published")
    cifar = load_published(os.path.join(folder, "apot_cifar10.yaml"))
    assert {(p.model, p.w_bits, p.accuracy) for p in cifar if p.source == "APoT README"} >= {
        ("resnet20", 2, 90.96), ("resnet56", 32, 94.46)}
    ngrid = load_published(os.path.join(folder, "ngrid_cifar100.yaml"))
    assert [(p.z, p.accuracy) for p in ngrid if p.scheme == "ngrid"] == [
        (1, 69.64), (2, 69.87), (4, 69.75), (10, 69.51), (20, 68.81)]
    mnist = load_published(os.path.join(folder, "apot_mnist.yaml"))
    readme = [p for p in mnist if p.source == "APoT MNIST README"]
    assert len(readme) == 16 and {p.split for p in readme} == {"train"}
    assert all(p.split == "test" for p in mnist if p not in readme)
    imagenet = load_published(os.path.join(folder, "apot_imagenet.yaml"))
    assert {(p.model, p.w_bits, p.scheme, p.accuracy) for p in imagenet} >= {
        ("resnet18", 2, "apot", 66.46), ("resnet50", 3, "apot", 75.92), ("resnet18", 4, "uniform", 70.54)}
    assert len(imagenet) == 12 and {(p.dataset, p.split) for p in imagenet} == {("imagenet", "test")}
    dambq = load_published(os.path.join(folder, "dambq_resnet20.yaml"))
    assert [p.accuracy for p in dambq if p.w_bits == 2] == [91.69, 92.13, 92.32]
    every = sorted(f for f in os.listdir(folder) if f.endswith(".yaml"))
    assert set(every) >= {"apot_cifar10.yaml", "apot_imagenet.yaml", "apot_mnist.yaml",
                          "dambq_resnet20.yaml", "ngrid_cifar100.yaml"}      # one per published table
    assert all(load_published(os.path.join(folder, f)) for f in every)
    with pytest.raises(ReportError, match="cannot read it"):
        load_published(os.path.join(folder, "missing.yaml"))


def _png_ok(path):
    import matplotlib.image as mpimg
    img = mpimg.imread(path)
    assert os.path.getsize(path) > 0 and img.ndim == 3
    assert img.shape[0] > 200 and img.shape[1] > 200
    assert float(np.std(img[..., :3])) > 0.01               # not blank
    return img


def test_plots_written_and_logged(store, capsys, tmp_path):
    uri, ids, _ = store
    out_dir = tmp_path / "plots"
    code, _, err = report(capsys, uri, "--plots", str(out_dir))
    assert code == 0, err
    best = ids["apot1"][:8]                                 # best val_acc of w2a2: 86 at ep 3
    val = ids["val"][:8]
    expected = {"acc_vs_z_w2a2.png", "acc_vs_bits.png", f"alphas_w2a2_{best}.png",
                f"alpha_trajectories_w2a2_{best}.png", f"alphas_w2a2_val_{val}.png",
                f"alpha_trajectories_w2a2_val_{val}.png"}     # fp32 has no alphas
    assert set(os.listdir(out_dir)) == expected
    for name in expected:
        _png_ok(out_dir / name)
    client = MlflowClient(uri)
    logged = {s: {f.path for f in client.list_artifacts(rid, "report")}
              for s, rid in ids["stages"].items()}
    assert logged["w2a2"] == {"report/acc_vs_z_w2a2.png", "report/acc_vs_bits.png",
                              f"report/alphas_w2a2_{best}.png",
                              f"report/alpha_trajectories_w2a2_{best}.png"}
    assert logged["w2a2_val"] == {"report/acc_vs_bits.png", f"report/alphas_w2a2_val_{val}.png",
                                  f"report/alpha_trajectories_w2a2_val_{val}.png"}
    assert logged["fp32"] == set()
    assert "logged to run" in err

    # --run picks the run; --no-log leaves MLflow alone
    one = tmp_path / "one"
    code, _, _ = report(capsys, uri, "--plots", str(one), "--run", ids["z1"], "--stage", "w2a2",
                        "--no-log")
    assert code == 0
    assert f"alphas_w2a2_{ids['z1'][:8]}.png" in os.listdir(one)
    assert not any(f.path.endswith(ids["z1"][:8] + ".png")
                   for f in client.list_artifacts(ids["stages"]["w2a2"], "report"))
    code, _, err = report(capsys, uri, "--plots", str(one), "--run", "0" * 32)
    assert code == 2 and "not a trial run of experiment 'demo'" in err


def test_errors(store, capsys, tmp_path):
    uri, _, root = store
    code, _, err = report(capsys, uri, "--run", "abc")
    assert code == 2 and "add --plots DIR" in err
    missing = f"sqlite:///{tmp_path}/none/mlflow.db"
    code, _, err = report(capsys, missing)
    assert code == 2 and "no MLflow store at" in err and not (tmp_path / "none").exists()
    # an experiment whose only trial failed: message, exit 1
    with SweepRecorder(uri, "all_failed", root / "state2.json") as rec:
        rec.stage_run("fp32")
        record(rec, "fp32", "t0", flat_config(w=32, a=32), [], status="FAILED",
               failure="nan_loss")
    code = main(["all_failed", "--mlflow-uri", uri])
    out, err = capsys.readouterr()
    assert code == 1
    assert "experiment 'all_failed' has no finished trial (1 FAILED); nothing to tabulate" in err
    assert "| fp32 | t0 |" in out and "Traceback" not in out + err


def test_unknown_experiment_cli(store):
    """The real command line: exit 2, the experiments listed, no traceback."""
    uri = store[0]
    proc = subprocess.run([sys.executable, "-m", "sweep.report", "nope", "--mlflow-uri", uri],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "no experiment named 'nope'" in proc.stderr and "demo" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_compare_to_says_which_fields_differ_when_nothing_matches(store, capsys, tmp_path):
    uri, _, _ = store
    path = tmp_path / "other.yaml"
    path.write_text("- {model: resnet20, dataset: cifar100, w_bits: 3, a_bits: 3, scheme: apot, "
                    "accuracy: 60.0, split: test, source: Other}\n")
    code, out, _ = report(capsys, uri, "--compare-to", str(path))
    assert code == 0
    line = out[out.index("No published row matches"):].splitlines()[0]
    assert "dataset: published cifar100, ours cifar10 (set data.name" in line
    assert "bits: published W3A3, ours " in line and "model:" not in line
