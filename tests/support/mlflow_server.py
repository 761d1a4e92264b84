"""A local ``mlflow server`` for tests and benchmarks: started in its own process group
on 127.0.0.1, waited for on /health, and stopped by its PID (the whole group)."""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any, Iterator

from sweep.track.store import prepare_store

def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def start_mlflow_server(backend_uri: str, artifacts_dir: str | os.PathLike, *,
                        host: str = "127.0.0.1", port: int | None = None,
                        log_path: str | os.PathLike | None = None, jobs: bool = False,
                        timeout_s: float = 120.0) -> tuple[subprocess.Popen, str]:
    """Start ``mlflow server`` (its own process group) proxying artifacts to
    ``artifacts_dir``; wait for /health; return ``(process, url)``. ``jobs=False``
    turns off MLflow 3's background job workers, which a tracking store does not need."""
    port = port or free_port(host)
    url = f"http://{host}:{port}"
    prepare_store(backend_uri)
    env = dict(os.environ)
    if not jobs:
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_uri,
           "--artifacts-destination", os.path.abspath(os.fspath(artifacts_dir)),
           "--host", host, "--port", str(port), "--workers", "1"]
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL
    try:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    finally:
        if log_path:
            log.close()
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with status {proc.returncode} "
                               f"(log: {log_path or 'not kept'})")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except (OSError, urllib.error.URLError):
            pass
        if time.monotonic() > deadline:
            stop_mlflow_server(proc)
            raise TimeoutError(f"mlflow server at {url} not healthy after {timeout_s:.0f} s")
        time.sleep(0.2)


def stop_mlflow_server(proc: subprocess.Popen, timeout_s: float = 15.0) -> None:
    """Stop a server from ``start_mlflow_server``: its whole process group, by its id."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=timeout_s)
            break
        except subprocess.TimeoutExpired:
            continue
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)     # workers that outlived the parent
    proc.wait()


@contextlib.contextmanager
def mlflow_server(backend_uri: str, artifacts_dir: str | os.PathLike,
                  **kwargs: Any) -> Iterator[str]:
    """``with mlflow_server(uri, folder) as url:`` a local server for the block."""
    proc, url = start_mlflow_server(backend_uri, artifacts_dir, **kwargs)
    try:
        yield url
    finally:
        stop_mlflow_server(proc)
