"""``python run_sweep.py FILE.yaml``: validate, then run every stage as one Ray Tune
sweep, recording in MLflow (docs/commands.md).

Order of work, so that a bad input costs nothing: parse and validate the file and the
overrides, with the files they name and the folders results go to (exit 2, before Ray or
MLflow is imported), ``--dry-run`` stops there; check this machine and the services the
sweep reaches (``sweep.cli.preflight``); take the sweep's lock (another live driver:
exit 2); refuse existing results without ``--resume``/``--restart``; load the datasets
(exit 2 on a DataError); start Ray and check that the trials fit on the cluster (exit 2);
only then create the sweep folder and the MLflow store, and run the stages.

Files (``--storage`` moves the first; ``--mlflow-uri`` the second):

    ./sweeps/<name>/sweep.json      finished stages, their trials and best trial (resume)
    ./sweeps/<name>/tracking.json   trial -> MLflow run map (SweepRecorder state)
    ./sweeps/<name>/<stage>/<trial_id>/checkpoint_*/model.pt   Ray's results
    ./sweeps/<name>/driver.log      Ray's and MLflow's own log lines
    ./sweeps/<name>/driver.lock     the running driver's pid (sweep.lock)
    ./sweeps/mlflow.db, ./sweeps/mlartifacts/<name>/   the MLflow store
"""
from __future__ import annotations

import argparse
import logging
import logging.handlers
import os
import shlex
import shutil
import signal
import sys

from sweep.cli import preflight
from sweep.config import ConfigError, Experiment, load_experiment, resolve_trial
from sweep.lock import LOCK_FILE, AlreadyRunning, SweepLock
from sweep.tune.plan import StagePlan, concrete_candidates, plan_stage
from sweep.config.checks import is_uri
from sweep.tune.lineage import check_sources, data_key

__all__ = ["main", "build_parser"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
log = logging.getLogger("sweep")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="run_sweep.py", description=(
        "Run a search-space file as Ray Tune sweeps, one per stage, recorded in MLflow."))
    p.add_argument("file", help="the experiment's YAML file")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any dotted key (repeatable), e.g. --set train.lr=0.01")
    p.add_argument("--dry-run", action="store_true",
                   help="validate and print the stages, trials and resources; start nothing")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="continue an interrupted sweep of the same name")
    again.add_argument("--restart", action="store_true",
                       help="discard the name's results (folder; MLflow runs are deleted, "
                            "recoverable with `mlflow runs restore`) and start again")
    p.add_argument("--stages", metavar="NAME[,NAME]",
                   help="run only these stages (e.g. skip fp32 with --stages w2a2 "
                        "--set train.init=PATH)")
    p.add_argument("--address", help="join this Ray cluster instead of starting a local one")
    p.add_argument("--storage", help="where results go (default ./sweeps; a shared path or "
                                     "s3://, gs:// when trials run on several machines)")
    p.add_argument("--mlflow-uri", help="MLflow tracking URI (default sqlite:///<storage>/mlflow.db)")
    return p


# ---------------------------------------------------------------- paths

class Paths:
    """Where everything of a sweep goes, absolute."""

    def __init__(self, exp: Experiment, args, cwd: str):
        storage = args.storage or os.path.join(cwd, "sweeps")
        self.remote = is_uri(storage) and "://" in storage and not storage.startswith("file://")
        if not self.remote:
            storage = os.path.abspath(os.path.join(cwd, os.path.expanduser(
                storage[len("file://"):] if storage.startswith("file://") else storage)))
        self.storage = storage
        self.sweep = f"{storage.rstrip('/')}/{exp.name}" if self.remote else os.path.join(storage, exp.name)
        # sweep.json, tracking.json and the log stay local when results go to a URI
        self.state = self.sweep if not self.remote else os.path.join(cwd, "sweeps", exp.name)
        uri = args.mlflow_uri or exp.tracking.mlflow_uri
        if uri is None:
            if self.remote:
                raise ConfigError("--storage", None, f"{storage} is a URI, so the default SQLite "
                                  "MLflow store cannot live there; pass --mlflow-uri (a tracking "
                                  "server, or sqlite:///path/mlflow.db)")
            uri = "sqlite:///" + os.path.join(storage, "mlflow.db")
        elif not is_uri(uri):
            path = os.path.abspath(os.path.join(cwd, os.path.expanduser(uri)))
            uri = "sqlite:///" + (path if path.endswith(".db") else os.path.join(path, "mlflow.db"))
        self.mlflow = uri

    def stage(self, name: str) -> str:
        return f"{self.sweep}/{name}" if self.remote else os.path.join(self.sweep, name)

    def has_results(self) -> bool:
        return os.path.isdir(self.state) and any(e.name != LOCK_FILE for e in os.scandir(self.state))


def _select(exp: Experiment, text: str | None) -> list:
    if not text:
        return list(exp.stages)
    names = [n.strip() for n in text.split(",") if n.strip()]
    known = [s.name for s in exp.stages]
    for n in names:
        if n not in known:
            raise ConfigError("--stages", n, f"no such stage; stages: {', '.join(known)}")
    return [s for s in exp.stages if s.name in names]


# ---------------------------------------------------------------- dry run

def print_dry_run(exp: Experiment, plans: list[StagePlan], paths: Paths) -> None:
    print(f"experiment {exp.name} ({exp.file})")
    print(f"  results: {paths.sweep}")
    print(f"  MLflow:  {paths.mlflow}")
    for plan in plans:
        print("\n".join(plan.describe()))
    print(f"{sum(p.num_trials() for p in plans)} trial(s) in {len(plans)} stage(s); nothing was started")
    from sweep.tune.estimate import describe_costs      # torch: the models' shapes
    print("\n".join(describe_costs(plans)))


# ---------------------------------------------------------------- main

def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    cwd = os.getcwd()
    try:
        exp = load_experiment(args.file, args.set, cwd=cwd)
        paths = Paths(exp, args, cwd)
        selected = _select(exp, args.stages)
        plans = [plan_stage(exp, s.name) for s in selected]
        check_sources(plans, resuming=args.resume)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_USAGE
    problem = _preflight(exp, plans, paths, args)
    if problem:
        print(f"{args.file}: {problem}", file=sys.stderr)
        return EXIT_USAGE
    if args.dry_run:
        print_dry_run(exp, plans, paths)
        return EXIT_OK
    fresh = not paths.has_results()
    lock = SweepLock(paths.state)
    try:
        lock.acquire()
    except AlreadyRunning as exc:
        pid = f"pid {exc.pid}" if exc.pid else "its pid not written yet"
        print(f"{args.file}: name: experiment {exp.name!r} is already running, {pid} (lock "
              f"{exc.path}); wait for it to end, or choose another name (--set name=...)",
              file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"{args.file}: --storage: cannot write {paths.state}: {exc.strerror or exc}",
              file=sys.stderr)
        return EXIT_USAGE
    code = EXIT_FAILED
    try:
        code = _locked(exp, plans, paths, args, fresh)
    finally:
        if code == EXIT_USAGE and fresh:
            # refused at start (resources, tracking server, init checkpoint): nothing ran,
            # so leave no folder that would make the corrected command say "results exist"
            shutil.rmtree(paths.state, ignore_errors=True)
        lock.release()
    return code


def _preflight(exp, plans, paths: Paths, args) -> str | None:
    """What the command line and this machine give the sweep (sweep.cli.preflight)."""
    if not paths.remote:
        problem = preflight.check_folder(paths.storage, "--storage")
        if problem:
            return problem
    return (preflight.check_folder(paths.state, "--storage")
            or preflight.check_store(paths.mlflow, "--mlflow-uri" if args.mlflow_uri else "tracking.mlflow_uri")
            or (preflight.check_state(paths.state) if args.resume else None)
            or (None if args.dry_run else (        # the machine and the services it reaches
                preflight.check_server(paths.mlflow, "--mlflow-uri" if args.mlflow_uri else "tracking.mlflow_uri")
                or preflight.check_address(args.address)
                or (None if args.address else (preflight.check_resources(plans)
                                               or preflight.check_device(exp, plans))))))


def _locked(exp, plans, paths: Paths, args, fresh: bool) -> int:
    if not fresh and not (args.resume or args.restart):
        print(f"{args.file}: name: results of experiment {exp.name!r} already exist in "
              f"{paths.state}; continue them with --resume, discard them with --restart, or "
              f"choose another name (--set name=...)", file=sys.stderr)
        return EXIT_USAGE
    bundles = _load_datasets(plans)
    if isinstance(bundles, str):
        print(f"{args.file}: {bundles}", file=sys.stderr)
        return EXIT_USAGE
    return _run(exp, plans, paths, args, bundles)


def _load_datasets(plans: list[StagePlan]):
    """``{data_key: DataBundle}`` of every dataset the stages can use (listed where the
    data.* distributions are finite), loaded in the driver before Ray starts; a string
    (the error) when one cannot be loaded."""
    from sweep.train.data import DataError, load_data
    configs = {}
    for plan in plans:
        for arm_tree in plan.arm_trees:
            trees = concrete_candidates(arm_tree, "data")
            if trees is None:             # continuous data.* values: trials load their own
                trees = concrete_candidates(arm_tree, None)
            for tree in trees:
                cfg = resolve_trial(tree, check_budget=False)
                configs.setdefault(data_key(cfg.data), cfg.data)
    out = {}
    for key, data_cfg in configs.items():
        try:
            out[key] = load_data(data_cfg)
        except DataError as exc:
            return f"data.dataset: {data_cfg.dataset}: {exc}"
    return out


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def _nothing_left(plans, paths: Paths, args) -> bool:
    """``--resume`` of a sweep whose every stage finished earlier: no trial to run, so
    no Ray to start (the stages are listed and the results printed from the records)."""
    if not args.resume or args.restart:
        return False
    from sweep.tune.state import SweepState
    try:
        stages = SweepState(os.path.join(paths.state, "sweep.json")).data.get("stages") or {}
    except (OSError, ValueError):
        return False
    return all((stages.get(plan.name) or {}).get("status") == "finished" for plan in plans)


def _run(exp, plans, paths: Paths, args, bundles) -> int:
    from sweep.tune import cluster
    ray = held = None
    if _nothing_left(plans, paths, args):
        print(f"every stage finished earlier: not starting Ray; the MLflow store {paths.mlflow}",
              flush=True)
    else:
        where = f"the cluster at {args.address}" if args.address else "a local cluster"
        print(f"starting Ray ({where}) and the MLflow store {paths.mlflow}", flush=True)
        ray, held = cluster.start_ray(args)
    recorder = None
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        if ray is not None:
            have = ray.cluster_resources()
            problem = cluster.check_resources(plans, have.get("CPU", 0), have.get("GPU", 0),
                                              "the Ray cluster")
            if not problem and args.address and not paths.remote:
                problem = _unshared_storage(cluster, paths)
            if problem:
                print(f"{args.file}: {problem}", file=sys.stderr)
                return EXIT_USAGE
        from sweep.track import store
        from sweep.track.recorder import SweepRecorder
        if args.restart:
            _discard(paths, exp.name)
        if held is not None:
            cluster.log_to_file(held, os.path.join(paths.state, "driver.log"))
        store.prepare_store(paths.mlflow)
        recorder = SweepRecorder(paths.mlflow, exp.name, os.path.join(paths.state, "tracking.json"),
                                 resume=args.resume)
        if recorder.rebuilt:
            print(f"--resume: {recorder.rebuilt}", file=sys.stderr, flush=True)
        from sweep.tune.stages import run_stages
        return run_stages(exp, plans, paths, args, recorder, bundles)
    except KeyboardInterrupt:
        print(f"\ninterrupted; the sweep is saved: continue it with\n  python run_sweep.py "
              f"{shlex.quote(args.file)} {' '.join('--set ' + shlex.quote(s) for s in args.set)}"
              f"{' ' if args.set else ''}--resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except ConnectionError as exc:
        print(f"{args.file}: tracking.mlflow_uri: {exc}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if recorder is not None:
            recorder.close("KILLED")
        if ray is not None:
            ray.shutdown()


def _unshared_storage(cluster, paths: Paths) -> str | None:
    """On a cluster, every node must see the storage folder at the same path: trials
    write their checkpoints there and the driver reads them back (and restores from
    them). A file this driver writes there must be seen by a task on every node."""
    marker = cluster.shared_marker(paths.sweep)
    try:
        return cluster.check_seen([marker], "--storage", (
            f"{paths.storage} must be one folder every node mounts at the same path (NFS, a "
            "cluster filesystem), or give an s3:// or gs:// URI (with --mlflow-uri)"))
    finally:
        os.unlink(marker)


def _discard(paths: Paths, name: str) -> None:
    """--restart: remove the sweep's folders and soft-delete its MLflow runs."""
    for folder in {paths.state, paths.sweep}:
        if not is_uri(folder) and os.path.isdir(folder):
            for entry in os.scandir(folder):      # all but the lock this driver holds
                if entry.name == LOCK_FILE and folder == paths.state:
                    continue
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)
    if paths.remote:
        import pyarrow.fs
        fs, path = pyarrow.fs.FileSystem.from_uri(paths.sweep)
        try:
            fs.delete_dir(path)
        except (OSError, FileNotFoundError):
            pass
    from sweep.track import store
    n = store.delete_experiment_runs(paths.mlflow, name)
    if n:
        print(f"--restart: deleted the {n} earlier MLflow run(s) of {name} "
              "(recoverable with `mlflow runs restore --run-id ...` until `mlflow gc`)")
