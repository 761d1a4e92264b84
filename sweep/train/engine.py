"""The training engine every trial runs: one resolved config in, per-epoch results out.

``Trainer(cfg)`` builds the data, the quantized model and the optimiser from a
``TrialConfig`` alone; ``run(on_epoch)`` trains the remaining epochs and calls
``on_epoch(metrics, trainer)`` after each. Used directly by ``python -m sweep.train``
and as the body of the Ray trainable. Imports neither Ray nor MLflow.

A fresh start first fits the clipping thresholds (``train.init_alphas: mse``) and
re-estimates the BatchNorm statistics (``train.bn_reestimate_batches``), which are
re-estimated again before each evaluation.

Per-epoch metrics (docs/search-space.md, "Splits and epochs"): ``epoch``,
``train_loss``, ``train_acc``, ``val_loss``, ``val_acc`` (and ``test_loss``,
``test_acc`` with a validation split), ``lr``, ``epoch_time_s``, and every layer's
``alpha/weight/<layer>`` and ``alpha/act/<layer>``. Accuracies are percentages.

With a bit allocation (``quant.allocation``, ``quant.lba``) the end of every training
epoch may lower bits before the evaluation, and the metrics also carry the bits as they
are then: ``bits/avg_w_bits``, ``bits/avg_a_bits``, ``bits/weight_size_bytes``,
``bits/bops`` and every DAMBQ layer's mean ``bits/weight/<layer>`` and
``bits/act/<layer>``. An epoch counts as best only once the allocation has reached its
target (``quant.budget`` + margin): the best checkpoint is one at the budget.
"""
from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

import models
import quant
from models.checkpoint import family_of, load_weights, provenance, read_checkpoint, save_checkpoint
from sweep.train.calibrate import calibrate
from sweep.train.loader import make_loader
from sweep.config import InitFrom, TrialConfig
from sweep.metrics import is_better
from sweep.train.data import DataBundle, load_data
from sweep.train.evaluate import evaluate_model


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite; retrying would only repeat it."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"train.device={name!r} but no CUDA device is visible; use train.device: cpu")
    return device


def lr_factor(train_cfg, epoch0: int, step: int, steps_per_epoch: int) -> float:
    """Learning-rate multiplier at iteration ``step`` of 0-based epoch ``epoch0``.

    Both schedules change the rate once per epoch, as the reference codebases do:
    ``step`` decays by ``gamma`` at each milestone (the reference's epoch 150 is the
    151st); ``cosine`` is ``CosineAnnealingLR(T_max=epochs)`` stepped per epoch;
    ``constant``. A linear warm-up over the first ``warmup_epochs`` (per iteration)
    comes first, and cosine then anneals over the epochs after it.
    """
    warm = train_cfg.warmup_epochs
    if epoch0 < warm:
        return (epoch0 * steps_per_epoch + step + 1) / (warm * steps_per_epoch)
    if train_cfg.schedule == "step":
        return train_cfg.gamma ** sum(1 for m in train_cfg.milestones if epoch0 >= m)
    if train_cfg.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * (epoch0 - warm) / max(train_cfg.epochs - warm, 1)))
    return 1.0


class Trainer:
    def __init__(self, cfg: TrialConfig, data: DataBundle | None = None, *, metric: str = "val_acc",
                 mode: str = "max", init_path: str | None = None, log: Callable[[str], None] = print):
        self.cfg, self.metric, self.mode, self.log = cfg, metric, mode, log
        t = cfg.train
        self.device = resolve_device(t.device)
        torch.manual_seed(t.seed)
        self.data = data if data is not None else load_data(cfg.data)
        self.model_cfg = {"arch": cfg.model.arch,
                          "num_classes": cfg.model.num_classes or self.data.num_classes,
                          "in_channels": cfg.model.in_channels or self.data.in_channels}
        init = init_path if init_path is not None else t.init
        init_ckpt = self._read_init(init)
        self.policy = cfg.quant        # what checkpoints record
        if cfg.quant.family is None and init_ckpt is not None and family_of(init_ckpt["state_dict"]):
            # the family the init checkpoint's keys tell, unless quant.family says otherwise
            self.policy = dataclasses.replace(cfg.quant, family=family_of(init_ckpt["state_dict"]))
        self.model = models.build_model(cfg.model.arch, num_classes=self.model_cfg["num_classes"],
                                        in_channels=self.model_cfg["in_channels"], policy=self.policy)
        self.init_info = self._load_init(init, init_ckpt)
        self.model.to(self.device)
        self.allocator = self._allocator()
        if t.channels_last:
            self.model.to(memory_format=torch.channels_last)
        act, wgt, rest = quant.alpha_parameters(self.model)
        self.alphas = act + wgt          # kept >= train.alpha_floor after every step
        if self.model.quant_policy.family == "imagenet":   # its alphas train like the weights
            act, wgt, rest = [], [], list(self.model.parameters())
        groups = [{"params": rest, "lr": t.lr, "weight_decay": t.weight_decay}]
        if act:
            groups.append({"params": act, "lr": t.alpha_lr_act, "weight_decay": t.alpha_weight_decay})
        if wgt:
            groups.append({"params": wgt, "lr": t.alpha_lr_weight, "weight_decay": t.alpha_weight_decay})
        self.optimizer = torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum, nesterov=t.nesterov)
        self.base_lrs = [g["lr"] for g in groups]
        self.autocast = torch.bfloat16 if t.precision == "bf16" else None
        # image folders are decoded by worker processes: data.workers, or one per CPU thread
        workers = cfg.data.workers if cfg.data.workers is not None else torch.get_num_threads()
        loader_kw = dict(channels_last=t.channels_last, workers=workers)
        self.train_loader = make_loader(self.data, "train", t.batch_size, self.device, train=True,
                                        seed=t.seed, **loader_kw)
        self.val_loader = make_loader(self.data, "val", 512, self.device, **loader_kw)
        self.test_loader = None if self.data.test is None else make_loader(
            self.data, "test", 512, self.device, **loader_kw)
        # an allocation records errors with autograd hooks: eager (t.compile true is refused then)
        self.compiled = self.allocator is None and (
            t.compile is True or (t.compile == "auto" and self.device.type == "cuda"))
        self.forward = self._compiled() if self.compiled else self.model
        if self.compiled:
            self.log(f"train.compile: {str(t.compile).lower()} on {self.device.type}; the first epoch includes a "
                     "one-time compilation (a minute or two; train.compile: false skips it)")
        self.provenance = provenance()      # git commit and versions, for every checkpoint
        self.epoch = 0                      # epochs completed
        self.history: list[dict] = []
        self.calibrated = False          # calibrate_start has run
        self.best: dict | None = None

    def _compiled(self):
        """The whole model through ``torch.compile`` for the training steps (quantizers traced
        inline and fused with their neighbours); on CUDA also replayed as CUDA graphs, since
        a ResNet-20 step is otherwise bound by kernel launches, not arithmetic. Evaluation
        stays eager: one pass an epoch, and no second set of graphs to compile."""
        if self.device.type == "cuda":
            return torch.compile(self.model, mode="reduce-overhead")
        return torch.compile(self.model)

    # ---- initial weights -----------------------------------------------------------
    @staticmethod
    def _read_init(init) -> dict | None:
        if init is None:
            return None
        if isinstance(init, InitFrom) or isinstance(init, dict):
            raise ValueError("train.init {best_of: ...} names a stage of a sweep; run it with "
                             "run_sweep.py, or give a checkpoint path")
        if str(init).startswith(("runs:/", "models:/")):
            raise ValueError(f"train.init {init} is an MLflow source: resolve it to a local file "
                             "first (sweep.track.resolve) and pass it as init_path")
        return read_checkpoint(init)

    def _allocator(self):
        if self.policy.allocation.method == "none":
            return None
        from models.shapes import arch_shape
        from quant.lba import LbaAllocator
        shape = arch_shape(self.cfg.model.arch, num_classes=self.model_cfg["num_classes"],
                           in_channels=self.model_cfg["in_channels"], image_size=tuple(self.data.image_size))
        return LbaAllocator(self.model, self.policy, shape)

    def _load_init(self, init, ckpt: dict | None) -> dict | None:
        if ckpt is None:
            return None
        # weights and thresholds; the bits are this trial's own (quant.*), as in a W4 -> W2 stage
        info = load_weights(self.model, ckpt["state_dict"], init, bits=False)
        info["path"] = str(init)
        if info["missing_alphas"]:
            self.log(f"init: {init}: {len(info['missing_alphas'])} clipping thresholds not in the "
                     "checkpoint keep their initial values")
        return info

    # ---- calibration: train.init_alphas, train.bn_reestimate_batches -----------------
    def calibrate_start(self) -> dict:
        """What a fresh start does before its first step: with ``train.init_alphas: mse``
        every clipping threshold fitted at its layer's bit width, then the BatchNorm
        statistics re-estimated (``sweep.train.calibrate``). Done once: ``run`` calls it
        on a fresh start unless the caller already has."""
        t = self.cfg.train
        self.calibrated = True
        done = calibrate(self.model, self.train_loader, t.init_alphas if self.alphas else "keep",
                         t.bn_reestimate_batches)
        if done["alphas"]:
            self.log(f"train.init_alphas: mse: {len(done['alphas'])} clipping thresholds fitted at "
                     "their layers' bit widths")
        return done

    def reestimate_bn(self, epoch0: int) -> int:
        """BatchNorm statistics re-estimated from the first ``train.bn_reestimate_batches``
        batches of 0-based epoch ``epoch0`` (no gradient steps); returns how many were used."""
        return calibrate(self.model, self.train_loader, bn_batches=self.cfg.train.bn_reestimate_batches,
                         epoch0=epoch0)["bn_batches"]

    # ---- one epoch -------------------------------------------------------------------
    def _set_lr(self, epoch0: int, step: int) -> float:
        f = lr_factor(self.cfg.train, epoch0, step, len(self.train_loader))
        for g, base in zip(self.optimizer.param_groups, self.base_lrs):
            g["lr"] = base * f
        return self.optimizer.param_groups[0]["lr"]

    def train_epoch(self, epoch: int) -> dict:
        """Train 1-based ``epoch``; returns train loss and accuracy over its batches."""
        self.model.train()
        floor = self.cfg.train.alpha_floor
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        seen = 0
        lr0 = None
        if self.allocator is not None:
            self.allocator.begin_epoch(epoch - 1)
        for step, (x, y) in enumerate(self.train_loader.epoch(epoch - 1)):
            lr = self._set_lr(epoch - 1, step)
            lr0 = lr if lr0 is None else lr0
            with torch.autocast(self.device.type, dtype=self.autocast, enabled=self.autocast is not None):
                out = self.forward(x)
            loss = F.cross_entropy(out.float(), y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            if self.alphas:
                with torch.no_grad():
                    torch._foreach_clamp_min_(self.alphas, floor)
            loss_sum += loss.detach() * y.numel()
            correct += (out.detach().argmax(1) == y).sum()
            seen += y.numel()
        train_loss = float(loss_sum) / max(seen, 1)
        if not math.isfinite(train_loss):
            raise NonFiniteLoss(f"epoch {epoch}: training loss is {train_loss} (lr {lr0:g}); "
                                "the run stops here: lower train.lr or check the data")
        return {"train_loss": train_loss, "train_acc": 100.0 * float(correct) / max(seen, 1), "lr": lr0}

    def evaluate(self) -> dict:
        out = {}
        v = evaluate_model(self.model, self.val_loader, self.autocast)
        out.update(val_loss=v["loss"], val_acc=v["accuracy"])
        if self.test_loader is not None:
            s = evaluate_model(self.model, self.test_loader, self.autocast)
            out.update(test_loss=s["loss"], test_acc=s["accuracy"])
        return out

    def _alpha_metrics(self) -> dict:
        return {f"alpha/{k}": v for k, v in quant.alphas(self.model).items()}

    def _bits_metrics(self, cost=None) -> dict:
        """The allocation's bits now (empty without an allocation); ``cost``: the
        allocator's ``cost()``, when the caller has it."""
        if self.allocator is None:
            return {}
        cost = (cost or self.allocator.cost()).as_dict()
        return {**{f"bits/{k}": v for k, v in cost.items()},
                **{f"bits/{k}": v for k, v in self.allocator.layer_bits().items()}}

    def _is_better(self, metrics: dict, cost=None) -> bool:
        if self.allocator is not None and not self.allocator.reached(cost):
            return False                       # not yet at the budget: not a candidate
        if self.best is None:
            return True
        return is_better(metrics[self.metric], self.best[self.metric], self.mode)

    # ---- the loop --------------------------------------------------------------------
    def run(self, on_epoch: Callable[[dict, "Trainer"], None] | None = None) -> dict:
        """Train the remaining epochs; ``on_epoch(metrics, trainer)`` after each one."""
        t = self.cfg.train
        if self.epoch == 0 and not self.history:       # a fresh start
            if not self.calibrated:
                self.calibrate_start()
            if t.eval_before:
                m = {"epoch": 0, **self.evaluate(), "lr": self.base_lrs[0], "epoch_time_s": 0.0,
                     **self._alpha_metrics(), **self._bits_metrics()}
                self.history.append(m)
                if on_epoch:
                    on_epoch(m, self)
        while self.epoch < t.epochs:
            epoch = self.epoch + 1
            t0 = time.perf_counter()
            m = {"epoch": epoch, **self.train_epoch(epoch)}
            if self.allocator is not None:
                lowered = self.allocator.end_epoch(epoch - 1)    # as the reference: before evaluating
                if lowered:
                    self.log(f"epoch {epoch}: LBA lowered " + ", ".join(
                        f"{n} {kind} channel(s)" for kind, n in lowered.items()) + " by one bit")
            self.reestimate_bn(epoch - 1)
            m.update(self.evaluate())
            m["epoch_time_s"] = time.perf_counter() - t0
            m.update(self._alpha_metrics())
            cost = None if self.allocator is None else self.allocator.cost()   # once an epoch
            m.update(self._bits_metrics(cost))
            if self.metric not in m:
                raise KeyError(f"search.metric {self.metric!r} is not a per-epoch metric; choose one "
                               f"of: {', '.join(k for k in m if not k.startswith(('alpha/', 'bits/')))}")
            self.epoch = epoch
            self.history.append(m)
            m["is_best"] = self._is_better(m, cost)
            if m["is_best"]:
                self.best = {k: v for k, v in m.items() if k != "is_best"}
            if on_epoch:
                on_epoch(m, self)
        return self.summary()

    def summary(self) -> dict:
        last = self.history[-1] if self.history else {}
        return {"best": self.best, "last": last, "epochs_run": self.epoch, "metric": self.metric}

    # ---- checkpoints -----------------------------------------------------------------
    def save(self, path, with_state: bool = True, metrics: dict | None = None) -> Path:
        """The project checkpoint of the current weights (plus what a resume needs)."""
        d = self.cfg.data
        data_cfg = {"dataset": d.dataset, "name": d.name, "path": d.path, "root": d.root,
                    "image_size": list(self.data.image_size), "mean": list(self.data.mean),
                    "std": list(self.data.std), "synthetic": d.synthetic.to_dict()}
        extra = None
        if with_state:
            extra = {"optimizer": self.optimizer.state_dict(), "epoch": self.epoch,
                     "best": self.best, "history": self.history,
                     "rng": {"torch": torch.get_rng_state()}}
        return save_checkpoint(path, self.model, model_cfg=self.model_cfg, quant_cfg=self.policy,
                               data_cfg=data_cfg, config=self.cfg.to_dict(), epoch=self.epoch,
                               metrics=metrics if metrics is not None else (self.history[-1] if self.history else {}),
                               prov=self.provenance, extra=extra)

    def load_state(self, path) -> None:
        """Continue from a checkpoint written by ``save`` (weights, optimiser, epoch, best)."""
        ckpt = read_checkpoint(path)
        load_weights(self.model, ckpt["state_dict"], path)
        state = ckpt.get("train_state")
        if state is None:
            raise ValueError(f"{path}: holds no training state to resume from")
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch, self.best, self.history = state["epoch"], state["best"], list(state["history"])
        torch.set_rng_state(state["rng"]["torch"])

