"""`crema-jax embed --checkpoint=DIR --input=X.npy|RECORDS --out=Y.npy [--raw] [--logits]`.

Writes the pooled features the downstream head consumes, one row per ECG:
- SiT: SEP tokens dropped, mean over lead x patch tokens, then the final LayerNorm (ST-MEM);
- Net1D: the 1024 time-averaged features of the last stage.
With --logits (a checkpoint with a classification head): logits instead.

Input: an .npy array (N, leads, samples) at --fs Hz (default: the model's rate), or WFDB records
(`rec1,rec2`, a glob, or a folder). Without --raw the evaluation protocol is applied:
resampling to the model's rate, the checkpoint's preprocessing (config.data.preprocess for a SiT,
ECGFounder's for Net1D), then for a SiT the evaluation crops (ST-MEM: 3 crops of 2250 samples at
0/125/250, features or logits averaged over crops) and for Net1D the 10 s window (centre crop /
zero pad). --raw feeds the array as given: (N, 12, num_patches * patch_size) for a SiT,
(N, in_channels, T) for Net1D.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from crema_jax.export import cli, inputs, model_io

cli.string("checkpoint", None, "workdir, checkpoints dir or step dir to read")
cli.string("input", None, "embed: X.npy (N, leads, samples), or WFDB records: a,b | glob | folder")
cli.string("out", None, "output: embed: Y.npy")
cli.boolean("raw", False, "embed: feed the array as given (no resampling/preprocessing/crops)")
cli.boolean("logits", False, "embed: write classification logits instead of features")
cli.integer("batch_size", 16, "ECGs per forward pass")
cli.string("fs", "", "embed: sampling rate of an .npy input in Hz (default: the model's rate)")


class EmbedError(ValueError):
    """An input the model cannot take; the message says what was expected."""


def _is_net1d(config) -> bool:
    return config.model.get("name", "sit") == "net1d"


def model_rate(config) -> float:
    return float(config.model.sample_rate if _is_net1d(config) else config.data.target_fs)


def _preprocess_cfg(config):
    from crema_jax.data import preprocess
    return preprocess.PRESETS["ecgfounder"]() if _is_net1d(config) else config.data.preprocess


def _clean(record: np.ndarray, config, fs: float, present=None) -> np.ndarray:
    """One (leads, T) ECG -> the model's rate and preprocessing (NaN -> 0 first)."""
    from crema_jax.data import preprocess, records

    rate = model_rate(config)
    x = records.resample(np.nan_to_num(np.asarray(record, np.float32)), fs, rate)[0]
    return preprocess.preprocess(x, rate, _preprocess_cfg(config), lead_present=present)


def prepare(x, config, *, fs: float, lead_present=None, raw: bool = False):
    """ECGs -> model input: Net1D (N, C, T'); SiT (patches (N, crops, 12, N, P), valid).

    x: an array (N, leads, T), or (records) a list of (leads, T_i) arrays of varying length.
    """
    records = [np.asarray(r, np.float32) for r in x]
    if not records or any(r.ndim != 2 for r in records):
        raise EmbedError("input must be (N, leads, samples) with N >= 1; got "
                         f"{getattr(x, 'shape', [r.shape for r in records][:3])}")
    num_in = records[0].shape[0]
    if _is_net1d(config):
        leads = int(config.model.in_channels)
        if raw:
            out = np.stack(records)
        else:
            if num_in == 12 and leads == 1:
                records = [r[:1] for r in records]  # the 1-lead model reads lead I
            out = np.stack([inputs.fit_length(_clean(r, config, fs), int(config.model.num_samples))
                            for r in records])
        if out.shape[1] != leads:
            raise EmbedError(f"this Net1D takes {leads} leads, the input has {out.shape[1]}")
        return out
    patch, n = int(config.model.patch_size), int(config.model.num_patches)
    if num_in != 12:
        raise EmbedError(f"a SiT takes 12 leads in canonical order, the input has {num_in}")
    if raw:
        arr = np.stack(records)
        if arr.shape[2] != n * patch:
            raise EmbedError(f"--raw input for this SiT must be (N, 12, {n * patch}) "
                             f"({n} patches of {patch} samples), got {arr.shape}")
        return arr.reshape(arr.shape[0], 1, 12, n, patch), np.ones((arr.shape[0], 1, 12, n), bool)
    present = np.ones((len(records), 12), bool) if lead_present is None else lead_present
    out = [inputs.sit_crops(_clean(r, config, fs, p), crop=n * patch, patch=patch,
                            offsets=tuple(config.data.eval_crop_offsets))
           for r, p in zip(records, present)]
    patches = np.stack([o[0] for o in out])
    valid = np.stack([o[1] for o in out]) & present[:, None, :, None]
    return patches, valid


def make_apply(config, params, *, logits: bool):
    """A jitted (inputs...) -> (B, D or C) function of the checkpoint's model."""
    from crema_jax.models import classify, encode_features

    model = model_io.merge(config.model, params)
    if logits and not _is_net1d(config) and int(config.model.num_classes) <= 0:
        raise EmbedError("--logits: this checkpoint has no classification head "
                         "(config.model.num_classes is 0); write features instead")
    graphdef, state = nnx.split(model)
    if _is_net1d(config):
        def apply(state, x):
            m = nnx.merge(graphdef, state)
            return m(x) if logits else m.features(x)
        return jax.jit(apply), state

    def apply(state, patches, valid):
        b, c = patches.shape[:2]
        leads = jnp.broadcast_to(jnp.arange(12), (b * c, 12))
        flat = patches.reshape((b * c,) + patches.shape[2:])
        flat_valid = valid.reshape((b * c,) + valid.shape[2:])
        if logits:  # ST-MEM averages the predictions of the crops
            out = classify(graphdef, state, flat, leads, flat_valid)
        else:       # the evaluation protocol averages the crops' features
            out = encode_features(graphdef, state, flat, leads, flat_valid)
        return out.reshape(b, c, -1).mean(axis=1)
    return jax.jit(apply), state


def run_batches(apply, state, arrays, batch_size: int) -> np.ndarray:
    """apply over the leading axis in fixed-size batches (the last one padded: one compile)."""
    n = arrays[0].shape[0]
    outs = []
    for start in range(0, n, batch_size):
        chunk = [a[start:start + batch_size] for a in arrays]
        pad = batch_size - chunk[0].shape[0]
        chunk = [np.concatenate([c, np.repeat(c[-1:], pad, 0)]) if pad else c for c in chunk]
        outs.append(np.asarray(apply(state, *chunk))[:batch_size - pad])
    return np.concatenate(outs).astype(np.float32)


def embed(config, params, x, *, fs=None, lead_present=None, raw=False, logits=False,
          batch_size=16) -> np.ndarray:
    prepared = prepare(x, config, fs=fs or model_rate(config), lead_present=lead_present, raw=raw)
    apply, state = make_apply(config, params, logits=logits)
    arrays = [prepared] if _is_net1d(config) else list(prepared)
    return run_batches(apply, state, arrays, batch_size)


def load_input(spec: str, config, fs: float | None):
    """(array (N, leads, T) or list of (12, T_i) records, lead_present or None, ids or None, fs)."""
    if spec.endswith(".npy"):
        if not os.path.isfile(spec):
            raise FileNotFoundError(f"--input={spec}: no such file")
        return np.load(spec, allow_pickle=False), None, None, fs or model_rate(config)
    paths = inputs.expand_records(spec)
    signals, present, ids = inputs.read_records(paths, model_rate(config))
    return signals, present, ids, model_rate(config)


def main(argv):
    cli.quiet_logs()
    if len(argv) != 1 or not all(cli.value(f) for f in ("checkpoint", "input", "out")):
        raise SystemExit("usage: crema-jax embed --checkpoint=DIR --input=X.npy|RECORDS "
                         "--out=Y.npy [--raw] [--logits] [--fs=HZ]")
    params, config, _ = model_io.load_checkpoint(cli.value("checkpoint"))
    fs = float(cli.value("fs")) if cli.value("fs") else None
    try:
        x, present, ids, fs = load_input(cli.value("input"), config, fs)
        out = embed(config, params, x, fs=fs, lead_present=present, raw=cli.value("raw"),
                    logits=cli.value("logits"), batch_size=cli.value("batch_size"))
    except (EmbedError, FileNotFoundError) as err:
        raise SystemExit(f"embed: {err}") from err
    np.save(cli.value("out"), out)
    if ids is not None:
        with open(os.path.splitext(cli.value("out"))[0] + ".records.txt", "w") as f:
            f.write("\n".join(ids) + "\n")
    print(f"wrote {cli.value('out')}: {out.shape} "
          f"{'logits' if cli.value('logits') else 'features'}")
