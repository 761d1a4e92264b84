"""What each conv and linear layer of a model costs per image, measured by one forward
pass: its weight elements, its multiply-accumulates, its input activation elements;
and the parameters outside those weights (batch-norm scales and shifts, biases).

``arch_shape(arch, ...)`` builds the float architecture once (CPU) and caches the result;
``model_shape(model, image_size)`` measures a model as it is. ``quant.cost`` turns a shape
and a policy into average bits, size and BOPs.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["LayerShape", "ModelShape", "arch_shape", "model_shape"]


@dataclass(frozen=True)
class LayerShape:
    params: int          # weight elements (k*k*Cin/groups*Cout, or in*out)
    macs: int            # multiply-accumulates per image
    in_elems: int        # input activation elements per image (Cin*H*W, or in)


@dataclass(frozen=True)
class ModelShape:
    layers: dict         # module name -> LayerShape, every conv and linear, in model order
    other_params: int    # parameters that are not conv/linear weights (BN, biases)
    first: str | None    # the model's first and last layer (8-bit, not in the averages)
    last: str | None
    image_size: tuple    # (H, W) measured at


@torch.no_grad()
def model_shape(model: nn.Module, image_size=(32, 32), in_channels: int | None = None) -> ModelShape:
    """Measure ``model`` with one zero image of ``image_size``, run in eval mode (the
    batch-norm statistics are untouched; the model's mode is restored afterwards)."""
    h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    if in_channels is None:
        in_channels = next(m.in_channels for _, m in convs if isinstance(m, nn.Conv2d))
    found: dict[str, LayerShape] = {}

    def hook(name):
        def fn(module, args, out):
            x = args[0]
            params = module.weight.numel()
            if isinstance(module, nn.Conv2d):
                macs = params * out[0].shape[-1] * out[0].shape[-2]
            else:
                macs = params
            found[name] = LayerShape(params, int(macs), int(x[0].numel()))
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in convs]
    training = model.training
    param = next(model.parameters())
    try:
        model.eval()
        model(torch.zeros(1, in_channels, h, w, device=param.device, dtype=param.dtype))
    finally:
        model.train(training)
        for handle in handles:
            handle.remove()
    weights = {id(m.weight) for _, m in convs}
    other = sum(p.numel() for n, p in model.named_parameters()
                if id(p) not in weights and not n.endswith("_alpha"))
    return ModelShape({n: found[n] for n, _ in convs if n in found}, int(other),
                      getattr(model, "first_layer", None), getattr(model, "last_layer", None), (h, w))


@functools.lru_cache(maxsize=None)
def arch_shape(arch: str, num_classes: int = 10, in_channels: int = 3, image_size=(32, 32)) -> ModelShape:
    """The shape of a registered architecture (float, CPU, built once per arguments)."""
    from models.registry import get_entry
    model = get_entry(arch).fn(num_classes=num_classes, in_channels=in_channels)
    return model_shape(model, image_size, in_channels)
