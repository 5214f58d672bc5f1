"""Random-access record sources for the Grain pipeline, and what happens to a record that fails.

A source's `__getitem__` is cheap (a path, or the raw bytes of a cached record, plus the label
vector); the expensive part, `source.load(element)`, runs in the pipeline's map step so that it
runs in Grain's worker processes. `load` returns the preprocessed ECG at the target rate:

    {"signal": float32 (12, T) canonical lead order, "lead_present": bool (12,)}

(or, from the cache, "signal" int16 (12, T) plus "scale" float32 (12,): value = signal * scale,
applied by the pipeline only to the crop it keeps.)

Sources (no Grain import here, so `crema-jax prepare` workers stay light):
- `WfdbSource`: raw WFDB records from a layout index; load = records.read_record + preprocess.
- `cache.CacheSource`: the ArrayRecord cache written by `crema-jax prepare`; load = decode.
- `ArraySource`: in-memory arrays already at the target rate and preprocessed (synthetic data,
  tests, notebooks).
- `RawArraySource`: in-memory arrays in mV at their own rate; load = resample + preprocess, the
  steps WfdbSource applies to a file (`crema-jax embed --input=X.npy`).

Every source has a stable `__repr__` (Grain compares it when restoring an iterator).

Bad input never stops a run: `pipeline.ReadChunk` catches `records.RecordError` (and any
unexpected exception, wrapped with the record's path), counts it by reason in a `SkipStats` and
drops the record from its chunk (`pipeline.NonEmpty` then filters out chunks left empty);
`strict=True` re-raises instead, naming the file and the problem. How counts are surfaced:
- in-process (num_workers=0): the `SkipStats` passed to `make_*_dataset` holds exact counts;
- worker processes: every skip is logged (absl warning, with path and reason) and, when
  `data.skip_log_dir` is set, appended as one JSON line to `<skip_log_dir>/skips-<pid>.jsonl`;
  `SkipStats.from_log_dir(dir)` sums them (each worker owns its file, so no locking between
  processes). Counts are events: a bad record is counted once per epoch in which it is read.
"""
from __future__ import annotations

import collections
import hashlib
import json
import os
import threading
from typing import Any, Mapping, Sequence

import ml_collections
import numpy as np
from absl import logging

from crema_jax.data import preprocess as preprocess_lib
from crema_jax.data import records

def multi_hot(labels: Sequence[Sequence[str]], label_names: Sequence[str]) -> np.ndarray:
    """float32 (num_records, num_classes); labels outside the vocabulary are ignored."""
    column = {name: i for i, name in enumerate(label_names)}
    out = np.zeros((len(labels), len(label_names)), dtype=np.float32)
    for row, names in enumerate(labels):
        for name in names:
            if name in column:
                out[row, column[name]] = 1.0
    return out


def _fingerprint(strings: Sequence[str]) -> str:
    digest = hashlib.sha1()
    for s in strings:
        digest.update(s.encode("utf-8") + b"\0")
    return digest.hexdigest()[:12]


def fed_leads_mask(leads: Sequence[str] | None) -> np.ndarray:
    """(12,) bool: the canonical leads a model is fed (None = all 12)."""
    from crema_jax.data.leads import LEADS

    return np.ones(len(LEADS), bool) if leads is None else np.isin(LEADS, tuple(leads))


class WfdbSource:
    """Raw WFDB records of a layout index; reading + preprocessing happen in `load`.

    `leads`: the leads the model is fed (data.leads). The others are zeroed and marked absent
    BEFORE preprocessing, so the statistics of a lead subset are its own (ST-MEM's and
    ECGFounder's data paths select leads first, too)."""

    def __init__(self, infos: Sequence[Any], label_names: Sequence[str], *, target_fs: float,
                 preprocess_cfg: Mapping | None, derive_limb_leads: bool = True,
                 leads: Sequence[str] | None = None):
        self.paths = [str(info.path) for info in infos]
        self.record_ids = [str(info.record_id) for info in infos]
        self.label_names = list(label_names)
        self.labels = multi_hot([tuple(info.labels) for info in infos], self.label_names)
        self.target_fs = float(target_fs)
        self.preprocess_cfg = (None if preprocess_cfg is None
                               else ml_collections.ConfigDict(dict(preprocess_cfg)))
        self.derive_limb_leads = bool(derive_limb_leads)
        self.fed = fed_leads_mask(leads)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        return {"index": np.int64(index), "path": self.paths[index], "labels": self.labels[index]}

    def __repr__(self) -> str:
        return (f"WfdbSource(records={len(self.paths)}, fs={self.target_fs:g}, "
                f"paths={_fingerprint(self.paths)})")

    def load(self, element: Mapping) -> dict:
        ecg = records.read_record(element["path"], target_fs=self.target_fs,
                                  derive_limb_leads=self.derive_limb_leads)
        present = ecg.lead_present & self.fed
        signal = np.where(present[:, None], ecg.signal, 0.0).astype(np.float32)
        if self.preprocess_cfg is not None:
            signal = preprocess_lib.preprocess(signal, ecg.fs, self.preprocess_cfg,
                                               lead_present=present)
        return {"signal": np.asarray(signal, dtype=np.float32), "lead_present": present}


class ArraySource:
    """In-memory ECGs: signals float32 (n, 12, T) already at the target rate and preprocessed."""

    def __init__(self, signals: np.ndarray, *, lead_present: np.ndarray | None = None,
                 labels: np.ndarray | None = None, name: str = "arrays"):
        self.signals = np.asarray(signals, dtype=np.float32)
        if self.signals.ndim != 3 or self.signals.shape[1] != 12:
            raise ValueError(f"ArraySource signals: expected (n, 12, T), got {self.signals.shape}")
        n = self.signals.shape[0]
        self.lead_present = (np.ones((n, 12), bool) if lead_present is None
                             else np.asarray(lead_present, bool))
        self.labels = np.zeros((n, 0), np.float32) if labels is None else np.asarray(labels,
                                                                                      np.float32)
        self.name = name

    def __len__(self) -> int:
        return self.signals.shape[0]

    def __getitem__(self, index: int) -> dict:
        return {"index": np.int64(index), "path": f"{self.name}[{index}]",
                "labels": self.labels[index]}

    def __repr__(self) -> str:
        return f"ArraySource(name={self.name!r}, shape={tuple(self.signals.shape)})"

    def load(self, element: Mapping) -> dict:
        i = int(element["index"])
        return {"signal": self.signals[i], "lead_present": self.lead_present[i]}


class RawArraySource(ArraySource):
    """In-memory ECGs in mV at `fs` Hz, float32 (n, 12, T): `load` resamples to target_fs and
    preprocesses each (NaN -> 0 first, as ECGFounder's scripts do), like WfdbSource for files."""

    def __init__(self, signals: np.ndarray, *, fs: float, target_fs: float,
                 preprocess_cfg: Mapping | None, lead_present: np.ndarray | None = None,
                 leads: Sequence[str] | None = None, name: str = "arrays"):
        super().__init__(signals, lead_present=lead_present, name=name)
        self.lead_present = self.lead_present & fed_leads_mask(leads)
        self.fs, self.target_fs = float(fs), float(target_fs)
        self.preprocess_cfg = (None if preprocess_cfg is None
                               else ml_collections.ConfigDict(dict(preprocess_cfg)))

    def __repr__(self) -> str:
        return (f"RawArraySource(name={self.name!r}, shape={tuple(self.signals.shape)}, "
                f"fs={self.fs:g}->{self.target_fs:g})")

    def load(self, element: Mapping) -> dict:
        i = int(element["index"])
        present = self.lead_present[i]
        signal = np.where(present[:, None], np.nan_to_num(self.signals[i]), 0.0)
        signal, fs = records.resample(signal.astype(np.float32), self.fs, self.target_fs)
        if self.preprocess_cfg is not None:
            signal = preprocess_lib.preprocess(signal, fs, self.preprocess_cfg,
                                               lead_present=present)
        return {"signal": np.asarray(signal, np.float32), "lead_present": present}


class SkipStats:
    """Counts of skipped records by reason, with their paths (see the module docstring)."""

    def __init__(self, log_dir: str = ""):
        self.log_dir = log_dir
        self.counts: collections.Counter = collections.Counter()
        self.paths: dict[str, list[str]] = collections.defaultdict(list)
        self._lock = threading.Lock()  # Grain reads with several threads per process.

    def __getstate__(self):
        state = dict(self.__dict__)
        del state["_lock"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def record(self, reason: str, path: str, message: str) -> None:
        logging.warning("skipping %s [%s]: %s", path, reason, message)
        with self._lock:
            self.counts[reason] += 1
            self.paths[reason].append(path)
            if self.log_dir:
                os.makedirs(self.log_dir, exist_ok=True)
                line = json.dumps({"reason": reason, "path": path, "message": message})
                with open(os.path.join(self.log_dir, f"skips-{os.getpid()}.jsonl"), "a",
                          encoding="utf-8") as f:
                    f.write(line + "\n")

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> dict:
        return {reason: {"count": self.counts[reason], "paths": sorted(self.paths[reason])}
                for reason in sorted(self.counts)}

    @classmethod
    def from_log_dir(cls, log_dir: str) -> "SkipStats":
        """Sum the per-process JSON-lines files written by every worker."""
        stats = cls()
        if os.path.isdir(log_dir):
            for name in sorted(os.listdir(log_dir)):
                if name.startswith("skips-") and name.endswith(".jsonl"):
                    with open(os.path.join(log_dir, name), encoding="utf-8") as f:
                        for line in f:
                            event = json.loads(line)
                            stats.counts[event["reason"]] += 1
                            stats.paths[event["reason"]].append(event["path"])
        return stats
