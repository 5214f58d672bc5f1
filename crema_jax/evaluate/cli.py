"""Flags and set-up shared by `crema-jax probe` and `crema-jax finetune`.

Defined once here (imported by both CLI modules), so importing both in one process never defines
a flag twice. Everything below the flags is plain functions of explicit arguments.
"""
from __future__ import annotations

import dataclasses
import pathlib

import numpy as np
from absl import flags, logging

from crema_jax.evaluate import protocols


class _Defined:
    """The holder of a flag another subcommand module already defined in this process (e.g.
    --workdir of `pretrain` when tests import several CLIs): same name, same meaning."""

    def __init__(self, name: str):
        self.name = name

    @property
    def value(self):
        return flags.FLAGS[self.name].value


def define(define_fn, name: str, *args, **kwargs):
    """define_fn(name, ...) unless a flag of that name exists (one pytest process imports every
    CLI module; absl would raise DuplicateFlagError)."""
    if name in flags.FLAGS:
        return _Defined(name)
    return define_fn(name, *args, **kwargs)


S, I, B, L, E = (flags.DEFINE_string, flags.DEFINE_integer, flags.DEFINE_bool, flags.DEFINE_list,
                 flags.DEFINE_enum)
_CHECKPOINT = define(S, "checkpoint", None, "Checkpoint workdir or step dir (from `crema-jax "
                     "pretrain` or `import-torch`), or 'random' for a freshly initialised "
                     "backbone.")
_BACKBONE = define(E, "backbone", "sit", ["sit", "net1d"],
                   "sit: the SiT encoder; net1d: ECGFounder's Net1D.")
_MODEL_SIZE = define(S, "model_size", "tiny", "SiT size for --checkpoint=random "
                     "(tiny/small/base/large).")
_LAYOUT = define(S, "layout", "wfdb_folder", "Dataset layout (wfdb_folder|ptbxl|manifest).")
_ROOT = define(S, "root", None, "Dataset folder (or manifest CSV).")
_LABEL_SET = define(S, "label_set", "superclass", "ptbxl layout: label set.")
_CACHE_DIR = define(S, "cache_dir", "", "A cache from `crema-jax prepare` built with the "
                    "checkpoint's preprocessing: its records (labels, splits, sources and "
                    "preprocessed signals) replace --layout/--root's WFDB files.")
# Same name and type as `crema-jax prepare`'s flag (one pytest process imports both modules).
_LAYOUT_OPTION = define(flags.DEFINE_multi_string, "layout_option", [], "A layout keyword "
                        "argument key=value (repeatable), e.g. source=site (PTB-XL: one source "
                        "per recording site).")
_WORKDIR = define(S, "workdir", None, "Output folder: report.json, report.md, PNGs.")
_LABEL_TYPE = define(E, "label_type", "auto", ["auto", "multilabel", "multiclass"],
                     "BCE per class or softmax CE; auto = multiclass when every record has "
                     "exactly one class.")
_MIN_POSITIVES = define(I, "min_positives", 1, "Keep classes with at least this many positives "
                        "in the training split.")
_SPLIT_FRACTIONS = define(L, "split_fractions", [], "train,val,test fractions of a seeded "
                          "per-source re-split (default: the layout's splits). Small datasets "
                          "need it so every split has records.")
_LABEL_FRACTIONS = define(L, "label_fractions", ["1.0"], "Fractions of the training labels, "
                          "e.g. 0.01,0.1,1.0.")
_LEAD_SETS = define(L, "lead_sets", ["12"], "Lead sets: 12, limb6, I, or '+'-joined lead names "
                    "(the same weights see fewer leads).")
_CROSS_DOMAIN = define(B, "cross_domain", False, "Also train on each source and test in-domain "
                       "and on every other source.")
_BATCH_SIZE = define(I, "batch_size", 64, "Records per batch (rounded up to a multiple of the "
                     "device count).")
_NUM_WORKERS = define(I, "num_workers", 0, "Grain worker processes reading records.")
_BOOTSTRAP = define(I, "bootstrap", 1000, "Bootstrap resamples for the 95% CI.")
_SEED = define(I, "seed", 0, "Seed of splits, label fractions, init and bootstrap.")


@dataclasses.dataclass
class Dataset:
    infos: list
    splits: np.ndarray          # (n,) "train"/"val"/"test" per record
    sources: np.ndarray         # (n,) source per record
    classes: list[str]
    labels: np.ndarray          # (n, C) multi-hot
    label_type: str
    display: dict = dataclasses.field(default_factory=dict)  # class -> readable name
    cache_dir: str = ""         # records are read from this prepared cache (infos' meta: row)


def class_display_names(root: str, classes) -> dict:
    """Readable names of label codes from a `snomed_codes.csv` beside the data (CinC 2021 ships
    one: SNOMEDCTCode,Abbreviation,...); {} when there is none."""
    import csv
    path = pathlib.Path(root) / "snomed_codes.csv"
    if not path.is_file():
        return {}
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if len(rows) < 2 or len(rows[0]) < 2:
        return {}
    names = {row[0].strip(): row[1].strip() for row in rows[1:] if len(row) >= 2}
    return {c: names[c] for c in classes if names.get(c)}


def require(name: str, value):
    if value in (None, ""):
        raise ValueError(f"--{name} is required")
    return value


def parse_options(items) -> dict:
    """["key=value", ...] -> {key: value} with ints, floats and booleans converted."""
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--layout_option={item!r}: expected key=value")
        lowered = value.lower()
        if lowered in ("true", "false"):
            options[key] = lowered == "true"
            continue
        for kind in (int, float):
            try:
                options[key] = kind(value)
                break
            except ValueError:
                continue
        else:
            options[key] = value
    return options


def _cache_index(cache_dir: str):
    """A prepared cache's records as a layout index; each info's meta["cache_row"] is its row."""
    from crema_jax.data import cache, layouts
    index = cache.load_index(cache_dir)
    infos = [layouts.RecordInfo(record_id=r["record_id"], path=r["path"],
                                labels=tuple(r["labels"]), split=r["split"], source=r["source"],
                                meta={"cache_row": row})
             for row, r in enumerate(index["records"])]
    return layouts.DatasetIndex(infos, list(index["label_names"]),
                                layout=index["settings"].get("layout", ""),
                                root=index["settings"].get("root", ""))


def load_dataset(layout: str, root: str, *, label_set: str, split_fractions, min_positives: int,
                 label_type: str, seed: int, layout_options=(), cache_dir: str = "") -> Dataset:
    """The layout's index (or a prepared cache's), (re-)split, restricted to classes with enough
    training positives."""
    from crema_jax.data import layouts
    if cache_dir:
        index = _cache_index(cache_dir)
        root = root or index.root
    else:
        options = {"label_set": label_set} if layout == "ptbxl" else {}
        options.update(parse_options(layout_options))
        index = layouts.build_index(layout, root, **options)
    infos = list(index.records)
    if split_fractions:
        splits = protocols.resplit(infos, [float(f) for f in split_fractions], seed=seed)
    else:
        splits = [info.split for info in infos]
    splits = np.asarray(splits)
    classes = protocols.select_classes(infos, index.label_names, splits,
                                       min_positives=min_positives)
    if not classes:
        raise ValueError(f"no class has >= {min_positives} training positives in {root} "
                         f"(--min_positives); {len(index.label_names)} classes in the layout")
    labels = protocols.label_matrix(infos, classes)
    if label_type == "auto":
        label_type = protocols.infer_label_type(labels)
    if label_type == "multiclass":  # softmax targets need exactly one class per record
        keep = labels.sum(1) == 1
        dropped = int((~keep).sum())
        if dropped:
            logging.warning("multiclass: leaving out %d records without exactly one class", dropped)
        infos = [info for info, k in zip(infos, keep) if k]
        splits, labels = splits[keep], labels[keep]
    for split in protocols.SPLITS:
        if not np.any(splits == split):
            raise ValueError(f"the {split!r} split of {root} is empty; pass --split_fractions="
                             "0.6,0.2,0.2 (a seeded re-split per source)")
    return Dataset(infos, splits, np.asarray([info.source for info in infos]), classes, labels,
                   label_type, class_display_names(root, classes), cache_dir=cache_dir)


def eval_data_config(config, backbone_name: str, lead_names, *, batch_size: int,
                     num_workers: int):
    """The checkpoint's data section (same preprocessing as pretraining) set up for evaluation."""
    from crema_jax.data.config import default_data_config
    from crema_jax.data.preprocess import PRESETS
    base = config.get("data")
    cfg = default_data_config()
    if base is not None:
        cfg.update_from_flattened_dict(
            {k: v for k, v in base.to_dict().items() if k in cfg and not isinstance(v, dict)})
        if base.get("preprocess") is not None:
            cfg.preprocess = base.preprocess
        if base.get("augment") is not None:
            cfg.augment = base.augment
    if backbone_name == "net1d":  # ECGFounder sees the whole 10 s record at its own rate
        model = config.model
        cfg.target_fs = float(model.get("sample_rate", 500))
        cfg.crop_samples = int(model.get("num_samples", 5000))
        cfg.patch_size = cfg.crop_samples // 50
        cfg.eval_crop_offsets = (0,)
        # ECGFounder's own preprocessing (as `crema-jax embed` does): an imported checkpoint's
        # data section is the SiT default, not what Net1D was trained on.
        cfg.preprocess = PRESETS["ecgfounder"]()
    cfg.leads = tuple(lead_names)
    cfg.batch_size = int(batch_size)
    cfg.num_workers = int(num_workers)
    cfg.split = ""
    cfg.cache_dir = ""
    cfg.strict = False
    return cfg


def make_source(dataset: Dataset, data_cfg, rows=None):
    """A source over dataset records (all, or `rows`); its "index" is the row position.

    WFDB files, or the prepared cache's records, which must have been preprocessed as `data_cfg`
    says (CacheSource raises, naming the cache, when they were not)."""
    from crema_jax.data.sources import WfdbSource
    from crema_jax.data.pipeline import preprocess_settings
    infos = dataset.infos if rows is None else [dataset.infos[i] for i in rows]
    if dataset.cache_dir:
        from crema_jax.data.cache import CacheSource
        source = CacheSource(dataset.cache_dir, expect_target_fs=data_cfg.target_fs,
                             expect_preprocess=preprocess_settings(data_cfg),
                             expect_derive_limb_leads=bool(data_cfg.derive_limb_leads))
        return source.subset([info.meta["cache_row"] for info in infos], dataset.classes)
    return WfdbSource(infos, dataset.classes, target_fs=data_cfg.target_fs,
                      preprocess_cfg=preprocess_settings(data_cfg),
                      derive_limb_leads=data_cfg.derive_limb_leads)


def flag_values() -> dict:
    """The shared flags as keyword arguments (for the report's settings)."""
    return {
        "checkpoint": require("checkpoint", _CHECKPOINT.value), "backbone": _BACKBONE.value,
        # `or`: another subcommand's --layout of the same name may have no default.
        "model_size": _MODEL_SIZE.value, "layout": _LAYOUT.value or "wfdb_folder",
        "root": _ROOT.value if _CACHE_DIR.value else require("root", _ROOT.value),
        "cache_dir": _CACHE_DIR.value or "", "label_set": _LABEL_SET.value,
        "layout_options": list(_LAYOUT_OPTION.value or []),
        "workdir": require("workdir", _WORKDIR.value), "label_type": _LABEL_TYPE.value,
        "min_positives": _MIN_POSITIVES.value, "split_fractions": list(_SPLIT_FRACTIONS.value),
        "label_fractions": [float(f) for f in _LABEL_FRACTIONS.value],
        "lead_sets": list(_LEAD_SETS.value), "cross_domain": _CROSS_DOMAIN.value,
        "batch_size": _BATCH_SIZE.value, "num_workers": _NUM_WORKERS.value,
        "bootstrap": _BOOTSTRAP.value, "seed": _SEED.value,
    }


def workdir_path(workdir: str) -> pathlib.Path:
    path = pathlib.Path(workdir)
    path.mkdir(parents=True, exist_ok=True)
    return path
