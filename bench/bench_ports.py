"""What a sweep's own processes listen on, and what a client without the cluster's token
gets from each (docs/cluster.md, "What listens where").

    python bench/bench_ports.py [--file search_spaces/smoke.yaml] [--cluster]

Runs ``run_sweep.py FILE`` in a temporary folder: by default on its private local Ray
cluster; with ``--cluster`` on a head and a second node started with ``ray start``
(``tests/support/ray_cluster.py``: token authentication, a token file of its own) and a
``mlflow server`` (``tests/support/mlflow_server.py``), through ``--address``,
``--storage`` and ``--mlflow-uri``. While it runs, every TCP socket listening in its
processes (the driver's process tree; with ``--cluster`` also the nodes' and the server's
process groups) is listed (``ss -ltnpH``) and asked once, without the token:

- a gRPC call (``curl --http2-prior-knowledge``, an empty request) of a read-only method
  of each of Ray's services in turn (GCS, raylet, object manager, core worker) until one
  is served there: the ``grpc-status`` it answers (16 UNAUTHENTICATED: refused for want
  of the token; 0 OK: served);
- otherwise a plain HTTP ``GET /``: the HTTP status.

Then, from fresh processes without the token (``RAY_AUTH_MODE`` unset, as an explicit
address leaves it), Ray's own clients: ``GcsClient`` and ``ray.init(address=...)``; and
the GCS call once more with the token, to show the probe itself is sound. Needs
``ss`` and ``curl`` with HTTP/2.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import threading
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.mlflow_server import start_mlflow_server, stop_mlflow_server   # noqa: E402
from tests.support.ray_cluster import Cluster, processes                             # noqa: E402
from tests.support.sweeps import RUN, env                                            # noqa: E402

# A read-only method of each of Ray's gRPC services; a server answers 12 (UNIMPLEMENTED)
# for a service it does not hold, before any token check.
METHODS = ("ray.rpc.NodeInfoGcsService/GetClusterId", "ray.rpc.NodeManagerService/GetSystemConfig",
           "ray.rpc.ObjectManagerService/Pull", "ray.rpc.CoreWorkerService/NumPendingTasks")
GRPC_STATUS = {0: "OK", 12: "UNIMPLEMENTED", 14: "UNAVAILABLE", 16: "UNAUTHENTICATED"}
NO_TOKEN = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "TUNE_"))}


def ours(roots: list[int], groups: list[int]) -> set[int]:
    """The processes descending from ``roots`` or in the process ``groups``."""
    procs = processes()
    found = {p for p, (_, pgid, _) in procs.items() if pgid in groups} | set(roots)
    grew = True
    while grew:
        more = {p for p, (ppid, _, _) in procs.items() if ppid in found} - found
        found |= more
        grew = bool(more)
    return found


def listening(pids: set[int]) -> list[tuple[str, int, str, str]]:
    """``(process name, pid, local address, port)`` of the listening TCP sockets of ``pids``."""
    out = []
    text = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout
    for line in text.splitlines():
        local = line.split()[3]
        host, port = local.rsplit(":", 1)
        for name, pid in re.findall(r'\("([^"]+)",pid=(\d+),', line):
            if int(pid) in pids:
                out.append((name, int(pid), host, port))
    return out


def target(host: str) -> str:
    """Where to reach a socket listening on ``host`` from this machine."""
    host = host.strip("[]").removeprefix("::ffff:")
    return "127.0.0.1" if host in ("*", "0.0.0.0", "::") else host


def grpc_status(host: str, port: str, method: str, headers=()) -> int | None:
    empty = b"\0\0\0\0\0"           # one gRPC message of zero bytes
    cmd = ["curl", "-s", "-o", "/dev/null", "-D", "-", "--max-time", "3", "--http2-prior-knowledge",
           "-X", "POST", "-H", "content-type: application/grpc", "-H", "te: trailers",
           *[a for h in headers for a in ("-H", h)], "--data-binary", "@-",
           f"http://{target(host)}:{port}/{method}"]
    out = subprocess.run(cmd, input=empty, capture_output=True).stdout.decode(errors="replace")
    found = re.search(r"grpc-status: (\d+)", out)
    return int(found.group(1)) if found else None


def probe(host: str, port: str, attempts: int = 3) -> str:
    """What a client without the token gets from ``host:port`` (asked again, up to
    ``attempts`` times, while a starting server does not answer yet)."""
    for attempt in range(attempts):
        if attempt:
            time.sleep(2)
        statuses = [grpc_status(host, port, method) for method in METHODS]
        served = [(m, s) for m, s in zip(METHODS, statuses) if s not in (None, 12)]
        if served:
            return "; ".join(f"gRPC {m.split('/')[0]}: {s} {GRPC_STATUS.get(s, '')}" for m, s in served)
        if statuses.count(12) == len(statuses):
            return "gRPC: 12 UNIMPLEMENTED for every service tried"
        code = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "3",
                               f"http://{target(host)}:{port}/"], capture_output=True, text=True).stdout
        if code != "000":
            return f"HTTP GET /: {code}"
    return f"no answer within 3 s, {attempts} times"


def with_token(gcs: str, token_file: pathlib.Path) -> str:
    """The GCS call of the probe, with the cluster's token: the probe itself is sound."""
    token = token_file.read_text().strip()
    status = grpc_status(*gcs.rsplit(":", 1), METHODS[0], [f"authorization: Bearer {token}"])
    return f"the same GCS call with the cluster's token ({token_file}): {status} {GRPC_STATUS.get(status, '')}"


def client_without_token(gcs: str, timeout_s: float = 60) -> list[str]:
    """Ray's own clients, from fresh processes without the token: the exception each
    raises, or the last line Ray logged when it is still trying after ``timeout_s``."""
    lines = []
    code = ("import sys, time; t = time.time()\n"
            "try:\n"
            "    {call}\n"
            "    print('connected', end='')\n"
            "except Exception as e:\n"
            "    print(type(e).__name__ + ': ' + str(e).splitlines()[0][:160], end='')\n"
            "print(f' ({{time.time() - t:.1f}} s)')\n")
    for what, call in (("GcsClient", "from ray._raylet import GcsClient; GcsClient(address=sys.argv[1])"),
                       ("ray.init", "import ray; ray.init(address=sys.argv[1], log_to_driver=False)")):
        proc = subprocess.Popen([sys.executable, "-c", code.format(call=call), gcs], env=NO_TOKEN,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            last = [ln for ln in err.splitlines() if "Failed" in ln][-1:] or ["(nothing logged)"]
            out = f"still trying after {timeout_s:g} s; it logged: {last[0][last[0].find(']') + 1:].strip()}"
        lines.append(f"{what}(address={gcs}) without the token: {out.strip()}")
    return lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--file", default=str(REPO / "search_spaces" / "smoke.yaml"))
    p.add_argument("--cluster", action="store_true",
                   help="a two-node `ray start` cluster and an mlflow server instead of a local sweep")
    args = p.parse_args()
    root = pathlib.Path(tempfile.mkdtemp(prefix="bench-ports-"))
    cluster = server = None
    extra, groups, sweep_args = {}, [], []
    if args.cluster:
        server, url = start_mlflow_server(f"sqlite:///{root}/server.db", root / "artifacts")
        cluster = Cluster(root, os.environ)
        extra, groups = cluster.auth_env, [cluster.head.pid, cluster.second.pid, server.pid]
        sweep_args = ["--address", cluster.address, "--storage", root / "shared", "--mlflow-uri", url]
    seen: dict[tuple[int, str, str], list] = {}
    gcs, clients = None, []
    token_file = pathlib.Path(cluster.auth_env["RAY_AUTH_TOKEN_PATH"] if cluster else
                              os.path.expanduser("~/.ray/auth_token"))   # a local cluster's
    try:
        t0 = time.time()
        with open(root / "out.txt", "w") as log:
            proc = subprocess.Popen([*RUN, args.file, *map(str, sweep_args)], cwd=root, stdout=log,
                                    stderr=subprocess.STDOUT, env=env(extra))
        probes: list[threading.Thread] = []
        while proc.poll() is None:
            server_pids = ours([], [server.pid]) if server else set()
            for name, pid, host, port in listening(ours([proc.pid], groups)):
                key = (pid, host, port)
                if key not in seen:
                    seen[key] = [name, None]
                    th = threading.Thread(target=lambda k=key, h=host, pt=port:
                                          seen[k].__setitem__(1, probe(h, pt)))
                    th.start()
                    probes.append(th)
                seen[key][0] = ("driver " if pid == proc.pid else
                                "mlflow server " if pid in server_pids else
                                "") + name
                if name == "gcs_server" and gcs is None:
                    gcs = f"{target(host)}:{port}"
                    th = threading.Thread(target=lambda: clients.extend(
                        [with_token(gcs, token_file), *client_without_token(gcs)]))
                    th.start()
                    probes.append(th)
            time.sleep(0.5)
        took = time.time() - t0
        for th in probes:
            th.join()
    finally:
        if cluster is not None:
            cluster.stop()
        if server is not None:
            stop_mlflow_server(server)
    where = "a two-node `ray start` cluster and an mlflow server" if args.cluster else "a local sweep"
    print(f"{where}: run_sweep.py {os.path.relpath(args.file, REPO)} exited {proc.returncode} "
          f"after {took:.0f} s")
    print(f"{'process':22s} {'listens on':32s} {'loopback':8s}  without the token")
    for (pid, host, port), (name, answer) in sorted(seen.items(), key=lambda kv: (kv[1][0], kv[0])):
        bare = host.strip("[]").removeprefix("::ffff:")
        loop = "yes" if bare.startswith("127.") or bare == "::1" else "no"
        print(f"{name:22s} {host + ':' + port:32s} {loop:8s}  {answer}")
    for line in clients:
        print(line)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
