"""Digests of the arrays a checkpoint saves: written beside them, checked when they are read.

Orbax's array files carry no checksum of the values in them (OCDBT checks its b-tree nodes, zstd
its frames only where a flip breaks them): a flipped bit, a block of another file copied over the
data, or a bad sector in a weight file loaded silently as different weights. Each array's digest
is two position-weighted sums of its bits as 32-bit words, modulo 2**32:

    words w_i (the array's bits, flat, each element widened to >= 1 word)
    sums  = [sum_i w_i * (2i + 1),  sum_i (w_i XOR (i * 0x9E3779B9)) * (2i^2 + 1)]  mod 2**32

The first sum changes whenever one word does (its weights are odd, so invertible mod 2**32); the
second catches what the first may not (words swapped or shifted). Integer sums mod 2**32 do not
depend on the order they are added in, so a digest computed where the arrays live (under jit, on
their devices: a sharded array on many hosts needs no gather) and one computed in numpy from the
files agree bit for bit. A checksum against accidents, not against someone who means harm.
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

FORMAT = "crema_jax.weighted_u32_sums.v1"
_WORD = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint32}
_CHUNK = 1 << 22  # words per numpy step: bounded temporaries for large host arrays


def _sums(words, offset, xp) -> tuple:
    """The two sums (see the module docstring) of `words`, whose first index is `offset`."""
    i = xp.arange(words.shape[0], dtype=xp.uint32) + xp.uint32(offset % (1 << 32))
    one = xp.uint32(1)
    first = xp.sum(words * (i * xp.uint32(2) + one), dtype=xp.uint32)
    second = xp.sum((words ^ (i * xp.uint32(0x9E3779B9))) * (i * i * xp.uint32(2) + one),
                    dtype=xp.uint32)
    return first, second


def _device_digest(x):
    flat = x.reshape(-1)
    if flat.dtype == jnp.bool_:
        flat = flat.astype(jnp.uint8)
    word = _WORD[flat.dtype.itemsize]
    bits = jax.lax.bitcast_convert_type(flat, word)  # 8-byte elements: two words each
    return jnp.stack(_sums(bits.reshape(-1).astype(jnp.uint32), 0, jnp))


# ONE program for every array of a tree. One per array kind compiled faster (base + AdamW on
# CPU: 1.9 s against 5.4 s) but dispatched hundreds of programs with collectives at once: on a
# mesh of 8 CPU devices their rendezvous deadlocked (XLA aborts after 40 s).
_device_digests = jax.jit(lambda leaves: [_device_digest(x) for x in leaves])


def _host_digest(x: np.ndarray) -> tuple[int, int]:
    flat = np.ascontiguousarray(x).reshape(-1)
    if flat.dtype == np.bool_:
        flat = flat.astype(np.uint8)
    words = flat.view(_WORD[flat.dtype.itemsize])
    first = second = np.uint32(0)
    with np.errstate(over="ignore"):
        for start in range(0, max(words.size, 1), _CHUNK):
            a, b = _sums(words[start:start + _CHUNK].astype(np.uint32), start, np)
            first, second = first + a, second + b
    return int(first), int(second)


def _name(path) -> str:
    """"a/0/mu": dict keys, sequence indices and attribute names joined by "/" (an int key and
    its digit-string spelling, which Orbax hands back, name the same array)."""
    return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))))
                    for k in path)


# Jax arrays of at most this many bytes in all, every one on this process's CPU devices, are
# digested in numpy: the jitted program compiled in ~2 s for a tiny model's state (once per
# process and tree), numpy digests 256 MB in ~0.3 s.
HOST_DIGEST_BYTES = 256 << 20


def _digest_on_host(arrays) -> bool:
    return (sum(x.nbytes for x in arrays) <= HOST_DIGEST_BYTES
            and all(x.is_fully_addressable and all(d.platform == "cpu" for d in x.devices())
                    for x in arrays))


def of_tree(tree) -> dict[str, dict]:
    """{array name: {"shape", "dtype", "sums"}} for every array leaf of `tree`: jax arrays are
    digested on their devices (one jitted program), numpy arrays, and a little state all on
    this process's CPUs (HOST_DIGEST_BYTES), on the host."""
    named = jax.tree_util.tree_flatten_with_path(tree)[0]
    on_device = [(p, x) for p, x in named if isinstance(x, jax.Array)]
    sums = {}
    if on_device and not _digest_on_host([x for _, x in on_device]):
        computed = jax.device_get(_device_digests([x for _, x in on_device]))
        sums = {_name(p): tuple(int(v) for v in s) for (p, _), s in zip(on_device, computed)}
    return {_name(p): {"shape": list(np.shape(x)), "dtype": str(np.dtype(x.dtype)),
                       "sums": list(sums[_name(p)] if _name(p) in sums
                                    else _host_digest(np.asarray(x)))}
            for p, x in named}


def mismatches(tree, saved: Mapping[str, Any]) -> list[str]:
    """The names of `tree`'s arrays whose digest differs from the `saved` one (of_tree's
    output, read back from JSON). Arrays without a saved digest are not judged."""
    now = of_tree(tree)
    return sorted(name for name, entry in now.items() if name in saved and entry != saved[name])
