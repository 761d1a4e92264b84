"""MNIST W2A2 from scratch: the engine against a reference-style training loop, over seeds.

The recipe of the engine issue's MNIST check: ResNet-20 with one input channel, W2A2
apot, 4 epochs, batch 128, SGD momentum 0.9, weight decay 1e-4, cosine per epoch from
lr 0.05, clipping thresholds at the reference's absolute learning rates (activations
0.1, weights 0.02, weight decay 1e-4), no augmentation, scored on the 10,000 test digits.

Two implementations run it, seed by seed, in one process:

  engine      ``sweep.train.engine.Trainer`` (fused quantizer kernels, the project's data path)
  reference   the reference codebase's CIFAR quantized layers as it writes them
              (``tests/reference_apot.py``), its per-parameter optimiser groups and
              ``CosineAnnealingLR`` stepped per epoch, over plain shuffled batches

Both build the same float ResNet-20 (``models``) from the same seed. With ``--lockstep``
the reference starts from the engine's initial weights and takes the engine's batches,
step for step, and the first step whose outputs differ is printed. The table gives
the correct test digits after each epoch per seed and the mean and spread per
implementation, so a single run can be read against the seed-to-seed spread.

    python bench/accuracy_mnist.py --seeds 3                       # CPU: about 2 min a run
    python bench/accuracy_mnist.py --seeds 10 --device cuda --json out.json
    python bench/accuracy_mnist.py --seeds 2 --lockstep        # same init and batches, step by step
"""
from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import time

import torch
import torch.nn.functional as F

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sweep.config import resolve_trial  # noqa: E402
from sweep.train.data import load_data  # noqa: E402
from sweep.train.engine import Trainer  # noqa: E402
from tests.reference_apot import (reference_model, reference_optimizer,  # noqa: E402
                                  state_dict_from_project)

EPOCHS, BATCH, LR, MOMENTUM, WD = 4, 128, 0.05, 0.9, 1e-4
ALPHA_LR_ACT, ALPHA_LR_WEIGHT, ALPHA_WD = 0.1, 0.02, 1e-4


def run_reference(seed: int, data, device: torch.device) -> dict:
    net = reference_model(seed, 2, in_channels=1).to(device)
    opt = reference_optimizer(net, LR, MOMENTUM, WD, ALPHA_LR_ACT, ALPHA_LR_WEIGHT, ALPHA_WD)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=EPOCHS)
    mean, std = float(data.mean[0]), float(data.std[0])
    norm = lambda x: (x.float().div(255) - mean) / std
    xtr, ytr = data.train.x.to(device), data.train.y.to(device)
    xte, yte = data.val.x.to(device), data.val.y.to(device)
    g = torch.Generator().manual_seed(seed)
    correct = []
    for _ in range(EPOCHS):
        net.train()
        order = torch.randperm(len(ytr), generator=g).to(device)
        for start in range(0, len(ytr), BATCH):
            idx = order[start:start + BATCH]
            loss = F.cross_entropy(net(norm(xtr[idx])), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
        net.eval()
        with torch.no_grad():
            right = sum(int((net(norm(xte[i:i + 1000])).argmax(1) == yte[i:i + 1000]).sum())
                        for i in range(0, len(yte), 1000))
        correct.append(right)
    return {"correct": correct, **_alpha_range(net)}


def engine_trainer(seed: int, data, device: torch.device, data_cfg: dict) -> Trainer:
    cfg = resolve_trial({"data": data_cfg, "model": {"arch": "resnet20"},
                         "quant": {"w_bits": 2, "a_bits": 2, "scheme": "apot"},
                         "train": {"epochs": EPOCHS, "batch_size": BATCH, "lr": LR, "momentum": MOMENTUM,
                                   "weight_decay": WD, "schedule": "cosine", "seed": seed,
                                   "alpha_lr_act": ALPHA_LR_ACT, "alpha_lr_weight": ALPHA_LR_WEIGHT,
                                   "alpha_weight_decay": ALPHA_WD, "device": str(device),
                                   "compile": False}})
    return Trainer(cfg, data=data, log=lambda s: None)


def _alpha_range(net) -> dict:
    alphas = [float(p.detach()) for n, p in net.named_parameters() if n.endswith("alpha")]
    return {"alpha_min": min(alphas), "alpha_max": max(alphas)}


def run_engine(seed: int, data, device: torch.device, data_cfg: dict) -> dict:
    tr = engine_trainer(seed, data, device, data_cfg)
    rows = []
    tr.run(lambda m, t: rows.append(m))
    n = len(data.val)
    return {"correct": [round(r["val_acc"] * n / 100) for r in rows], **_alpha_range(tr.model)}


def run_lockstep(seed: int, data, device: torch.device, data_cfg: dict) -> dict:
    """Both implementations from the engine's initial weights, fed the engine's batches:
    the first step whose outputs differ, then each side's test digits per epoch."""
    tr = engine_trainer(seed, data, device, data_cfg)
    net = reference_model(seed, 2, in_channels=1).to(device)
    net.load_state_dict(state_dict_from_project(tr.model))
    opt = reference_optimizer(net, LR, MOMENTUM, WD, ALPHA_LR_ACT, ALPHA_LR_WEIGHT, ALPHA_WD)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=EPOCHS)
    n, step, first_diff = len(data.val), 0, None
    engine, ref = [], []
    for epoch in range(EPOCHS):
        tr.model.train()
        net.train()
        for i, (x, y) in enumerate(tr.train_loader.epoch(epoch)):
            tr._set_lr(epoch, i)                  # the engine's step, as Trainer.train_epoch does it
            out = tr.model(x)
            tr.optimizer.zero_grad()
            F.cross_entropy(out, y).backward()
            tr.optimizer.step()
            with torch.no_grad():
                torch._foreach_clamp_min_(tr.alphas, tr.cfg.train.alpha_floor)
            out_ref = net(x)                      # the reference's step
            opt.zero_grad()
            F.cross_entropy(out_ref, y).backward()
            opt.step()
            if first_diff is None and not torch.equal(out, out_ref):
                first_diff = step
            step += 1
        sched.step()
        engine.append(round(tr.evaluate()["val_acc"] * n / 100))
        net.eval()
        with torch.no_grad():
            ref.append(sum(int((net(x).argmax(1) == y).sum()) for x, y in tr.val_loader.epoch(0)))
    return {"engine": {"correct": engine, **_alpha_range(tr.model)},
            "reference": {"correct": ref, **_alpha_range(net)}, "first_differing_step": first_diff}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--npz", default=str(REPO.parent / "shared" / "datasets" / "mnist_subset.npz"))
    p.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1 for each implementation")
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--only", choices=["engine", "reference"], help="run one implementation")
    p.add_argument("--lockstep", action="store_true",
                   help="both from the engine's initial weights and batches, step by step; "
                        "prints the first step whose outputs differ")
    p.add_argument("--json", help="write every run's numbers here")
    args = p.parse_args(argv)
    if args.lockstep and args.only:
        p.error("--lockstep runs both implementations; drop --only")
    device = torch.device(args.device)
    data_cfg = {"dataset": "npz", "path": str(pathlib.Path(args.npz).resolve())}
    data = load_data(resolve_trial({"data": data_cfg}).data)
    print(f"MNIST W2A2 ResNet-20, {len(data.train)} training / {len(data.val)} test digits, "
          f"{EPOCHS} epochs, device {device}"
          f"{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}, "
          f"torch {torch.__version__}", flush=True)
    impls = {"engine": lambda s: run_engine(s, data, device, data_cfg),
             "reference": lambda s: run_reference(s, data, device)}
    if args.only:
        impls = {args.only: impls[args.only]}
    results = {name: {} for name in impls}
    show = lambda name, seed, r, extra="": print(
        f"  {name:9s} seed {seed:2d}: correct per epoch {r['correct']}  "
        f"alphas {r['alpha_min']:.2f}..{r['alpha_max']:.2f}{extra}", flush=True)
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        if args.lockstep:
            t0 = time.perf_counter()
            both = run_lockstep(seed, data, device, data_cfg)
            for name in ("engine", "reference"):
                results[name][seed] = {**both[name], "first_differing_step": both["first_differing_step"]}
                show(name, seed, both[name])
            k = both["first_differing_step"]
            print(f"  seed {seed:2d}: " + ("outputs bit-equal at every step" if k is None else
                  f"outputs bit-equal for steps 0-{k - 1}, first differ at step {k}")
                  + f"  ({time.perf_counter() - t0:.0f} s)", flush=True)
            continue
        for name, fn in impls.items():      # interleaved, so both see the same machine
            t0 = time.perf_counter()
            r = fn(seed)
            r["seconds"] = time.perf_counter() - t0
            results[name][seed] = r
            show(name, seed, r, f"  ({r['seconds']:.0f} s)")
    print(f"\n{'implementation':14s} {'runs':>4s} {'mean %':>7s} {'sd':>5s} {'min %':>6s} {'max %':>6s} "
          f"{'mean after epoch 1..':>22s}")
    n = len(data.val)
    for name, runs in results.items():
        finals = [100 * r["correct"][-1] / n for r in runs.values()]
        per_epoch = [statistics.mean(r["correct"][e] for r in runs.values()) for e in range(EPOCHS)]
        sd = statistics.stdev(finals) if len(finals) > 1 else float("nan")
        print(f"{name:14s} {len(finals):4d} {statistics.mean(finals):7.2f} {sd:5.2f} {min(finals):6.2f} "
              f"{max(finals):6.2f}  {' '.join(f'{c:.0f}' for c in per_epoch)}")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
