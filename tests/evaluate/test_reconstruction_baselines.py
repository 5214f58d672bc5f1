"""The held-back reconstruction figures and their baselines, against loops written from their
definitions (evaluate/reconstruction.py's docstring)."""
import numpy as np
import pytest

from crema_jax.evaluate import reconstruction as R


def _data(seed=0, b=3, leads=4, n=6, p=5, ratio=0.6):
    rng = np.random.default_rng(seed)
    patches = rng.normal(size=(b, 1, leads, n, p))
    mask = rng.random((b, 1, leads, n)) < ratio
    mask[0, 0, :, 2] = True           # a position where no lead is visible
    mask[1, 0, 3, :] = True           # a lead with no visible patch...
    mask[1, 0, 3, 0] = False          # ...but one
    return patches, mask


def test_nearest_patch_copies_the_nearest_visible_patch_of_the_lead():
    patches, mask = _data()
    got = R.nearest_patch(patches, mask)
    b, v, leads, n, _ = patches.shape
    for i in range(b):
        for lead in range(leads):
            visible = [j for j in range(n) if not mask[i, 0, lead, j]]
            for j in range(n):
                if not visible:
                    continue
                # nearest; on a tie the earlier one
                src = min(visible, key=lambda s: (abs(s - j), s))
                np.testing.assert_array_equal(got[i, 0, lead, j], patches[i, 0, lead, src])


def test_correlated_lead_copies_the_same_instant_scaled_by_the_correlation():
    patches, mask = _data(1)
    leads = patches.shape[2]
    rng = np.random.default_rng(3)
    a = rng.normal(size=(leads, leads))
    corr = np.corrcoef(a @ rng.normal(size=(leads, 200)))
    got = R.correlated_lead(patches, mask, corr)
    for i in range(patches.shape[0]):
        for k in range(leads):
            for j in range(patches.shape[3]):
                others = [m for m in range(leads) if m != k and not mask[i, 0, m, j]]
                if not others:
                    np.testing.assert_array_equal(got[i, 0, k, j], 0.0)
                    continue
                best = max(others, key=lambda m: abs(corr[k, m]))
                np.testing.assert_allclose(got[i, 0, k, j], corr[k, best] * patches[i, 0, best, j],
                                           rtol=1e-12)


def test_masked_mse_is_the_mean_over_hidden_patches_in_both_target_spaces():
    patches, mask = _data(2)
    pred = np.random.default_rng(5).normal(size=patches.shape)
    hidden = [(i, l, j) for i in range(3) for l in range(4) for j in range(6) if mask[i, 0, l, j]]
    raw = np.mean([np.mean((pred[i, 0, l, j] - patches[i, 0, l, j]) ** 2) for i, l, j in hidden])
    assert abs(R.masked_mse(pred, patches, mask, norm_pix_loss=False) - raw) < 1e-12

    def standard(x):  # ST-MEM: unbiased variance, eps 1e-6
        return (x - x.mean()) / np.sqrt(x.var(ddof=1) + 1e-6)
    normed = np.mean([np.mean((pred[i, 0, l, j] - standard(patches[i, 0, l, j])) ** 2)
                      for i, l, j in hidden])
    assert abs(R.masked_mse(pred, patches, mask, norm_pix_loss=True) - normed) < 1e-12


def test_scores_put_the_model_beside_each_baseline():
    patches, mask = _data(4)
    corr = np.eye(4) * 0.5 + 0.5
    batch = {"patches": patches, "mask": mask, "patch_valid": np.ones_like(mask)}
    perfect = R.scores(patches.copy(), batch, corr, norm_pix_loss=False)
    assert perfect["mse"] == 0.0 and perfect["mse_over/zero"] == 0.0
    zero = R.scores(np.zeros_like(patches), batch, corr, norm_pix_loss=False)
    hidden = patches[mask]
    assert abs(zero["mse/zero"] - np.mean(hidden ** 2)) < 1e-12
    assert zero["mse_over/zero"] == 1.0


def test_lead_correlations_match_numpy(tmp_path):
    from crema_jax.data.index import dataset_index
    from crema_jax.data.pipeline import sources
    from crema_jax.config import default_config

    cfg = default_config().data
    cfg.root = str(dataset_index.sample_data_dir())
    got = R.lead_correlations(cfg, split="train", max_records=5)
    source = sources.make_source(cfg, split="train")
    signals = np.concatenate([np.asarray(source.load(source[i])["signal"], np.float64)
                              - np.asarray(source.load(source[i])["signal"], np.float64).mean(
                                  1, keepdims=True) for i in range(5)], axis=1)
    expected = (signals @ signals.T) / np.sqrt(np.outer((signals ** 2).sum(1),
                                                        (signals ** 2).sum(1)))
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("loss, reason", [
    ("crema", None), ("mae", None), ("stmem", None),
    ("infonce", "loss 'infonce' trains no decoder"),
    ("siglip", "loss 'siglip' trains no decoder"),
])
def test_reconstruction_png_only_of_a_decoder_the_loss_trains(loss, reason):
    from tests.configs import tiny_config

    assert R.png_skip_reason(tiny_config(**{"loss.name": loss})) == reason
