"""The provenance tags of every trial run (style.md, "Provenance is part of the result"):
the git commit of the repository the code runs from, whether its tree had changes
(tracked files modified, or files git does not ignore added), and the versions of
torch, ray, mlflow and optuna.

Computed once per process (the driver: the recorder asks for them when it is built),
never per trial. The commit and the versions come from ``models.checkpoint.provenance``,
the record every checkpoint carries, so a run and its checkpoint agree; that imports
torch, which the report command never calls for.
"""
from __future__ import annotations

import functools
import subprocess
from pathlib import Path

from sweep.track.names import (GIT_COMMIT_TAG, GIT_DIRTY_TAG, PROVENANCE_LIBRARIES,
                               SOURCE_GIT_COMMIT_TAG, SOURCE_NAME_TAG, SOURCE_TYPE_TAG, USER_TAG,
                               version_tag)

__all__ = ["provenance_tags", "git_dirty"]

_REPO = Path(__file__).resolve().parents[2]     # the folder holding sweep/, models/, quant/
UNKNOWN = "unknown"


def git_dirty(repo: str | Path = _REPO) -> bool | None:
    """Whether ``git status`` lists anything (a change or a file not ignored); None
    outside a git checkout or without git."""
    try:
        out = subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return bool(out.stdout.strip()) if out.returncode == 0 else None


@functools.lru_cache(maxsize=1)
def _cached() -> tuple[tuple[str, str], ...]:
    from models.checkpoint import provenance      # torch: the driver only
    prov = provenance()
    dirty = git_dirty()
    tags = {GIT_COMMIT_TAG: prov.get("git_commit") or UNKNOWN,
            GIT_DIRTY_TAG: UNKNOWN if dirty is None else str(dirty).lower()}
    versions = prov.get("versions") or {}
    for lib in PROVENANCE_LIBRARIES:
        tags[version_tag(lib)] = versions.get(lib) or UNKNOWN
    # what MLflow's UI shows as Source, Version and User
    tags[SOURCE_NAME_TAG] = "run_sweep.py"
    tags[SOURCE_TYPE_TAG] = "LOCAL"
    if prov.get("git_commit"):
        tags[SOURCE_GIT_COMMIT_TAG] = prov["git_commit"]
    try:
        import getpass
        tags[USER_TAG] = getpass.getuser()
    except (KeyError, OSError):           # no user name in this environment
        pass
    return tuple(tags.items())


def provenance_tags() -> dict[str, str]:
    """``{sweep.git_commit, sweep.git_dirty, sweep.version.<lib>: value}``, ``unknown``
    where a value cannot be found (no git checkout, a library not installed), and
    MLflow's ``mlflow.source.name``, ``mlflow.source.type``, ``mlflow.source.git.commit``
    and ``mlflow.user``."""
    return dict(_cached())
