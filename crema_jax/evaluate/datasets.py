"""Labelled datasets for evaluation: a layout's index (or a prepared cache's), its splits, its
class vocabulary and label matrix, and the record source the evaluation pipeline reads.
"""
from __future__ import annotations

import csv
import dataclasses
import difflib
import pathlib

import numpy as np
from absl import logging

from crema_jax.data.cache.source import cache_index
from crema_jax.data.index import duplicates, registry
from crema_jax.data.pipeline import sources
from crema_jax.evaluate import protocols


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
    skip_damaged_cache_records: bool = False   # a damaged shard's records skipped, not fatal
    # What loading left out: "indexed" rows, "duplicates_merged" (and their "duplicate_groups"),
    # "no_class_left" (every class dropped by min_positives), "not_one_class" (multiclass);
    # and what was kept: "unlabelled" (no label at all: a negative of every class),
    # "other_classes_only" (labels outside a task file's `classes` only: a negative too); and
    # "patients_across_splits" (_checked_patients: the given splits' shared patients, or None).
    counts: dict = dataclasses.field(default_factory=dict)


def class_display_names(root: str, classes) -> dict:
    """Readable names of label codes from a `snomed_codes.csv` beside the data (CinC 2021 ships
    one: SNOMEDCTCode,Abbreviation,...); {} when there is none."""
    path = pathlib.Path(root) / "snomed_codes.csv"
    if not path.is_file():
        return {}
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if len(rows) < 2 or len(rows[0]) < 2:
        return {}
    names = {row[0].strip(): row[1].strip() for row in rows[1:] if len(row) >= 2}
    return {c: names[c] for c in classes if names.get(c)}


DUPLICATES = ("merge", "refuse")


def apply_duplicates_policy(infos, policy: str, where: str) -> tuple[list, dict]:
    """The records with every ECG once (duplicates.py: a path listed twice, or byte-identical
    signal files under two ids), so no ECG sits in two splits or folds. policy (--duplicates,
    one of DUPLICATES) "merge" keeps each ECG's first row and counts the rest; "refuse" stops
    with the count."""
    if policy not in DUPLICATES:
        raise ValueError(f"--duplicates={policy!r}: expected one of {DUPLICATES}")
    found = duplicates.find(infos)
    counts = {"duplicates_merged": found.merged, "duplicate_groups": found.groups}
    if not found.merged:
        return list(infos), counts
    example = ", ".join(found.groups[0])
    if policy == "refuse":
        raise ValueError(f"{where}: {found.merged} records repeat an ECG listed before (the same "
                         f"file, or byte-identical signal files), in {len(found.groups)} groups "
                         f"(e.g. {example}); remove them, or pass --duplicates=merge")
    print(f"duplicates: {found.merged} records repeat an ECG listed before (the same file or "
          f"byte-identical signal files, e.g. {example}); each ECG kept once, its first row")
    if found.conflicts:  # they had been merged without a word
        print(f"duplicates: {len(found.conflicts)} of them give other labels than the row "
              f"kept (e.g. {found.conflicts[0]}); the kept row's are used")
    return found.kept, counts


def flag(settings: dict, name: str) -> str:
    """How the user sets `name` in messages: an evaluation command's --NAME, or the config
    field or task-file entry `settings["flag_prefix"]` names (the pretraining probe's
    config.evals.fewshot_probe. had been told to pass probe flags it has not got)."""
    return f"{settings.get('flag_prefix', '--')}{name}"


def _listed_classes(settings: dict) -> list[str]:
    """The classes a task file lists (settings["classes"]), in its order; [] where none."""
    return [str(c) for c in settings.get("classes") or []]


def _task_vocabulary(settings: dict, label_names) -> list[str]:
    """The classes a task is chosen from: the classes its task file lists (_listed_classes),
    else the layout's whole vocabulary `label_names`."""
    return _listed_classes(settings) or list(label_names)


def decide_label_type(settings: dict, infos, label_names) -> tuple[str, str]:
    """(label type, why): settings["label_type"], or with "auto" multiclass when every record
    has exactly one of the classes the task uses (protocols.infer_label_type): a task file's
    `classes` where it lists them, else the layout's vocabulary; decided BEFORE min_positives
    drops any class (a dropped class must not turn one-class records into "multilabel" rows
    with no class). The whole vocabulary had decided for a listed task too: two mutually
    exclusive classes of a multi-label vocabulary were multilabel, and one listed class of a
    one-class-per-record vocabulary a softmax over one column that keeps only its positives."""
    if settings["label_type"] != "auto":
        return settings["label_type"], flag(settings, "label_type")
    used = _task_vocabulary(settings, label_names)
    inferred = protocols.infer_label_type(protocols.label_matrix(infos, used))
    what = (f"the {len(used)} classes of {flag(settings, 'classes')}"
            if _listed_classes(settings) else "every record's labels")
    return inferred, f"auto: from {what}, before {flag(settings, 'min_positives')}"


def _splits_read(settings: dict, with_folds: bool | None = None) -> tuple[str, ...]:
    """The splits a run reads, with settings["folds"] or (`with_folds`) with or without K
    folds: settings["splits_read"][with_folds] where its caller says (a benchmark dataset:
    those its tasks read, benchmark_datasets.splits_read), else all three without K folds, or
    with them when settings["cross_domain"] trains each source's head on its splits, and none
    with K folds alone (the folds replace the splits). The one rule of every split check and
    of where folds are suggested (_folds_hint): empty splits, a small test split, patients
    across splits."""
    if with_folds is None:
        with_folds = bool(int(settings.get("folds") or 0))
    if "splits_read" in settings:
        return tuple(s for s in protocols.SPLITS if s in settings["splits_read"][with_folds])
    if not with_folds or settings.get("cross_domain"):
        return protocols.SPLITS
    return ()


def _folds_hint(settings: dict, splits, before: str, then: str) -> str:
    """`before` --folds=5 `then` where K folds would leave none of `splits` (those a check
    found wanting) read: the command has the flag, gives no folds, and with them no run reads
    these splits (_splits_read), else "". Cross-domain heads (--cross_domain, a benchmark's
    pairs) read their splits with or without folds: --cross_domain, and a benchmark dataset a
    pair reads, had been told to pass folds that leave those splits as they are."""
    if "folds" not in settings or int(settings.get("folds") or 0) \
            or set(splits) & set(_splits_read(settings, with_folds=True)):
        return ""
    return f"{before}{flag(settings, 'folds')}=5 {then}"


def _checked_splits(splits, settings: dict, root: str, infos) -> None:
    """ValueError naming an empty split and what would fill it: a re-split, or (when the
    records belong to too few patients for any split to fill three) more patients."""
    for split in _splits_read(settings):
        if np.any(splits == split):
            continue
        patients = len(set(protocols.patient_keys(infos)))
        if patients < len(protocols.SPLITS):  # no re-split, no fold can help
            raise ValueError(f"the {split!r} split of {root} is empty: its {len(infos)} records "
                             f"belong to {patients} patient(s) (patient_id, else record id), "
                             "and a patient's records stay in one split; evaluating needs "
                             "records of at least 3 patients")
        if settings.get("split_fractions"):
            fractions = ",".join(str(f) for f in settings["split_fractions"])
            raise ValueError(f"the {split!r} split of {root} is empty after "
                             f"{flag(settings, 'split_fractions')}={fractions} ({len(infos)} "
                             f"records of {patients} patients); give it a larger fraction")
        folds = _folds_hint(settings, [split], " or ", "(cross-validation)")
        raise ValueError(f"the {split!r} split of {root} is empty; pass "
                         f"{flag(settings, 'split_fractions')}=0.6,0.2,0.2 (a seeded re-split "
                         f"per source){folds}")


SMALL_TEST_SPLIT = 30  # test records below which one split's figures are mostly noise


def small_test_warning(n_test: int, tested: str, hint: str = "") -> str | None:
    """The `warning:` line of a test set (`tested` names it) of fewer than SMALL_TEST_SPLIT
    records, `hint` saying what would help; None for a larger one."""
    if n_test >= SMALL_TEST_SPLIT:
        return None
    return (f"warning: {tested} holds {n_test} records (fewer than {SMALL_TEST_SPLIT}): its "
            f"figures are mostly noise, as their confidence intervals show{hint}")


def _warn_small_test(splits, settings: dict) -> None:
    """One line when the test split a run reads (_splits_read) holds fewer than
    SMALL_TEST_SPLIT records: a plain probe of the 50 sample records had reported a macro AUROC
    of 3 test records without a word. With cross_domain it is read with K folds too (the
    in-domain tests), and folds are not suggested. None where no run reads it (K folds alone;
    a benchmark dataset only cross-domain pairs read: they test another source's records, and
    folds do not apply to them)."""
    if "test" not in _splits_read(settings):
        return
    hint = (_folds_hint(settings, ["test"], "; ", "tests every record once (cross-validation)")
            or (f"; {flag(settings, 'cross_domain')}'s in-domain tests read it with or without "
                f"{flag(settings, 'folds')}" if settings.get("cross_domain") else ""))
    line = small_test_warning(int(np.sum(np.asarray(splits) == "test")), "the test split", hint)
    if line:
        print(line)


PATIENTS_ACROSS_SPLITS = ("refuse", "allow")


def _checked_patients(infos, splits, settings: dict, where: str) -> dict | None:
    """The given splits' (a layout's or a manifest's own) protocols.patients_across_splits,
    refused when a patient has records in two of them unless settings["patients_across_splits"]
    is "allow" (then printed): a test score on patients the head trained or was selected on is
    inflated. Over the splits read alone (_splits_read: a benchmark's cross-domain pair on a
    dataset with folds reads train and val), of the sources read (settings["sources_read"]
    where its caller says: a benchmark's pairs read their train_source's splits alone); None
    where the splits are not the given ones (a re-split) or fewer than two are read (K folds
    alone): those group patients."""
    read = _splits_read(settings)
    if settings.get("split_fractions") or len(read) < 2:
        return None
    checked = np.isin(splits, read)
    if settings.get("sources_read") is not None:
        checked &= np.isin([info.source for info in infos], list(settings["sources_read"]))
    rows = np.flatnonzero(checked)
    found = protocols.patients_across_splits(splits[rows], protocols.patient_keys(infos)[rows],
                                             [infos[i].record_id for i in rows])
    if not found["patients"]:
        return found
    policy = settings.get("patients_across_splits", "refuse")
    if policy not in PATIENTS_ACROSS_SPLITS:
        raise ValueError(f"{flag(settings, 'patients_across_splits')}={policy!r}: expected one "
                         f"of {PATIENTS_ACROSS_SPLITS}")
    what = (f"{where}: its own splits put {found['patients']} patient(s) in more than one of "
            f"{'/'.join(read)} ({found['records']} records, e.g. records "
            f"{', '.join(found['examples'])})")
    if policy == "allow":
        print(f"warning: {what}; kept ({flag(settings, 'patients_across_splits')}=allow): "
              "the scores of their test records are inflated")
        return found
    remedy = f"{flag(settings, 'split_fractions')}=0.6,0.2,0.2 (a seeded re-split, a " \
        "patient's records in one split)"
    remedy += _folds_hint(settings, read, " or ", "(folds over patients)")
    if "patients_across_splits" in settings:  # commands only: a task file has no such field
        remedy += f", or {flag(settings, 'patients_across_splits')}=allow to keep these splits"
    raise ValueError(f"{what}: a test score on patients the head trained or was selected on "
                     f"is inflated; pass {remedy}")


def _shown(names, limit: int = 20) -> str:
    """Names for a message: the first `limit`, then how many in all."""
    return ", ".join(names[:limit]) + (f", ... ({len(names)} in all)" if len(names) > limit
                                       else "")


def _classes(infos, label_names, counted, settings: dict, root,
             label_type: str) -> tuple[list, list]:
    """(the classes evaluated, the vocabulary they are chosen from): the classes of
    settings["classes"] (a task file's list, in its order: they define the task, and each must
    have min_positives positives among the `counted` records: one without is an error, never
    dropped), else those of the layout's `label_names` with that many (the others left out
    and said). A listed class is checked BEFORE min_positives reads any other class: a record
    whose only label was a rare class outside the list had been dropped, one of a frequent
    class outside it kept as a negative. One class left under `label_type` multiclass is
    refused (_one_class)."""
    min_positives, k = settings["min_positives"], int(settings.get("folds") or 0)
    listed = _listed_classes(settings)
    unknown = [c for c in listed if c not in label_names]
    if unknown:
        close = difflib.get_close_matches(unknown[0], label_names, n=1)
        raise ValueError(f"{flag(settings, 'classes')}: {unknown[0]!r} is not a class of the "
                         "dataset: no record is labelled with it"
                         + (f" (did you mean {close[0]!r}?)" if close else "")
                         + f"; its {len(label_names)} classes: {_shown(label_names)}")
    vocabulary = _task_vocabulary(settings, label_names)
    classes = protocols.select_classes(infos, vocabulary, counted, min_positives=min_positives)
    missing = [c for c in listed if c not in classes]
    if missing:
        enough = protocols.select_classes(infos, label_names, counted,
                                          min_positives=min_positives)
        raise ValueError(f"{flag(settings, 'classes')}: {missing} have fewer than min_positives="
                         f"{min_positives} positives (among the training records; among all "
                         f"records with folds); the classes with enough: {_shown(enough)}")
    present = protocols.label_matrix(infos, vocabulary).any(0)
    left_out = [c for c, has in zip(vocabulary, present) if has and c not in set(classes)]
    if not classes:
        raise ValueError(f"no class has >= {min_positives} {'' if k else 'training '}positives "
                         f"in {root} ({flag(settings, 'min_positives')}); "
                         f"{len(label_names)} classes in the layout")
    if label_type == "multiclass" and len(classes) == 1:
        raise ValueError(_one_class(classes[0], left_out, settings))
    if left_out:  # a class with positives in test only had vanished unsaid
        print(f"{flag(settings, 'min_positives')}={min_positives}: {len(left_out)} class(es) "
              f"with fewer {'' if k else 'training '}positives left out (e.g. "
              f"{', '.join(left_out[:5])})")
    return classes, vocabulary


def _one_class(kept: str, left_out: list, settings: dict) -> str:
    """Why a multiclass task of one class is refused: its softmax over one column is a constant
    1 (every record left is its positive, nothing to learn or score); what left it alone."""
    constant = ("a multiclass (softmax) head over one class is a constant: every record left "
                "is its positive")
    if left_out:
        k = int(settings.get("folds") or 0)
        return (f"{flag(settings, 'min_positives')}={settings['min_positives']} leaves one "
                f"class, {kept}, and drops the other {len(left_out)} (fewer "
                f"{'' if k else 'training '}positives: {_shown(left_out)}): {constant}; lower "
                f"{flag(settings, 'min_positives')}")
    return (f"{flag(settings, 'label_type')}=multiclass with one class, {kept}: {constant}; "
            f"give two classes or more, or {flag(settings, 'label_type')}=multilabel (one class: "
            "a binary task)")


def _kept_records(labels, had_class, labelled, label_type: str, settings: dict, counts: dict,
                  n_vocabulary: int) -> np.ndarray:
    """Which records are evaluated, each left out or kept as a negative counted in `counts`:
    `labels` over the classes kept, `had_class` a class of the vocabulary they were chosen
    from (_classes), `labelled` any label of the layout's."""
    min_positives = settings["min_positives"]
    keep = ~(had_class & (labels.sum(1) == 0))
    counts["no_class_left"] = int((~keep).sum())
    if counts["no_class_left"]:
        print(f"{flag(settings, 'min_positives')}={min_positives}: {counts['no_class_left']} "
              f"records whose classes were all dropped ({labels.shape[1]} of "
              f"{n_vocabulary} classes kept) are left out")
    counts["not_one_class"] = 0
    if label_type == "multiclass":  # softmax targets need exactly one class per record
        counts["not_one_class"] = int((keep & (labels.sum(1) != 1)).sum())
        if counts["not_one_class"]:
            logging.warning("multiclass: leaving out %d records without exactly one class",
                            counts["not_one_class"])
        keep &= labels.sum(1) == 1
    counts["unlabelled"] = int((keep & ~labelled).sum())
    if counts["unlabelled"]:  # CODE-15%'s normal ECGs; a header without its `# Dx:` line too
        print(f"{counts['unlabelled']} records carry no label of the layout's: each is scored "
              "as a negative of every class")
    counts["other_classes_only"] = int((keep & labelled & ~had_class).sum())
    if counts["other_classes_only"]:
        print(f"{flag(settings, 'classes')}: {counts['other_classes_only']} records carry only "
              "classes outside this list: each is scored as a negative of every class of the "
              "list")
    return keep


def load_dataset(settings: dict) -> Dataset:
    """The dataset named by an evaluation command's settings (layout, root, layout_options or
    cache_dir; duplicates, split_fractions, min_positives, label_type, seed, folds,
    patients_across_splits; a task file's classes): the index with every ECG once, (re-)split,
    restricted to the classes with enough training positives (with K folds: positives), or to
    the classes listed (_classes); records left with no class are dropped and counted in
    `counts`; given splits that put a patient in two are refused."""
    root, cache_dir, seed = settings["root"], settings["cache_dir"], settings["seed"]
    split_fractions = settings["split_fractions"]
    if cache_dir:
        index = cache_index(cache_dir)
        root = root or index.root
    else:
        options = dict(settings["layout_options"])
        index = registry.build_index(settings["layout"], root, **options)
        if not index.records:  # it went on to "no class has >= 1 training positives"
            raise ValueError(f"{flag(settings, 'root')}={root}: the {settings['layout']} "
                             "layout finds no record there")
    infos, counts = apply_duplicates_policy(index.records, settings.get("duplicates", "merge"),
                                            root or cache_dir)
    counts["indexed"] = len(index.records)
    label_type, why = decide_label_type(settings, infos, index.label_names)
    print(f"label type: {label_type} ({why})")
    if split_fractions:
        splits = protocols.resplit(infos, [float(f) for f in split_fractions], seed=seed)
    else:
        splits = [info.split for info in infos]
    splits = np.asarray(splits)
    # With K folds every record trains some fold's head: classes count all their positives.
    counted = np.full(len(infos), "train") if int(settings.get("folds") or 0) else splits
    classes, vocabulary = _classes(infos, index.label_names, counted, settings, root,
                                   label_type)
    labels = protocols.label_matrix(infos, classes)
    had_class = protocols.label_matrix(infos, vocabulary).sum(1) > 0
    labelled = protocols.label_matrix(infos, index.label_names).sum(1) > 0
    keep = _kept_records(labels, had_class, labelled, label_type, settings, counts,
                         len(vocabulary))
    infos = [info for info, k in zip(infos, keep) if k]
    splits, labels = splits[keep], labels[keep]
    _checked_splits(splits, settings, root, infos)
    _warn_small_test(splits, settings)
    counts["patients_across_splits"] = _checked_patients(infos, splits, settings,
                                                         root or cache_dir)
    return Dataset(infos, splits, np.asarray([info.source for info in infos]), classes, labels,
                   label_type, class_display_names(root, classes), cache_dir=cache_dir,
                   skip_damaged_cache_records=bool(settings.get("skip_damaged_cache_records")),
                   counts=counts)


def make_source(dataset: Dataset, data_cfg, rows=None):
    """A source over dataset records (all, or `rows`): WFDB files, or the prepared cache's
    records (checked against the data path). Its examples map back to `rows` through
    `source.record_rows` (several per record when the data path cuts windows)."""
    infos = dataset.infos if rows is None else [dataset.infos[i] for i in rows]
    return sources.make_source({**data_cfg, "cache_dir": dataset.cache_dir,
                                "skip_damaged_cache_records": dataset.skip_damaged_cache_records},
                               records=infos, label_names=dataset.classes)
