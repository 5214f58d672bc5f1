"""Which patches the encoder sees: masking strategies for lead-wise patch tokens.

Every strategy is one pure numpy function plus one line in `MASKS`:

    fn(rng: np.random.Generator, num_leads: int, num_patches: int, ratio: float)
        -> (mask bool (L, N), visible_idx int32 (K,), masked_idx int32 (M,))

- `mask[l, n]` is True when patch n of lead l is hidden from the encoder (it becomes a
  reconstruction target).
- `visible_idx` / `masked_idx` are flat lead-major indices `l * N + n`, ascending, so the model can
  gather tokens without sorting; K + M = L * N.
- K depends only on (L, N, ratio), never on the random draw: batches stack into fixed shapes and jit
  compiles once.

All randomness comes from the `rng` argument (Grain hands each element its own Generator), so the
same seed gives the same masks in every process and after a checkpoint restore.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

MaskResult = tuple[np.ndarray, np.ndarray, np.ndarray]
MaskFn = Callable[[np.random.Generator, int, int, float], MaskResult]

# time_block hides at most this many separate spans: one long span makes the task "interpolate
# across a gap", a few shorter ones keep some context on both sides of each gap.
MAX_TIME_BLOCKS = 3


def _check_ratio(ratio: float) -> None:
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"mask ratio must be in [0, 1), got {ratio}")


def _from_mask(mask: np.ndarray) -> MaskResult:
    flat = mask.reshape(-1)
    visible_idx = np.flatnonzero(~flat).astype(np.int32)
    if visible_idx.size == 0:
        raise ValueError(f"mask of shape {mask.shape} leaves no visible patch; lower the ratio")
    return mask, visible_idx, np.flatnonzero(flat).astype(np.int32)


def _per_lead_mask(rng: np.random.Generator, num_rows: int, num_patches: int,
                   ratio: float) -> np.ndarray:
    _check_ratio(ratio)
    keep = int(num_patches * (1.0 - ratio))
    noise = rng.random((num_rows, num_patches))
    if keep == 0:
        return np.ones((num_rows, num_patches), dtype=bool)
    kth = np.partition(noise, keep - 1, axis=1)[:, keep - 1:keep]
    return noise > kth


def random_per_lead(rng: np.random.Generator, num_leads: int, num_patches: int,
                    ratio: float) -> MaskResult:
    """ST-MEM: every lead keeps int(N * (1 - ratio)) patches at its own random positions.

    ST-MEM keeps the first `keep` entries of argsort(uniform noise) per lead, i.e. the `keep`
    smallest noise values; np.partition over the whole (L, N) array selects the same set at
    about a third of the cost of a full argsort (noise values are distinct with probability 1).
    """
    return _from_mask(_per_lead_mask(rng, num_leads, num_patches, ratio))


def random_global(rng: np.random.Generator, num_leads: int, num_patches: int,
                  ratio: float) -> MaskResult:
    """Keep K = int(L * N * (1 - ratio)) patches chosen uniformly over all lead x patch slots.

    Unlike random_per_lead, a lead may be fully hidden or fully visible in one draw.
    """
    _check_ratio(ratio)
    total = num_leads * num_patches
    keep = int(total * (1.0 - ratio))
    order = np.argsort(rng.random(total))
    flat = np.ones(total, dtype=bool)
    flat[order[:keep]] = False
    return _from_mask(flat.reshape(num_leads, num_patches))


def _random_composition(rng: np.random.Generator, total: int, parts: int,
                        min_part: int) -> np.ndarray:
    """`parts` integers >= min_part summing to `total`, uniform over such compositions."""
    free = total - parts * min_part
    # Stars and bars: choose where the `parts - 1` bars go among free + parts - 1 slots.
    bars = np.sort(rng.choice(free + parts - 1, size=parts - 1, replace=False))
    edges = np.concatenate([[-1], bars, [free + parts - 1]])
    return np.diff(edges) - 1 + min_part


def time_block(rng: np.random.Generator, num_leads: int, num_patches: int,
               ratio: float, *, max_blocks: int = MAX_TIME_BLOCKS) -> MaskResult:
    """Hide round(N * ratio) patch positions, the same positions in every lead, as 1..3 spans.

    The model cannot copy a hidden moment from another lead, so it must use temporal context.
    The number of spans is drawn uniformly; span lengths and the gaps between spans are uniform
    random compositions. Spans never overlap, so the hidden count is always exactly round(N*ratio).
    """
    _check_ratio(ratio)
    hidden = int(round(num_patches * ratio))
    positions = np.zeros(num_patches, dtype=bool)
    if hidden > 0:
        # Interior gaps must be >= 1 so that spans stay separate; that bounds the span count.
        blocks = int(rng.integers(1, min(max_blocks, hidden, num_patches - hidden + 1) + 1))
        lengths = _random_composition(rng, hidden, blocks, min_part=1)
        # blocks + 1 gaps: the outer two may be empty, the inner ones hold at least one patch.
        gaps = _random_composition(rng, num_patches - hidden + 2, blocks + 1, min_part=1)
        gaps[0] -= 1
        gaps[-1] -= 1
        start = 0
        for gap, length in zip(gaps[:-1], lengths):
            start += int(gap)
            positions[start:start + int(length)] = True
            start += int(length)
    mask = np.broadcast_to(positions, (num_leads, num_patches)).copy()
    return _from_mask(mask)


def lead_drop(rng: np.random.Generator, num_leads: int, num_patches: int,
              ratio: float) -> MaskResult:
    """Hide whole leads: int(L * ratio) of them (at most L - 1, so one lead stays visible).

    Trains cross-lead reconstruction (e.g. chest leads from limb leads).
    """
    _check_ratio(ratio)
    hidden = min(int(num_leads * ratio), num_leads - 1)
    leads = rng.permutation(num_leads)[:hidden]
    mask = np.zeros((num_leads, num_patches), dtype=bool)
    mask[leads] = True
    return _from_mask(mask)


MASKS: dict[str, MaskFn] = {
    "random_per_lead": random_per_lead,
    "random_global": random_global,
    "time_block": time_block,
    "lead_drop": lead_drop,
}


def get_mask_fn(name: str) -> MaskFn:
    if name not in MASKS:
        raise ValueError(f"data.mask.name: unknown masking strategy {name!r}; "
                         f"expected one of {sorted(MASKS)}")
    return MASKS[name]


def mask_sizes(name: str, num_leads: int, num_patches: int, ratio: float) -> tuple[int, int]:
    """(K, M): visible and masked patch counts of a strategy (fixed for given L, N, ratio)."""
    _, visible_idx, masked_idx = get_mask_fn(name)(
        np.random.default_rng(0), num_leads, num_patches, ratio)
    return int(visible_idx.size), int(masked_idx.size)


# Strategies whose leads are drawn independently of each other, as a function of (rng, rows, N,
# ratio) -> mask: all leads of a whole batch come from ONE call (the pipeline's fast path; a
# strategy listed here must equal its MASKS entry applied per sample).
ROW_INDEPENDENT = {"random_per_lead": _per_lead_mask}


def batch_masks(name: str, rng: np.random.Generator, batch: int, num_leads: int,
                num_patches: int, ratio: float) -> MaskResult:
    """`batch` independent masks: mask (batch, L, N), visible_idx (batch, K), masked_idx (batch, M).

    Per-sample indices come from one np.nonzero over the batch: every sample has exactly K
    visible patches, and nonzero lists them row-major, i.e. ascending within each sample.
    """
    if name in ROW_INDEPENDENT:
        mask = ROW_INDEPENDENT[name](rng, batch * num_leads, num_patches, ratio)
        mask = mask.reshape(batch, num_leads, num_patches)
    else:
        fn = get_mask_fn(name)
        mask = np.stack([fn(rng, num_leads, num_patches, ratio)[0] for _ in range(batch)])
    flat = mask.reshape(batch, num_leads * num_patches)
    visible_per_sample = (~flat).sum(axis=1)
    if batch and (visible_per_sample != visible_per_sample[0]).any():
        raise ValueError(f"masking strategy {name!r} drew different visible counts "
                         f"{sorted(set(visible_per_sample.tolist()))}; K must be fixed")
    if batch and visible_per_sample[0] == 0:
        raise ValueError(f"mask ratio {ratio} leaves no visible patch; lower the ratio")
    visible = np.nonzero(~flat)[1].astype(np.int32).reshape(batch, -1)
    masked = np.nonzero(flat)[1].astype(np.int32).reshape(batch, -1)
    return mask, visible, masked
