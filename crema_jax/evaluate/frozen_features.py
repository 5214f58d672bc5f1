"""Heads on frozen features: what the linear probe (linear_probe.py), the MLP head (mlp_head.py),
the feature cache (feature_store.py) and the benchmark share.

`extract_features` runs a backbone once over a dataset's readable examples (its evaluation
crops, averaged or kept per crop); `head_fit_predict` turns a head's fit and predict functions
into a runs.py model on those features. A head trains on `training_rows` (standardised on the
training split, padded to a power of two so that heads of other sizes share compiled shapes)
with `weighted_data_loss` plus its own L2 term; `crop_rows` makes each crop a training row.
"""
from __future__ import annotations

import dataclasses
import time

import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from crema_jax.data.pipeline import datasets as pipeline
from crema_jax.data.pipeline import sources
from crema_jax.evaluate import datasets, protocols
from crema_jax.inference import backbones
from crema_jax.runtime import mesh as mesh_lib


@dataclasses.dataclass
class Features:
    """One backbone's frozen features of a dataset's readable examples, for one lead set."""
    values: np.ndarray  # (n, 1, D) the crops' mean, or (n, C, D) per crop (probability averaging)
    rows: np.ndarray    # (n,) the dataset record of each example
    ids: list           # (n,) record ids, "ID#k" for window k of a record cut into windows
    data_cfg: object


def extract_features(backbone, data, lead_name: str, settings: dict, mesh) -> Features:
    """Features of every readable example of `data` through `backbone`'s evaluation crops."""
    # No larger than the records: the last batch is padded to its size (--batch_size=2048 on
    # 45 records was killed for memory).
    batch_size = mesh_lib.round_batch(min(settings["batch_size"], max(len(data.infos), 1)),
                                      mesh)
    data_cfg = backbones.eval_data_config(backbone, protocols.lead_set(lead_name),
                                          batch_size=batch_size,
                                          num_workers=settings["num_workers"],
                                          preset=settings["preset"])
    t0 = time.time()
    source = datasets.make_source(data, data_cfg)
    out = backbones.run(backbones.make_apply(backbone, mesh, output="features"),
                        pipeline.make_eval_dataset(data_cfg, source=source))
    logging.info("features (%s leads): %d examples in %.1fs", lead_name, len(out["index"]),
                 time.time() - t0)
    # (n, 1, D): the crops' features averaged; (n, C, D): each crop a row, its probabilities
    # averaged (data.eval_crop_average "probability", ST-MEM).
    values = (out["outputs"] if data_cfg.eval_crop_average == "probability"
              else out["outputs"].mean(1, keepdims=True))
    rows = source.record_rows[out["index"]]
    ids = [sources.example_name(data.infos[r].record_id, window)
           for r, window in zip(rows, sources.example_windows(source, out["index"]))]
    return Features(values, np.asarray(rows, np.int64), ids, data_cfg)


def head_fit_predict(features: Features, data, head_kwargs: dict, *, fit, predict):
    """A head on `features` as a runs.py model (records -> their examples): `fit(x_train,
    y_train, x_val, y_val, label_type=..., **head_kwargs)` returns a head with l2, chosen_by
    and val_auroc_by_l2 (linear_probe.fit_linear_probe, mlp_head.fit_mlp_head), `predict(head,
    x)` its probabilities. Its info's n_train and n_val count the records it read (they
    replace the records assigned in the run's entry)."""
    labels = data.labels[features.rows]

    def examples(rows):
        return np.flatnonzero(np.isin(features.rows, rows))

    def fit_predict(train_rows, val_rows, tests):
        train, val = examples(train_rows), examples(val_rows)
        head = fit(features.values[train], labels[train], features.values[val], labels[val],
                   label_type=data.label_type, **head_kwargs)
        out = {"val": {"probs": predict(head, features.values[val]),
                       "labels": labels[val]},
               "tests": {},
               "info": {"selection": {"l2": head.l2, "chosen_by": head.chosen_by,
                                      "val_macro_auroc_by_l2": {
                                          str(k): v for k, v in head.val_auroc_by_l2.items()}},
                        # The records the head saw (a record the backbone could not read, e.g.
                        # too short for its windows, is not counted as trained on).
                        "n_train": int(len(np.unique(features.rows[train]))),
                        "n_val": int(len(np.unique(features.rows[val])))}}
        for name, rows in tests.items():
            ex = examples(rows)
            out["tests"][name] = {"probs": predict(head, features.values[ex]),
                                  "labels": labels[ex], "rows": features.rows[ex],
                                  "ids": [features.ids[i] for i in ex]}
        return out

    return fit_predict


# ------------------------------------------------------------------- a head's training rows
def standardiser(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of training features; constant dimensions get std 1 (left unscaled)."""
    features = np.asarray(features, np.float64)
    mean, std = features.mean(0), features.std(0)
    return mean.astype(np.float32), np.where(std > 1e-8, std, 1.0).astype(np.float32)


def _bucket(n: int) -> int:
    """Rows padded to a power of two (>= 64): label fractions and per-source heads then share
    compiled shapes instead of compiling once per training-set size."""
    return max(64, 1 << (int(n) - 1).bit_length())


def training_rows(x_train, y_train):
    """(standardised features, labels, row weights, mean, std) of a head's training rows,
    padded to _bucket rows with weight 0 (the heads of linear_probe.py and mlp_head.py)."""
    mean, std = standardiser(x_train)
    n = len(x_train)
    pad = _bucket(n) - n
    xt = np.pad((np.asarray(x_train, np.float32) - mean) / std, ((0, pad), (0, 0)))
    yt = np.pad(np.asarray(y_train, np.float32), ((0, pad), (0, 0)))
    w = np.r_[np.ones(n, np.float32), np.zeros(pad, np.float32)]
    return xt, yt, w, mean, std


def crop_rows(x, y):
    """(n, C, D) crops and (n, K) labels -> (n*C, D) rows and their labels; 2-D x as it is."""
    x = np.asarray(x)
    if x.ndim == 2:
        return x, y
    return x.reshape(-1, x.shape[-1]), np.repeat(np.asarray(y), x.shape[1], axis=0)


def weighted_data_loss(logits, y, w, label_type: str):
    """Mean cross-entropy weighted by w (0 on padding rows): softmax (multiclass) or summed
    sigmoid (multilabel). The probe's and the MLP head's objectives add their L2 terms to it."""
    if label_type == "multiclass":
        per_row = optax.softmax_cross_entropy(logits, y)
    else:
        per_row = jnp.sum(optax.sigmoid_binary_cross_entropy(logits, y), axis=-1)
    return jnp.sum(w * per_row) / jnp.sum(w)
