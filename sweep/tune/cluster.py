"""Ray start-up for a sweep: a private local cluster or the one ``--address`` names
(with the repository as every trial's working directory), the checks that the trials fit
on it, that its GCS takes this driver's token, and that every node sees the paths a trial
reads or writes (the storage folder, ``train.init`` files); and the capture of Ray's and
MLflow's log lines into ``driver.log``.
"""
from __future__ import annotations

import logging
import logging.handlers
import os
import pathlib
import subprocess
import sys
import tempfile
import uuid

__all__ = ["start_ray", "check_resources", "token_problem", "shared_marker", "check_seen",
           "log_to_file"]

REPO = pathlib.Path(__file__).resolve().parents[2]
# What the repository shipped as every trial's working directory leaves out.
WORKING_DIR_EXCLUDES = [".venv/", ".git/", "sweeps/", "data/", "*.pt", "*.npz", "__pycache__/",
                        ".pytest_cache/", "*.egg-info/"]
# Ray 2.60 turns a node address of 127.0.0.1 into the machine's outward one
# (ray._private.services.resolve_ip_for_localhost) unless multi-node clusters are off,
# and its gRPC servers listen on every interface unless the node address is loopback. A
# private local cluster is one node: with multi-node off it listens on 127.0.0.1 only.
_SINGLE_NODE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
UNSEEN_TIMEOUT_S = 120.0        # a node's first task waits for the working directory


def start_ray(args):
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")          # no Ray progress output
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"            # Ctrl-C ends the driver: resume
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")     # experiment state, for resume
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    # Ray snapshots the experiment at every checkpoint when num_to_keep is set (what a
    # resume wants); its warning about that frequency is noise here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if not args.address:
        os.environ[_SINGLE_NODE_ENV] = "0"      # read when ray is imported, just below
    import ray
    held = _hold_logs()                                        # after ray's own setup
    common = dict(log_to_driver=False, configure_logging=False, include_dashboard=False)
    if args.address:
        ray.init(address=args.address, runtime_env={"working_dir": str(REPO),
                                                    "excludes": WORKING_DIR_EXCLUDES}, **common)
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


def token_problem(host: str, port: int, timeout_s: float = 30.0) -> str | None:
    """Why the GCS at ``host:port`` refuses this driver (Ray's token authentication), or
    None. Asked from a child process with this environment: Ray's client logs its
    retries on stderr, and holds process-wide state. Other failures (and a child that
    does not answer within ``timeout_s``) are left to ``ray.init``."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from sweep.tune.cluster import "
            "_token_problem; print(_token_problem(sys.argv[2], int(sys.argv[3])) or '')")
    try:
        child = subprocess.run([sys.executable, "-c", code, str(REPO), host, str(port)],
                               capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return None
    return (child.stdout.strip() or None) if child.returncode == 0 else None


def _token_problem(host: str, port: int) -> str | None:
    """``token_problem`` in this process: a GCS client of Ray's own connects, sending
    what ``ray.init`` would send (the token when ``RAY_AUTH_MODE=token``)."""
    from ray._raylet import (AuthenticationMode, AuthenticationTokenLoader, GcsClient,
                             get_authentication_mode)
    from ray.exceptions import AuthenticationError
    sources = "$RAY_AUTH_TOKEN, the file $RAY_AUTH_TOKEN_PATH names, or ~/.ray/auth_token"
    token_mode = get_authentication_mode() == AuthenticationMode.TOKEN
    if token_mode:                  # no token: Ray's client would abort the process
        try:
            found = AuthenticationTokenLoader.instance().has_token()
        except AuthenticationError as exc:      # a token file named but unreadable
            return f"RAY_AUTH_MODE=token: {exc.message.rstrip('.')}"
        if not found:
            return f"RAY_AUTH_MODE=token but no token was found in {sources}"
    try:
        GcsClient(address=f"{host}:{port}")
        return None
    except AuthenticationError:
        pass
    except Exception:           # noqa: BLE001 - not ours to judge: ray.init reports it
        return None
    where = f"the Ray cluster at {host}:{port}"
    if not token_mode:
        return (f"{where} asks for a token and this driver sends none (RAY_AUTH_MODE is not "
                f"'token'); export RAY_AUTH_MODE=token, with the cluster's token in {sources} "
                "(docs/cluster.md)")
    return (f"{where} refused this driver's token; use the token the cluster was started "
            f"with (`ray get-auth-token` on its head) in {sources}")


def shared_marker(folder: str) -> str:
    """Write a new empty file in ``folder`` (made if missing) and return its path: what
    every node must see when ``folder`` is shared (``check_seen``); the caller removes it."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f".sweep-shared-{uuid.uuid4().hex}")
    with open(path, "x"):
        pass
    return path


def check_seen(paths: list[str], what: str, fix: str,
               timeout_s: float = UNSEEN_TIMEOUT_S) -> str | None:
    """Every live node of the cluster sees every one of ``paths``: None, else one message
    (``what: node ... does not see PATH; fix``)."""
    found = _unseen(paths, timeout_s)
    if found is None:
        return None
    node, lacks = found
    name = f"{node['NodeManagerAddress']} (Ray node {node['NodeID'][:12]})"
    if lacks is None:
        return (f"{what}: node {name} did not answer within {timeout_s:g} s when asked "
                f"whether it sees {paths[0]} (see its Ray logs); {fix}")
    return f"{what}: node {name} of the cluster does not see {lacks[0]}; {fix}"


def _unseen(paths: list[str], timeout_s: float) -> tuple[dict, list | None] | None:
    """The first live node of the cluster that does not see every one of ``paths``, as
    ``(node, the paths it lacks)``, with None for the paths when the node did not answer
    within ``timeout_s`` (``node``: its ``ray.nodes()`` entry); None when every node sees
    them. One zero-CPU task pinned to each node looks."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    if not paths:
        return None

    @ray.remote(num_cpus=0, max_retries=0)
    def missing(wanted):
        return [p for p in wanted if not os.path.exists(p)]

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    refs = [missing.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
        n["NodeID"], soft=False)).remote(list(paths)) for n in nodes]
    ready, late = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
    for ref in late:
        ray.cancel(ref, force=True)
    for node, ref in zip(nodes, refs):
        lacks = ray.get(ref) if ref in ready else None
        if lacks is None or lacks:
            return node, lacks
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


