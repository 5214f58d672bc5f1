"""Models: the SiT encoder, the pretraining model, Net1D and the pure functions around them.
Which models exist and what each kind needs: models/families.py.

    model = build_model(config.model, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)                  # or nnx.split(model, nnx.Param, ...)
    outputs = jax.jit(forward, static_argnums=0)(graphdef, state, batch, rng)
    feats = encode_features(graphdef, state, patches, lead_indices)
"""
import jax
from flax import nnx
from flax.core import spmd as core_spmd

from crema_jax.models import families
from crema_jax.models.config import SIZES, default_model_config, resolve_size
from crema_jax.models.net1d import Net1D, default_net1d_config
from crema_jax.models.pretrain import (MaeDecoder, PretrainModel, ProjectionHead, classify,
                                       encode_features, forward)
from crema_jax.models.sit import FixedEmbedding, SiT, sincos_table


def _eager_sharding():
    # Params are created already sharded only when both a mesh and logical rules are in context
    # (inside jax.set_mesh + nnx.logical_axis_rules); otherwise they are plain arrays that carry
    # their logical names as metadata, for jit out_shardings or nnx.get_partition_spec later.
    return (not jax.sharding.get_abstract_mesh().empty) and bool(core_spmd.get_logical_axis_rules())


def build_model(model_cfg, *, rngs):
    """The model named by config.model.name (families.py lists them)."""
    module = families.family_of(model_cfg).modules[model_cfg.name]
    with nnx.use_eager_sharding(_eager_sharding()):
        return module(model_cfg, rngs=rngs)


__all__ = ["SIZES", "default_model_config", "resolve_size", "build_model",
           "forward", "encode_features", "classify", "PretrainModel", "SiT", "MaeDecoder",
           "ProjectionHead", "FixedEmbedding", "sincos_table", "Net1D", "default_net1d_config",
           "families"]
