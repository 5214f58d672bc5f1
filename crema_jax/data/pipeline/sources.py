"""Random-access record sources for the Grain pipeline, and `make_source`, which builds the
source of a data config for every command.

A source's `__getitem__` is cheap (a path, or the raw bytes of a cached record, plus the label
vector); the expensive part, `source.load(element)`, runs in the pipeline's map step so that it
runs in Grain's worker processes. `load` returns the preprocessed ECG at the target rate:

    {"signal": float32 (12, T) canonical lead order, "lead_present": bool (12,)}

(or, from the cache, "signal" int16 (12, T) plus "scale" float32 (12,): value = signal * scale,
applied by the pipeline only to the crop it keeps.)

Sources (plain Python objects; no Grain import here):
- `WfdbSource`: raw records from a layout index (WFDB files, or HDF5 / NumPy arrays: each
  record's `reader`, reading/read.py); load = read + preprocess.
- `CacheSource` (cache/source.py): the ArrayRecord cache written by `crema-jax prepare`; load =
  decode.
- `ArraySource`: in-memory arrays already at the target rate and preprocessed (synthetic data,
  tests, notebooks).
- `RawArraySource`: in-memory arrays in mV at their own rate; load = canonical_ecg (NaN policy,
  resampling) + preprocess, as WfdbSource does a file (`crema-jax embed --input=X.npy`).

Every source has a stable `__repr__` (Grain compares it when restoring an iterator). A record
that fails to load raises RecordError: skips.py says what happens then.
"""
from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Mapping, Sequence

import ml_collections
import numpy as np

from crema_jax.data import synthetic
from crema_jax.data.cache.source import CacheSource
from crema_jax.data.index import registry
from crema_jax.data.index.dataset_index import multi_hot
from crema_jax.data.reading import read as read_lib
from crema_jax.data.reading.ecg import RecordError, Window, canonical_ecg, resampled_last
from crema_jax.data.reading.leads import LEADS
from crema_jax.data.signal.preprocess import preprocess_record, stage_config


def _fingerprint(strings: Sequence[str]) -> str:
    digest = hashlib.sha1()
    for s in strings:
        digest.update(s.encode("utf-8") + b"\0")
    return digest.hexdigest()[:12]


def fed_leads_mask(leads: Sequence[str] | None) -> np.ndarray:
    """(12,) bool: the canonical leads a model is fed (None = all 12)."""
    return np.ones(len(LEADS), bool) if leads is None else np.isin(LEADS, tuple(leads))


@dataclasses.dataclass(frozen=True)
class Reading:
    """How a record file becomes a pipeline element: the data path's reading steps (the fields
    of config.data that presets.py sets; see there for what each preset does)."""
    target_fs: float = 250.0
    resample: str = "polyphase"
    nan_policy: str = "interpolate"     # interpolate | zero | drop_window
    window_seconds: float = 0.0         # 0 = the whole record is one example
    derive_limb_leads: bool = True
    flat_leads: str = "absent"          # absent | keep (ecg.canonical_ecg)
    preprocess: Any = None              # applied in `load` (a record-stage preset) or None
    leads: tuple | None = None          # the fed leads, selected before any statistics

    @classmethod
    def from_data_config(cls, data_cfg: Mapping) -> "Reading":
        return cls(target_fs=float(data_cfg["target_fs"]), resample=data_cfg["resample"],
                   nan_policy=data_cfg["nan_policy"],
                   window_seconds=float(data_cfg["window_seconds"]),
                   derive_limb_leads=bool(data_cfg["derive_limb_leads"]),
                   flat_leads=data_cfg["flat_leads"],
                   preprocess=_plain(stage_config(data_cfg["preprocess"], "record")),
                   leads=tuple(data_cfg["leads"]))

    def canonical_options(self, window: int = 0) -> dict:
        """canonical_ecg's keyword arguments for example `window` of a record (reading/ecg.py:
        the NaN policy, resampling and the window are applied there, for every source)."""
        return dict(target_fs=self.target_fs, resample_method=self.resample,
                    nan_policy=self.nan_policy, derive_limb_leads=self.derive_limb_leads,
                    flat_leads=self.flat_leads,
                    window=Window(window, self.window_seconds) if self.window_seconds > 0
                    else None)

    def element(self, signal: np.ndarray, fs: float, lead_present: np.ndarray, cfg, *,
                path: str = "") -> dict:
        """A pipeline element of a canonical ECG: the leads the model is not fed zeroed and
        marked absent, then the record-stage preprocessing `cfg` (None: none). A record that
        has none of the fed leads is a no_signal skip (a lead-I model fed all zeros)."""
        fed = fed_leads_mask(self.leads)
        present = lead_present & fed
        if not present.any():
            raise RecordError(path, "no_signal", f"record {path} has none of the leads the "
                              f"model reads ({', '.join(np.asarray(LEADS)[fed])})")
        signal = np.where(present[:, None], signal, 0.0).astype(np.float32)
        return {"signal": preprocess_record(signal, fs, cfg, present, fed),
                "lead_present": present}


def _plain(value: Any) -> Any:
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


class WfdbSource:
    """Raw records of a layout index (WFDB files, or arrays through each record's `reader`:
    reading/read.py); reading + preprocessing happen in `load`.

    Elements are examples: one per record, or (reading.window_seconds > 0) one per whole window,
    counted from the headers when the source is built. A record too short for one window stays
    one element whose `load` is a `too_short` skip, so it is counted like any bad record.
    `record_rows[i]` is the position in `infos` of element i's record.
    `keep_in_memory`: every example's loaded arrays are kept after its first read (datasets that
    fit in memory, e.g. the bundled records: later epochs read and filter nothing again).
    `keep_repairs`: `repairs` maps each record row read (and repaired) to its (Ecg.repairs,
    Ecg.repaired_leads), for embed and predict to report; read in this process only
    (data.num_workers=0, as they read), since worker processes fill their own copies.

    The leads the model is not fed are zeroed and marked absent BEFORE preprocessing, so the
    statistics of a lead subset are its own (ST-MEM and ECGFounder select leads first, too)."""

    def __init__(self, infos: Sequence[Any], label_names: Sequence[str], *,
                 reading: Reading | None = None, keep_in_memory: bool = False,
                 keep_repairs: bool = False):
        self.reading = Reading() if reading is None else reading
        self.kept = {} if keep_in_memory else None
        self.repairs: dict[int, tuple[dict, dict]] | None = {} if keep_repairs else None
        self.label_names = list(label_names)
        record_paths = [str(info.path) for info in infos]
        record_readers = [getattr(info, "reader", None) for info in infos]
        record_labels = multi_hot([tuple(info.labels) for info in infos], self.label_names)
        rows, windows = self._examples(record_paths, record_readers)
        self.record_rows, self.windows = np.asarray(rows, np.int64), np.asarray(windows, np.int64)
        self.paths = [record_paths[r] for r in rows]
        self.readers = [record_readers[r] for r in rows]
        self.record_ids = [str(infos[r].record_id) for r in rows]
        self.labels = record_labels[self.record_rows] if len(rows) else record_labels[:0]
        self.preprocess_cfg = (None if self.reading.preprocess is None
                               else ml_collections.ConfigDict(dict(self.reading.preprocess)))

    def _examples(self, paths, record_readers):
        """(record row, window) per example; window -1 = too short for one window."""
        if self.reading.window_seconds <= 0:
            return list(range(len(paths))), [0] * len(paths)
        rows, windows = [], []
        for row, (path, reader) in enumerate(zip(paths, record_readers)):
            try:
                length, fs = read_lib.stored_length(path, reader)
                count = int(length // int(self.reading.window_seconds * fs))
            except Exception:  # noqa: BLE001 - a bad record is load's to report, as a skip
                count = 1
            rows += [row] * max(count, 1)
            windows += list(range(count)) if count > 0 else [-1]
        return rows, windows

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        return {"index": np.int64(index), "path": self.paths[index], "labels": self.labels[index]}

    def __repr__(self) -> str:
        return (f"WfdbSource(examples={len(self.paths)}, reading={self.reading}, "
                f"paths={_fingerprint(self.paths)})")

    def load(self, element: Mapping) -> dict:
        index = int(element["index"])
        if self.kept is None:
            return self._load(index)
        if index not in self.kept:
            self.kept[index] = self._load(index)
        return {k: v.copy() for k, v in self.kept[index].items()}

    def _load(self, index: int) -> dict:
        r = self.reading
        path, window = self.paths[index], int(self.windows[index])
        if window < 0:
            raise RecordError(path, "too_short", f"{path} is shorter than one "
                              f"{r.window_seconds:g} s window")
        ecg = read_lib.read(path, self.readers[index], **r.canonical_options(window))
        element = r.element(ecg.signal, ecg.fs, ecg.lead_present, self.preprocess_cfg,
                            path=ecg.path)
        if self.repairs is not None:  # a record's windows: the same repairs
            made, named = _with_absent_leads(ecg, fed_leads_mask(r.leads))
            if made:
                self.repairs[int(self.record_rows[index])] = (made, named)
        return element


def example_windows(source, examples) -> np.ndarray:
    """The window number (0, 1, ...) in its record of each of `examples` (positions in
    `source`), -1 for an example that is its whole record: only a WfdbSource on a data path
    that cuts records into windows (reading.window_seconds > 0, ST-MEM's) has windows."""
    examples = np.asarray(examples, np.int64)
    if isinstance(source, WfdbSource) and source.reading.window_seconds > 0:
        return source.windows[examples]
    return np.full(len(examples), -1, np.int64)


def example_name(record_name: str, window: int) -> str:
    """An example's name: its record's, with "#k" for window k of a record cut into windows
    (window -1: the whole record), as embed's Y.records.txt, predict's rows and the evaluation
    reports' ids write it."""
    return record_name if window < 0 else f"{record_name}#{int(window)}"


def _with_absent_leads(ecg, fed: np.ndarray) -> tuple[dict, dict]:
    """(Ecg.repairs, Ecg.repaired_leads) with "leads_absent": the leads the model reads that
    the file does not hold and no repair removed (a MUSE export's 8 leads on a data path that
    derives none: ECGFounder's Net1D reads zeros there, said nowhere before)."""
    named = dict(ecg.repaired_leads)
    told = {lead for leads in named.values() for lead in leads}
    absent = [LEADS[row] for row in np.flatnonzero(fed & ~ecg.lead_present)
              if LEADS[row] not in told]
    made = dict(ecg.repairs)
    if absent:
        made["leads_absent"], named["leads_absent"] = len(absent), tuple(absent)
    return made, named


class ArraySource:
    """In-memory ECGs: signals float32 (n, 12, T) already at the target rate and preprocessed;
    one example per array row (`record_rows` is the identity)."""

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
        self.record_rows = np.arange(n, dtype=np.int64)

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
    """In-memory ECGs in mV at `fs` Hz, float32 (n, 12, T) with NaN for missing samples, one
    example each: `load` takes each through canonical_ecg as WfdbSource does a file (the NaN
    policy, resampling) and then the fed leads and record-stage preprocessing; a row with NaN
    under nan_policy "drop_window" is a skip. An array is fed as given otherwise: no limb lead
    derived, no flat lead dropped, any length; windows do not apply (a row is one example)."""

    def __init__(self, signals: np.ndarray, *, fs: float, reading: Reading,
                 lead_present: np.ndarray | None = None, name: str = "arrays"):
        super().__init__(signals, lead_present=lead_present, name=name)
        self.fs, self.reading = float(fs), reading
        self.preprocess_cfg = (None if reading.preprocess is None
                               else ml_collections.ConfigDict(dict(reading.preprocess)))

    def __repr__(self) -> str:
        return (f"RawArraySource(name={self.name!r}, shape={tuple(self.signals.shape)}, "
                f"fs={self.fs:g}, reading={self.reading})")

    def load(self, element: Mapping) -> dict:
        i = int(element["index"])
        rows = np.flatnonzero(self.lead_present[i])
        options = dict(self.reading.canonical_options(), derive_limb_leads=False,
                       flat_leads="keep", window=None)
        ecg = canonical_ecg(self.signals[i][rows].T, [LEADS[r] for r in rows],
                            ["mV"] * len(rows), self.fs, path=f"{self.name}[{i}]",
                            min_seconds=None, **options)
        return self.reading.element(ecg.signal, ecg.fs, ecg.lead_present, self.preprocess_cfg,
                                    path=ecg.path)


# ---------------------------------------------------------------- the source of a data config

def _cache_source(data_cfg: Mapping, *, split: str = ""):
    """The prepared cache of data.cache_dir, checked against the data path: it must hold records
    resampled and preprocessed as data_cfg says (CacheSource raises, naming the setting), and a
    cache holds whole records, so windowed or crop-stage paths need the raw files."""
    reading = Reading.from_data_config(data_cfg)
    if resampled_last(windowed=reading.window_seconds > 0, nan_policy=reading.nan_policy,
                      resample_method=reading.resample) or (
            data_cfg["preprocess"] is not None and reading.preprocess is None):
        raise ValueError(f"data.cache_dir: a cache holds whole preprocessed records; the "
                         f"{data_cfg['preset']!r} data path (windows, FFT resampling or per-crop "
                         "preprocessing) reads the raw records (data.root) instead")
    # `crema-jax prepare` reads every record with NaN runs interpolated and constant leads
    # absent (read_record's defaults); a path that reads them otherwise needs the raw files.
    for field, cached in (("nan_policy", "interpolate"), ("flat_leads", "absent")):
        if getattr(reading, field) != cached:
            raise ValueError(f"data.cache_dir: a cache holds records read with data.{field}="
                             f"{cached!r}; the {data_cfg['preset']!r} data path reads them with "
                             f"{getattr(reading, field)!r}, so it reads the raw records "
                             "(data.root) instead")
    return CacheSource(data_cfg["cache_dir"], split=split, expect_target_fs=data_cfg["target_fs"],
                       expect_preprocess=reading.preprocess,
                       expect_derive_limb_leads=reading.derive_limb_leads,
                       skip_damaged_records=bool(data_cfg.get("skip_damaged_cache_records",
                                                              False)))


def describe(data_cfg: Mapping) -> str:
    """Where make_source(data_cfg) reads the configured dataset from, for a run's first line,
    naming a data.root it does not read (a cache_dir beside a root reads the cache alone;
    config_checks.validate refuses a root or cache beside synthetic records)."""
    split = data_cfg["split"]
    if int(data_cfg["synthetic_records"]) > 0:
        return "synthetic ECGs (data.synthetic_records)"
    where = (f"the cache {data_cfg['cache_dir']}" if data_cfg["cache_dir"]
             else f"{data_cfg['layout']} records under {data_cfg['root']}")
    if split:
        where += f", split {split!r}"
    if data_cfg["cache_dir"] and data_cfg["root"]:
        where += f" (data.root={data_cfg['root']} not read)"
    return where


def make_source(data_cfg: Mapping, *, split: str | None = None, records: Sequence | None = None,
                label_names: Sequence[str] = (), arrays: np.ndarray | None = None,
                fs: float | None = None, lead_present: np.ndarray | None = None,
                keep_repairs: bool = False):
    """THE source of a data config: every command builds the source of its records here.

    - `arrays` (n, 12, T) in mV at `fs` Hz (rows outside `lead_present` absent): RawArraySource.
    - `records` (a layout index's RecordInfos; with data.cache_dir, the cache's own, from
      cache/source.py's cache_index): those records in that order, labels over `label_names`
      (`keep_repairs`: the files' WfdbSource collects each record's repairs).
    - otherwise the configured dataset: synthetic ECGs when data.synthetic_records > 0, the
      ArrayRecord cache when data.cache_dir is set, else the records of data.layout under
      data.root (kept in memory with data.keep_in_memory); `split` ("" = all records)
      defaults to data.split (synthetic records have no splits).
    """
    if arrays is not None:
        return RawArraySource(arrays, fs=fs, reading=Reading.from_data_config(data_cfg),
                              lead_present=lead_present)
    if records is not None:
        if data_cfg["cache_dir"]:
            rows = [info.meta["cache_row"] for info in records]
            return _cache_source(data_cfg).subset(rows, label_names)
        return WfdbSource(records, label_names, reading=Reading.from_data_config(data_cfg),
                          keep_repairs=keep_repairs)
    split = data_cfg["split"] if split is None else split
    if int(data_cfg["synthetic_records"]) > 0:
        signals, name = synthetic.synthetic_records(data_cfg)
        return ArraySource(signals, name=name)
    if data_cfg["cache_dir"]:
        return _cache_source(data_cfg, split=split)
    if not data_cfg["root"]:
        raise ValueError("data.root: set the dataset folder (or data.cache_dir for a cache)")
    index = registry.build_index(data_cfg["layout"], data_cfg["root"],
                                 **dict(data_cfg["layout_options"]))
    infos = [info for info in index.records if not split or info.split == split]
    return WfdbSource(infos, index.label_names, reading=Reading.from_data_config(data_cfg),
                      keep_in_memory=bool(data_cfg["keep_in_memory"]))
