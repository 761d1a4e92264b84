"""``sweep.json``: per stage its status (running | finished), its trial summaries and
its best trial, read by later stages and by ``--resume``."""
from __future__ import annotations

import json
import os

from sweep.files import atomic_write_json


class SweepState:
    """``sweep.json``: per stage its status (running | finished), its trial summaries and
    its best trial; each ``save()`` rewrites it atomically (a temporary file, then a rename)."""

    def __init__(self, path: str):
        self.path = path
        self.data = {"version": 1, "stages": {}}
        if os.path.exists(path):
            with open(path) as fh:
                self.data = json.load(fh)

    def stage(self, name: str) -> dict:
        return self.data["stages"].setdefault(name, {"status": "running", "trials": {}})

    def save(self) -> None:
        atomic_write_json(self.path, self.data)

    def candidates(self) -> list[dict]:
        """Finished trials of every stage, as ``pick_init`` candidates."""
        out = []
        for stage, entry in self.data["stages"].items():
            for t in entry["trials"].values():
                if t["status"] == "FINISHED" and t.get("checkpoint") and t.get("metric") is not None:
                    out.append({"stage": stage, **{k: t.get(k) for k in (
                        "trial_id", "run_id", "checkpoint", "metric", "config", "bits")}})
        return out


