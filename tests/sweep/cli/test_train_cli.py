"""python -m sweep.train: one configuration, best.pt/last.pt, and its refusals."""
import json
import subprocess
import sys

from tests.conftest import REPO

ONE = """
name: one
data: {dataset: synthetic, synthetic: {train_size: 128, test_size: 64, image_size: 16}}
model: {arch: resnet20}
quant: {w_bits: 3, a_bits: 3, scheme: uniform}
train: {epochs: 2, batch_size: 32, lr: 0.05}
"""


def _run(cwd, *args):
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def test_train_writes_checkpoints_that_evaluate_without_flags(tmp_path):
    (tmp_path / "one.yaml").write_text(ONE)
    proc = _run(tmp_path, "sweep.train", "one.yaml", "--set", "train.lr=0.02", "--out", "out")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "epoch   2" in proc.stdout and "lr 0.02" in proc.stdout
    assert (tmp_path / "out" / "best.pt").is_file() and (tmp_path / "out" / "last.pt").is_file()
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    ev = _run(REPO, "sweep.evaluate", str(tmp_path / "out" / "best.pt"), "--json")
    assert ev.returncode == 0, ev.stderr
    out = json.loads(ev.stdout)
    assert out["total"] == 64 and out["quant"]["scheme"] == "uniform"
    assert abs(out["accuracy"] - summary["best"]["val_acc"]) < 1e-9


def test_train_refuses_distributions_and_bad_init(tmp_path):
    (tmp_path / "one.yaml").write_text(ONE)
    proc = _run(tmp_path, "sweep.train", "one.yaml", "--set", "train.lr={grid: [0.1, 0.2]}")
    assert proc.returncode == 2
    assert "train.lr: holds search distributions" in proc.stderr and "run_sweep.py" in proc.stderr
    proc = _run(tmp_path, "sweep.train", "one.yaml", "--set", "train.init=missing.pt")
    assert proc.returncode == 2 and "missing.pt" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "sweeps").exists()
