"""Score a checkpoint and print its average bits, weight size and BOPs (``quant.cost``, for
the dataset's image size), every layer's clipping thresholds, and a DAMBQ model's mean
bits per layer (its per-channel bits are in the checkpoint).

    python -m sweep.evaluate CHECKPOINT [--dataset NAME --data-root DIR | --data-path FILE]
                             [--arch A --w-bits N --a-bits N --scheme S [--z Z]] [--json]
                             [--init-alphas keep|mse] [--bn-reestimate-batches N]
                             [--mlflow-uri URI]

CHECKPOINT is a file, ``runs:/<run_id>[/<artifact path>]`` or ``models:/<name>@<alias>``
/ ``models:/<name>/<version>`` (as ``train.init`` takes them), looked up in
``--mlflow-uri`` (default: ``./sweeps/mlflow.db``, or ``$MLFLOW_TRACKING_URI``).
A checkpoint written by this project carries its model, quantization and normalisation;
a reference checkpoint (APoT CIFAR, ImageNet or MNIST; N_grid) needs ``--arch``,
``--w-bits``, ``--a-bits`` and ``--scheme`` (and ``--z`` for ngrid): its quantizer family
is read from its keys. ``--init-alphas mse`` and ``--bn-reestimate-batches N`` calibrate
the model on the training images before it is scored, as ``train.init_alphas`` and
``train.bn_reestimate_batches`` do before training. Exit status 0, or 2 with one message
on bad input.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch

import quant
from models.checkpoint import (CheckpointError, family_of, is_project_checkpoint, load_weights,
                               model_of, policy_of, read_checkpoint)
from quant.dambq import mean_bits
from sweep.config.schema import INIT_ALPHAS
from sweep.train.bits import model_cost
from sweep.train.calibrate import calibrate
from sweep.train.data import DataError, load_data
from sweep.train.evaluate import evaluate_model
from sweep.train.loader import make_loader


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sweep.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    g = p.add_argument_group("data")
    g.add_argument("--dataset", help="cifar10 | cifar100 | mnist | npz | imagefolder | synthetic "
                                     "(default: the checkpoint's, else cifar10)")
    g.add_argument("--data-root", default=None, help="torchvision dataset folder (default ./data)")
    g.add_argument("--data-path", default=None, help="the .npz file or image folder")
    g.add_argument("--split", default="test", choices=["test", "train"],
                   help="which images to score (default test)")
    g.add_argument("--batch-size", type=int, default=256, help="images per batch, scoring and calibrating")
    m = p.add_argument_group("model (required for reference checkpoints)")
    m.add_argument("--arch")
    m.add_argument("--w-bits", type=int)
    m.add_argument("--a-bits", type=int)
    m.add_argument("--scheme")
    m.add_argument("--act-scheme")
    m.add_argument("--z", type=float)
    m.add_argument("--first-last-bits", type=int, default=None)
    m.add_argument("--num-classes", type=int, default=None)
    c = p.add_argument_group("calibration on the training images (train.init_alphas, "
                             "train.bn_reestimate_batches), before scoring")
    c.add_argument("--init-alphas", choices=INIT_ALPHAS, default="keep",
                   help="keep: the checkpoint's thresholds (default); mse: each layer's fitted at "
                        "its bit width")
    c.add_argument("--bn-reestimate-batches", type=int, default=0, metavar="N",
                   help="re-estimate BatchNorm statistics from N training batches (default 0: no)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--mlflow-uri", default=None,
                   help="the store runs:/ and models:/ are looked up in "
                        "(default: sqlite:///<cwd>/sweeps/mlflow.db)")
    return p


def _model(args, ckpt: dict, bundle):
    """The model to score and its policy: a project checkpoint's own, the flags on top; a
    reference checkpoint's from the flags alone."""
    quant_flags = {"w_bits": args.w_bits, "a_bits": args.a_bits, "scheme": args.scheme,
                   "act_scheme": args.act_scheme, "z": args.z, "first_last_bits": args.first_last_bits}
    quant_flags = {k: v for k, v in quant_flags.items() if v is not None}
    if not is_project_checkpoint(ckpt):
        given = {**({"arch": args.arch} if args.arch else {}), **quant_flags}
        need = [f"--{k.replace('_', '-')}" for k in ("arch", "w_bits", "a_bits", "scheme") if k not in given]
        if need:
            raise CheckpointError(args.checkpoint, "is a reference checkpoint, which does not say "
                                                   f"which model it holds; give {', '.join(need)}")
        family = family_of(ckpt["state_dict"])      # from its keys; None: full precision
        ckpt = {"model": {}, "quant": {"family": family} if family else {}}
    policy = policy_of(ckpt, **quant_flags)
    saved = ckpt.get("model") or {}
    model = model_of(ckpt, policy, arch=args.arch,
                     num_classes=args.num_classes or saved.get("num_classes") or bundle.num_classes,
                     in_channels=saved.get("in_channels") or bundle.in_channels)
    return model, policy


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.bn_reestimate_batches < 0:
        print(f"error: --bn-reestimate-batches {args.bn_reestimate_batches}: expected 0 or more",
              file=sys.stderr)
        return 2
    try:
        path = args.checkpoint
        if str(path).startswith(("runs:/", "models:/")):
            from sweep.track.resolve import resolve_in_default_store   # MLflow, only for these
            path = resolve_in_default_store(path, args.mlflow_uri)
        ckpt = read_checkpoint(path)
        saved_data = ckpt.get("data", {}) if is_project_checkpoint(ckpt) else {}
        data_cfg = {"dataset": args.dataset or saved_data.get("dataset") or "cifar10",
                    "root": args.data_root or "./data", "path": args.data_path or saved_data.get("path"),
                    "val_fraction": 0.0, "split_seed": 0,
                    # the normalisation a checkpoint was trained with is the one it is scored with
                    "mean": saved_data.get("mean"), "std": saved_data.get("std"),
                    "crop_pad": 0, "flip": False, "synthetic": saved_data.get("synthetic") or {},
                    # an image folder is scored at the crop side it was trained at
                    "image_size": (saved_data.get("image_size") or [None])[0]}
        bundle = load_data(data_cfg)
        model, policy = _model(args, ckpt, bundle)
        info = load_weights(model, ckpt["state_dict"], path)
    except (CheckpointError, DataError, quant.QuantConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    model.to(device)
    which = "test" if bundle.test is not None and args.split == "test" else (
        "val" if args.split == "test" else "train")
    loader = make_loader(bundle, which, args.batch_size, device, train=False,
                         workers=torch.get_num_threads())
    calibrated = {"alphas": {}, "bn_batches": 0}
    if args.init_alphas != "keep" or args.bn_reestimate_batches:    # the training images only then
        train = make_loader(bundle, "train", args.batch_size, device, train=True,
                            workers=torch.get_num_threads())
        calibrated = calibrate(model, train, args.init_alphas, args.bn_reestimate_batches)
    t0 = time.perf_counter()
    result = evaluate_model(model, loader)
    seconds = time.perf_counter() - t0
    alphas = quant.alphas(model)
    cost, _ = model_cost(model, bundle.image_size)
    dambq = mean_bits(model)
    out = {"checkpoint": str(args.checkpoint), "file": str(path), "dataset": bundle.name,
           "split": args.split,
           "accuracy": result["accuracy"], "correct": result["correct"], "total": result["total"],
           "loss": result["loss"], "alphas": alphas, "arch": model.arch,
           "quant": policy.to_dict(), **cost.as_dict(), "image_size": list(bundle.image_size),
           "missing_alphas": info["missing_alphas"], "seconds": round(seconds, 3),
           "dambq_mean_bits": {n: {"w_bits": w, "a_bits": a} for n, (w, a) in dambq.items()},
           "init_alphas": args.init_alphas, "bn_reestimate_batches": calibrated["bn_batches"]}
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"{args.checkpoint}")
    print(f"  {model.arch}, {bundle.name}: the {args.split} images ({loader.num_samples}), "
          f"{bundle.in_channels}×{bundle.image_size[0]}×{bundle.image_size[1]}, "
          f"{bundle.num_classes} classes")
    print(f"  {args.split} accuracy {result['accuracy']:.2f} % ({result['correct']}/{result['total']}), "
          f"loss {result['loss']:.4f}, {seconds:.1f} s")
    print(f"  average bits: weights {cost.avg_w_bits:.3f}, activations {cost.avg_a_bits:.3f}; "
          f"weight size {cost.weight_size_bytes:,.0f} bytes; {cost.bops:,.0f} BOPs per "
          f"{bundle.image_size[0]}x{bundle.image_size[1]} image")
    done = []
    if calibrated["alphas"]:
        done.append("every clipping threshold fitted at its bit width (mse)")
    if calibrated["bn_batches"]:
        done.append(f"BatchNorm statistics re-estimated from {calibrated['bn_batches']} batches")
    if done:
        print(f"  calibrated on the training images first: {'; '.join(done)}")
    if info["missing_alphas"]:
        print(f"  note: {len(info['missing_alphas'])} clipping thresholds were not in the checkpoint "
              "and keep their initial values")
    if alphas:
        print(f"  {'layer':28s} {'weight alpha':>12s} {'act alpha':>10s}")
        names = dict.fromkeys(k.split("/", 1)[1] for k in alphas)
        for name in names:
            w, a = alphas.get(f"weight/{name}"), alphas.get(f"act/{name}")
            fmt = lambda v: f"{v:.4f}" if v is not None else "-"
            print(f"  {name:28s} {fmt(w):>12s} {fmt(a):>10s}")
    if dambq:
        print(f"  {'DAMBQ layer':28s} {'mean w bits':>12s} {'mean a bits':>11s}")
        for name, (w, a) in dambq.items():
            fmt = lambda v: f"{v:.3f}" if v is not None else "-"
            print(f"  {name:28s} {fmt(w):>12s} {fmt(a):>11s}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
