"""CREMA's contrastive regularized MAE: L = L_MAE + lambda * L_contrastive(view 0, view 1)."""
from crema_jax.losses import contrastive as C
from crema_jax.losses.mae import mae


def crema(outputs, batch, *, contrastive=C.infonce, norm_pix_loss=True, contrastive_weight=0.1):
    """`contrastive` is a loss function (outputs, batch) -> (loss, metrics): get_loss passes the
    registered loss that config.loss.contrastive names, bound to its own config.loss fields."""
    rec, metrics = mae(outputs, batch, norm_pix_loss=norm_pix_loss)
    con, con_metrics = contrastive(outputs, batch)
    loss = rec + contrastive_weight * con
    return loss, {**metrics, **con_metrics, "loss/total": loss}
