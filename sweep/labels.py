"""The labels of a precision, one family for MLflow tags, report tables and plots:

    FP32                 every layer in full precision (32 bits)
    W4A4                 4-bit weights, 4-bit activations in every quantized layer
    MIXED(w2.50,a3.00)   per-layer bits, with the averages over the quantized layers
    MIXED                per-layer bits whose averages are not known

``lineage.init_bits`` holds the first three (docs/mlflow.md).
Torch-free, so that the report command can use it without importing ``quant``.
"""
from __future__ import annotations

__all__ = ["FULL_PRECISION", "bits_label", "is_full_precision"]

# The bit width that means "not quantized"; quant.levels.FULL_PRECISION holds the same
# number for the quantizers (importing it would import torch: tests check they agree).
FULL_PRECISION = 32


def _g(x) -> str:
    return f"{x:g}" if isinstance(x, (int, float)) and not isinstance(x, bool) else str(x)


def is_full_precision(w_bits, a_bits) -> bool:
    return w_bits == FULL_PRECISION and a_bits == FULL_PRECISION


def bits_label(w_bits, a_bits, mixed: bool = False) -> str:
    """``FP32``, ``W<w>A<a>``, or for per-layer bits ``MIXED(w<avg>,a<avg>)`` (two
    decimals; ``MIXED`` alone when the averages are None)."""
    if mixed:
        if w_bits is None or a_bits is None:
            return "MIXED"
        return f"MIXED(w{float(w_bits):.2f},a{float(a_bits):.2f})"
    if is_full_precision(w_bits, a_bits):
        return "FP32"
    return f"W{_g(w_bits)}A{_g(a_bits)}"
