"""ECGFounder's Net1D backbone in Flax NNX (see docs/reference/ecgfounder.md).

A pre-activation bottleneck ResNeXt with squeeze-excitation, no batch norm and no dropout. The
padding and pooling follow the released PyTorch model exactly, so its checkpoints import with
identical outputs:
- every convolution uses "same" padding with the left share p // 2 (XLA's SAME does the same split);
- the downsampling shortcut max-pools (k 2, s 2) after padding ONE ZERO on the right, so for an odd
  length the last window is max(x_last, 0);
- a widening shortcut pads zero channels centred: (out - in) // 2 before, the rest after.

Four choices make the forward faster on CPU (XLA:CPU, 2 cores, batch 64 x 12 x 5000, and 1),
each with the same sums as the plain formulation:
- the middle (grouped) convolution is models/grouped_conv.py: on CPU a native kernel (XLA:CPU's
  own `feature_group_count` convolution was half of the model's time at a quarter of its
  FLOPs), elsewhere one plain convolution per group;
- the squeeze-excite layers, the head and the 1x1 convolutions are models/small_dense.py: on
  CPU, a native kernel where the batch has few rows for their weights (at batch 1: the first
  two streamed on every core, where XLA's dot reads them on one; the middle stages' 1x1
  convolutions in register blocks), XLA's dot or convolution elsewhere;
- Swish is x / (1 + exp(-x)) (`silu`), ~4% faster than jax.nn.silu's logistic there;
- the stem and the first four stages (long signals, few channels: 0.3-0.6 MB per ECG and
  activation) run over micro-batches of 8 ECGs (`micro_batched`, a loop inside the jit), so their
  activations stay in cache; the wide late stages run on the whole batch, where their 1x1
  convolutions are larger matrix products.

Input layout is PyTorch's (B, leads, samples); the model transposes to channels-last once.
Parameter names mirror the PyTorch module (first_conv, stage_list/i/block_list/j/conv1, ...), which
keeps the checkpoint conversion a plain rename plus transposes.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from crema_jax.models import small_dense
from crema_jax.models.grouped_conv import grouped_conv

# PyTorch's default Conv1d/Linear weight init, U(+-1/sqrt(fan_in)): training from scratch then
# starts where the reference implementation starts.
_TORCH_DEFAULT_INIT = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def default_net1d_config(leads: int = 12) -> ml_collections.ConfigDict:
    """ECGFounder's released configuration (12-lead: 30,752,646 parameters)."""
    if leads not in (1, 12):
        raise ValueError(f"Net1D: leads must be 12 (all leads) or 1 (lead I), got {leads}")
    return ml_collections.ConfigDict({
        "name": "net1d",
        "in_channels": leads,           # 12 leads in canonical order, or lead I alone.
        "num_classes": 150,             # ECGFounder's label vocabulary (ecgfounder_labels.txt).
        "filters": [64, 160, 160, 400, 400, 1024, 1024],
        "blocks": [2, 2, 2, 3, 3, 4, 4],
        "kernel": 16,
        "stride": 2,                    # Stem and first block of every stage.
        "group_width": 16,              # Channels per group of the middle convolution.
        "sample_rate": 500,             # Hz the released weights expect (10 s = 5000 samples).
        "num_samples": 5000,
    })


def _conv(in_ch: int, out_ch: int, kernel: int, stride: int, groups: int, rngs: nnx.Rngs):
    return nnx.Conv(in_ch, out_ch, kernel_size=(kernel,), strides=(stride,), padding="SAME",
                    feature_group_count=groups, kernel_init=_TORCH_DEFAULT_INIT, rngs=rngs)


def _linear(in_f: int, out_f: int, rngs: nnx.Rngs):
    return nnx.Linear(in_f, out_f, kernel_init=_TORCH_DEFAULT_INIT, rngs=rngs)


def _apply(layer: nnx.Linear, x: jax.Array) -> jax.Array:
    """layer(x) for (B, features) inputs (models/small_dense.py)."""
    return small_dense.small_dense(x, layer.kernel[...], layer.bias[...])


def _pointwise(conv: nnx.Conv, x: jax.Array) -> jax.Array:
    """conv(x) for a 1x1 convolution, (B, T, C): a dense layer over the B T positions where the
    native kernel takes them (models/small_dense.py; XLA's dot where it is not built), else
    XLA's convolution."""
    b, t, c = x.shape
    rows, kernel, bias = x.reshape(b * t, c), conv.kernel[...][0], conv.bias[...]
    if small_dense.native_takes(rows, kernel, bias):
        return small_dense.small_dense(rows, kernel, bias).reshape(b, t, -1)
    return conv(x)


def maxpool_pad_right_zero(x: jax.Array) -> jax.Array:
    """(B, T, C) -> (B, ceil(T/2), C): pad one ZERO on the right, then max-pool k 2, s 2."""
    b, t, c = x.shape
    x = jnp.pad(x, ((0, 0), (0, 1), (0, 0)))
    x = x[:, : 2 * ((t + 1) // 2)]
    return jnp.max(x.reshape(b, (t + 1) // 2, 2, c), axis=2)


def pad_channels_centred(x: jax.Array, out_ch: int) -> jax.Array:
    """Zero channels around x: (out - in) // 2 before, the rest after."""
    extra = out_ch - x.shape[-1]
    if extra == 0:
        return x
    return jnp.pad(x, ((0, 0), (0, 0), (extra // 2, extra - extra // 2)))


# Batches above this many ECGs run the stem and the first _MICRO_BATCHED_STAGES stages in
# micro-batches of about this size (see the module docstring); 4 and 16 measured slower than 8.
_MICRO_BATCH = 8
_MICRO_BATCHED_STAGES = 4


@jax.custom_jvp
def silu(x: jax.Array) -> jax.Array:
    """Swish x * sigmoid(x), written x / (1 + exp(-x)): faster on XLA:CPU than jax.nn.silu.

    For x < -88, exp(-x) is inf and the value -0 (the limit); the derivative below is written
    with the sigmoid so that it stays finite there too (autodiff of the quotient gives inf/inf)."""
    return x / (1 + jnp.exp(-x))


@silu.defjvp
def _silu_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    s = 1 / (1 + jnp.exp(-x))
    return x * s, dx * s * (1 + x * (1 - s))


def micro_batched(fn, x: jax.Array, size: int) -> jax.Array:
    """fn(x) for a batch-wise fn (each row's output depends on its row alone), run as a loop
    over about equal micro-batches of at most `size` rows. The batch is zero-padded to a multiple
    of the micro-batch (fewer padded rows than micro-batches) and the padding dropped after."""
    b = x.shape[0]
    if b <= size:
        return fn(x)
    count = -(-b // size)
    step = -(-b // count)
    padded = jnp.pad(x, ((0, count * step - b),) + ((0, 0),) * (x.ndim - 1))
    out = jax.lax.map(fn, padded.reshape((count, step) + x.shape[1:]))
    return out.reshape((count * step,) + out.shape[2:])[:b]


class SqueezeExcite(nnx.Module):
    def __init__(self, channels: int, *, rngs: nnx.Rngs):
        self.se_fc1 = _linear(channels, channels // 2, rngs)
        self.se_fc2 = _linear(channels // 2, channels, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        s = jnp.mean(x, axis=1)
        s = jax.nn.sigmoid(_apply(self.se_fc2, silu(_apply(self.se_fc1, s))))
        return x * s[:, None, :]


class Block(nnx.Module):
    """Pre-activation bottleneck: [Swish] 1x1 -> Swish -> grouped k -> Swish -> 1x1 -> SE, + shortcut."""

    def __init__(self, in_ch: int, out_ch: int, *, kernel: int, stride: int, group_width: int,
                 is_first_block: bool, rngs: nnx.Rngs):
        if out_ch % group_width:
            raise ValueError(f"Net1D: width {out_ch} is not a multiple of group_width {group_width}")
        if out_ch < in_ch:
            raise ValueError(f"Net1D: a block cannot narrow the width ({in_ch} -> {out_ch})")
        self.in_ch, self.out_ch, self.stride = in_ch, out_ch, stride
        self.groups = out_ch // group_width
        self.is_first_block = is_first_block
        self.conv1 = _conv(in_ch, out_ch, 1, 1, 1, rngs)
        self.conv2 = _conv(out_ch, out_ch, kernel, stride, self.groups, rngs)
        self.conv3 = _conv(out_ch, out_ch, 1, 1, 1, rngs)
        self.se = SqueezeExcite(out_ch, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        out = x if self.is_first_block else silu(x)
        out = silu(_pointwise(self.conv1, out))
        out = silu(grouped_conv(out, self.conv2.kernel[...], self.conv2.bias[...],
                                stride=self.stride, groups=self.groups))
        out = self.se(_pointwise(self.conv3, out))
        shortcut = maxpool_pad_right_zero(x) if self.stride > 1 else x
        return out + pad_channels_centred(shortcut, self.out_ch)


class Stage(nnx.Module):
    def __init__(self, in_ch: int, out_ch: int, num_blocks: int, *, kernel: int, stride: int,
                 group_width: int, is_first_stage: bool, rngs: nnx.Rngs):
        self.block_list = nnx.List([
            Block(in_ch if j == 0 else out_ch, out_ch, kernel=kernel,
                  stride=stride if j == 0 else 1, group_width=group_width,
                  is_first_block=is_first_stage and j == 0, rngs=rngs)
            for j in range(num_blocks)])

    def __call__(self, x: jax.Array) -> jax.Array:
        for block in self.block_list:
            x = block(x)
        return x


class Net1D(nnx.Module):
    """Net1D(model_cfg, rngs=...): logits = model(x), features = model.features(x), x (B, leads, T)."""

    def __init__(self, model_cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        filters, blocks = list(model_cfg.filters), list(model_cfg.blocks)
        if len(filters) != len(blocks):
            raise ValueError(f"Net1D: model.filters ({len(filters)}) and model.blocks "
                             f"({len(blocks)}) must have one entry per stage")
        self.in_channels = int(model_cfg.in_channels)
        k, s, g = int(model_cfg.kernel), int(model_cfg.stride), int(model_cfg.group_width)
        self.first_conv = _conv(self.in_channels, filters[0], k, s, 1, rngs)
        widths = [filters[0]] + filters
        self.stage_list = nnx.List([
            Stage(widths[i], widths[i + 1], blocks[i], kernel=k, stride=s, group_width=g,
                  is_first_stage=i == 0, rngs=rngs)
            for i in range(len(filters))])
        self.dense = _linear(filters[-1], int(model_cfg.num_classes), rngs)

    def _check_input(self, x: jax.Array) -> None:
        if x.ndim != 3 or x.shape[1] != self.in_channels:
            raise ValueError(f"Net1D expects input (batch, {self.in_channels} leads, samples), "
                             f"got shape {tuple(x.shape)}")

    def feature_map(self, x: jax.Array) -> jax.Array:
        """(B, leads, T) -> (B, T', C) channels-last map after the last stage."""
        self._check_input(x)

        def early(x):  # the stem and the first stages, per micro-batch
            out = silu(self.first_conv(jnp.swapaxes(x, 1, 2)))
            for stage in self.stage_list[:_MICRO_BATCHED_STAGES]:
                out = stage(out)
            return out

        out = micro_batched(early, x, _MICRO_BATCH)
        for stage in self.stage_list[_MICRO_BATCHED_STAGES:]:
            out = stage(out)
        return out

    def features(self, x: jax.Array) -> jax.Array:
        """(B, leads, T) -> (B, filters[-1]) time-averaged features the head consumes."""
        return jnp.mean(self.feature_map(x), axis=1)

    def __call__(self, x: jax.Array) -> jax.Array:
        """(B, leads, T) -> (B, num_classes) logits (sigmoid per label: multi-label)."""
        return _apply(self.dense, self.features(x))
