"""Evaluators that run while pretraining, selected by name (big_vision style):

    config.evals.names = ("reconstruction", "fewshot_probe")
    config.evals.every_steps = 100        # and at the last step

Each evaluator is built once from the config, the training mesh and the trainer's prediction
functions (big_vision's predict_fns: `fn(state, batch) -> outputs`, jitted on the training mesh
with the sharded state as it is), and `run(state)` returns metrics the trainer logs with the
step to metrics.jsonl and TensorBoard (keys "eval/..."). Everything an evaluator reads is fixed
at build time (records, masks, crops), so a figure changes only because the model did. Every
process runs the same program and gets the same (replicated) numbers, so multi-host jobs
evaluate too.

- reconstruction: masked-patch MSE on held-back records (config.evals.reconstruction.split),
  beside the baselines of evaluate/reconstruction.py (predict zero, nearest visible patch, most
  correlated visible lead) on the same masks. Only the parts config.loss trains are
  reported: no MSE for a decoder a contrastive-only loss never trains, no view matching for an
  untrained projection head.
- fewshot_probe: a linear probe on frozen features of a labelled dataset (the training data's
  layout and root unless config.evals.fewshot_probe names another), trained on its "train"
  split (a label fraction of it), L2 chosen on "val", macro AUROC on "test".

The trainer receives these through `trainer.train(..., evaluators=build)` (the pretrain command
passes it), so the training loop never imports evaluation code.
"""
from __future__ import annotations

import jax
import numpy as np

from crema_jax import config_checks
from crema_jax import losses
from crema_jax.data.pipeline import batch as batch_lib
from crema_jax.data.pipeline import datasets as pipeline
from crema_jax.evaluate import datasets, linear_probe, protocols, scoring
from crema_jax.evaluate import reconstruction as recon_lib
from crema_jax.inference import backbones
from crema_jax.runtime import mesh as mesh_lib


def _pad_rows(batch: dict, multiple: int) -> tuple[dict, int]:
    """Repeat the last example until the batch divides by `multiple` (the mesh's batch shards)."""
    n = len(batch["patches"])
    pad = -n % multiple
    if not pad:
        return batch, n
    return {k: np.concatenate([v, np.repeat(v[-1:], pad, axis=0)]) for k, v in batch.items()}, n


def view_matching_accuracy(proj: np.ndarray) -> float:
    """(B, 2, E) projections: the fraction of records whose view 0 is most cosine-similar to
    their own view 1 among the B records' view 1 (the contrastive task's top-1 accuracy)."""
    z = proj / np.maximum(np.linalg.norm(proj, axis=-1, keepdims=True), 1e-12)
    sim = z[:, 0] @ z[:, 1].T
    return float(np.mean(np.argmax(sim, axis=1) == np.arange(len(z))))


class Reconstruction:
    """Reports only the parts config.loss trains (losses.trained_parts): no reconstruction
    figures for a decoder no loss term reaches (a contrastive-only loss), no view matching for
    an untrained projection head (mae, stmem); `notes` says which were left out and why."""
    name = "reconstruction"

    def __init__(self, config, mesh, predict_fns):
        opts = config.evals.reconstruction
        data_cfg = config.data
        self.parts = losses.trained_parts(config.loss)
        self.notes = [f"no {what}: {losses.untrained(config.loss, part)}"
                      for part, what in (("decoder", "reconstruction MSE"),
                                         ("projector", "view matching"))
                      if not self.parts[part]]
        self.norm_pix_loss = losses.uses_norm_pix(config.loss)
        self.batch, self.paths = recon_lib.held_back_batch(
            data_cfg, split=opts.split, num_records=opts.num_records, seed=int(opts.seed))
        self.corr = None
        if self.parts["decoder"]:
            self.corr = recon_lib.lead_correlations(
                data_cfg, split=data_cfg.split, max_records=int(opts.correlation_records))
        device_part = batch_lib.device_part(self.batch)
        device_part, self.n = _pad_rows(device_part, mesh_lib.batch_divisor(mesh))
        replicated = mesh_lib.replicated(mesh)
        self.device_batch = {k: mesh_lib.place(v, replicated) for k, v in device_part.items()}
        self.reconstruct = predict_fns["reconstruct"]
        self.last = None

    def run(self, state) -> dict:
        outputs = self.reconstruct(state, self.device_batch)
        outputs = {k: np.asarray(v)[: self.n] for k, v in jax.device_get(outputs).items()}
        out = {}
        if self.parts["decoder"]:
            pred = self.last = outputs["pred"]
            scores = recon_lib.scores(pred, self.batch, self.corr,
                                      norm_pix_loss=self.norm_pix_loss)
            out["eval/recon_mse"] = scores["mse"]
            for name in recon_lib.BASELINES:
                out[f"eval/recon_mse_{name}"] = scores[f"mse/{name}"]
                out[f"eval/recon_mse_over_{name}"] = scores[f"mse_over/{name}"]
        # two views and a trained head: does view 0 find its own view 1?
        if self.parts["projector"] and outputs["proj"].shape[1] == 2:
            out["eval/contrastive_accuracy"] = view_matching_accuracy(outputs["proj"])
        return out

    def summary(self, row: dict) -> str:
        parts = []
        if "eval/recon_mse" in row:
            ratios = ", ".join(f"{row[f'eval/recon_mse_over_{b}']:.2f} x "
                               f"{b.replace('_', '-')} ({row[f'eval/recon_mse_{b}']:.3f})"
                               for b in recon_lib.BASELINES)
            parts.append(f"held-back masked MSE {row['eval/recon_mse']:.3f} on {self.n} "
                         f"records = {ratios}")
        if "eval/contrastive_accuracy" in row:
            parts.append(f"views matched {row['eval/contrastive_accuracy']:.2f} "
                         f"(chance {1 / self.n:.2f})")
        return "; ".join(parts + self.notes)


class FewShotProbe:
    """`key` names its metrics (eval/<key>_macro_auroc, ...): several probes on different
    labelled sets can run side by side (bench/learning.py)."""
    name = "fewshot_probe"

    def __init__(self, config, mesh, predict_fns, *, key: str = "fewshot"):
        self.key = key
        opts = config.evals.fewshot_probe
        own = not (opts.root or opts.layout)  # the training data's own labels
        root = opts.root or (config.data.root if own else "")
        cache_dir = config.data.cache_dir if own else ""
        if (own and int(config.data.synthetic_records) > 0) or not (root or cache_dir):
            raise ValueError("config.evals.fewshot_probe.root: name a labelled dataset (the "
                             "training data has no labels: synthetic records or no root)")
        layout_options = opts.layout_options if not own else config.data.layout_options
        settings = {"root": root, "cache_dir": cache_dir,
                    "layout": opts.layout or config.data.layout,
                    "layout_options": dict(layout_options or {}), "seed": int(opts.seed),
                    "split_fractions": tuple(opts.split_fractions),
                    "min_positives": int(opts.min_positives), "label_type": "multilabel",
                    "flag_prefix": "--config.evals.fewshot_probe."}
        self.data = datasets.load_dataset(settings)
        batch_size = mesh_lib.round_batch(int(opts.batch_size), mesh)
        self.data_cfg = backbones.eval_data_config(config, protocols.lead_set(opts.leads),
                                                   batch_size=batch_size)
        self.source = datasets.make_source(self.data, self.data_cfg)
        self.l2_grid = tuple(float(v) for v in opts.l2_grid)
        self.label_fraction, self.seed = float(opts.label_fraction), int(opts.seed)
        self.replicated = mesh_lib.replicated(mesh)
        self.features = predict_fns["features"]
        self.last = None

    def _features(self, state) -> tuple[np.ndarray, np.ndarray]:
        def apply(batch):
            return self.features(state, {k: mesh_lib.place(np.asarray(batch[k]), self.replicated)
                                         for k in batch_lib.EVAL_KEYS})
        out = backbones.run(apply, pipeline.make_eval_dataset(self.data_cfg, source=self.source))
        return out["outputs"].mean(1), self.source.record_rows[out["index"]]

    def run(self, state) -> dict:
        feats, rows = self._features(state)
        labels, splits = self.data.labels[rows], self.data.splits[rows]
        train, val, test = (np.flatnonzero(splits == s) for s in protocols.SPLITS)
        train = train[protocols.label_fraction_subset(labels[train], self.label_fraction,
                                                      seed=self.seed)]
        head = linear_probe.fit_linear_probe(feats[train], labels[train], feats[val],
                                             labels[val], l2_grid=self.l2_grid)
        probs = linear_probe.predict_proba(head, feats[test])
        auroc = scoring.macro_auroc(labels[test], probs)
        self.last = {"features": feats, "rows": rows, "test": test, "labels": labels[test],
                     "probabilities": probs}
        k = f"eval/{self.key}"
        return {f"{k}_macro_auroc": float(auroc), f"{k}_l2": head.l2,
                f"{k}_train_records": int(len(train)), f"{k}_test_records": int(len(test))}

    def summary(self, row: dict) -> str:
        k = f"eval/{self.key}"
        return (f"{self.key} probe macro AUROC {row[f'{k}_macro_auroc']:.3f} "
                f"({row[f'{k}_train_records']} training, {row[f'{k}_test_records']} test "
                "records)")


EVALUATORS = {"reconstruction": Reconstruction, "fewshot_probe": FewShotProbe}


def check_names(config) -> None:
    """config.evals.names must all be EVALUATORS keys (checked before anything is built)."""
    unknown = [n for n in config.evals.names if n not in EVALUATORS]
    if unknown:
        raise config_checks.ConfigValueError(
            f"config.evals.names={tuple(config.evals.names)!r}: unknown {unknown}; expected "
            f"names from {sorted(EVALUATORS)}", "evals.names")


def build(config, setup, predict_fns) -> list:
    """The evaluators config.evals.names lists, on the trainer's mesh (setup.mesh) with its
    prediction functions."""
    check_names(config)
    return [EVALUATORS[name](config, setup.mesh, predict_fns) for name in config.evals.names]
