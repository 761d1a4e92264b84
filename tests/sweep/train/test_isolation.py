"""The training wing knows neither Ray nor MLflow: importing it in a fresh interpreter
loads neither (a GPU machine may have only torch and PyYAML)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO

_PROBE = """
import json, sys
import {modules}
print(json.dumps(sorted(m for m in ("ray", "mlflow", "optuna") if m in sys.modules)))
"""


@pytest.mark.parametrize("modules", [
    "sweep.train.engine, sweep.train.data, sweep.train.loader, sweep.train.evaluate, sweep.train.bits, "
    "sweep.train.folder",
    "sweep.config",
])
def test_wing_imports_neither_ray_nor_mlflow(modules):
    proc = subprocess.run([sys.executable, "-c", _PROBE.format(modules=modules)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


def test_trainer_refuses_an_unresolved_mlflow_source(tmp_path):
    """runs:/ and models:/ are resolved at the command-line edge; the engine only reads files."""
    from sweep.config import resolve_trial
    from sweep.train.engine import Trainer
    cfg = resolve_trial({"data": {"dataset": "synthetic", "synthetic": {"train_size": 8, "test_size": 8}},
                         "model": {"arch": "resnet20"}, "train": {"epochs": 1, "device": "cpu",
                                                                  "init": "runs:/0123abcd"}})
    with pytest.raises(ValueError, match="is an MLflow source: resolve it to a local file first"):
        Trainer(cfg, log=lambda _: None)
