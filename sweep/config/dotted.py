"""Dotted keys (``quant.w_bits``): reading and writing them in nested trees, flattening a
tree to the dotted names MLflow parameters use, and the one sanitiser of those names."""
from __future__ import annotations

import re


_MISSING = object()
_MAX_KEY = 250                                   # MLflow's longest key
_BAD_KEY_CHARS = re.compile(r"[^\w./\- :]")      # what MLflow accepts in param/metric/tag keys


def sanitize_key(key: str) -> str:
    """A key MLflow accepts: ``*``, ``[``, ``]`` and any other character outside
    alphanumerics, ``_ - . / : space`` become ``_``; empty path parts are avoided.
    ``quant.layers.layer2.*.w_bits`` -> ``quant.layers.layer2._.w_bits``."""
    out = _BAD_KEY_CHARS.sub("_", str(key))
    out = re.sub(r"/{2,}", "/", out).strip("/")
    out = "/".join("_" if part in (".", "..") else part for part in out.split("/"))
    return out[:_MAX_KEY] or "_"


def split_key(key: str) -> list[str]:
    """The path of a dotted key. A ``quant.layers`` glob may hold dots itself, so below
    ``quant.layers`` the last part is the layer key and everything between is the glob:
    ``quant.layers.layer2.*.w_bits`` -> ``[quant, layers, layer2.*, w_bits]``."""
    parts = key.split(".")
    if parts[:2] == ["quant", "layers"] and len(parts) > 3:
        return parts[:2] + [".".join(parts[2:-1]), parts[-1]]
    return parts


def get_dotted(tree: dict, key: str, default=_MISSING):
    node = tree
    for part in split_key(key):
        if not isinstance(node, dict) or part not in node:
            if default is _MISSING:
                raise KeyError(key)
            return default
        node = node[part]
    return node


def set_dotted(tree: dict, key: str, value) -> None:
    *parents, last = split_key(key)
    node = tree
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value


def flatten(tree: dict, prefix: str = "") -> dict:
    """Dotted keys -> values (MLflow parameters). A ``quant.layers`` glob becomes one key
    part through ``sanitize_key`` (``*`` and other characters MLflow refuses written ``_``):
    ``quant.layers.layer2._.w_bits``. Lists and distributions stay values."""
    out = {}
    for key, value in tree.items():
        if prefix == "quant.layers":
            key = sanitize_key(key)
        full = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out.update(flatten(value, full))
        elif not (isinstance(value, dict) and full == "quant.layers"):
            out[full] = value
    return out


