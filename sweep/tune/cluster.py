"""Ray start-up for a sweep: a private local cluster or the one ``--address`` names
(with the repository as every trial's working directory), the check that the trials fit
on it, and the capture of Ray's and MLflow's log lines into ``driver.log``.
"""
from __future__ import annotations

import logging
import logging.handlers
import os
import pathlib
import tempfile

__all__ = ["start_ray", "check_resources", "log_to_file"]

REPO = pathlib.Path(__file__).resolve().parents[2]


def start_ray(args):
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")          # no Ray progress output
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"            # Ctrl-C ends the driver: resume
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")     # experiment state, for resume
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    # Ray snapshots the experiment at every checkpoint when num_to_keep is set (what a
    # resume wants); its warning about that frequency is noise here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    import ray
    held = _hold_logs()                                        # after ray's own setup
    common = dict(log_to_driver=False, configure_logging=False, include_dashboard=False)
    if args.address:
        ray.init(address=args.address, runtime_env={"working_dir": str(REPO), "excludes": [
            ".venv/", ".git/", "sweeps/", "data/", "*.pt", "*.npz"]}, **common)
    else:
        # A cluster of our own, in our own temp folder: never one a killed driver left
        # behind (those exit with it), nor another user's.
        os.environ.pop("RAY_ADDRESS", None)
        temp = os.path.join(tempfile.gettempdir(), f"ray-sweep-{os.getuid()}")
        ray.init(address="local", num_cpus=os.cpu_count(), _temp_dir=temp,
                 _node_ip_address="127.0.0.1", **common)
    logging.getLogger("ray").addHandler(held)                      # ray.init drops it
    return ray, held


def check_resources(plans, cpus: float, gpus: float, where: str) -> str | None:
    """The first stage whose trials ask for more CPUs or GPUs than ``where`` has
    (``this machine`` before Ray starts, ``the Ray cluster`` after), as a message."""
    for plan in plans:
        r = plan.resources
        stage = f"stage {plan.name}: " if len(plans) > 1 else ""
        if r.gpus_per_trial > gpus:
            return (f"{stage}resources.gpus_per_trial={r.gpus_per_trial:g} but {where} has "
                    f"{gpus:g} GPU(s); run on the CPU with --set resources.gpus_per_trial=0")
        if r.cpus_per_trial > cpus:
            return (f"{stage}resources.cpus_per_trial={r.cpus_per_trial:g} but {where} has "
                    f"{cpus:g} CPU(s); use --set resources.cpus_per_trial={max(int(cpus), 1)}")
    return None


_QUIET = ("ray", "ray._private", "mlflow", "alembic", "py.warnings", "sweep", "optuna")


def _hold_logs() -> logging.handlers.MemoryHandler:
    """Keep the log lines of Ray, MLflow and warnings off the terminal (the table is
    the output); they are written to driver.log once the sweep folder exists."""
    held = logging.handlers.MemoryHandler(capacity=100_000, flushLevel=logging.CRITICAL + 10)
    logging.captureWarnings(True)
    for name in _QUIET:
        lg = logging.getLogger(name)
        for h in list(lg.handlers):
            lg.removeHandler(h)
        lg.addHandler(held)
        lg.propagate = False
        if name in ("sweep", "py.warnings", "mlflow"):
            lg.setLevel(logging.INFO)
    return held


def log_to_file(held: logging.handlers.MemoryHandler, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    held.setTarget(handler)
    held.flush()
    for name in _QUIET:
        lg = logging.getLogger(name)
        lg.removeHandler(held)
        for h in list(lg.handlers):     # Ray re-adds its own on init
            lg.removeHandler(h)
        lg.addHandler(handler)


