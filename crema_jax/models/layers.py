"""Transformer building blocks shared by the SiT encoder and the MAE decoder (ST-MEM numerics).

Parameter layout (for conversion to/from ST-MEM's PyTorch keys, block{i}.*):
  attn_norm.{scale,bias}   (D,)            <- attn.norm.{weight,bias}
  attn.qkv.kernel          (D, 3, H, hd)   <- attn.fn.to_qkv.weight (3*H*hd, D): .T.reshape(D, 3, H, hd)
  attn.qkv.bias            (3, H, hd)      <- attn.fn.to_qkv.bias.reshape(3, H, hd)
  attn.out.kernel          (H, hd, D)      <- attn.fn.to_out.0.weight (D, H*hd): .T.reshape(H, hd, D)
  attn.out.bias            (D,)            <- attn.fn.to_out.0.bias
  mlp_norm.{scale,bias}    (D,)            <- ff.norm.{weight,bias}
  mlp.fc1.{kernel,bias}    (D, 4D), (4D,)  <- ff.fn.net.0.{weight.T, bias}
  mlp.fc2.{kernel,bias}    (4D, D), (D,)   <- ff.fn.net.3.{weight.T, bias}
The q|k|v and head axes are kept apart (not one fused 3*H*hd axis) so tensor parallelism can split
heads; xavier init is still computed on the fused (D, 3*H*hd) matrix, as ST-MEM does.
Stacked (scan_layers) blocks hold the same leaves with a leading `layers` axis.
"""
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from crema_jax.models import sharding as S

XAVIER = jax.nn.initializers.xavier_uniform()


def dense(in_features, out_features, axes, *, dtype, rngs):
    """PyTorch-Linear-like Dense: xavier_uniform kernel, zero bias (ST-MEM's init)."""
    return nnx.Linear(
        in_features, out_features, kernel_init=XAVIER, dtype=dtype, rngs=rngs,
        kernel_metadata={"out_sharding": axes}, bias_metadata={"out_sharding": (axes[-1],)})


def layer_norm(num_features, *, eps, dtype, rngs, axis_name=S.NORM):
    # use_fast_variance=False: E[(x-mean)^2] like PyTorch, not E[x^2]-mean^2 (cancellation).
    return nnx.LayerNorm(
        num_features, epsilon=eps, use_fast_variance=False, dtype=dtype, rngs=rngs,
        scale_metadata={"out_sharding": (axis_name,)}, bias_metadata={"out_sharding": (axis_name,)})


def drop_path(x, rate, rng):
    """Stochastic depth: drop the residual branch per sample, scale survivors by 1/(1-rate).
    `rate` may be traced (a per-layer scan input); rng None means inference."""
    if rng is None or (isinstance(rate, float) and rate == 0.0):
        return x
    keep_prob = 1.0 - jnp.asarray(rate, jnp.float32)
    keep = jax.random.uniform(rng, (x.shape[0],) + (1,) * (x.ndim - 1)) < keep_prob
    return jnp.where(keep, x / keep_prob.astype(x.dtype), jnp.zeros_like(x))


def _opaque_identity(x):
    """`x` returned through a conditional whose predicate XLA cannot evaluate at compile time.

    Its operand and result are materialised buffers, so XLA cannot fuse an elementwise chain
    through it. The predicate is always true (a uniform draw in [0, 1) is < 2); the other branch
    never runs.
    """
    always = jax.lax.rng_uniform(np.float32(0), np.float32(1), ()) < np.float32(2)
    return jax.lax.cond(always, lambda v: v, jnp.zeros_like, x)


@jax.custom_vjp
def residual_boundary(x):
    """Identity on the residual stream between blocks, which stops XLA:CPU fusing across blocks.

    Without it XLA:CPU fuses the whole chain of residual additions (forward) and of the residual
    cotangent's accumulation (backward) into every consumer, re-computing it from all earlier
    layers: quadratic in depth. The transposing copies that feed the weight-gradient GEMMs were
    41% of the small model's CPU train step. `optimization_barrier` is no help on CPU (XLA:CPU
    drops it before fusion), so the value and its cotangent go through an opaque conditional.
    Blocks apply it only when built for a CPU program (`uses_residual_boundary`).
    """
    return _opaque_identity(x)


residual_boundary.defvjp(lambda x: (_opaque_identity(x), None),
                         lambda _, g: (_opaque_identity(g),))

RESIDUAL_BOUNDARY_MODES = ("auto", "on", "off")


def uses_residual_boundary(model_cfg) -> bool:
    """config.model.residual_boundary: "on" / "off", or "auto" = on when this process's default
    backend is the CPU. Programs compiled for other devices than this process's own (a TPU dry
    run) must resolve it from their target first (train/trainer.py does, from the mesh)."""
    mode = model_cfg.residual_boundary
    if mode not in RESIDUAL_BOUNDARY_MODES:
        raise ValueError(f"config.model.residual_boundary={mode!r}: expected one of "
                         f"{RESIDUAL_BOUNDARY_MODES}")
    return mode == "on" or (mode == "auto" and jax.default_backend() == "cpu")


class Attention(nnx.Module):
    def __init__(self, width, num_heads, head_dim, *, dtype, rngs):
        self.scale = head_dim ** -0.5
        self.dtype = dtype
        self.qkv = nnx.LinearGeneral(
            width, (3, num_heads, head_dim), kernel_init=XAVIER, dtype=dtype, rngs=rngs,
            kernel_metadata={"out_sharding": (S.EMBED, S.QKV, S.HEADS, S.HEAD_DIM)},
            bias_metadata={"out_sharding": (S.QKV, S.HEADS, S.HEAD_DIM)})
        self.out = nnx.LinearGeneral(
            (num_heads, head_dim), width, axis=(-2, -1), kernel_init=XAVIER, dtype=dtype,
            rngs=rngs, kernel_metadata={"out_sharding": (S.HEADS, S.HEAD_DIM, S.EMBED)},
            bias_metadata={"out_sharding": (S.EMBED,)})

    def __call__(self, x):
        qkv = self.qkv(x)                                   # (B, T, 3, H, hd)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) * self.scale
        # Softmax statistics in float32 whatever the compute dtype.
        weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
        return self.out(jnp.einsum("bhqk,bkhd->bqhd", weights, v))


class Mlp(nnx.Module):
    def __init__(self, width, hidden, *, dtype, rngs):
        self.fc1 = dense(width, hidden, (S.EMBED, S.MLP), dtype=dtype, rngs=rngs)
        self.fc2 = dense(hidden, width, (S.MLP, S.EMBED), dtype=dtype, rngs=rngs)

    def __call__(self, x):
        return self.fc2(jax.nn.gelu(self.fc1(x), approximate=False))  # exact erf GELU (PyTorch).


class Block(nnx.Module):
    """Pre-norm transformer block: x += Attn(LN(x)); x += MLP(LN(x))."""

    def __init__(self, width, num_heads, head_dim, mlp_hidden, *, eps, dtype, rngs,
                 boundary=False):
        self.boundary = bool(boundary)  # residual_boundary after the block (CPU programs)
        self.attn_norm = layer_norm(width, eps=eps, dtype=dtype, rngs=rngs)
        self.attn = Attention(width, num_heads, head_dim, dtype=dtype, rngs=rngs)
        self.mlp_norm = layer_norm(width, eps=eps, dtype=dtype, rngs=rngs)
        self.mlp = Mlp(width, mlp_hidden, dtype=dtype, rngs=rngs)

    def __call__(self, x, rate, rng):
        rng_attn, rng_mlp = (None, None) if rng is None else tuple(jax.random.split(rng))
        x = x + drop_path(self.attn(self.attn_norm(x)), rate, rng_attn)
        x = x + drop_path(self.mlp(self.mlp_norm(x)), rate, rng_mlp)
        if self.boundary:
            x = residual_boundary(x)
        return S.constrain(x, (S.ACT_BATCH, S.ACT_LENGTH, S.ACT_EMBED))


def make_blocks(depth, scan, *, rngs, **block_kwargs):
    """`depth` blocks as an nnx.List (unrolled) or one Block with stacked params (scan)."""
    if not scan:
        return nnx.List([Block(**block_kwargs, rngs=rngs) for _ in range(depth)])

    @nnx.split_rngs(splits=depth)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: S.LAYERS})
    def stacked(rngs):
        return Block(**block_kwargs, rngs=rngs)

    return stacked(rngs)


def run_blocks(blocks, x, rates, rng, scan):
    """Apply the blocks; `rates` are the per-layer drop-path rates (depth,), rng None = inference."""
    depth = len(rates)
    keys = None if rng is None else jax.random.split(rng, depth)
    if not scan:
        for i, block in enumerate(blocks):
            x = block(x, rates[i], None if keys is None else keys[i])
        return x
    rates = jnp.asarray(rates, jnp.float32)

    @nnx.scan(in_axes=(0, nnx.Carry, 0, 0 if keys is not None else None), out_axes=nnx.Carry,
              transform_metadata={nnx.PARTITION_NAME: S.LAYERS})
    def body(block, h, rate, key):
        return block(h, rate, key)

    return body(blocks, x, rates, keys)
