"""A Ray cluster of real nodes on this machine, for tests: each node one `ray start
--block` in its own process group, with its own ports (picked free here and given
explicitly), temp folder and log, and token authentication with a token file of its own
(nothing is read from or written to ~/.ray). Stopped by its PID: the whole group. The
second node can be given a mount namespace of its own, to be a machine that does not
share a folder.

Ray 2.60 turns a node address of 127.0.0.1 into this machine's outward one
(``ray._private.services.resolve_ip_for_localhost``), so the nodes register under that
address whatever ``--node-ip-address`` says, and their gRPC servers listen on every
interface; the token is what keeps other clients out (docs/cluster.md).
"""
from __future__ import annotations

import contextlib
import json
import os
import pathlib
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from tests.support.mlflow_server import free_port

RAY_START = [sys.executable, "-m", "ray.scripts.scripts", "start", "--block"]
WORKER_PORTS = 30            # one per worker process of a node


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports free on this machine now (all held while they are picked)."""
    held = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("", 0))
            held.append(s)
        return [s.getsockname()[1] for s in held]
    finally:
        for s in held:
            s.close()


def free_range(n: int, exclude=(), low: int = 20000, high: int = 60000) -> int:
    """The first port of ``n`` consecutive ports free on this machine now (none of
    ``exclude``)."""
    rng = secrets.SystemRandom()
    for _ in range(200):
        base = rng.randrange(low, high - n)
        if any(base <= p < base + n for p in exclude):
            continue
        with contextlib.ExitStack() as stack:
            try:
                for port in range(base, base + n):
                    s = stack.enter_context(socket.socket())
                    s.bind(("", port))
            except OSError:
                continue
            return base
    raise RuntimeError(f"no {n} consecutive free ports in {low}-{high}")


def processes() -> dict[int, tuple[int, int, str]]:
    """``{pid: (ppid, pgid, comm)}`` of every process (/proc/PID/stat)."""
    out = {}
    for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2:].split()
        out[int(stat.parent.name)] = (int(fields[1]), int(fields[2]),
                                      text[text.index("(") + 1:text.rindex(")")])
    return out


def pids_in_group(pgid: int, name: str | None = None) -> list[int]:
    """The processes of process group ``pgid`` (named ``name``: /proc/PID/comm)."""
    return [pid for pid, (_, group, comm) in processes().items()
            if group == pgid and (name is None or comm == name)]


def hiding(folder: pathlib.Path) -> list[str] | None:
    """A command prefix running a command in a mount namespace of its own where
    ``folder`` is an empty tmpfs (what a machine that does not share ``folder`` sees);
    None where this machine does not allow it (``unshare -m`` needs root, or user
    namespaces)."""
    prefix = ["unshare", "-m", "sh", "-c", 'mount -t tmpfs none "$0" && exec "$@"', str(folder)]
    try:
        return prefix if subprocess.run([*prefix, "true"], capture_output=True,
                                        timeout=30).returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        return None


class Node:
    """One ``ray start --block`` (head, or a node joining ``gcs``), run under the command
    prefix ``wrap`` when one is given (it must exec the command: same pid)."""

    def __init__(self, root: pathlib.Path, name: str, env: dict, gcs: str | None = None,
                 wrap: list[str] | None = None, num_cpus: int = 1, timeout_s: float = 120.0):
        self.name, self.head = name, gcs is None
        self.temp = tempfile.mkdtemp(prefix=f"ray-{name}-")   # short: Ray's socket paths
        self.log = root / f"{name}.log"
        ports = free_ports(7)
        self.port = ports[0] if self.head else None
        self.node_manager_port = ports[1]
        workers = free_range(WORKER_PORTS, exclude=ports)
        cmd = [*RAY_START, f"--num-cpus={num_cpus}", "--num-gpus=0", f"--temp-dir={self.temp}",
               f"--node-manager-port={ports[1]}", f"--object-manager-port={ports[2]}",
               f"--dashboard-agent-listen-port={ports[3]}", f"--dashboard-agent-grpc-port={ports[4]}",
               f"--runtime-env-agent-port={ports[5]}", f"--metrics-export-port={ports[6]}",
               f"--min-worker-port={workers}", f"--max-worker-port={workers + WORKER_PORTS - 1}",
               "--object-store-memory=100000000", "--disable-usage-stats"]
        if self.head:
            cmd += ["--head", f"--port={self.port}", "--include-dashboard=false",
                    f"--dashboard-port={free_port()}"]
        else:
            cmd += [f"--address={gcs}"]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([*(wrap or []), *cmd], stdout=log,
                                         stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while b"Ray runtime started" not in self.log.read_bytes():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"ray start ({name}) did not start:\n"
                                   + self.log.read_text(errors="replace")[-3000:])
            time.sleep(0.3)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None and bool(pids_in_group(self.pid, "raylet"))

    def raylet_pid(self) -> int:
        (pid,) = pids_in_group(self.pid, "raylet")
        return pid

    def stop(self) -> None:
        """SIGKILL to the node's whole process group (``ray start`` leads it), by PID."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        self.proc.wait()
        deadline = time.monotonic() + 10
        while pids_in_group(self.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        shutil.rmtree(self.temp, ignore_errors=True)


class Cluster:
    """A head and a second node, 1 CPU each, sharing a token file under ``root``. Where
    the machine allows it, the second node does not see the folder ``unshared`` (an
    empty tmpfs over ``root/unshared`` in its own mount namespace); else ``unshared``
    is None."""

    def __init__(self, root: pathlib.Path, env: dict):
        self.root = pathlib.Path(root)
        folder = self.root / "unshared"
        folder.mkdir(exist_ok=True)
        self.wrap = hiding(folder)
        self.unshared = folder if self.wrap else None
        token = self.root / "ray_token"
        token.write_text(secrets.token_hex(32))
        token.chmod(0o600)
        # what every node and every driver of this cluster needs in its environment
        self.auth_env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
        self.env = {**{k: v for k, v in env.items() if not k.startswith(("RAY_", "TUNE_"))},
                    **self.auth_env}
        self.head = Node(self.root, "head", self.env)
        self.address = f"127.0.0.1:{self.head.port}"
        self.second = None
        try:
            self.start_second()
        except BaseException:
            self.head.stop()
            raise

    def start_second(self) -> Node:
        """The second node, started afresh unless it is running."""
        if self.second is not None and self.second.alive():
            return self.second
        if self.second is not None:
            self.second.stop()
        self.second = Node(self.root, "second", self.env, gcs=self.address, wrap=self.wrap)
        return self.second

    def node_ids(self) -> dict[str, str]:
        """``{"head"|"second": Ray node id (hex)}`` of the live nodes, from the GCS."""
        ports = {self.head.node_manager_port: "head"}
        if self.second is not None:
            ports[self.second.node_manager_port] = "second"
        code = ("import json, sys; from ray._raylet import GcsClient; "
                "from ray.core.generated.gcs_pb2 import GcsNodeInfo; "
                "infos = GcsClient(address=sys.argv[1]).get_all_node_info(timeout=10, "
                "state_filter=GcsNodeInfo.GcsNodeState.ALIVE).values(); "
                "print(json.dumps({i.node_manager_port: i.node_id.hex() for i in infos}))")
        out = subprocess.run([sys.executable, "-c", code, self.address], env=self.env,
                             capture_output=True, text=True, timeout=60, check=True).stdout
        return {ports[int(p)]: nid for p, nid in json.loads(out.splitlines()[-1]).items()
                if int(p) in ports}

    def stop(self) -> None:
        for node in (self.second, self.head):
            if node is not None:
                node.stop()
