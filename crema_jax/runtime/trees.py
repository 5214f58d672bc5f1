"""Nested-dict pytrees as checkpoints, converters and configs hold them: flatten, rebuild,
merge, select, and (un)stack per-layer blocks.

Conventions: a param tree is a nested dict whose leaves are arrays; nnx.List entries sit under
integer keys (Orbax hands them back as digit strings, which `int_keys` turns back into ints);
scan_layers blocks are ONE block whose leaves carry a leading layers axis, unscanned blocks are
{0: block, 1: block, ...}.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np


def flatten(tree: Mapping, prefix: str = "", *, sep: str = "/") -> dict[str, Any]:
    """Nested dict -> {"a/b/0/c": leaf} (keys joined by `sep`)."""
    out = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, path + sep, sep=sep))
        else:
            out[path] = value
    return out


def unflatten_like(flat: Mapping[str, Any], template: Mapping, prefix: str = "") -> dict:
    """A nested dict with `template`'s keys (and key types) filled from `flat`'s "a/b" paths."""
    out = {}
    for key, value in template.items():
        path = f"{prefix}{key}"
        out[key] = (unflatten_like(flat, value, path + "/") if isinstance(value, Mapping)
                    else flat[path])
    return out


def int_keys(tree):
    """Digit-string dict keys (Orbax's spelling of nnx.List indices) back to ints."""
    if isinstance(tree, Mapping):
        return {(int(k) if isinstance(k, str) and k.isdigit() else k): int_keys(v)
                for k, v in tree.items()}
    return tree


def merge(a: Mapping, b: Mapping) -> dict:
    """`a` with `b`'s entries added (recursively; `b` wins on a leaf)."""
    out = dict(a)
    for k, v in b.items():
        out[k] = merge(out[k], v) if k in out and isinstance(v, Mapping) else v
    return out


def select_like(tree: Mapping, template: Mapping) -> dict:
    """The entries of `tree` whose keys appear in `template` (recursively)."""
    return {k: select_like(tree[k], v) if isinstance(v, Mapping) else tree[k]
            for k, v in template.items()}


def is_int_keyed(tree) -> bool:
    """{0: ..., 1: ...}: per-layer blocks (or any nnx.List)."""
    return isinstance(tree, Mapping) and bool(tree) and all(isinstance(k, int) for k in tree)


def stack(per_layer: Mapping) -> dict:
    """{0: block, 1: block, ...} -> one block whose leaves have a leading layers axis."""
    first = per_layer[0]
    return {k: stack({i: per_layer[i][k] for i in range(len(per_layer))})
            if isinstance(v, Mapping) else np.stack([per_layer[i][k]
                                                     for i in range(len(per_layer))])
            for k, v in first.items()}


def layer(stacked: Mapping, i: int) -> dict:
    """Layer `i` of a stacked block (every leaf indexed on its leading axis)."""
    return {k: layer(v, i) if isinstance(v, Mapping) else np.asarray(v)[i]
            for k, v in stacked.items()}


def num_layers(stacked: Mapping) -> int:
    """The leading (layers) dimension of a stacked block."""
    for value in stacked.values():
        return num_layers(value) if isinstance(value, Mapping) else int(np.shape(value)[0])
    raise ValueError("empty stacked block")


def unstack(stacked: Mapping, depth: int | None = None) -> dict:
    """One stacked block -> {i: block_i} for i < depth (default: its leading dimension)."""
    depth = num_layers(stacked) if depth is None else depth
    return {i: layer(stacked, i) for i in range(depth)}
