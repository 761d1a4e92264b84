"""Quantizers and quantized layers of APoT, PoT, uniform and N_grid (docs/quantization.md).

Layered bottom-up: ``levels`` (level sets, projection tables) -> ``kernels`` and
``functional`` (fused element-wise kernels, autograd functions) -> ``quantizers``
(modules owning the learnable alphas) -> ``layers`` (QuantConv2d, QuantLinear) ->
``policy`` (per-layer bits and schemes, applied to a float model by module name).
Nothing here knows about datasets, Ray or MLflow.
"""
from .layers import QuantConv2d, QuantLinear
from .levels import (ACT_BITS, FULL_PRECISION, SCHEMES, WEIGHT_BITS, LevelSet, QuantConfigError,
                     act_levels, default_act_scheme, weight_levels)
from .policy import (LayerSpec, QuantPolicy, alpha_parameters, alphas, clamp_alphas_,
                     quantize_model, quantized_layer_names)
from .quantizers import ActQuantizer, FixedPointWeight, WeightQuantizer

__all__ = [
    "ACT_BITS", "FULL_PRECISION", "SCHEMES", "WEIGHT_BITS", "LevelSet", "QuantConfigError",
    "act_levels", "default_act_scheme", "weight_levels", "QuantConv2d", "QuantLinear",
    "LayerSpec", "QuantPolicy", "alpha_parameters", "alphas", "clamp_alphas_", "quantize_model",
    "quantized_layer_names", "ActQuantizer", "FixedPointWeight", "WeightQuantizer",
]
