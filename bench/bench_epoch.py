"""Full training-epoch time of an architecture (ResNet-20 by default), fp32 against W4A4,
through the real engine.

Each configuration trains ``--epochs`` epochs (the first includes kernel compilation and
is reported apart); epochs alternate between configurations so load changes hit both.

    python bench/bench_epoch.py --npz ../shared/datasets/cifar10_subset.npz      # CPU, real images
    python bench/bench_epoch.py --synthetic 50000 --device cuda --epochs 1                 # eager
    python bench/bench_epoch.py --synthetic 50000 --device cuda --compile --epochs 2       # train.compile
    python bench/bench_epoch.py --synthetic 50000 --device cuda --compile --precision bf16 --channels-last
    python bench/bench_epoch.py --synthetic 20000 --image-size 224 --classes 1000 --arch resnet18 --device cuda --compile

The figures ``--dry-run`` estimates GPU-hours from are in ``sweep/tune/estimate.py``
(``MEASURED``), each with the command that measured it.

Without ``--compile`` the model runs eagerly on every device (``train.compile: false``).
"""
from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from sweep.config import resolve_trial  # noqa: E402
from sweep.train.data import load_data  # noqa: E402
from sweep.train.engine import Trainer  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--npz", help="an npz dataset (e.g. the CIFAR-10 subset)")
    src.add_argument("--synthetic", type=int, metavar="N", help="N synthetic colour images")
    p.add_argument("--arch", default="resnet20", help="a registered architecture (default resnet20)")
    p.add_argument("--image-size", type=int, default=32, help="side of the synthetic images")
    p.add_argument("--classes", type=int, default=10, help="classes of the synthetic images")
    p.add_argument("--device", default="cpu")
    p.add_argument("--epochs", type=int, default=3, help="timed epochs per configuration (after one warm-up)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true", help="train.compile: the whole model through torch.compile")
    args = p.parse_args(argv)
    data_cfg = ({"dataset": "npz", "path": args.npz} if args.npz else
                {"dataset": "synthetic", "crop_pad": 4, "flip": True,
                 "synthetic": {"train_size": args.synthetic, "test_size": 1000,
                               "image_size": args.image_size, "num_classes": args.classes}})
    data = load_data(resolve_trial({"data": data_cfg}).data)
    trainers = {}
    for name, bits in (("fp32", 32), ("W4A4", 4)):
        cfg = resolve_trial({"data": data_cfg, "model": {"arch": args.arch},
                             "quant": {"w_bits": bits, "a_bits": bits, "scheme": "apot"},
                             "train": {"epochs": args.epochs + 1, "batch_size": args.batch_size,
                                       "lr": 0.05, "device": args.device, "precision": args.precision,
                                       "channels_last": args.channels_last, "compile": args.compile}})
        trainers[name] = Trainer(cfg, data=data, log=lambda s: None)
    dev = trainers["fp32"].device
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    print(f"{args.arch}, {len(data.train)} training images of {data.image_size[0]}x{data.image_size[1]}, batch {args.batch_size}, device {dev}"
          f"{' (' + torch.cuda.get_device_name(dev) + ')' if dev.type == 'cuda' else f' ({torch.get_num_threads()} threads)'}, "
          f"{args.precision}{', channels-last' if args.channels_last else ''}"
          f"{', whole-model compile' if args.compile else ''}, torch {torch.__version__}")
    times = {name: [] for name in trainers}
    for epoch in range(1, args.epochs + 2):
        for name, tr in trainers.items():
            sync()
            t0 = time.perf_counter()
            m = tr.train_epoch(epoch)
            sync()
            times[name].append(time.perf_counter() - t0)
            print(f"  epoch {epoch} {name}: {times[name][-1]:.2f} s", flush=True)
            if epoch == args.epochs + 1:
                print(f"  {name}: last epoch train loss {m['train_loss']:.3f}, acc {m['train_acc']:.1f} %")
    print(f"\n{'config':8s} {'first epoch s':>14s} {'median epoch s':>15s} {'images/s':>10s} {'x fp32':>7s}")
    base = statistics.median(times["fp32"][1:])
    for name, ts in times.items():
        med = statistics.median(ts[1:])
        print(f"{name:8s} {ts[0]:14.2f} {med:15.2f} {len(data.train) / med:10.0f} {med / base:7.2f}")


if __name__ == "__main__":
    main()
