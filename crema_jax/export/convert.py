"""JAX parameter trees <-> PyTorch state_dicts, driven by rule tables.

A rule table is a list of Rules; each says which JAX leaves (paths "a/b/0/c" in the nested params
dict) make which torch tensors and how. Conversions are pure numpy transposes, reshapes, stacks
and copies, so JAX -> torch -> JAX is bit-exact.

Tables: `ecgfounder_rules` below (ECGFounder's Net1D; unused batch-norm entries written as
identity, ignored on read) and crema_jax/export/sit_layouts.py SIT_LAYOUTS ("crema": our own
PyTorch SiT, "stmem": ST-MEM's key names and shapes).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Mapping

import numpy as np

from crema_jax.export import safe_load
from crema_jax.runtime.trees import flatten, unflatten_like


@dataclasses.dataclass(frozen=True)
class Rule:
    """torch_keys <-> jax_paths: to_torch(*jax arrays) -> torch arrays, from_torch the inverse."""
    torch_keys: tuple[str, ...]
    jax_paths: tuple[str, ...]
    to_torch: Callable[..., tuple]
    from_torch: Callable[..., tuple]


def same(torch_key: str, jax_path: str) -> Rule:
    return Rule((torch_key,), (jax_path,), lambda a: (a,), lambda t: (t,))


def linear(torch_key: str, jax_path: str) -> Rule:
    """Linear weight (out, in) <-> Dense kernel (in, out)."""
    return Rule((torch_key,), (jax_path,), lambda a: (np.swapaxes(a, 0, 1),),
                lambda t: (np.swapaxes(t, 0, 1),))


def conv1d(torch_key: str, jax_path: str) -> Rule:
    """Conv1d weight (out, in/g, k) <-> Conv kernel (k, in/g, out)."""
    return Rule((torch_key,), (jax_path,), lambda a: (np.transpose(a, (2, 1, 0)),),
                lambda t: (np.transpose(t, (2, 1, 0)),))


def reshaped(torch_key: str, jax_path: str, torch_shape: tuple, jax_shape: tuple) -> Rule:
    """Same values in the same order, another shape (e.g. a (W,) vector stored as (1, 1, W))."""
    return Rule((torch_key,), (jax_path,), lambda a: (np.reshape(a, torch_shape),),
                lambda t: (np.reshape(t, jax_shape),))


def fused_in(torch_key: str, jax_path: str, jax_shape: tuple) -> Rule:
    """Linear weight (out..., in) flattened <-> kernel (in, *out) (fused qkv: (D, 3, H, hd))."""
    return Rule((torch_key,), (jax_path,),
                lambda a: (np.reshape(a, (a.shape[0], -1)).T,),
                lambda t: (np.reshape(t.T, jax_shape),))


def fused_out(torch_key: str, jax_path: str, jax_shape: tuple) -> Rule:
    """Linear weight (out, in flattened) <-> kernel (*in, out) (attention output: (H, hd, D))."""
    return Rule((torch_key,), (jax_path,),
                lambda a: (np.reshape(a, (-1, a.shape[-1])).T,),
                lambda t: (np.reshape(t.T, jax_shape),))


def rows(torch_keys: tuple[str, ...], jax_path: str) -> Rule:
    """One torch vector per row of a JAX table (ST-MEM's lead_embeddings.{i})."""
    return Rule(tuple(torch_keys), (jax_path,), lambda a: tuple(a),
                lambda *ts: (np.stack(ts),))


def alias(torch_keys: tuple[str, ...], jax_path: str, *, linear_weight: bool = False) -> Rule:
    """Several torch names for one tensor (ST-MEM's shared patch embedding); the first is read."""
    swap = (lambda a: np.swapaxes(a, 0, 1)) if linear_weight else (lambda a: a)
    return Rule(tuple(torch_keys), (jax_path,), lambda a: (swap(a),) * len(torch_keys),
                lambda *ts: (swap(ts[0]),))


def holds_decoder(keys) -> bool:
    """Whether a state_dict's keys in the "crema" layout (sit_layouts.crema_rules: export-torch's,
    torch_sit's) hold the MAE decoder ("decoder." keys), not an encoder alone."""
    return any(k.startswith("decoder.") for k in keys)


# ------------------------------------------------------------------------------------------------
# Conversions.
# ------------------------------------------------------------------------------------------------
def jax_to_torch(params: Mapping, rules: list[Rule], *, layout: str,
                 allow_unused: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Nested JAX params -> {torch_key: numpy array} (contiguous, like a state_dict).

    Every leaf must be covered by a rule unless its path starts with one of `allow_unused`.
    """
    flat = {k: np.asarray(v) for k, v in flatten(params).items()}
    used = {p for r in rules for p in r.jax_paths}
    missing = sorted(used - set(flat))
    unused = sorted(p for p in set(flat) - used if not p.startswith(allow_unused or ("\0",)))
    if missing or unused:
        raise ValueError(f"the {layout!r} layout does not fit these params: missing {missing}; "
                         f"no torch key for {unused}")
    out = {}
    for r in rules:
        tensors = r.to_torch(*(flat[p] for p in r.jax_paths))
        # np.array, not ascontiguousarray: that would turn 0-d scalars (logit_scale) into (1,).
        out.update((k, np.array(t, order="C")) for k, t in zip(r.torch_keys, tensors))
    return out


def expected_torch_shapes(template: Mapping, rules: list[Rule]) -> dict[str, tuple]:
    """Torch key -> shape for a params template whose leaves have .shape (arrays or abstract)."""
    flat = flatten(template)
    out = {}
    for r in rules:
        # Zero-stride views: the transposes/reshapes run without allocating full tensors.
        zeros = [np.lib.stride_tricks.as_strided(np.zeros((), np.float32), flat[p].shape,
                                                 (0,) * len(flat[p].shape)) for p in r.jax_paths]
        out.update((k, tuple(t.shape)) for k, t in zip(r.torch_keys, r.to_torch(*zeros)))
    return out


def torch_to_jax(state_dict: Mapping[str, np.ndarray], rules: list[Rule], template: Mapping, *,
                 path: str, layout: str, ignored: tuple[str, ...] = ()
                 ) -> tuple[dict, list[str]]:
    """state_dict -> (nested params shaped like `template`, JAX paths no rule filled).

    The file must hold exactly the rules' keys with the expected shapes (keys containing one of
    `ignored` are dropped); otherwise CheckpointFileError lists every problem. Leaves that no
    rule covers keep the template's value (e.g. a freshly initialised decoder): the caller gets
    their paths to report them.
    """
    safe_load.check_state_dict(state_dict, expected_torch_shapes(template, rules), path=path,
                               layout=layout, ignored=ignored)
    flat = dict(flatten(template))
    filled = set()
    for r in rules:
        values = r.from_torch(*(np.asarray(state_dict[k]) for k in r.torch_keys))
        for p, value in zip(r.jax_paths, values):
            flat[p] = np.asarray(value, dtype=np.float32)
            filled.add(p)
    kept = sorted(set(flat) - filled)
    return unflatten_like(flat, template), kept


# ------------------------------------------------------------------------------------------------
# ECGFounder's Net1D.
# ------------------------------------------------------------------------------------------------
ECGFOUNDER_IGNORED = ("first_bn.", ".bn1.", ".bn2.", ".bn3.")


def ecgfounder_rules(model_cfg) -> list[Rule]:
    """ECGFounder's Net1D keys (batch-norm entries excluded: see ECGFOUNDER_IGNORED)."""
    rules = [conv1d("first_conv.conv.weight", "first_conv/kernel"),
             same("first_conv.conv.bias", "first_conv/bias")]
    for i, num_blocks in enumerate(model_cfg.blocks):
        for j in range(num_blocks):
            t, p = f"stage_list.{i}.block_list.{j}.", f"stage_list/{i}/block_list/{j}/"
            for n in (1, 2, 3):
                rules += [conv1d(f"{t}conv{n}.conv.weight", f"{p}conv{n}/kernel"),
                          same(f"{t}conv{n}.conv.bias", f"{p}conv{n}/bias")]
            for fc in ("se_fc1", "se_fc2"):
                rules += [linear(f"{t}{fc}.weight", f"{p}se/{fc}/kernel"),
                          same(f"{t}{fc}.bias", f"{p}se/{fc}/bias")]
    rules += [linear("dense.weight", "dense/kernel"), same("dense.bias", "dense/bias")]
    return rules


def ecgfounder_unused_batchnorm(model_cfg) -> dict[str, np.ndarray]:
    """Identity batch-norm entries, so ECGFounder's own module loads an export strictly."""
    def bn(prefix, width):
        return {f"{prefix}.weight": np.ones(width, np.float32),
                f"{prefix}.bias": np.zeros(width, np.float32),
                f"{prefix}.running_mean": np.zeros(width, np.float32),
                f"{prefix}.running_var": np.ones(width, np.float32),
                f"{prefix}.num_batches_tracked": np.zeros((), np.int64)}
    filters = list(model_cfg.filters)
    out = bn("first_bn", filters[0])
    for i, num_blocks in enumerate(model_cfg.blocks):
        in_width = filters[max(i - 1, 0)]
        for j in range(num_blocks):
            t = f"stage_list.{i}.block_list.{j}."
            out.update(bn(t + "bn1", in_width if j == 0 else filters[i]))
            out.update(bn(t + "bn2", filters[i]))
            out.update(bn(t + "bn3", filters[i]))
    return out
