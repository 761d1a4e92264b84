"""The model registry: ``@register_model`` variants and ``build_model``."""
from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from typing import Callable

from torch import nn

from quant import QuantPolicy, quantize_model


@dataclass(frozen=True)
class ModelEntry:
    name: str
    fn: Callable[..., nn.Module]
    family: str            # the quantizer family its reference uses


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(family: str):
    def wrap(fn):
        _REGISTRY[fn.__name__] = ModelEntry(fn.__name__, fn, family)
        return fn
    return wrap


def list_models() -> list[str]:
    return sorted(_REGISTRY, key=lambda n: (_REGISTRY[n].family, len(n), n))


def get_entry(arch: str) -> ModelEntry:
    if arch not in _REGISTRY:
        close = difflib.get_close_matches(str(arch), list(_REGISTRY), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ValueError(f"unknown model {arch!r}{hint}; available: {', '.join(list_models())}")
    return _REGISTRY[arch]


def build_model(arch: str, *, num_classes: int = 10, in_channels: int = 3,
                policy: QuantPolicy | None = None) -> nn.Module:
    """A registered architecture, quantized by ``policy`` (the ``quant`` section of a trial;
    full precision with 8-bit first and last layers when None). A policy without a
    ``family`` takes the architecture's."""
    entry = get_entry(arch)
    policy = policy if policy is not None else QuantPolicy()
    if policy.family is None:
        policy = dataclasses.replace(policy, family=entry.family)
    model = entry.fn(num_classes=num_classes, in_channels=in_channels)
    model.arch = arch
    return quantize_model(model, policy)
