"""The schema of an experiment: one frozen dataclass per YAML section, each field
declaring its key once — default (as written in YAML), bounds or check, and type.

``sweep.config.keys`` derives the dotted-key table (``data.root``, ``quant.w_bits``...)
from these classes; ``resolve_trial`` and ``load_experiment`` build them. The ``quant``
section is ``quant.QuantPolicy`` itself, whose fields declare the ``quant.*`` keys.
"""
from __future__ import annotations

import dataclasses

from quant.policy import QuantPolicy
from sweep.config import checks as c
from sweep.config.checks import choice, flag, integer, key, real

def _data_name(v, cwd):
    return c.check_name(v, "data.name")


DATASET_NAMES = ("cifar10", "cifar100", "mnist", "npz", "imagefolder", "synthetic")  # data.dataset
INIT_ALPHAS = ("keep", "mse")     # train.init_alphas (sweep.train.calibrate)
METRICS = ("val_acc", "val_loss", "test_acc", "test_loss", "train_acc", "train_loss")


def section(cls):
    """A field holding a sub-section (``data.synthetic``, ``quant``)."""
    return dataclasses.field(metadata={"section": cls})


def _plain(value):
    if dataclasses.is_dataclass(value):
        return value.to_dict()
    return list(value) if isinstance(value, tuple) else value


class _Section:
    def to_dict(self) -> dict:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}


@dataclasses.dataclass(frozen=True)
class SyntheticConfig(_Section):
    train_size: int = integer(2048, 1)            # images
    test_size: int = integer(512, 1)
    image_size: int = integer(32, 1)              # pixels per side
    channels: int = integer(3, 1)
    num_classes: int = integer(10, 2)
    seed: int = integer(0, 0)                     # of the generated images


@dataclasses.dataclass(frozen=True)
class DataConfig(_Section):
    dataset: str = choice("cifar10", DATASET_NAMES, what="dataset")
    # what the images are, for reports and published comparisons (e.g. cifar10 for an
    # npz file holding CIFAR-10 images); None: the dataset's own name
    name: str | None = key(None, _data_name, null=True)
    root: str = key("./data", c.local_path)                 # torchvision datasets live/download here
    path: str | None = key(None, c.local_path, null=True)   # the .npz file / the image folder
    val_fraction: float = real(0.0, 0, 1, hi_open=True)   # of train, held out for selection
    split_seed: int = integer(0, 0)
    mean: tuple | None = key(None, c.floats(False), null=True)   # None: the dataset's default
    std: tuple | None = key(None, c.floats(True), null=True)
    crop_pad: int | None = integer(None, 0, null=True)   # pixels; None: the dataset's default
    flip: bool | None = flag(None, null=True)
    # imagefolder only (streamed): the crop side, None: 224; decoding worker processes,
    # None: one per CPU thread of the trial
    image_size: int | None = integer(None, 8, null=True)
    workers: int | None = integer(None, 0, null=True)
    synthetic: SyntheticConfig = section(SyntheticConfig)


@dataclasses.dataclass(frozen=True)
class ModelConfig(_Section):
    arch: str = key("resnet20", c.arch)
    num_classes: int | None = integer(None, 1, null=True)   # None: from the dataset
    in_channels: int | None = integer(None, 1, null=True)


@dataclasses.dataclass(frozen=True)
class InitFrom(_Section):
    best_of: str                 # an earlier stage
    match: tuple = ()            # dotted keys that must match too (model.* and data.* always do)


@dataclasses.dataclass(frozen=True)
class TrainConfig(_Section):
    epochs: int = integer(200, 1)
    batch_size: int = integer(128, 1)
    lr: float = real(0.1, 0, lo_open=True)
    momentum: float = real(0.9, 0, 1, hi_open=True)
    nesterov: bool = flag(False)
    weight_decay: float = real(1e-4, 0)
    schedule: str = choice("cosine", ("cosine", "step", "constant"), what="schedule")
    milestones: tuple = key([150, 225], c.milestones)     # epochs, for schedule: step
    gamma: float = real(0.1, 0, lo_open=True)           # lr factor at each milestone
    warmup_epochs: int = integer(0, 0)
    alpha_lr_act: float = real(0.1, 0)              # absolute lr of activation alphas (reference 0.1)
    alpha_lr_weight: float = real(0.02, 0)          # absolute lr of weight alphas (reference 0.02)
    alpha_weight_decay: float = real(1e-4, 0)
    alpha_floor: float = real(1e-3, 0)              # thresholds kept >= this
    seed: int = integer(0, 0)
    init: str | InitFrom | None = key(None, c.init, null=True)
    # the thresholds training starts from: keep (train.init's, or the initial values) or
    # mse (each layer's fitted at its own bit width: quant.calibrate)
    init_alphas: str = choice("keep", INIT_ALPHAS, what="init_alphas")
    # batches: BatchNorm statistics re-estimated before training and before each evaluation
    bn_reestimate_batches: int = integer(0, 0)
    eval_before: bool = flag(False)
    device: str = key("auto", c.device)
    precision: str = choice("fp32", ("fp32", "bf16"), what="precision")
    channels_last: bool = flag(False)
    compile: bool | str = key("auto", c.bool_or_auto)   # true, false or 'auto' (on for CUDA)


@dataclasses.dataclass(frozen=True)
class TrialConfig:
    """Everything one trial reads. ``to_dict()`` round-trips through resolve_trial."""
    data: DataConfig = section(DataConfig)
    model: ModelConfig = section(ModelConfig)
    quant: QuantPolicy = section(QuantPolicy)
    train: TrainConfig = section(TrainConfig)

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name).to_dict() for f in dataclasses.fields(self)}

    def flatten(self) -> dict:
        from sweep.config.dotted import flatten
        return flatten(self.to_dict())


@dataclasses.dataclass(frozen=True)
class SchedulerConfig:
    type: str                    # asha | fifo
    grace_period: int | None     # epochs (asha)
    reduction_factor: float | None


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    algorithm: str = choice("grid", ("grid", "random", "optuna"), what="algorithm")
    num_samples: int = integer(1, 1)
    seed: int = integer(0, 0)
    metric: str = choice("val_acc", METRICS, what="metric")
    mode: str = choice("max", ("max", "min"), what="mode")
    scheduler: SchedulerConfig = key({"type": "fifo"}, c.scheduler)
    max_concurrent: int | None = integer(None, 1, null=True)
    variants: tuple = key(None, c.variants, null=True)   # of {dotted key: value or Distribution}


@dataclasses.dataclass(frozen=True)
class ResourcesConfig:
    cpus_per_trial: float = real(1, 0, lo_open=True, keep_int=True)
    gpus_per_trial: float = real(0, 0, keep_int=True)   # fractions pack trials on a GPU


@dataclasses.dataclass(frozen=True)
class TrackingConfig:
    mlflow_uri: str | None = key(None, c.uri, null=True)


# The top-level sections, in YAML order; which a trial reads (searchable), which a stage may set.
SECTIONS = {"data": DataConfig, "model": ModelConfig, "quant": QuantPolicy, "train": TrainConfig,
            "search": SearchConfig, "resources": ResourcesConfig, "tracking": TrackingConfig}
TRIAL_SECTIONS = tuple(f.name for f in dataclasses.fields(TrialConfig))
STAGE_TOPS = TRIAL_SECTIONS + ("search", "resources")
