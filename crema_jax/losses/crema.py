"""CREMA's contrastive regularized MAE: L = L_MAE + lambda * L_contrastive(view 0, view 1)."""
from crema_jax.losses import contrastive as C
from crema_jax.losses import mae as M


def crema(outputs, batch, *, norm_pix_loss=True, contrastive="infonce", contrastive_weight=0.1,
          temperature=0.1):
    if contrastive not in C.CONTRASTIVE:
        raise ValueError(f"config.loss.contrastive={contrastive!r}: expected one of "
                         f"{sorted(C.CONTRASTIVE)}")
    rec, metrics = M.mae(outputs, batch, norm_pix_loss=norm_pix_loss)
    kwargs = {} if contrastive == "siglip" else {"temperature": temperature}
    con, con_metrics = C.CONTRASTIVE[contrastive](outputs, batch, **kwargs)
    loss = rec + contrastive_weight * con
    return loss, {**metrics, **con_metrics, "loss/total": loss}
