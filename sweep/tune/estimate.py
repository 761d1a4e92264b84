"""What an experiment would cost to run, for ``--dry-run``: GPU-hours, and hours on a
2-core CPU, from measured training-epoch times.

``MEASURED`` holds the figures, each with the command that measured it
(``bench/bench_epoch.py``; docs/benchmarks.md): a training epoch through the engine of
one architecture at one input size, full precision and W4A4. A trial whose architecture,
input size and channels were measured on a device takes that figure; any other is
*scaled* from the device's ResNet-20 figure, and says so:

- compute: seconds per training image x its multiply-accumulates per image over
  ResNet-20's (``models.shapes``, at the trial's input size and channels);
- on the GPU, not less than ResNet-20's seconds per *step* x its conv and linear layers
  over ResNet-20's 22, per batch: ResNet-20's step there is bound by kernel launches, not
  arithmetic (docs/benchmarks.md), and so is any smaller network's. (On the CPU a network
  with a small fraction of ResNet-20's MACs has fixed per-layer costs that no figure here
  measures: its CPU estimate is a lower bound, and says so.)

An evaluation image costs a third of a training image (a forward pass, against forward
and backward); a quantized trial (any bits) takes the W4A4 figure, a full-precision one
the fp32 figure. A trial costs ``train.epochs`` x (its training images + its validation
and test images / 3) x seconds per image: every epoch of every trial, one trial per
device at a time (ASHA's early stops make it less; several trials packed on one GPU may too).
"""
from __future__ import annotations

import dataclasses
import math

from sweep.config import resolve_trial
from sweep.config.files import data_shape
from sweep.labels import is_full_precision

__all__ = ["Measured", "MEASURED", "TrialCost", "trial_cost", "stage_trees", "describe_costs"]


@dataclasses.dataclass(frozen=True)
class Measured:
    """One measured training epoch: ``images`` images of ``channels``x``size``x``size``."""
    device: str                 # gpu | cpu
    machine: str
    arch: str
    size: int
    channels: int
    images: int
    batch_size: int
    fp32_s: float               # seconds per training epoch, full precision
    quant_s: float              # the same at W4A4 APoT
    command: str

    def per_image(self, quantized: bool) -> float:
        return (self.quant_s if quantized else self.fp32_s) / self.images

    def per_step(self, quantized: bool) -> float:
        return (self.quant_s if quantized else self.fp32_s) / math.ceil(self.images / self.batch_size)


MEASURED = (
    Measured("gpu", "NVIDIA H100 80GB (torch 2.11, CUDA 13.0), train.compile", "resnet20", 32, 3,
             50000, 128, 1.93, 2.61,
             "python bench/bench_epoch.py --synthetic 50000 --device cuda --compile --epochs 2"),
    Measured("cpu", "2-core CPU, eager", "resnet20", 32, 3, 4660, 128, 7.65, 9.74,
             "python bench/bench_epoch.py --npz ../shared/datasets/cifar10_subset.npz"),
)
DEVICES = ("gpu", "cpu")
REFERENCE_ARCH = "resnet20"     # what an unmeasured architecture is scaled from
EVAL_SHARE = 1 / 3              # an evaluation image against a training image
TINY = 0.1                      # MACs per image under this share of the reference's: CPU lower bound


@dataclasses.dataclass(frozen=True)
class TrialCost:
    arch: str
    image_size: int
    train_images: int
    eval_images: int
    epochs: int
    seconds: dict               # device -> seconds for the whole trial
    basis: dict                 # device -> how its seconds per image were found


def _arch(arch: str, classes: int, channels: int, size: int) -> tuple[int, int]:
    """(MACs per image, conv and linear layers) of an architecture at ``size``x``size``."""
    from models.shapes import arch_shape
    shape = arch_shape(arch, num_classes=classes, in_channels=channels, image_size=(size, size))
    return sum(layer.macs for layer in shape.layers.values()), len(shape.layers)


def _reference(device: str) -> Measured:
    return next(m for m in MEASURED if m.device == device and m.arch == REFERENCE_ARCH)


def trial_cost(tree: dict) -> TrialCost | None:
    """The cost of one concrete trial tree (None when its data cannot be sized)."""
    cfg = resolve_trial(tree, check_budget=False)
    shape, problem = data_shape(cfg)
    if problem or shape.train_images is None or shape.image_size is None:
        return None
    d, m, t = cfg.data, cfg.model, cfg.train
    n_val = int(round(d.val_fraction * shape.train_images)) if d.val_fraction > 0 else 0
    train_images = shape.train_images - n_val
    eval_images = n_val + (shape.test_images or 0)
    channels = m.in_channels or shape.channels or 3
    classes = m.num_classes or shape.num_classes or 10
    size = shape.image_size
    macs, layers = _arch(m.arch, classes, channels, size)
    quantized = not (is_full_precision(cfg.quant.w_bits, cfg.quant.a_bits) and not cfg.quant.layers)
    seconds, basis = {}, {}
    for device in DEVICES:
        own = next((r for r in MEASURED if r.device == device
                    and (r.arch, r.size, r.channels) == (m.arch, size, channels)), None)
        if own is not None:
            per_image, how = own.per_image(quantized), "measured"
        else:
            ref = _reference(device)
            ref_macs, ref_layers = _arch(ref.arch, 10, ref.channels, ref.size)
            per_image = ref.per_image(quantized) * macs / ref_macs
            how = f"scaled by MACs (x{macs / ref_macs:.3g} {ref.arch})"
            floor = ref.per_step(quantized) * layers / ref_layers / t.batch_size
            if device == "gpu" and floor > per_image:
                per_image = floor
                how = (f"scaled by layers per step ({layers}/{ref_layers} of {ref.arch}'s, batch "
                       f"{t.batch_size}: launch-bound)")
            elif device == "cpu" and macs < TINY * ref_macs:
                how += ", a lower bound: per-layer costs unmeasured"
        seconds[device] = t.epochs * (train_images + EVAL_SHARE * eval_images) * per_image
        basis[device] = how
    return TrialCost(m.arch, size, train_images, eval_images, t.epochs, seconds, basis)


def stage_trees(plan) -> list[tuple[dict, int]]:
    """``(concrete tree, trials it stands for)`` of a stage: every trial of a grid (or of
    budgeted draws); a sampled arm's first candidate for its ``num_samples`` trials."""
    from sweep.tune.plan import concrete_candidates
    if plan.draws is not None:
        return [(t, 1) for t in plan.draws.trees]
    if plan.search.algorithm != "optuna" and not plan.has_sampled():
        return [(t, 1) for t in plan.expand_grid()]
    return [(concrete_candidates(t, None)[0], plan.search.num_samples) for t in plan.arm_trees]


def _hours(seconds: float) -> str:
    h = seconds / 3600
    return f"{h:,.0f}" if h >= 100 else f"{h:.3g}"


def describe_costs(plans) -> list[str]:
    """The lines ``--dry-run`` ends with: hours per device, per stage, and each basis."""
    totals = {device: 0.0 for device in DEVICES}
    per_stage, bases, unsized = [], {}, 0
    for plan in plans:
        stage = {device: 0.0 for device in DEVICES}
        for tree, count in stage_trees(plan):
            cost = trial_cost(tree)
            if cost is None:
                unsized += count
                continue
            for device in DEVICES:
                stage[device] += count * cost.seconds[device]
            bases.setdefault((cost.arch, cost.image_size), cost)
        per_stage.append((plan.name, plan.num_trials(), stage))
        for device in DEVICES:
            totals[device] += stage[device]
    gpu = _reference("gpu")
    at_least = "at least " if any("lower bound" in c.basis["cpu"] for c in bases.values()) else ""
    lines = [f"cost estimate: {_hours(totals['gpu'])} GPU-hours, one {gpu.machine.split(' (')[0]} per "
             f"trial ({at_least}{_hours(totals['cpu'])} hours on a 2-core CPU), every epoch of every trial"]
    for name, n, stage in per_stage:
        lines.append(f"  stage {name}: {n} trial(s), {_hours(stage['gpu'])} GPU-hours "
                     f"({_hours(stage['cpu'])} CPU-hours)")
    for cost in bases.values():
        lines.append(f"  {cost.arch} at {cost.image_size}x{cost.image_size}: {cost.train_images:,} "
                     f"training + {cost.eval_images:,} evaluation images an epoch; GPU "
                     f"{cost.basis['gpu']}; CPU {cost.basis['cpu']}")
    used = {a for a, _ in bases} | {REFERENCE_ARCH}
    for r in MEASURED:
        if r.arch in used:
            lines.append(f"  measured ({r.device}): {r.arch} {r.size}x{r.size}, batch {r.batch_size}, "
                         f"{r.images:,} images: fp32 {r.fp32_s:g} s, W4A4 {r.quant_s:g} s an epoch "
                         f"on {r.machine} ({r.command})")
    if unsized:
        lines.append(f"  not counted: {unsized} trial(s) whose data cannot be sized before it is read")
    lines.append("  (evaluation images at a third of a training image; ASHA's early stops and "
                 "several trials per GPU make it less; docs/benchmarks.md)")
    return lines
