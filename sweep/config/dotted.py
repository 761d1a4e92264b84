"""Dotted keys (``quant.w_bits``): reading and writing them in nested trees, and
flattening a tree to the dotted names MLflow parameters use."""
from __future__ import annotations

import re


_MISSING = object()


def get_dotted(tree: dict, key: str, default=_MISSING):
    node = tree
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            if default is _MISSING:
                raise KeyError(key)
            return default
        node = node[part]
    return node


def set_dotted(tree: dict, key: str, value) -> None:
    *parents, last = key.split(".")
    node = tree
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value


def flatten(tree: dict, prefix: str = "") -> dict:
    """Dotted keys -> values (MLflow parameters). A ``quant.layers`` glob becomes one key
    part with ``*`` (and other characters MLflow refuses) written ``_``:
    ``quant.layers.layer2._.w_bits``. Lists and distributions stay values."""
    out = {}
    for key, value in tree.items():
        if prefix == "quant.layers":
            key = re.sub(r"[^A-Za-z0-9_\-. /]", "_", str(key))
        full = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out.update(flatten(value, full))
        elif not (isinstance(value, dict) and full == "quant.layers"):
            out[full] = value
    return out


