"""The Ray Tune function trainable: one trial, built from its ``config`` alone.

``config["tree"]`` is the trial's concrete ``{data, model, quant, train}`` tree (see
``sweep.tune.plan``); ``config["_sweep"]`` holds what the driver settled for the stage:
``stage``, ``metric``, ``mode``, ``init_candidates`` (the finished
trials of earlier stages, for ``train.init: {best_of: ...}``) and ``init_files``
(``runs:/``, ``models:/`` and path sources already resolved to local files). The
datasets come as object-store references (``data_refs``, put once by the driver and
bound with ``tune.with_parameters``), keyed by ``data_key(cfg.data)``.

Each epoch is reported once: ``tune.report(metrics, checkpoint=...)`` with a folder
holding ``model.pt`` (``Trainer.save``: weights and resume state) and ``bits.json``;
every epoch's result also carries, under ``INITIAL_PREFIX``, the trial's start: its
``COST_KEYS`` (average bits, weight size, BOPs of ``sweep.train.bits.bits_record``) and
its clipping thresholds before training (``alpha/...``: those of ``train.init``, else the
initial ones, as ``train.init_alphas`` leaves them; ``train.eval_before`` logs them with
its step 0 instead), which the driver logs once, at step 0, without the prefix. With a bit allocation the engine's ``bits/...`` metrics carry the
bits as they are after each epoch, and each epoch's ``bits.json`` is written anew (its
per-channel bits).
Every result also carries ``WHERE_KEYS`` (the node's IP and Ray node id, the device),
which the driver tags the run with.
``is_best`` (1 or 0) is the checkpoint score, so Ray keeps the best epoch's checkpoint
(and the latest). A restart resumes from ``tune.get_checkpoint()``. A NaN/inf loss is
not retried: the trial reports ``failure: nan_loss`` and returns.
"""
from __future__ import annotations

import logging
import os
import tempfile
import time

from sweep.config import TrialConfig, resolve_trial
from sweep.files import atomic_write_json
from sweep.track.names import BITS_ARTIFACT, CHECKPOINT_FILE
from sweep.tune.lineage import data_key, init_source

__all__ = ["train_trial", "METRIC_KEYS", "COST_KEYS", "INITIAL_PREFIX", "WHERE_KEYS"]

# What the driver logs to MLflow each epoch (plus every "alpha/..." key).
METRIC_KEYS = ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc", "lr",
               "epoch_time_s")
# The start's cost (quant.cost), which every result carries under INITIAL_PREFIX.
COST_KEYS = ("avg_w_bits", "avg_a_bits", "weight_size_bytes", "bops")
# + "alpha/<kind>/<layer>": a threshold before training, which the driver logs at step 0.
INITIAL_PREFIX = "initial/"
# Where the trial runs, in every result (strings; the driver tags the run with them).
WHERE_KEYS = ("node_ip", "node_id", "device")

log = logging.getLogger(__name__)


def _bundle(cfg: TrialConfig, data_refs):
    key = data_key(cfg.data)
    if data_refs and key in data_refs:
        import ray
        from sweep.train.data import DataBundle
        return DataBundle.from_arrays(ray.get(data_refs[key]))
    from sweep.train.data import load_data
    return load_data(cfg.data)          # a sampled data config the driver could not list


def _where(device) -> dict:
    """``WHERE_KEYS``: this node's IP and Ray node id, and ``cpu`` or the GPU's name."""
    import ray
    import torch
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    return dict(zip(WHERE_KEYS, (ray.util.get_node_ip_address(),
                                 ray.get_runtime_context().get_node_id(), name)))


def _resume(trainer, checkpoint) -> None:
    """Continue from Ray's checkpoint; if it cannot be read (deleted or half-written
    after a killed driver), start over: replayed epochs are not logged twice."""
    try:
        with checkpoint.as_directory() as folder:
            trainer.load_state(os.path.join(folder, CHECKPOINT_FILE))
    except Exception as exc:        # noqa: BLE001 - any unreadable checkpoint
        log.warning("cannot resume from %s (%s); training from the start", checkpoint, exc)


def train_trial(config: dict, data_refs: dict | None = None) -> None:
    """The trainable (module level, reads only ``config``; ``data_refs`` is bound by
    ``tune.with_parameters``)."""
    import torch
    from ray import tune

    from sweep.train.bits import bits_record
    from sweep.train.engine import NonFiniteLoss, Trainer

    meta = config["_sweep"]
    metric, mode = meta["metric"], meta["mode"]
    # the CPUs Ray gave this trial (resources may change on --resume), at least one thread
    cpus = tune.get_context().get_trial_resources().required_resources.get("CPU", 1)
    torch.set_num_threads(max(1, int(cpus)))
    cfg = resolve_trial(config["tree"])
    init_path, _, problem = init_source(cfg, meta)
    if problem:
        tune.report({"epoch": 0, metric: float("nan"), "failure": "init_missing", "error": problem})
        return
    data = _bundle(cfg, data_refs)
    trainer = Trainer(cfg, data=data, metric=metric, mode=mode, init_path=init_path, log=log.info)
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        trainer.calibrate_start()       # train.init_alphas, train.bn_reestimate_batches
    bits = bits_record(trainer.model, data.image_size)      # at the start: before any lowering
    # the start, logged once at step 0: the cost, and the thresholds training starts from
    # (train.eval_before's step 0 has them); on a resume those are train.init's only
    # where train.init_alphas kept them
    before = {f"{INITIAL_PREFIX}{k}": bits[k] for k in COST_KEYS}
    if not cfg.train.eval_before and (checkpoint is None or cfg.train.init_alphas == "keep"):
        before.update({f"{INITIAL_PREFIX}{k}": v for k, v in trainer._alpha_metrics().items()})
    if checkpoint is not None:
        _resume(trainer, checkpoint)
    where = _where(trainer.device)
    first_step = time.time()

    def best_so_far(is_best) -> dict:
        best = trainer.best or {}
        return {"is_best": int(bool(is_best)), "best_epoch": best.get("epoch", 0),
                "best_metric": best.get(metric, float("nan")), "first_step_unix": first_step}

    def on_epoch(metrics: dict, tr) -> None:
        result = {k: v for k, v in metrics.items() if k != "is_best"}
        result.update(best_so_far(metrics.get("is_best")), **before, **where)
        with tempfile.TemporaryDirectory(prefix="sweep-ckpt-") as folder:
            tr.save(os.path.join(folder, CHECKPOINT_FILE))
            now = bits if tr.allocator is None else bits_record(tr.model, data.image_size)
            atomic_write_json(os.path.join(folder, BITS_ARTIFACT), now)
            tune.report(result, checkpoint=tune.Checkpoint.from_directory(folder))

    if trainer.history and trainer.epoch >= cfg.train.epochs:
        on_epoch(trainer.history[-1], trainer)   # restored at its end: say so again
        return
    try:
        trainer.run(on_epoch)
    except NonFiniteLoss as exc:
        tune.report({"epoch": trainer.epoch + 1, metric: float("nan"), "failure": "nan_loss",
                     "error": str(exc), **best_so_far(False), **where})
