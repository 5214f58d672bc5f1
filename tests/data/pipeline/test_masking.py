"""Masking strategies, checked with plain numpy against each strategy's definition."""
import numpy as np
import pytest

from crema_jax.data.pipeline import masking

L, N = 12, 30
RATIOS = (0.0, 0.25, 0.5, 0.75, 0.9)


def _check_common(mask, visible_idx, masked_idx, num_leads=L, num_patches=N):
    assert mask.shape == (num_leads, num_patches) and mask.dtype == bool
    assert visible_idx.dtype == np.int32 and masked_idx.dtype == np.int32
    # Ascending flat lead-major indices, disjoint, covering every slot exactly once.
    assert np.all(np.diff(visible_idx) > 0) and np.all(np.diff(masked_idx) > 0)
    both = np.concatenate([visible_idx, masked_idx])
    np.testing.assert_array_equal(np.sort(both), np.arange(num_leads * num_patches))
    flat = mask.reshape(-1)
    assert not flat[visible_idx].any() and flat[masked_idx].all()
    # l * N + n addressing, recomputed by hand from the 2-D mask.
    hand = [l * num_patches + n for l in range(num_leads) for n in range(num_patches)
            if not mask[l, n]]
    np.testing.assert_array_equal(visible_idx, hand)


@pytest.mark.parametrize("ratio", RATIOS)
def test_random_per_lead_keeps_same_count_per_lead(ratio):
    rng = np.random.default_rng(1)
    keep = int(N * (1 - ratio))  # ST-MEM's count.
    first = None
    for _ in range(20):
        mask, vis, msk = masking.random_per_lead(rng, L, N, ratio)
        _check_common(mask, vis, msk)
        np.testing.assert_array_equal((~mask).sum(axis=1), np.full(L, keep))
        assert vis.size == L * keep and msk.size == L * N - L * keep
        first = mask if first is None else first
    if 0 < ratio:
        # Positions differ between leads (independent draws), and between draws.
        assert any(not np.array_equal(mask[0], mask[l]) for l in range(1, L))
        assert not np.array_equal(first, mask)


def test_random_per_lead_matches_stmem_argsort_selection():
    """ST-MEM: keep argsort(noise)[:keep] per lead; same noise -> the same visible set."""
    ratio, keep = 0.75, int(N * 0.25)
    mask, _, _ = masking.random_per_lead(np.random.default_rng(5), L, N, ratio)
    noise = np.random.default_rng(5).random((L, N))
    expected = np.ones((L, N), bool)
    for l in range(L):
        expected[l, np.argsort(noise[l])[:keep]] = False
    np.testing.assert_array_equal(mask, expected)


@pytest.mark.parametrize("ratio", RATIOS)
def test_random_global_fixed_total(ratio):
    rng = np.random.default_rng(2)
    keep = int(L * N * (1 - ratio))
    per_lead = []
    for _ in range(20):
        mask, vis, msk = masking.random_global(rng, L, N, ratio)
        _check_common(mask, vis, msk)
        assert vis.size == keep and (~mask).sum() == keep
        per_lead.append((~mask).sum(axis=1))
    if 0 < ratio < 0.9:
        assert len({tuple(p) for p in per_lead}) > 1  # Not a per-lead constant split.


@pytest.mark.parametrize("ratio", RATIOS)
def test_time_block_shares_positions_and_fixed_count(ratio):
    rng = np.random.default_rng(3)
    hidden = round(N * ratio)
    block_counts = set()
    for _ in range(50):
        mask, vis, msk = masking.time_block(rng, L, N, ratio)
        _check_common(mask, vis, msk)
        assert (mask == mask[0]).all()  # Every lead hides the same positions.
        assert mask[0].sum() == hidden and vis.size == L * (N - hidden)
        starts = np.flatnonzero(np.diff(np.concatenate([[0], mask[0].astype(int)])) == 1)
        assert 1 <= len(starts) <= masking.MAX_TIME_BLOCKS or hidden == 0
        block_counts.add(len(starts))
    if 2 < hidden < N - 2:
        assert len(block_counts) > 1  # Both one and several spans occur.


@pytest.mark.parametrize("ratio", RATIOS)
def test_lead_drop_hides_whole_leads(ratio):
    rng = np.random.default_rng(4)
    hidden = min(int(L * ratio), L - 1)
    for _ in range(20):
        mask, vis, msk = masking.lead_drop(rng, L, N, ratio)
        _check_common(mask, vis, msk)
        rows = mask.all(axis=1)
        assert (mask.any(axis=1) == rows).all()  # A lead is either fully hidden or fully visible.
        assert rows.sum() == hidden and vis.size == (L - hidden) * N


def test_lead_drop_keeps_one_lead_visible():
    mask, vis, _ = masking.lead_drop(np.random.default_rng(0), 6, N, 0.99)
    assert (~mask.all(axis=1)).sum() == 1 and vis.size == N


@pytest.mark.parametrize("name", sorted(masking.MASKS))
def test_registry_sizes_and_other_shapes(name):
    for leads, patches, ratio in [(1, 30, 0.5), (6, 30, 0.75), (12, 20, 0.6)]:
        k, m = masking.mask_sizes(name, leads, patches, ratio)
        mask, vis, msk = masking.get_mask_fn(name)(np.random.default_rng(9), leads, patches, ratio)
        _check_common(mask, vis, msk, leads, patches)
        assert (vis.size, msk.size) == (k, m)


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="unknown masking strategy 'nope'"):
        masking.get_mask_fn("nope")
    with pytest.raises(ValueError, match=r"ratio must be in \[0, 1\)"):
        masking.random_per_lead(np.random.default_rng(0), L, N, 1.0)
    with pytest.raises(ValueError, match="no visible patch"):
        masking.random_per_lead(np.random.default_rng(0), L, N, 0.99)


@pytest.mark.parametrize("name", sorted(masking.MASKS))
def test_batch_masks_are_per_sample_masks(name):
    mask, vis, msk = masking.batch_masks(name, np.random.default_rng(0), 16, L, N, 0.75)
    k, m = masking.mask_sizes(name, L, N, 0.75)
    assert mask.shape == (16, L, N) and vis.shape == (16, k) and msk.shape == (16, m)
    for b in range(16):
        _check_common(mask[b], vis[b], msk[b])
    if name == "random_per_lead":
        assert ((~mask).sum(axis=2) == 7).all()
    assert len({mask[b].tobytes() for b in range(16)}) == 16  # Independent draws.
