"""What running trials through run_sweep.py costs, against training them directly.

(a) start-up: from launching ``run_sweep.py`` to the first training step of the first
    trial (Python and library imports, validation, the dataset, a fresh local Ray
    cluster, the Tuner, the trial's worker process, its model). The trainable reports
    ``first_step_unix``; it is read back from Ray's ``result.json`` of each trial.
(b) throughput: the wall time of an N-trial sweep (a grid over the seed, so every
    trial is the same work) against N x the wall time of the same trial trained
    directly with ``Trainer`` in this process (data, model, training), on the same
    machine. With ``slots`` trials at once (CPUs // cpus_per_trial), the ideal sweep
    takes ceil(N / slots) x one trial; both ratios are printed.

The single trial runs first, so the kernel cache (torch.compile) is warm for both.
The machine is shared: compare the ratios, not the absolute times, and rerun.

    python bench/bench_sweep.py [--trials 4] [--epochs 2] [--train-size 1024] [--image-size 32]
"""
from __future__ import annotations

import argparse
import glob
import json
import math
import os
import pathlib
import subprocess
import sys
import tempfile
import textwrap
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def config_text(args) -> str:
    return textwrap.dedent(f"""
        name: bench_sweep
        data:
          dataset: synthetic
          synthetic: {{train_size: {args.train_size}, test_size: 256, image_size: {args.image_size}}}
        model: {{arch: resnet20}}
        quant: {{w_bits: 4, a_bits: 4, scheme: apot}}
        train: {{epochs: {args.epochs}, batch_size: 128, lr: 0.1, device: cpu,
                 seed: {{grid: {list(range(args.trials))}}}}}
        search: {{algorithm: grid, scheduler: {{type: fifo}}}}
        resources: {{cpus_per_trial: {args.cpus_per_trial}}}
    """)


def single_trial(path: pathlib.Path, cwd: str, cpus: float) -> tuple[float, float]:
    """(wall s of one trial in-process: data + model + training, training s alone)."""
    import torch
    from sweep.config import load_experiment
    from sweep.train.engine import Trainer
    from sweep.tune.plan import plan_stage
    from sweep.config import resolve_trial

    torch.set_num_threads(max(1, int(cpus)))
    plan = plan_stage(load_experiment(path, cwd=cwd), "main")
    cfg = resolve_trial(plan.expand_grid()[0])
    t0 = time.perf_counter()
    trainer = Trainer(cfg, log=lambda *_: None)
    summary = trainer.run()
    wall = time.perf_counter() - t0
    return wall, sum(m["epoch_time_s"] for m in trainer.history if m["epoch"] >= 1) if summary else 0.0


def run_sweep(path: pathlib.Path, cwd: str) -> tuple[float, float, list[float]]:
    """(launch unix time, sweep wall s, first-step unix time of every trial)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "TUNE_"))}
    t0 = time.time()
    proc = subprocess.run([sys.executable, str(REPO / "run_sweep.py"), str(path)], cwd=cwd,
                          capture_output=True, text=True, env=env)
    wall = time.time() - t0
    if proc.returncode != 0:
        sys.exit(f"run_sweep.py exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    firsts = []
    for result_file in glob.glob(os.path.join(cwd, "sweeps", "bench_sweep", "main", "*", "result.json")):
        with open(result_file) as fh:
            rows = [json.loads(line) for line in fh if line.strip()]
        firsts += [min(r["first_step_unix"] for r in rows if "first_step_unix" in r)]
    return t0, wall, sorted(firsts)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=4)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--train-size", type=int, default=1024)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--cpus-per-trial", type=float, default=1)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as cwd:
        path = pathlib.Path(cwd) / "bench.yaml"
        path.write_text(config_text(args))
        one, train_only = single_trial(path, cwd, args.cpus_per_trial)
        t0, wall, firsts = run_sweep(path, cwd)
    cpus = os.cpu_count() or 1
    slots = max(1, min(args.trials, int(cpus // args.cpus_per_trial)))
    serial = args.trials * one
    ideal = math.ceil(args.trials / slots) * one
    print(f"machine: {cpus} CPUs; {args.trials} trials of ResNet-20 W4A4, {args.epochs} epochs of "
          f"{args.train_size} synthetic {args.image_size}x{args.image_size} images, "
          f"{args.cpus_per_trial:g} CPU each ({slots} at once)")
    print(f"(a) launch -> first training step: {firsts[0] - t0:6.1f} s   "
          f"(every trial: {', '.join(f'{f - t0:.1f}' for f in firsts)} s)")
    print(f"    one trial in-process:          {one:6.1f} s   (training alone {train_only:.1f} s)")
    print(f"(b) sweep wall time:               {wall:6.1f} s")
    print(f"    N x one trial:                 {serial:6.1f} s   ratio sweep / (N x one) = {wall / serial:.2f}")
    print(f"    ideal with {slots} at once:          {ideal:6.1f} s   ratio sweep / ideal      = {wall / ideal:.2f}")


if __name__ == "__main__":
    main()
