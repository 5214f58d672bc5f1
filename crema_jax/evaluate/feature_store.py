"""Frozen features cached on disk: one extraction per model x records x lead set.

A dataset's features are written to FOLDER/MODEL/RECORDS-LEADS.npz (MODEL: the model's
benchmark_models.Model.filed_as, its weights), RECORDS the digest of the records its settings
read (`record_set_digest`: the layout, root and layout options other than the label set;
PTB-XL's label sets, or two split rules over one folder, read the same records). Each example
is stored (array `record_key`) with its record's `record_cache_key` (id, path, and the size and
modification time of its files, so that two records of one name in two folders stay two, and
a record whose files changed is read again), so another dataset over
the same records (other classes, other splits) maps them to its own rows; it is reused when
every record of that dataset was among those the extraction read. An extraction reads every
record of the task file's datasets over the same records (`records_of`), so datasets that
keep different records of one folder (other classes dropped by min_positives, another label
set) share it.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import zipfile

import numpy as np

from crema_jax.data.index import duplicates
from crema_jax.evaluate import frozen_features
from crema_jax.inference import backbones
from crema_jax.runtime import files


def record_set_digest(settings: dict) -> str:
    """The records a dataset's settings read, as 12 hex digits: its layout, root, layout options
    but the label set (which picks classes, not records) and cache dir. Datasets of one digest
    share their feature files (RECORDS in the module docstring)."""
    options = {k: v for k, v in settings["layout_options"].items() if k != "label_set"}
    text = json.dumps([settings["layout"], str(settings["root"]), options,
                       settings["cache_dir"]], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def record_cache_key(info) -> str:
    """A record as the caches (features, a cell's dataset digest) know it: its id, its path, and
    the size and modification time of each file it is read from (duplicates.file_stats; none
    for a remote path): a record whose files changed has another key."""
    return json.dumps([str(info.record_id), str(info.path),
                       duplicates.file_stats(info.path)])


class FeatureStore:
    """`records_of(settings)`: the records an extraction for a dataset with these settings reads
    (a superset of the dataset's own; None: the dataset's own)."""

    def __init__(self, folder, counts: dict, log=print, records_of=None):
        self.folder, self.counts, self.log = folder, counts, log
        self.records_of = records_of
        self.backbones = {}
        self.keys = {}   # RecordInfo -> record_cache_key, once per run

    def _keys(self, infos) -> list[str]:
        return [self.keys.setdefault(info, record_cache_key(info)) for info in infos]

    def _backbone(self, model, seed: int):
        if model.filed_as not in self.backbones:
            self.backbones[model.filed_as] = backbones.build(model.config, model.params,
                                                             seed=seed)
        return self.backbones[model.filed_as]

    def features(self, model, data, leads: str, settings: dict, mesh) -> frozen_features.Features:
        """`model`'s features of `data`'s records with `leads`: from the cache, or extracted
        (and cached) when the cache lacks a record of `data`."""
        path = (self.folder / files.folder_name(model.filed_as)
                / f"{record_set_digest(settings)}-{leads.replace('+', '_')}.npz")
        ids = self._keys(data.infos)
        cached = self._load(path, model.weights, ids)
        if cached is not None:
            self.counts["features_reused"] += 1
            return _for_dataset(cached, ids)
        # The extraction reads only infos and cache_dir of the dataset it is given.
        every = dataclasses.replace(data, infos=self.records_of(settings)) \
            if self.records_of else data
        every_ids = self._keys(every.infos)
        features = frozen_features.extract_features(self._backbone(model, settings["seed"]),
                                                    every, leads, settings, mesh)
        self.counts["feature_extractions"] += 1
        self.log(f"features {model.name} | {leads} leads: {len(features.rows)} examples")
        arrays = {"values": np.asarray(features.values, np.float32),
                  "record_key": np.asarray([every_ids[r] for r in features.rows], dtype=str),
                  "ids": np.asarray(features.ids, dtype=str),
                  "tried": np.asarray(every_ids, dtype=str),
                  "checkpoint": np.asarray(model.checkpoint),
                  "weights": np.asarray(model.weights)}
        files.write_npz_atomic(path, arrays)
        return _for_dataset(arrays, ids)

    @staticmethod
    def _load(path, weights: str, ids) -> dict | None:
        """The cached features of the same weights (backbones.weights_digest: a checkpoint
        retrained at the same path is extracted again) covering `ids`, or None."""
        arrays = load_saved(path)
        if arrays is None or "weights" not in arrays or str(arrays["weights"]) != weights \
                or "record_key" not in arrays or not set(ids) <= set(arrays["tried"]):
            return None
        return arrays


def load_saved(path) -> dict | None:
    """The arrays of a file the benchmark saved (features, a cell's predictions), or None when
    there is none or it does not read whole (cut short by a full disk or a copy): the caller
    computes it again and replaces it (a truncated one had been a BadZipFile traceback)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as saved:
            return {k: saved[k] for k in saved.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as err:
        print(f"{path}: does not read ({type(err).__name__}: {err}); computing it again")
        return None


def _for_dataset(cached: dict, keys) -> frozen_features.Features:
    """Cached examples of the dataset's records, mapped to its rows (in the cache's order; a
    record on two rows, a path listed twice, gives its examples to both)."""
    rows_of = collections.defaultdict(list)
    for row, key in enumerate(keys):
        rows_of[key].append(row)
    pairs = [(example, row) for example, key in enumerate(cached["record_key"])
             for row in rows_of.get(str(key), ())]
    examples = np.asarray([e for e, _ in pairs], np.int64)
    return frozen_features.Features(cached["values"][examples],
                                    np.asarray([r for _, r in pairs], np.int64),
                                    [str(cached["ids"][e]) for e in examples], None)
