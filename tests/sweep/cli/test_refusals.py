"""run_sweep.py refuses bad input up front: exit 2 within seconds, one line naming the file
or flag, the key and what to do, and nothing written. Run in-process through
``sweep.cli.run.main``; one subprocess checks that none of it imports Ray or MLflow."""
from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from sweep.cli.run import main
from sweep.lock import SweepLock
from tests.support.files import float_checkpoint, tiny_npz

REPO = pathlib.Path(__file__).resolve().parents[3]

BASE = """
name: t
data:
  dataset: synthetic
  synthetic: {train_size: 64, test_size: 32, image_size: 16}
model: {arch: resnet20}
train: {epochs: 1, batch_size: 32, lr: 0.05, device: cpu}
resources: {cpus_per_trial: 1}
"""


def listing(root: pathlib.Path) -> dict:
    """Every file and folder below root, with each file's size and modification time."""
    return {str(p.relative_to(root)): None if p.is_dir() else (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*"))}


def refused(tmp_path, capsys, *argv, file="s.yaml") -> str:
    """Run main() in tmp_path; assert exit 2, one line on stderr, nothing written."""
    before = listing(tmp_path)
    t0 = time.monotonic()
    rc = main([file, *map(str, argv)])
    took = time.monotonic() - t0
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert listing(tmp_path) == before, "something was written"
    assert took < 20, took
    return err


@pytest.fixture
def here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.yaml").write_text(textwrap.dedent(BASE))
    return tmp_path


# ---------------------------------------------------------------- the YAML file itself

def test_fifty_megabytes_of_junk_as_yaml(here, capsys):
    with open(here / "junk.yaml", "wb") as fh:
        fh.truncate(50 << 20)
    err = refused(here, capsys, "--dry-run", file="junk.yaml")
    assert err.startswith("junk.yaml: is 50.0 MiB") and "YAML text file" in err


def test_a_checkpoint_given_as_the_yaml(here, capsys):
    import torch
    torch.save({"state_dict": {"fc.weight": torch.zeros(10, 64)}}, here / "model.pt")
    err = refused(here, capsys, "--dry-run", file="model.pt")
    assert err.startswith("model.pt: is not a UTF-8 text file")


# ---------------------------------------------------------------- data files and shapes

def test_npz_that_is_not_an_npz(here, capsys):
    (here / "d.npz").write_text("x_train,y_train\n1,2\n")
    err = refused(here, capsys, "--dry-run", "--set", "data.dataset=npz", "--set", "data.path=d.npz")
    assert err.startswith("--set: data.path:") and "d.npz is not an npz file" in err


def test_npz_with_zero_training_images(here, capsys):
    tiny_npz(here / "d.npz", n_train=0)
    err = refused(here, capsys, "--set", "data.dataset=npz", "--set", "data.path=d.npz")
    assert "data.path" in err and "holds no training images" in err


@pytest.mark.parametrize("key, value, said", [
    ("model.in_channels", 1, "is 1 but npz file .* has 3-channel images"),
    ("model.num_classes", 2, "is 2 but npz file .* has 5 classes"),
])
def test_model_shape_against_the_npz(here, capsys, key, value, said):
    tiny_npz(here / "d.npz", n_train=10, num_classes=5)
    err = refused(here, capsys, "--dry-run", "--set", "data.dataset=npz", "--set",
                  "data.path=d.npz", "--set", f"{key}={value}")
    assert err.startswith(f"--set: {key}: ")
    import re
    assert re.search(said, err), err


def test_synthetic_dataset_larger_than_memory(here, capsys):
    err = refused(here, capsys, "--dry-run", "--set", "data.synthetic.train_size=1000000000")
    assert err.startswith("--set: data.synthetic.train_size:") and "GiB" in err


def test_test_acc_without_a_validation_split(here, capsys):
    err = refused(here, capsys, "--dry-run", "--set", "search.metric=test_acc")
    assert err.startswith("--set: search.metric: test_acc exists only with a validation split")
    assert main(["s.yaml", "--dry-run", "--set", "search.metric=test_acc",
                 "--set", "data.val_fraction=0.25"]) == 0


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU")
def test_cuda_on_a_machine_without_a_gpu(here, capsys):
    err = refused(here, capsys, "--set", "train.device=cuda")
    assert err.startswith("s.yaml: train.device: cuda but this machine has no CUDA device")
    assert "--set train.device=cpu" in err or "train.device=cpu" in err


# ---------------------------------------------------------------- train.init

def test_init_that_is_a_directory(here, capsys):
    (here / "ckpt").mkdir()
    float_checkpoint(here / "ckpt" / "model.pt")
    err = refused(here, capsys, "--dry-run", "--set", "train.init=ckpt")
    assert err.startswith("--set: train.init:") and "is a directory, not a checkpoint file" in err
    assert f"train.init={here / 'ckpt' / 'model.pt'}" in err


def test_init_that_is_a_text_file(here, capsys):
    (here / "notes.pt").write_text("not weights\n")
    err = refused(here, capsys, "--dry-run", "--set", "train.init=notes.pt")
    assert err.startswith("--set: train.init:") and "notes.pt: is truncated or corrupt" in err


def test_init_of_another_architecture(here, capsys):
    float_checkpoint(here / "r20.pt", arch="resnet20")
    err = refused(here, capsys, "--dry-run", "--set", "model.arch=resnet56", "--set", "train.init=r20.pt")
    assert err.startswith("--set: train.init:") and "does not fit model resnet56" in err
    assert main(["s.yaml", "--dry-run", "--set", "train.init=r20.pt"]) == 0     # the same arch fits


def test_best_of_that_can_never_match(here, capsys):
    (here / "p.yaml").write_text(textwrap.dedent(BASE) + textwrap.dedent("""
        stages:
          - name: fp32
            set: {quant.w_bits: 32, quant.a_bits: 32}
          - name: w4a4
            set: {quant.w_bits: 4, quant.a_bits: 4, model.arch: resnet32, train.init: {best_of: fp32}}
        """))
    err = refused(here, capsys, "--dry-run", file="p.yaml")
    assert err.startswith("p.yaml: stages[1].set.train.init: best_of: 'fp32' can never match")
    assert "model.arch='resnet32' (stage 'fp32': 'resnet20')" in err


def test_best_of_with_a_match_in_the_grid_is_accepted(here, capsys):
    (here / "p.yaml").write_text(textwrap.dedent(BASE) + textwrap.dedent("""
        stages:
          - name: fp32
            set: {quant.w_bits: 32, quant.a_bits: 32, model.arch: {grid: [resnet20, resnet32]}}
          - name: w4a4
            set: {quant.w_bits: 4, quant.a_bits: 4, model.arch: resnet32, train.init: {best_of: fp32}}
        """))
    assert main(["p.yaml", "--dry-run"]) == 0


# ---------------------------------------------------------------- names

@pytest.mark.parametrize("argv, said", [
    (["--set", "name=" + "n" * 300], "--set: name: the experiment's name .* is 300 characters long"),
    (["--set", "name=mlflow.db"], "--set: name: .* 'mlflow.db' would collide"),
    (["--set", "name=mlartifacts"], "--set: name: .* 'mlartifacts' would collide"),
])
def test_names_that_cannot_be_folders(here, capsys, argv, said):
    import re
    err = refused(here, capsys, *argv)
    assert re.match(said, err), err


def test_stage_called_driver_log(here, capsys):
    (here / "p.yaml").write_text(textwrap.dedent(BASE + "stages:\n  - name: driver.log\n"))
    err = refused(here, capsys, "--dry-run", file="p.yaml")
    assert err.startswith("p.yaml: stages[0].name: a stage name 'driver.log' would collide")


# ---------------------------------------------------------------- folders, stores, addresses

def test_storage_naming_a_file(here, capsys):
    (here / "results").write_text("a file\n")
    err = refused(here, capsys, "--storage", "results")
    assert err == f"s.yaml: --storage: {here / 'results'} is a file, not a folder; name a folder (it is created if missing)"


def test_mlflow_store_in_a_folder_that_cannot_be_written(here, capsys):
    err = refused(here, capsys, "--dry-run", "--mlflow-uri", "/proc/sweeps/mlflow.db")
    assert err.startswith("s.yaml: --mlflow-uri: folder /proc cannot be written")


def test_mlflow_store_that_is_not_sqlite(here, capsys):
    (here / "store.db").write_text("some text\n")
    err = refused(here, capsys, "--dry-run", "--mlflow-uri", "store.db")
    assert "store.db exists and is not an SQLite database" in err


def test_address_where_nothing_listens(here, capsys):
    with socket.socket() as s:          # a port that was free a moment ago
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    err = refused(here, capsys, "--address", f"127.0.0.1:{port}")
    assert err.startswith(f"s.yaml: --address: no Ray cluster answers at 127.0.0.1:{port}")
    assert "ray start --head" in err


# ---------------------------------------------------------------- state of a sweep

def test_garbage_sweep_json_on_resume(here, capsys):
    folder = here / "sweeps" / "t"
    folder.mkdir(parents=True)
    (folder / "sweep.json").write_bytes(b"\x00garbage{")
    err = refused(here, capsys, "--resume")
    assert err.startswith(f"s.yaml: --resume: {folder / 'sweep.json'} is damaged")
    assert "--restart" in err


def test_second_driver_refused_while_the_first_holds_the_lock(here, capsys):
    with SweepLock(str(here / "sweeps" / "t")):
        for extra in ([], ["--resume"], ["--restart"]):
            err = refused(here, capsys, *extra)
            assert f"experiment 't' is already running, pid {os.getpid()}" in err


def test_refusals_import_neither_ray_nor_mlflow(tmp_path):
    tiny_npz(tmp_path / "empty.npz", n_train=0)
    float_checkpoint(tmp_path / "r20.pt")
    (tmp_path / "s.yaml").write_text(textwrap.dedent(BASE))
    code = textwrap.dedent("""
        import json, sys
        from sweep.cli.run import main
        codes = [main(["s.yaml", "--set", "data.dataset=npz", "--set", "data.path=empty.npz"]),
                 main(["s.yaml", "--set", "model.arch=resnet56", "--set", "train.init=r20.pt"]),
                 main(["s.yaml", "--address", "127.0.0.1:9"]),
                 main(["s.yaml", "--set", "resources.cpus_per_trial=4096"]),
                 main(["s.yaml", "--mlflow-uri", "http://127.0.0.1:9"])]
        print(json.dumps({"codes": codes, "loaded": sorted(
            m for m in ("ray", "mlflow", "optuna") if m in sys.modules)}))
        """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, env=env, timeout=120)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"codes": [2] * 5, "loaded": []}, out.stderr
    assert not (tmp_path / "sweeps").exists()


# ---------------------------------------------------------------- found going through the keys

@pytest.mark.parametrize("argv, said", [
    (["--set", "data.crop_pad=1000"], "--set: data.crop_pad: 1000 pixels of padding around 16-pixel images"),
    (["--set", "data.mean=[0.5]", "--set", "data.std=[0.5]"], "--set: data.mean: has 1 value"),
    (["--set", "data.val_fraction=0.999"], "--set: data.val_fraction: 0.999 holds out 64 of"),
    (["--set", "data.dataset=cifar10", "--set", "data.root=s.yaml"], "--set: data.root: .*s.yaml is a file"),
])
def test_data_keys_against_the_data(here, capsys, argv, said):
    import re
    err = refused(here, capsys, "--dry-run", *argv)
    assert re.match(said, err), err


def test_more_cpus_than_this_machine_before_ray(here, capsys):
    n = os.cpu_count()
    err = refused(here, capsys, "--set", f"resources.cpus_per_trial={n + 1}")
    assert err == (f"s.yaml: resources.cpus_per_trial={n + 1} but this machine has {n} CPU(s); "
                   f"use --set resources.cpus_per_trial={n}")


def test_tracking_server_that_does_not_answer(here, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    err = refused(here, capsys, "--mlflow-uri", f"http://127.0.0.1:{port}")
    assert err.startswith(f"s.yaml: --mlflow-uri: MLflow tracking server http://127.0.0.1:{port} "
                          "does not answer")
