"""Contrastive losses between the two views' projections, outputs["proj"] (B, 2, E).

All are written in the GLOBAL view: under jax.jit with the batch sharded over devices/hosts, B is
the global batch and XLA inserts the all-gathers, so every ECG's negatives are all other ECGs of
the global batch. Similarities, log-softmax and sigmoid statistics are float32 at full precision.
"""
import jax
import jax.numpy as jnp

HIGHEST = jax.lax.Precision.HIGHEST


def l2_normalise(z, eps=1e-12):
    """torch.nn.functional.normalize: z / max(||z||, eps)."""
    z = z.astype(jnp.float32)
    return z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), eps)


def _views(outputs):
    proj = outputs["proj"]
    if proj.ndim != 3 or proj.shape[1] != 2:
        raise ValueError(f"contrastive losses need outputs['proj'] of shape (B, 2, E) (two views, "
                         f"config.data views=2); got {proj.shape}")
    return l2_normalise(proj[:, 0]), l2_normalise(proj[:, 1])


def _cross_entropy_diag(logits):
    """Mean over rows of -log softmax(row)[i] at the diagonal (the positive pair)."""
    return jnp.mean(jax.nn.logsumexp(logits, axis=1) - jnp.diagonal(logits))


def infonce(outputs, batch, *, temperature=0.1):
    """Symmetric InfoNCE (CLIP-style): view-0 anchors classify their view-1 partner among the B
    view-1 embeddings, and vice versa. B candidates per anchor, all from the other view."""
    a, b = _views(outputs)
    logits = jnp.matmul(a, b.T, precision=HIGHEST) / temperature
    loss = 0.5 * (_cross_entropy_diag(logits) + _cross_entropy_diag(logits.T))
    accuracy = jnp.mean(jnp.argmax(logits, axis=1) == jnp.arange(logits.shape[0]))
    return loss, {"loss/contrastive": loss, "contrastive/accuracy": accuracy}


def simclr(outputs, batch, *, temperature=0.1):
    """SimCLR's NT-Xent: the 2B embeddings of both views form one pool; each anchor's positive is
    its other view and its negatives are the remaining 2B-2 embeddings, SAME-view ones included
    (2B-1 candidates; infonce uses only the B other-view candidates). Mean over the 2B anchors."""
    a, b = _views(outputs)
    n = a.shape[0]
    z = jnp.concatenate([a, b], axis=0)
    logits = jnp.matmul(z, z.T, precision=HIGHEST) / temperature
    logits = jnp.where(jnp.eye(2 * n, dtype=bool), -jnp.inf, logits)  # an anchor is not a candidate
    positive = jnp.concatenate([jnp.arange(n, 2 * n), jnp.arange(n)])
    pos_logit = jnp.take_along_axis(logits, positive[:, None], axis=1)[:, 0]
    loss = jnp.mean(jax.nn.logsumexp(logits, axis=1) - pos_logit)
    accuracy = jnp.mean(jnp.argmax(logits, axis=1) == positive)
    return loss, {"loss/contrastive": loss, "contrastive/accuracy": accuracy}


def siglip(outputs, batch):
    """SigLIP's pairwise sigmoid loss with the model's learnable temperature exp(logit_scale) and
    bias: every (view-0 i, view-1 j) pair is a binary problem, positive iff i == j. Summed over
    pairs and divided by B, as in Zhai et al. 2023."""
    a, b = _views(outputs)
    scale = jnp.exp(outputs["logit_scale"].astype(jnp.float32))
    logits = jnp.matmul(a, b.T, precision=HIGHEST) * scale + outputs["logit_bias"].astype(jnp.float32)
    labels = 2.0 * jnp.eye(a.shape[0], dtype=jnp.float32) - 1.0
    loss = -jnp.sum(jax.nn.log_sigmoid(labels * logits)) / a.shape[0]
    return loss, {"loss/contrastive": loss, "contrastive/temperature": scale,
                  "contrastive/bias": outputs["logit_bias"].astype(jnp.float32)}


CONTRASTIVE = {"infonce": infonce, "simclr": simclr, "siglip": siglip}
