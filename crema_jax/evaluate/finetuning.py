"""Full fine-tuning of the SiT encoder with a classification head (library; CLI in finetune.py).

Recipe (ST-MEM's fine-tuning, reference-stmem.md): AdamW, lr = base_lr x batch / 256 with linear
warm-up then cosine, weight decay 0.05, layer-wise learning-rate decay (embeddings get
decay^(depth+1), block i decay^(depth-i), `norm` and `head` the full rate), stochastic depth,
optional label smoothing; the ST-MEM augmentations come from config.data.augment.

Loss by label type: multi-label BCE (sigmoid per class) or multi-class softmax cross-entropy.
Validation every epoch on the deterministic crops, with LOGITS averaged over crops (ST-MEM
averages predictions); the best validation macro AUROC is kept (early stopping with patience)
and the caller evaluates the test split ONCE on those best parameters.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Iterable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from crema_jax.data import pipeline
from crema_jax.evaluate import metrics


# ------------------------------------------------------------------- layer-wise lr decay
def layer_id(path: tuple[str, ...], depth: int) -> int:
    """0 for the embeddings, i+1 for block i, depth+1 for everything after the blocks."""
    if path and path[0] == "blocks":
        return int(path[1]) + 1 if len(path) > 1 and str(path[1]).isdigit() else -1
    if path and path[0] in ("patch_embed", "pos_embedding", "sep_embedding", "lead_embeddings"):
        return 0
    return depth + 1


def lr_scales(params, depth: int, decay: float):
    """A tree like `params` of lr multipliers decay^(depth+1-layer_id).

    Scanned (stacked) blocks carry a leading `layers` axis: their multiplier is a (depth, 1, ...)
    array so each layer still gets its own rate.
    """
    def scale(path, leaf):
        keys = tuple(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
        lid = layer_id(keys, depth)
        if lid == -1:  # stacked blocks: per-layer vector broadcast over the leaf
            per_layer = decay ** (depth - np.arange(depth, dtype=np.float32))
            return jnp.asarray(per_layer.reshape((depth,) + (1,) * (np.ndim(leaf) - 1)))
        return jnp.asarray(decay ** (depth + 1 - lid), jnp.float32)

    return jax.tree_util.tree_map_with_path(scale, params)


def scale_by_tree(scales) -> optax.GradientTransformation:
    """Multiply each update by its entry of a fixed tree (layer-wise lr decay, incl. weight decay,
    which AdamW also scales by the lr: the same as per-group lrs in PyTorch/timm)."""
    def init(params):
        del params
        return optax.EmptyState()

    def update(updates, state, params=None):
        del params
        return jax.tree.map(lambda u, s: u * s.astype(u.dtype), updates, scales), state

    return optax.GradientTransformation(init, update)


def make_optimizer(params, *, peak_lr: float, weight_decay: float, layer_decay: float,
                   depth: int, warmup_steps: int, total_steps: int, betas=(0.9, 0.999)):
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, peak_lr, warmup_steps, max(total_steps, warmup_steps + 1), 0.0)
    return optax.chain(
        optax.adamw(schedule, b1=betas[0], b2=betas[1], weight_decay=weight_decay),
        scale_by_tree(lr_scales(params, depth, layer_decay)))


# ------------------------------------------------------------------- losses
def loss_fn(logits, labels, *, label_type: str, label_smoothing: float = 0.0):
    """Mean loss per record. Label smoothing moves targets towards uniform (multiclass) or 0.5
    (multilabel: y(1-e) + e/2, the binary analogue)."""
    if label_type == "multiclass":
        k = labels.shape[-1]
        targets = labels * (1 - label_smoothing) + label_smoothing / k
        return jnp.mean(optax.softmax_cross_entropy(logits, targets))
    targets = labels * (1 - label_smoothing) + label_smoothing / 2
    return jnp.mean(jnp.sum(optax.sigmoid_binary_cross_entropy(logits, targets), -1))


def probabilities(logits, label_type: str):
    return jax.nn.softmax(logits, -1) if label_type == "multiclass" else jax.nn.sigmoid(logits)


# ------------------------------------------------------------------- training batches
def train_batches(data_cfg, source, *, batch_size: int, seed: int):
    """Endless shuffled training batches (B, 1 crop, L, N, P) with labels.

    The pretraining pipeline with ONE view supplies the random crop and the configured
    augmentations (its masks are simply not used); labels are looked up by record index.
    """
    cfg = data_cfg.copy_and_resolve_references()
    with cfg.unlocked():
        cfg.num_views = 1
        cfg.num_epochs = None
        cfg.batch_size = int(batch_size)
        cfg.seed = int(seed)
    labels = np.asarray(source.labels, np.float32)
    for batch in pipeline.make_pretrain_dataset(cfg, source=source):
        yield {"patches": batch["patches"], "patch_valid": batch["patch_valid"],
               "lead_indices": batch["lead_indices"], "labels": labels[batch["index"]]}


# ------------------------------------------------------------------- steps
@dataclasses.dataclass
class Model:
    """A classifier as pure pieces: logits_fn(graphdef, (params, rest), patches, lead_indices,
    patch_valid, rng) -> (B, C); `depth` drives the layer-wise lr decay."""
    graphdef: object
    params: object  # trainable nnx.Param state
    rest: object    # everything else (fixed position tables)
    logits_fn: object
    depth: int


def make_steps(model: Model, tx, mesh, *, label_type: str, label_smoothing: float):
    batch_sh = NamedSharding(mesh, P("data"))
    repl = NamedSharding(mesh, P())

    def loss(params, rest, batch, rng):
        logits = model.logits_fn(model.graphdef, (params, rest), batch["patches"][:, 0],
                                 batch["lead_indices"], batch["patch_valid"][:, 0], rng)
        return loss_fn(logits, batch["labels"], label_type=label_type,
                       label_smoothing=label_smoothing)

    def train_step(params, opt_state, rest, batch, rng):
        value, grads = jax.value_and_grad(loss)(params, rest, batch, rng)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    def eval_step(params, rest, batch):
        b, c = batch["patches"].shape[:2]
        flat = lambda x: x.reshape((b * c,) + x.shape[2:])  # noqa: E731 - crops as records
        leads = jnp.repeat(batch["lead_indices"], c, axis=0)
        logits = model.logits_fn(model.graphdef, (params, rest), flat(batch["patches"]), leads,
                                 flat(batch["patch_valid"]), None)
        return logits.reshape(b, c, -1).mean(1)  # ST-MEM: average over the crops

    train = jax.jit(train_step, in_shardings=(repl, repl, repl, batch_sh, repl),
                    out_shardings=(repl, repl, repl), donate_argnums=(0, 1))
    evaluate = jax.jit(eval_step, in_shardings=(repl, repl, batch_sh), out_shardings=batch_sh)
    return train, evaluate


def predict(evaluate, params, rest, batches: Iterable[dict], label_type: str):
    """(probabilities (n, C), labels (n, C), index (n,)) over evaluation batches."""
    probs, labels, index = [], [], []
    for batch in batches:
        keep = np.asarray(batch["valid"])
        logits = evaluate(params, rest, {k: batch[k] for k in
                                         ("patches", "patch_valid", "lead_indices")})
        probs.append(np.asarray(probabilities(logits, label_type))[keep])
        labels.append(np.asarray(batch["labels"])[keep])
        index.append(np.asarray(batch["index"])[keep])
    return np.concatenate(probs), np.concatenate(labels), np.concatenate(index)


def fit(model: Model, *, mesh, train_iter, val_batches: list, label_type: str, epochs: int,
        steps_per_epoch: int, peak_lr: float, weight_decay: float, layer_decay: float,
        warmup_epochs: float, label_smoothing: float, patience: int, seed: int, log=print):
    """Train, validate each epoch, keep the best validation macro AUROC. Returns
    (best params (host), history list, best epoch)."""
    total = epochs * steps_per_epoch
    tx = make_optimizer(model.params, peak_lr=peak_lr, weight_decay=weight_decay,
                        layer_decay=layer_decay, depth=model.depth,
                        warmup_steps=int(round(warmup_epochs * steps_per_epoch)),
                        total_steps=total)
    train, evaluate = make_steps(model, tx, mesh, label_type=label_type,
                                 label_smoothing=label_smoothing)
    repl = NamedSharding(mesh, P())
    params = jax.device_put(model.params, repl)
    rest = jax.device_put(model.rest, repl)
    opt_state = jax.jit(tx.init, out_shardings=repl)(params)
    rng = jax.random.key(seed)
    best = {"auroc": -math.inf, "params": jax.device_get(params), "epoch": 0}
    history, since_best = [], 0
    for epoch in range(1, epochs + 1):
        losses = []
        for _ in range(steps_per_epoch):
            batch = next(train_iter)
            rng, step_rng = jax.random.split(rng)
            params, opt_state, value = train(
                params, opt_state, rest,
                {k: batch[k] for k in ("patches", "patch_valid", "lead_indices", "labels")},
                step_rng)
            losses.append(value)
        probs, labels, _ = predict(evaluate, params, rest, val_batches, label_type)
        auroc = metrics.macro_auroc(labels, probs)
        train_loss = float(np.mean(jax.device_get(losses)))
        history.append({"epoch": epoch, "train_loss": train_loss,
                        "val_macro_auroc": None if np.isnan(auroc) else float(auroc)})
        log(f"epoch {epoch}/{epochs}: train loss {train_loss:.4f}, val macro AUROC "
            f"{auroc:.4f}")
        score = -math.inf if np.isnan(auroc) else auroc
        if score > best["auroc"] or (best["epoch"] == 0):
            best = {"auroc": score, "params": jax.device_get(params), "epoch": epoch}
            since_best = 0
        else:
            since_best += 1
            if patience and since_best >= patience:
                log(f"early stop: no validation improvement in {patience} epochs")
                break
    return best["params"], history, best["epoch"], evaluate


def sit_classifier(model_cfg, params: dict | None, num_classes: int, *, drop_path: float,
                   seed: int) -> Model:
    """A SiT encoder with a fresh `head` of num_classes, loaded from a checkpoint (or random)."""
    from crema_jax.evaluate.features import sit_encoder
    from crema_jax.models import classify, resolve_size
    cfg = model_cfg.copy_and_resolve_references()
    with cfg.unlocked():
        cfg.num_classes = int(num_classes)
        cfg.drop_path = float(drop_path)
    graphdef, state = sit_encoder(cfg, params, seed=seed)
    params_state, rest = nnx.split_state(state, nnx.Param, ...)

    def logits_fn(graphdef, state, patches, lead_indices, patch_valid, rng):
        return classify(graphdef, state, patches, lead_indices, patch_valid, rng,
                        train=rng is not None)

    return Model(graphdef, params_state, rest, logits_fn, resolve_size(cfg)["depth"])
