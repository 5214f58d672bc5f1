"""Logical axis names of every parameter and activation, and the default logical -> mesh rules.

Parameters carry logical names (nnx `out_sharding` metadata); activations are constrained with
`constrain`. A rules table alone then decides the layout (MaxText style):
  data parallel:   mesh ("data",)            params replicated, batch split.
  FSDP:            mesh ("data", "fsdp")     `embed` dims of params split over "fsdp", batch over both.
  tensor parallel: mesh (..., "tensor")      attention heads and MLP hidden split over "tensor".
Resolve param specs with `with nnx.logical_axis_rules(rules_for_mesh(mesh)):
nnx.get_partition_spec(state)` under `jax.set_mesh(mesh)`.
"""
import jax
from flax.core import spmd as core_spmd

from crema_jax.runtime.mesh import rules_for_mesh

# Parameter axes.
EMBED = "embed"          # model width (encoder or decoder).
MLP = "mlp"              # MLP hidden width.
QKV = "qkv"              # the q|k|v axis (size 3) of the fused attention input projection.
HEADS = "heads"          # attention heads.
HEAD_DIM = "head_dim"    # dims per head.
PATCH = "patch"          # samples per patch (75: not divisible by device counts, so never split).
LEADS = "leads"          # lead-embedding table rows (12).
LAYERS = "layers"        # leading axis of stacked (scanned) blocks.
NORM = "norm"            # LayerNorm scale/bias.
CLASSES = "classes"      # classifier outputs.
PROJ = "proj"            # projection-head output (contrastive embedding).
# Activation axes.
ACT_BATCH = "activation_batch"
ACT_LENGTH = "activation_length"
ACT_EMBED = "activation_embed"

DEFAULT_RULES = (
    (ACT_BATCH, ("data", "fsdp")),
    (ACT_LENGTH, None),
    (ACT_EMBED, None),
    (EMBED, "fsdp"),
    (MLP, "tensor"),
    (HEADS, "tensor"),
    (QKV, None),
    (HEAD_DIM, None),
    (PATCH, None),
    (LEADS, None),
    (LAYERS, None),
    (NORM, None),
    (CLASSES, None),
    (PROJ, None),
)


def constrain(x, logical_axes):
    """with_sharding_constraint by logical names; a no-op without a mesh (single device, tests).

    Rules come from the `nnx.logical_axis_rules` context, else DEFAULT_RULES. A dim that does not
    divide by its mesh axes is left unconstrained (e.g. an evaluation batch of 3 on 8 devices).
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    rules = dict(rules_for_mesh(mesh, core_spmd.get_logical_axis_rules() or DEFAULT_RULES))
    spec = []
    for dim, name in zip(x.shape, logical_axes):
        target = rules.get(name) if name else None
        targets = () if target is None else ((target,) if isinstance(target, str) else target)
        size = 1
        for t in targets:
            size *= mesh.shape[t]
        spec.append(target if targets and dim % size == 0 else None)
    spec = jax.sharding.PartitionSpec(*spec)
    if mesh.are_all_axes_explicit:
        return jax.sharding.reshard(x, spec)
    return jax.lax.with_sharding_constraint(x, spec)
