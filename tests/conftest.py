"""Shared fixtures: where ../shared is, and skipping cleanly when it is absent."""
from __future__ import annotations

import os
import pathlib
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def shared_path() -> pathlib.Path:
    """The shared data folder: $SWEEP_SHARED_DIR, else ../shared beside the checkout."""
    return pathlib.Path(os.environ.get("SWEEP_SHARED_DIR", REPO.parent / "shared")).resolve()


@pytest.fixture(scope="session")
def shared_dir() -> pathlib.Path:
    path = shared_path()
    if not path.is_dir():
        pytest.skip(f"shared data folder not found at {path} (set SWEEP_SHARED_DIR)")
    return path


def _need(path: pathlib.Path) -> pathlib.Path:
    if not path.exists():
        pytest.skip(f"{path} not found")
    return path


@pytest.fixture(scope="session")
def cifar_npz(shared_dir) -> pathlib.Path:
    return _need(shared_dir / "datasets" / "cifar10_subset.npz")


@pytest.fixture(scope="session")
def mnist_npz(shared_dir) -> pathlib.Path:
    return _need(shared_dir / "datasets" / "mnist_subset.npz")


@pytest.fixture(scope="session")
def apot_ckpt_dir(shared_dir) -> pathlib.Path:
    return _need(shared_dir / "checkpoints" / "apot_cifar10_resnet20")
