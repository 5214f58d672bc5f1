"""Cutting crops out of a loaded record: the rows of the fed leads, the crop windows (zero-padded
at the end), the crop-stage preprocessing (ST-MEM's), and which patches hold no padding."""
from __future__ import annotations

from typing import Mapping, Sequence

import ml_collections
import numpy as np

from crema_jax.data.pipeline import batch as batch_lib
from crema_jax.data.reading import leads as leads_lib
from crema_jax.data.reading.leads import LEADS
from crema_jax.data.signal import preprocess as preprocess_lib


def lead_rows(names: Sequence[str]) -> np.ndarray:
    """Canonical row ids of the configured leads (data.leads), in the configured order."""
    leads_lib.check_lead_names(names, "data.leads")
    return np.asarray([LEADS.index(name) for name in names], dtype=np.int32)


class CropGeometry:
    def __init__(self, data_cfg: Mapping):
        self.rows = lead_rows(tuple(data_cfg["leads"]))
        # Plain slicing (a view) when all 12 leads are used in canonical order.
        self.row_sel = slice(None) if tuple(self.rows) == tuple(range(len(LEADS))) else self.rows
        self.crop = int(data_cfg["crop_samples"])
        self.patch = int(data_cfg["patch_size"])
        self.num_patches = batch_lib.num_patches(data_cfg)
        # A crop-stage preset (ST-MEM's) filters and standardises each crop after cutting it.
        pre = preprocess_lib.stage_config(data_cfg["preprocess"], "crop")
        self.crop_preprocess = None if pre is None else ml_collections.ConfigDict(dict(pre))
        self.fs = float(data_cfg["target_fs"])

    def fill(self, out: np.ndarray, element: Mapping, starts: Sequence[int]) -> np.ndarray:
        """Write crop [start, start+crop) of the selected rows for each start into out[c]
        (C, L, crop); zero-pad the ends; return the real samples per crop (C,). A quantised
        signal (cache) is scaled here, in the same pass that copies a crop; a crop-stage preset
        then runs on the real samples, on all crops of one length in one vectorised call."""
        real = np.empty(len(starts), np.int64)
        scale = element.get("scale")
        for c, start in enumerate(starts):
            window = element["signal"][self.row_sel, start:start + self.crop]
            real[c] = window.shape[1]
            if scale is None:
                out[c, :, :real[c]] = window
            else:
                np.multiply(window, scale[self.row_sel, None], out=out[c, :, :real[c]],
                            casting="unsafe")
            out[c, :, real[c]:] = 0.0
        if self.crop_preprocess is not None:
            present = np.asarray(element["lead_present"], bool)[self.rows]
            preprocess_lib.preprocess_crops(out, real, self.fs, self.crop_preprocess, present)
        return real

    def patch_valid(self, lead_valid: np.ndarray, real: np.ndarray) -> np.ndarray:
        """lead_valid (..., L), real samples (...) -> (..., L, N). A patch with ANY padding is
        invalid: no reconstruction target or pooled feature should contain appended zeros."""
        full = (real // self.patch)[..., None, None]
        return lead_valid[..., None] & (np.arange(self.num_patches) < full)
