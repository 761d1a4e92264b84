"""The checks ``run_sweep.py`` makes of what the command line and the machine give a
sweep, after the file is valid and before Ray starts, MLflow is touched or anything is
written: the storage and MLflow folders can be written, a ``--address`` answers and takes
this driver's token, the device a trial asks for exists here, and the state files a
``--resume`` reads are whole.

Each returns one message (``flag or key: what is wrong; what to do``) or None.
"""
from __future__ import annotations

import json
import os
import socket
import tempfile
import urllib.parse

__all__ = ["check_folder", "check_store", "check_server", "check_address", "check_device",
           "check_resources", "check_state"]

ADDRESS_TIMEOUT_S = 3.0
_RAY_PORT = 6379            # a cluster's GCS when an address gives no port
_CLIENT_PORT = 10001        # ray:// (Ray Client)


def check_folder(path: str, what: str) -> str | None:
    """``path`` is, or can be made, a folder this process can write in."""
    probe = path
    while not os.path.lexists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        return f"{what}: {probe} is a file, not a folder; name a folder (it is created if missing)"
    why = None if os.access(probe, os.W_OK | os.X_OK) else "permission denied"
    if why is None:
        try:        # what os.access cannot tell: read-only mounts, root on odd filesystems
            fd, tmp = tempfile.mkstemp(prefix=".sweep-probe-", dir=probe)
            os.close(fd)
            os.unlink(tmp)
        except OSError as exc:
            why = (exc.strerror or str(exc)).lower()
    if why:
        return f"{what}: folder {probe} cannot be written ({why}); choose a folder you can write"
    return None


def check_store(uri: str, flag: str) -> str | None:
    """A SQLite store's file and folder can be written (other stores are checked when
    the run starts: a tracking server is asked /health)."""
    if not uri.startswith("sqlite:///"):
        return None
    db = os.path.abspath(uri[len("sqlite:///"):].split("?", 1)[0])
    if os.path.isdir(db):
        return f"{flag}: {db} is a folder, not an SQLite file; name the .db file or its folder"
    if os.path.exists(db):
        if not os.access(db, os.R_OK | os.W_OK):
            return f"{flag}: MLflow store {db} cannot be written by this user"
        with open(db, "rb") as fh:
            head = fh.read(16)
        if head and head != b"SQLite format 3\0":
            return f"{flag}: {db} exists and is not an SQLite database; name another file"
    problem = check_folder(os.path.dirname(db), flag)
    if problem is None and not os.path.exists(db):
        # the store also creates mlartifacts/ beside the database
        arts = os.path.join(os.path.dirname(db), "mlartifacts")
        if os.path.lexists(arts) and not os.path.isdir(arts):
            return f"{flag}: {arts} is a file; MLflow keeps the artifacts of {db} in that folder"
    return problem


def check_server(uri: str, flag: str) -> str | None:
    """An ``http(s)://`` tracking server answers ``/health`` within a few seconds."""
    if not uri.startswith(("http://", "https://")):
        return None
    import urllib.error
    import urllib.request
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=ADDRESS_TIMEOUT_S) as r:
            if r.status == 200:
                return None
            why = f"HTTP {r.status}"
    except (OSError, urllib.error.URLError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        why = getattr(reason, "strerror", None) or str(reason)
    return (f"{flag}: MLflow tracking server {uri} does not answer ({why}); start it, or drop "
            f"{flag} to use the local SQLite store")


def check_address(address: str | None) -> str | None:
    """A ``--address host:port`` (or ``ray://host:port``) answers within a few seconds,
    and a cluster's GCS takes the token this driver would send."""
    if not address or address in ("auto", "local"):
        return None
    text = address if "://" in address else "ray-gcs://" + address
    parsed = urllib.parse.urlsplit(text)
    try:
        port = parsed.port or (_CLIENT_PORT if parsed.scheme == "ray" else _RAY_PORT)
    except ValueError:
        return f"--address: {address!r} is not host:port (e.g. 10.0.0.5:6379 or ray://10.0.0.5:10001)"
    host = parsed.hostname
    if not host:
        return f"--address: {address!r} is not host:port (e.g. 10.0.0.5:6379 or ray://10.0.0.5:10001)"
    try:
        with socket.create_connection((host, port), timeout=ADDRESS_TIMEOUT_S):
            pass
    except OSError as exc:
        why = "timed out" if isinstance(exc, socket.timeout) else (exc.strerror or str(exc))
        return (f"--address: no Ray cluster answers at {host}:{port} ({why} within "
                f"{ADDRESS_TIMEOUT_S:g} s); start one there with `ray start --head --port={port}`, "
                "or leave --address out to run on a local cluster of this machine")
    if parsed.scheme == "ray":
        return None
    from sweep.tune.cluster import token_problem       # Ray's token authentication
    problem = token_problem(host, port)
    return f"--address: {problem}" if problem else None


def check_device(exp, plans) -> str | None:
    """A trial asking for ``train.device: cuda`` on a machine without CUDA (only when the
    trials run here: with ``--address`` they run on the cluster's machines)."""
    from sweep.tune.plan import concrete_candidates      # no Ray at module level
    devices = set()
    for plan in plans:
        for arm_tree in plan.arm_trees:
            for tree in concrete_candidates(arm_tree, "train") or [arm_tree]:
                dev = tree.get("train", {}).get("device", "auto")
                if isinstance(dev, str) and dev.startswith("cuda"):
                    devices.add(dev)
    if not devices:
        return None
    import torch
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for dev in sorted(devices):
        index = int(dev.partition(":")[2] or 0)
        if index >= count:
            have = f"{count} CUDA device(s)" if count else "no CUDA device"
            return (f"train.device: {dev} but this machine has {have}; use --set "
                    "train.device=auto (the GPU when there is one) or train.device=cpu")
    return None


def check_resources(plans) -> str | None:
    """Trials that ask for more CPUs or GPUs than this machine has (the local cluster is
    this machine: with ``--address`` Ray checks them against its cluster)."""
    from sweep.tune.cluster import check_resources as fits      # no Ray at module level
    gpus = 0
    if any(plan.resources.gpus_per_trial > 0 for plan in plans):
        import torch
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return fits(plans, os.cpu_count() or 1, gpus, "this machine")


def check_state(folder: str) -> str | None:
    """``sweep.json`` of a sweep being resumed is readable (``tracking.json`` need not be:
    the recorder rebuilds it from MLflow)."""
    path = os.path.join(folder, "sweep.json")
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
        ok = isinstance(data, dict) and isinstance(data.get("stages"), dict) and all(
            isinstance(v, dict) and isinstance(v.get("trials", {}), dict)
            for v in data["stages"].values())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        why = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
        ok = False
    else:
        why = "not the sweep's state"
    if ok:
        return None
    return (f"--resume: {path} is damaged ({why}); move it aside to continue from Ray's stage "
            "folders and MLflow, or start again with --restart")
