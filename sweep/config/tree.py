"""The typed sections of a trial and of an experiment: frozen dataclasses, one per
YAML section, built once by ``sweep.config.trial.resolve_trial`` and ``load_experiment``."""
from __future__ import annotations

import dataclasses
import fnmatch

from sweep.config.fields import FIELDS


def _plain(value):
    if dataclasses.is_dataclass(value):
        return value.to_dict()
    return list(value) if isinstance(value, tuple) else value


class _Section:
    def to_dict(self) -> dict:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}


@dataclasses.dataclass(frozen=True)
class SyntheticConfig(_Section):
    train_size: int
    test_size: int
    image_size: int
    channels: int
    num_classes: int


@dataclasses.dataclass(frozen=True)
class DataConfig(_Section):
    dataset: str
    root: str
    path: str | None
    val_fraction: float
    split_seed: int
    mean: tuple | None
    std: tuple | None
    crop_pad: int | None
    flip: bool | None
    synthetic: SyntheticConfig


@dataclasses.dataclass(frozen=True)
class ModelConfig(_Section):
    arch: str
    num_classes: int | None
    in_channels: int | None


@dataclasses.dataclass(frozen=True)
class LayerOverride:
    pattern: str                 # glob on module names; the last matching pattern wins
    w_bits: int | None = None
    a_bits: int | None = None
    scheme: str | None = None


@dataclasses.dataclass(frozen=True)
class QuantConfig(_Section):
    w_bits: int
    a_bits: int
    scheme: str
    act_scheme: str              # resolved: default_act_scheme(scheme) when not given
    family: str | None           # None: the architecture's default
    z: float | None
    first_last_bits: int
    layers: tuple                # of LayerOverride, in file order
    budget: float | None

    def for_layer(self, module_name: str) -> tuple[int, int, str]:
        """(w_bits, a_bits, scheme) of a quantized layer: the last matching glob wins."""
        w, a, scheme = self.w_bits, self.a_bits, self.scheme
        for layer in self.layers:
            if fnmatch.fnmatchcase(module_name, layer.pattern):
                w = layer.w_bits if layer.w_bits is not None else w
                a = layer.a_bits if layer.a_bits is not None else a
                scheme = layer.scheme or scheme
        return w, a, scheme

    def to_dict(self) -> dict:
        out = super().to_dict()
        out["layers"] = {l.pattern: {k: v for k, v in dataclasses.asdict(l).items()
                                     if k != "pattern" and v is not None} for l in self.layers}
        return out


@dataclasses.dataclass(frozen=True)
class InitFrom(_Section):
    best_of: str                 # an earlier stage
    match: tuple = ()            # dotted keys that must match too (model.* and data.* always do)


@dataclasses.dataclass(frozen=True)
class TrainConfig(_Section):
    epochs: int
    batch_size: int
    lr: float
    momentum: float
    nesterov: bool
    weight_decay: float
    schedule: str
    milestones: tuple
    gamma: float
    warmup_epochs: int
    alpha_lr_act: float
    alpha_lr_weight: float
    alpha_weight_decay: float
    alpha_floor: float
    seed: int
    init: str | InitFrom | None
    eval_before: bool
    device: str
    precision: str
    channels_last: bool
    compile: bool | str       # true, false or 'auto' (on for CUDA)


@dataclasses.dataclass(frozen=True)
class TrialConfig:
    """Everything one trial reads. ``to_dict()`` round-trips through resolve_trial."""
    data: DataConfig
    model: ModelConfig
    quant: QuantConfig
    train: TrainConfig

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
    algorithm: str
    num_samples: int
    seed: int
    metric: str
    mode: str
    scheduler: SchedulerConfig
    max_concurrent: int | None
    variants: tuple              # of {dotted key: value or Distribution}


@dataclasses.dataclass(frozen=True)
class ResourcesConfig:
    cpus_per_trial: float
    gpus_per_trial: float


@dataclasses.dataclass(frozen=True)
class TrackingConfig:
    mlflow_uri: str | None


def _schema_names(cls, prefix):
    for f in dataclasses.fields(cls):
        sub = {"synthetic": SyntheticConfig}.get(f.name)
        yield from _schema_names(sub, f"{prefix}.{f.name}") if sub else [f"{prefix}.{f.name}"]


assert set(FIELDS) == {n for name, cls in [("data", DataConfig), ("model", ModelConfig),
                                           ("quant", QuantConfig), ("train", TrainConfig),
                                           ("search", SearchConfig), ("resources", ResourcesConfig),
                                           ("tracking", TrackingConfig)]
                       for n in _schema_names(cls, name)}, "sweep.config.fields.FIELDS and the dataclasses differ"


