"""A killed driver's sweep, resumed with damaged state files or started twice: a real
local Ray cluster, a real MLflow SQLite store, a real ``kill -9``. After the resume each
trial has exactly one MLflow run, none is RUNNING, and no epoch is logged twice."""
from __future__ import annotations

import json
import os
import signal
import time

import pytest

from tests.support.sweeps import runs, start_until_an_epoch, steps, store, sweep, write

pytestmark = pytest.mark.slow

SMALL = """
name: damaged
data:
  dataset: synthetic
  synthetic: {train_size: 64, test_size: 32, image_size: 16}
model: {arch: resnet20}
quant: {w_bits: 4, a_bits: 4}
train: {epochs: 2, batch_size: 32, lr: {grid: [0.05, 0.1]}, device: cpu}
search: {algorithm: grid, scheduler: {type: fifo}}
resources: {cpus_per_trial: 1}
"""


def kill_9(proc) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def assert_exact(tmp_path) -> None:
    """Two trials, one run each, FINISHED, epochs 1..2 logged once; no run RUNNING."""
    client = store(tmp_path)
    _, trials = runs(client, "damaged", "trial")
    assert sorted(r.data.tags["sweep.trial_id"] for r in trials) == sorted(
        {r.data.tags["sweep.trial_id"] for r in trials}), "a trial has two runs"
    assert len(trials) == 2
    _, everything = runs(client, "damaged")
    assert not [r for r in everything if r.info.status == "RUNNING"]
    assert len(everything) == 3                          # the stage run and two trial runs
    for run in trials:
        assert run.info.status == "FINISHED"
        for key in ("val_acc", "train_loss"):
            assert steps(client, run.info.run_id, key) == [1, 2], (run.info.run_name, key)


def test_second_start_refused_then_kill_9_and_resume_with_damaged_state(tmp_path):
    """Started twice: the second is refused at once, the first runs on. Killed: its lock
    stays behind and does not block --resume; a garbage sweep.json is refused in one line;
    moved aside, and with tracking.json gone, the resume rebuilds both and ends exact."""
    write(tmp_path, SMALL)
    first = start_until_an_epoch(tmp_path)
    t0 = time.monotonic()
    second = sweep(tmp_path, "s.yaml", timeout=60)
    took = time.monotonic() - t0
    assert second.returncode == 2, second.stdout + second.stderr
    assert f"experiment 'damaged' is already running, pid {first.pid}" in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1 and took < 30, (took, second.stderr)
    assert first.poll() is None                          # the first is left to run

    kill_9(first)
    folder = tmp_path / "sweeps" / "damaged"
    assert (folder / "driver.lock").read_text().strip() == str(first.pid)   # left behind
    (folder / "sweep.json").write_text("{not json at all")
    before = sorted(p.name for p in folder.iterdir())
    bad = sweep(tmp_path, "s.yaml", "--resume", timeout=60)
    assert bad.returncode == 2, bad.stdout + bad.stderr
    assert bad.stderr.strip().splitlines() == [
        f"s.yaml: --resume: {folder / 'sweep.json'} is damaged (JSONDecodeError: Expecting "
        "property name enclosed in double quotes: line 1 column 2 (char 1)); move it aside to "
        "continue from Ray's stage folders and MLflow, or start again with --restart"]
    assert sorted(p.name for p in folder.iterdir()) == before

    (folder / "sweep.json").rename(folder / "sweep.json.damaged")     # as the message says
    (folder / "tracking.json").unlink()
    resumed = sweep(tmp_path, "s.yaml", "--resume")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "tracking.json is missing: rebuilt the trial -> run map from MLflow" in resumed.stderr
    assert_exact(tmp_path)
    json.loads((folder / "tracking.json").read_text())                 # whole again
