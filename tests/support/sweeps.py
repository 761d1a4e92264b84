"""Running ``run_sweep.py`` as a subprocess in a test's folder and reading back what it
recorded: the shared helpers of the end-to-end sweep tests."""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import textwrap
import time

import pytest
from mlflow import MlflowClient

REPO = pathlib.Path(__file__).resolve().parents[2]
RUN = [sys.executable, str(REPO / "run_sweep.py")]


def env(extra: dict | None = None) -> dict:
    """This environment without Ray/Tune settings, Python output unbuffered, and
    ``extra`` (e.g. a cluster's token settings)."""
    e = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "TUNE_"))}
    e["PYTHONUNBUFFERED"] = "1"
    return {**e, **(extra or {})}


def sweep(cwd, *args, timeout=300, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*RUN, *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env(extra_env))


def write(folder: pathlib.Path, text: str, name: str = "s.yaml") -> pathlib.Path:
    """``text`` (dedented) as ``folder/name``."""
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def store(cwd) -> MlflowClient:
    """A client of the SQLite store a sweep run in ``cwd`` writes to."""
    uri = f"sqlite:///{cwd}/sweeps/mlflow.db"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def runs(client, name, role=None):
    exp = client.get_experiment_by_name(name)
    flt = f"tags.`sweep.role` = '{role}'" if role else ""
    return exp, client.search_runs([exp.experiment_id], filter_string=flt, max_results=1000)


def steps(client, run_id, key="val_acc"):
    return [m.step for m in client.get_metric_history(run_id, key)]


def epoch_reported(line: str) -> bool:
    """A progress line ``elapsed trial <values> RUNNING k/N ...``: an epoch result."""
    cells = line.split()
    return "RUNNING" in cells and cells.index("RUNNING") + 1 < len(cells) and \
        cells[cells.index("RUNNING") + 1][0].isdigit()


def start_until_an_epoch(cwd, *args, timeout: float = 180) -> subprocess.Popen:
    """``run_sweep.py s.yaml *args`` in the background (output to ``cwd/first.txt``),
    returned once an epoch result is printed."""
    out = pathlib.Path(cwd) / "first.txt"
    with open(out, "w") as log:          # the child keeps its own copy of the handle
        proc = subprocess.Popen([*RUN, "s.yaml", *map(str, args)], cwd=cwd, stdout=log,
                                stderr=subprocess.STDOUT, env=env())
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(epoch_reported(line) for line in out.read_text().splitlines()):
            return proc
        assert proc.poll() is None, out.read_text()
        time.sleep(0.3)
    proc.kill()
    proc.wait()
    pytest.fail(f"no epoch result within {timeout:g} s:\n" + out.read_text())
