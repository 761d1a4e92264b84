"""The labels of a precision, one family for MLflow tags, report tables and plots:

    FP32                 every layer in full precision (32 bits)
    W4A4                 4-bit weights, 4-bit activations in every quantized layer
    MIXED(w2.50,a3.00)   per-layer bits, with the averages over the quantized layers
    MIXED                per-layer bits whose averages are not known

``lineage.init_bits`` holds the first three (docs/mlflow.md).
Torch-free, so that the report command can use it without importing ``quant``.
"""
from __future__ import annotations

__all__ = ["FULL_PRECISION", "bits_label", "is_full_precision", "run_label"]

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


def _value(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return _g(v) if isinstance(v, (int, float)) else str(v).replace(" ", "")


def run_label(values: dict) -> str:
    """A trial's MLflow run name from the values its stage searches (dotted key -> value):
    the bits as ``w4a4`` (``fp32``), the scheme as itself, every other key as
    ``<last key part>=<value>``; keys without a value (``quant.z`` of an apot arm) are
    left out. ``{quant.w_bits: 4, quant.a_bits: 4, train.lr: 0.01}`` -> ``w4a4 lr=0.01``;
    ``{quant.scheme: ngrid, quant.z: 2}`` -> ``ngrid z=2``. Empty when nothing varies."""
    values = {k: v for k, v in values.items() if v is not None}
    parts = []
    w, a = values.pop("quant.w_bits", None), values.pop("quant.a_bits", None)
    if w is not None and a is not None:
        parts.append(bits_label(w, a).lower())
    elif w is not None or a is not None:
        parts.append(f"w{_g(w)}" if w is not None else f"a{_g(a)}")
    if "quant.scheme" in values:
        parts.append(str(values.pop("quant.scheme")))
    for key, v in values.items():
        leaf = key[len("quant.layers."):] if key.startswith("quant.layers.") else key.rpartition(".")[2]
        parts.append(f"{leaf}={_value(v)}")
    return " ".join(parts)
