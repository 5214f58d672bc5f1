"""Small shared builders for model tests (tiny sizes only)."""
import functools

import numpy as np
from flax import nnx

from crema_jax.models import build_model
from crema_jax.runtime import native
from tests.configs import tiny_model_config

L, N, P = 12, 30, 75


def _has_compiler() -> bool:
    try:
        native.compiler()   # $CXX, else the usual names
    except native.Unavailable:
        return False
    return True


# Whether the native CPU kernels (models/cpu_kernels.cc) can be built here.
HAS_COMPILER = _has_compiler()


def tiny_model(seed=0, **overrides):
    return build_model(tiny_model_config(**overrides), rngs=nnx.Rngs(seed))


def per_lead_keep(rng, b, v, keep=7, num_leads=L, n=N):
    """ST-MEM masking: argsort of uniform noise per sample and lead; (B, V, L, keep), unsorted."""
    return np.argsort(rng.random((b, v, num_leads, n)), axis=-1)[..., :keep]


def make_batch(rng, b=2, v=2, keep=7, num_leads=L, n=N, p=P, keep_ids=None):
    """A pretraining batch (crema_jax/data/pipeline/batch.py) with per-lead random masking."""
    keep_ids = per_lead_keep(rng, b, v, keep, num_leads, n) if keep_ids is None else keep_ids
    mask = np.ones((b, v, num_leads, n), bool)
    np.put_along_axis(mask, keep_ids, False, axis=-1)
    flat = mask.reshape(b, v, -1)
    visible = np.stack([[np.flatnonzero(~m) for m in row] for row in flat]).astype(np.int32)
    masked = np.stack([[np.flatnonzero(m) for m in row] for row in flat]).astype(np.int32)
    return {
        "patches": rng.standard_normal((b, v, num_leads, n, p)).astype(np.float32),
        "mask": mask,
        "visible_idx": visible,
        "masked_idx": masked,
        "patch_valid": np.ones((b, v, num_leads, n), bool),
        "lead_indices": np.tile(np.arange(num_leads, dtype=np.int32), (b, 1)),
        "index": np.arange(b, dtype=np.int64),
    }


@functools.lru_cache(maxsize=None)
def tiny_split(seed=0):
    """(graphdef, state) of the default tiny pretraining model, built once per session (building
    compiles one init kernel per parameter shape, the slowest step of these tests)."""
    return nnx.split(tiny_model(seed))


def abstract_split(**overrides):
    """(graphdef, abstract state) of a tiny variant without initialising it (jax.eval_shape)."""
    cfg = tiny_model_config(**overrides)
    return nnx.split(nnx.eval_shape(lambda: build_model(cfg, rngs=nnx.Rngs(0))))


def variant(pure_params=None, **overrides):
    """A tiny variant whose weights are the default tiny model's (or `pure_params`): variants
    that only change computation (dtype, drop_path) share weights with the default model."""
    graphdef, state = abstract_split(**overrides)
    if pure_params is None:
        pure_params = nnx.to_pure_dict(tiny_split()[1])
    nnx.replace_by_pure_dict(state, pure_params)
    return graphdef, state
