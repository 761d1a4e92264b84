"""Cost of logging one trial-epoch to MLflow: one ``log_batch`` vs one call per metric,
against a local ``mlflow server`` and a local SQLite store (docs/benchmarks.md).

One epoch = 20 training metrics + the weight and activation alphas of ResNet-20's 19
quantized layers (38 metrics). Every combination runs in the same process, epochs
interleaved, so the ratios are side by side; ``SweepRecorder.log_epoch`` (one batch plus
the resume state file) is timed too. The machine is shared: read the ratios, not the
absolute times.

    python bench/bench_tracking.py [--epochs 10] [--warmup 2]
"""
from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from mlflow import MlflowClient                      # noqa: E402
from mlflow.entities import Metric                   # noqa: E402

from sweep.track import store                        # noqa: E402
from sweep.track.recorder import SweepRecorder       # noqa: E402
from tests.support import mlflow_server                        # noqa: E402

TRAIN_METRICS = [
    "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc", "lr",
    "epoch_time_s", "train_time_s", "eval_time_s", "data_time_s", "images_per_s",
    "grad_norm", "weight_norm", "momentum", "weight_decay", "train_top5", "val_top5",
    "test_top5", "peak_mem_mb",
]


def resnet20_quantized_layers() -> list[str]:
    """The 18 block convolutions of ResNet-20 (3 stages x 3 blocks x 2) and the final
    linear layer: 19 quantized modules."""
    blocks = [f"layer{s}.{b}.conv{c}" for s in (1, 2, 3) for b in range(3) for c in (1, 2)]
    return blocks + ["fc"]


def metric_names() -> list[str]:
    layers = resnet20_quantized_layers()
    return (TRAIN_METRICS + [f"alpha/weight/{m}" for m in layers]
            + [f"alpha/act/{m}" for m in layers])


def epoch_values(names: list[str], epoch: int) -> dict[str, float]:
    return {name: 1.0 / (epoch + i + 1) for i, name in enumerate(names)}


def time_ms(fn) -> float:
    start = time.perf_counter()
    fn()
    return 1e3 * (time.perf_counter() - start)


def bench_backend(uri: str, workdir: pathlib.Path, label: str, names: list[str],
                  epochs: int, warmup: int) -> dict[str, list[float]]:
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = client.create_experiment(f"bench-{label}",
                                   artifact_location=(workdir / f"art-{label}").as_uri()
                                   if not uri.startswith("http") else None)
    batch_run = client.create_run(exp, run_name="log_batch").info.run_id
    single_run = client.create_run(exp, run_name="log_metric").info.run_id
    recorder = SweepRecorder(uri, f"bench-{label}-recorder",
                                      workdir / f"state-{label}.json")
    recorder.stage_run("bench")
    recorder.trial_run("trial_0", "bench", {"model.arch": "resnet20"})

    def batch(epoch):
        ts = int(time.time() * 1000)
        client.log_batch(batch_run, metrics=[Metric(k, v, ts, epoch)
                                             for k, v in epoch_values(names, epoch).items()],
                         synchronous=True)

    def single(epoch):
        ts = int(time.time() * 1000)
        for k, v in epoch_values(names, epoch).items():
            client.log_metric(single_run, k, v, ts, epoch, synchronous=True)

    def record(epoch):
        assert recorder.log_epoch("trial_0", epoch, epoch_values(names, epoch))

    times: dict[str, list[float]] = {"log_batch": [], "log_metric x N": [],
                                     "recorder.log_epoch": []}
    for epoch in range(1, warmup + epochs + 1):
        sample = {"log_batch": time_ms(lambda: batch(epoch)),
                  "log_metric x N": time_ms(lambda: single(epoch)),
                  "recorder.log_epoch": time_ms(lambda: record(epoch))}
        if epoch > warmup:
            for key, ms in sample.items():
                times[key].append(ms)
    assert len(client.get_metric_history(batch_run, "alpha/act/fc")) == warmup + epochs
    assert len(client.get_metric_history(single_run, "val_acc")) == warmup + epochs
    recorder.close("FINISHED")
    for run_id in (batch_run, single_run):
        client.set_terminated(run_id)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=10, help="timed epochs per combination")
    parser.add_argument("--warmup", type=int, default=2, help="untimed epochs first")
    args = parser.parse_args(argv)
    names = metric_names()
    print(f"one epoch = {len(names)} metrics ({len(TRAIN_METRICS)} training + "
          f"{len(names) - len(TRAIN_METRICS)} alphas); {args.epochs} timed epochs each; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} (shared machine)")
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-tracking-") as tmp:
        work = pathlib.Path(tmp)
        sqlite_uri = store.default_tracking_uri(work / "sqlite")
        store.prepare_store(sqlite_uri)
        start = time.perf_counter()
        proc, url = mlflow_server.start_mlflow_server(
            store.default_tracking_uri(work / "server"), work / "server" / "artifacts",
            log_path=work / "server.log")
        print(f"mlflow server {url} healthy after {time.perf_counter() - start:.1f} s")
        try:
            results["server"] = bench_backend(url, work, "server", names, args.epochs,
                                              args.warmup)
        finally:
            mlflow_server.stop_mlflow_server(proc)
        results["sqlite"] = bench_backend(sqlite_uri, work, "sqlite", names, args.epochs,
                                          args.warmup)

    print(f"\n{'backend':8} {'call':20} {'median ms/epoch':>16} {'min':>9} {'max':>9}")
    med = {}
    for backend, times in results.items():
        for call, samples in times.items():
            med[backend, call] = statistics.median(samples)
            print(f"{backend:8} {call:20} {med[backend, call]:16.1f} "
                  f"{min(samples):9.1f} {max(samples):9.1f}")
    print()
    for backend in results:
        print(f"{backend}: log_metric x {len(names)} / log_batch = "
              f"{med[backend, 'log_metric x N'] / med[backend, 'log_batch']:.1f}x; "
              f"recorder.log_epoch / log_batch = "
              f"{med[backend, 'recorder.log_epoch'] / med[backend, 'log_batch']:.2f}x")
    print(f"log_batch server / sqlite = "
          f"{med['server', 'log_batch'] / med['sqlite', 'log_batch']:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
