"""Images per second of the training data path, side by side in one run.

Pipelines, each over the same training images with random crop (pad 4), flip and
normalisation, batch 128:

  torchvision  per-sample PIL transforms in a DataLoader (workers, persistent)
  ours/cpu     sweep.train.loader.BatchLoader on the CPU
  ours/<dev>   the same on --device (default: cuda when available)

Epochs are interleaved (one of each, round after round) so that load from other users
of the machine hits all pipelines alike; the table gives the median epoch.

    python bench/bench_data.py                          # the CIFAR-10 subset in ../shared
    python bench/bench_data.py --npz some.npz --epochs 7
    python bench/bench_data.py --synthetic 20000        # CIFAR-sized synthetic images
"""
from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import time
import types

import numpy as np
import torch

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sweep.train.loader import BatchLoader  # noqa: E402
from sweep.train.data import load_data  # noqa: E402


class UInt8Images(torch.utils.data.Dataset):
    """Channels-last uint8 images served as PIL images, like torchvision's CIFAR10."""

    def __init__(self, x: np.ndarray, y: np.ndarray, transform):
        self.x, self.y, self.transform = x, y, transform

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        from PIL import Image
        img = self.x[i]
        img = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
        return self.transform(img), int(self.y[i])


def torchvision_epochs(bundle, batch_size: int, workers: int, seed: int):
    import torchvision.transforms as T
    size = bundle.image_size
    transform = T.Compose([T.RandomCrop(size, padding=bundle.crop_pad), T.RandomHorizontalFlip(),
                           T.ToTensor(), T.Normalize(bundle.mean, bundle.std)])
    x = bundle.train.x.permute(0, 2, 3, 1).contiguous().numpy()
    dataset = UInt8Images(x, bundle.train.y.numpy(), transform)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
        persistent_workers=workers > 0, generator=torch.Generator().manual_seed(seed))

    def epoch():
        for xb, yb in loader:
            pass
    return epoch


def our_epochs(bundle, batch_size: int, device: str, seed: int):
    loader = BatchLoader(bundle.train, batch_size, device, bundle.mean, bundle.std, train=True,
                         crop_pad=bundle.crop_pad, flip=bundle.flip, seed=seed)
    cuda = loader.device.type == "cuda"
    counter = iter(range(10**9))

    def epoch():
        for xb, yb in loader.epoch(next(counter)):
            pass
        if cuda:
            torch.cuda.synchronize(loader.device)
    return epoch


def main(argv=None) -> int:
    shared = pathlib.Path(os.environ.get("SWEEP_SHARED_DIR", REPO.parent / "shared"))
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--npz", default=str(shared / "datasets" / "cifar10_subset.npz"),
                   help="npz dataset to read (default: %(default)s)")
    p.add_argument("--synthetic", type=int, metavar="N",
                   help="use N synthetic 32×32×3 training images instead of --npz")
    p.add_argument("--epochs", type=int, default=5, help="timed epochs per pipeline")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers for torchvision")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else None,
                   help="extra device for our loader (default: cuda when available)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    if args.synthetic:
        cfg = types.SimpleNamespace(dataset="synthetic", crop_pad=4, flip=True, synthetic=dict(
            train_size=args.synthetic, test_size=10, image_size=32, channels=3, num_classes=10))
    else:
        if not pathlib.Path(args.npz).is_file():
            p.error(f"{args.npz} not found: pass --npz FILE or --synthetic N")
        cfg = types.SimpleNamespace(dataset="npz", path=args.npz, crop_pad=4, flip=True)
    bundle = load_data(cfg)        # crop pad 4 and flip for every pipeline, whatever the data
    n = len(bundle.train)

    pipelines = {f"torchvision DataLoader, {args.workers} workers":
                 torchvision_epochs(bundle, args.batch_size, args.workers, args.seed),
                 "BatchLoader cpu": our_epochs(bundle, args.batch_size, "cpu", args.seed)}
    if args.device and args.device != "cpu":
        pipelines[f"BatchLoader {args.device}"] = our_epochs(bundle, args.batch_size, args.device,
                                                             args.seed)
    for run in pipelines.values():          # warm-up: worker start, allocator, kernels
        run()
    rates: dict[str, list[float]] = {name: [] for name in pipelines}
    for _ in range(args.epochs):
        for name, run in pipelines.items():
            start = time.perf_counter()
            run()
            rates[name].append(n / (time.perf_counter() - start))

    print(f"{bundle.describe()}; batch {args.batch_size}, crop pad 4 + flip + normalise; "
          f"{args.epochs} epochs each, interleaved; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    base = statistics.median(next(iter(rates.values())))
    print(f"{'pipeline':34s} {'median img/s':>13s} {'min':>10s} {'max':>10s} {'vs torchvision':>15s}")
    for name, r in rates.items():
        med = statistics.median(r)
        print(f"{name:34s} {med:13,.0f} {min(r):10,.0f} {max(r):10,.0f} {med / base:14.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
