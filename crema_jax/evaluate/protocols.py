"""Evaluation protocols: which records train, select and test a head, and with which leads.

- Label vocabulary: classes with at least `min_positives` training positives (tiny datasets
  otherwise give columns that cannot be scored).
- Splits: the layout's split, or (with `split_fractions`) a seeded re-split made per source so
  every source has train, validation and test records, a patient's records in one split (the
  same split in every source).
- Label fractions (1%, 10%, 100%): a seeded subset of the TRAINING split only, stratified by label
  combination, that keeps at least one positive of every class present in the training split:
  on a small split a small fraction uses more (`labels_used` says how many).
- Reduced leads: `LEAD_SETS` names the canonical lead subsets; the same weights see fewer leads.
- Cross-domain: train on one source, test in-domain (the source's test split) and out-of-domain
  (each other source's records, less those of patients the head trained or was selected on),
  and report the drop.
"""
from __future__ import annotations

import hashlib
import math
from collections import Counter, defaultdict
from typing import Sequence

import numpy as np

from crema_jax.data.reading.demographics import patient_id_of
from crema_jax.data.reading.leads import LEADS as LEAD_NAMES  # canonical order: index -> name
from crema_jax.data.reading.leads import check_lead_names
from crema_jax.evaluate import ranges, scoring

LEAD_SETS = {
    "12": LEAD_NAMES,
    "limb6": ("I", "II", "III", "aVR", "aVL", "aVF"),
    "I": ("I",),
}

SPLITS = ("train", "val", "test")


def lead_set(name: str, where: str = "") -> tuple[str, ...]:
    """A named lead set, or '+'-joined lead names (e.g. 'I+II+V2') in canonical order. `where`
    names the entry in errors (default: the commands' --lead_sets flag)."""
    if name in LEAD_SETS:
        return LEAD_SETS[name]
    leads = tuple(name.split("+"))
    check_lead_names(leads, where or f"--lead_sets entry {name!r}",
                     expected=f"one of {sorted(LEAD_SETS)} or '+'-joined names")
    return tuple(sorted(leads, key=LEAD_NAMES.index))


def label_matrix(infos, class_names: Sequence[str]) -> np.ndarray:
    """Multi-hot labels (n, C) float32 of records for the given class vocabulary."""
    column = {name: c for c, name in enumerate(class_names)}
    y = np.zeros((len(infos), len(class_names)), np.float32)
    for i, info in enumerate(infos):
        for label in info.labels:
            if label in column:
                y[i, column[label]] = 1.0
    return y


def select_classes(infos, label_names: Sequence[str], splits: Sequence[str], *,
                   min_positives: int = 1) -> list[str]:
    """Classes (in vocabulary order) with >= min_positives positives in the training split."""
    counts = Counter(label for info, split in zip(infos, splits) if split == "train"
                     for label in set(info.labels))
    return [name for name in label_names if counts[name] >= min_positives]


def infer_label_type(labels: np.ndarray) -> str:
    """'multiclass' when there are two or more classes and every record has exactly one, else
    'multilabel' (a softmax over one class is a constant 1: one class is a binary task)."""
    labels = np.asarray(labels)
    one_each = len(labels) and np.all(labels.sum(1) == 1)
    return "multiclass" if one_each and labels.shape[1] >= 2 else "multilabel"


def _stable_unit(key: str, seed: int) -> float:
    """A deterministic number in [0, 1) from a record id (independent of record order)."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


def split_counts(n: int, fractions: Sequence[float]) -> list[int]:
    """Largest-remainder split sizes; every split gets a record when n >= number of splits."""
    fractions = np.asarray(fractions, np.float64) / np.sum(fractions)
    counts = np.floor(fractions * n).astype(int)
    for i in np.argsort(-(fractions * n - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    for i in range(len(counts)):  # steal from the largest split for an empty one
        if counts[i] == 0 and n >= len(counts) and fractions[i] > 0:
            counts[int(np.argmax(counts))] -= 1
            counts[i] = 1
    return counts.tolist()


_PATIENT = "patient:"   # patient_keys' key of a patient; a record without one keys by its id


def _is_patient_key(key) -> bool:
    """Whether a patient_keys key names a patient (not a record without a patient id)."""
    return str(key).startswith(_PATIENT)


def patient_keys(infos) -> np.ndarray:
    """One grouping key per record: "patient:ID" from its meta["patient_id"], or its own record
    id when it has none (then it is its own patient; a missing-value word such as "NaN" is
    none: demographics.patient_id_of)."""
    keys = []
    for info in infos:
        patient = patient_id_of((getattr(info, "meta", None) or {}).get("patient_id"))
        keys.append(_PATIENT + patient if patient is not None else info.record_id)
    return np.asarray(keys)


def patients_across_splits(splits, patients, record_ids, *, show: int = 5) -> dict:
    """The patients (patient_keys' "patient:ID"; a record without a patient id is its own
    patient and never counted) with records in more than one of the splits: {"patients": how
    many, "records": all their records, "examples": the first `show` of those records' ids, in
    record order}. Record ids, never patient ids: a patient id (a hospital's record number) must
    not reach a log or a report, and record ids are in the predictions already."""
    seen: dict = {}
    for split, key in zip(np.asarray(splits).tolist(), np.asarray(patients).tolist()):
        if _is_patient_key(key):
            seen.setdefault(key, []).append(split)
    shared = {key for key, found in seen.items() if len(set(found)) > 1}
    records = [str(r) for r, key in zip(record_ids, np.asarray(patients).tolist())
               if key in shared]
    return {"patients": len(shared), "records": len(records), "examples": records[:show]}


def resplit(infos, fractions: Sequence[float], *, seed: int = 0) -> list[str]:
    """Train/val/test per record: within each source (in sorted order), patients ordered by a
    hash of their key (patient_keys), cut at the fractions' record counts; a patient's records
    share the split where its first record falls (so the sizes hold up to one patient), in
    every source: a patient already placed from another source keeps that split, so no patient
    is trained on in one source and tested in another."""
    if not ranges.split_fractions_ok(list(fractions)):
        raise ValueError(f"--split_fractions={','.join(map(str, fractions))}: "
                         f"{ranges.SPLIT_FRACTIONS_TEXT}")
    keys = patient_keys(infos)
    by_source = defaultdict(list)
    for i, info in enumerate(infos):
        by_source[info.source].append(i)
    splits = [""] * len(infos)
    placed: dict[str, str] = {}  # patient key -> split, across sources
    for _, members in sorted(by_source.items()):
        members = sorted(members, key=lambda i: (_stable_unit(keys[i], seed), keys[i],
                                                 infos[i].record_id))
        ends = np.cumsum(split_counts(len(members), fractions))
        start = 0
        while start < len(members):
            stop = start
            while stop < len(members) and keys[members[stop]] == keys[members[start]]:
                stop += 1
            name = placed.setdefault(  # a patient met in an earlier source keeps its split
                keys[members[start]],
                SPLITS[min(int(np.searchsorted(ends, start, side="right")), 2)])
            for i in members[start:stop]:
                splits[i] = name
            start = stop
    return splits


def label_fraction_subset(labels: np.ndarray, fraction: float, *, seed: int = 0) -> np.ndarray:
    """Sorted row indices of a seeded, stratified `fraction` of the training labels (n, C).

    First one positive of every class that has any (rarest class first), then the rest of the
    quota drawn from each label-combination group in proportion to its size.
    """
    n = labels.shape[0]
    if not 0 < fraction <= 1:
        raise ValueError(f"label fraction {fraction}: expected 0 < fraction <= 1")
    if fraction == 1:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    target = max(1, math.ceil(fraction * n))
    chosen: set[int] = set()
    positives = labels > 0.5
    for c in np.argsort(positives.sum(0), kind="stable"):
        rows = np.flatnonzero(positives[:, c])
        if len(rows) and not positives[sorted(chosen), c].any():
            chosen.add(int(rng.choice(rows)))
    groups = defaultdict(list)
    for i in rng.permutation(n):
        if int(i) not in chosen:
            groups[positives[i].tobytes()].append(int(i))
    remaining = target - len(chosen)
    if remaining > 0:
        keys = sorted(groups, key=lambda k: (-len(groups[k]), k))
        pool = sum(len(groups[k]) for k in keys)
        quota = {k: len(groups[k]) * remaining / pool for k in keys}
        take = {k: int(quota[k]) for k in keys}
        by_remainder = sorted(keys, key=lambda k: -(quota[k] - take[k]))
        for k in by_remainder[: remaining - sum(take.values())]:
            take[k] += 1
        for k in keys:
            chosen.update(groups[k][: take[k]])
    return np.array(sorted(chosen), dtype=np.int64)


def labels_used(labelled, pools) -> dict:
    """What a label fraction used, of one head (counts: ints) or of K fold heads (lists of
    them): {"n_labelled": the records label_fraction_subset drew, "n_train_pool": the training
    records it drew them from (whole counts for one head; with folds the means per fold, one
    decimal), "label_fraction_used": their ratio (over all folds)}. One positive of every class
    comes first, so the fraction used can exceed the one asked for: 0.1 of 27 records of ten
    classes drew 4 to 6 of them."""
    if np.ndim(labelled) == 0 and np.ndim(pools) == 0:  # one head: 27, not 27.0
        return {"n_labelled": int(labelled), "n_train_pool": int(pools),
                "label_fraction_used": float(labelled / pools) if pools else None}
    labelled, pools = np.atleast_1d(labelled), np.atleast_1d(pools)
    return {"n_labelled": round(float(labelled.mean()), 1),
            "n_train_pool": round(float(pools.mean()), 1),
            "label_fraction_used": float(labelled.sum() / pools.sum()) if pools.sum() else None}


def shared_patient_note(sources, patients) -> str | None:
    """A one-line note when one patient id (patient_keys' "patient:ID") has records in two or
    more sources, else None. Such records are one patient (the leak cross_domain_plan closes),
    which is wrong where each site numbers its own patients (1, 2, ...): the note says so."""
    sources, patients = np.asarray(sources), np.asarray(patients)
    seen: dict = {}
    for source, key in zip(sources.tolist(), patients.tolist()):
        if _is_patient_key(key):
            seen.setdefault(key, set()).add(source)
    shared = sum(len(s) > 1 for s in seen.values())
    if not shared:
        return None
    return (f"note: {shared} patient id(s) have records in more than one source and are taken "
            "as one patient each; patient ids must be global (prefix them with the site where "
            "a site numbers its own)")


def cross_domain_plan(sources: Sequence[str], splits: Sequence[str],
                      patients: Sequence[str], log=print) -> list[dict]:
    """For each source with train, val and test records, its head's records (source_rows:
    tested in-domain and on every other source). A patient id found in two sources is noted
    through `log` (shared_patient_note)."""
    sources, splits, patients = np.asarray(sources), np.asarray(splits), np.asarray(patients)
    note = shared_patient_note(sources, patients)
    if note:
        log(note)
    plan = []
    names = sorted(set(sources.tolist()))
    for source in names:
        entry = source_rows(sources, splits, patients, source, [o for o in names if o != source])
        if len(entry["train"]) and len(entry["val"]) and len(entry["in_domain_test"]):
            plan.append(entry)
    return plan


def source_rows(sources, splits, patients, source: str, others: Sequence[str]) -> dict:
    """The records of a head trained on `source`, the cross-domain protocol's one rule: its
    train, val and test splits ("train", "val", "in_domain_test") and, per source of `others`,
    that source's records EXCEPT those of a patient (patient_keys) among the head's training or
    validation records ("out_of_domain"; how many were left out: "left_out"): a patient with
    records in two sources would otherwise be tested on the head that trained on them."""
    sources, splits = np.asarray(sources), np.asarray(splits)
    own = sources == source
    train, val, test = (np.flatnonzero(own & (splits == s)) for s in SPLITS)
    tests = {o: unseen_patients(np.flatnonzero(sources == o), np.r_[train, val], patients)
             for o in others}
    return {"train_source": source, "train": train, "val": val, "in_domain_test": test,
            "out_of_domain": {o: rows for o, (rows, _) in tests.items()},
            "left_out": {o: n for o, (_, n) in tests.items()}}


def unseen_patients(rows: np.ndarray, seen: np.ndarray, patients) -> tuple[np.ndarray, int]:
    """(the records of `rows` whose patient has no record among `seen`, how many were left
    out): an out-of-domain test set without the patients its head trained or selected on."""
    patients = np.asarray(patients)
    keep = ~np.isin(patients[rows], patients[seen])
    return rows[keep], int(np.sum(~keep))


def common_class_macro(in_report: dict, out_report: dict) -> dict:
    """In-domain and out-of-domain macro AUROC over the classes scorable in BOTH, and the drop."""
    names = [n for n, e in in_report["per_class"].items()
             if e["auroc"] is not None and out_report["per_class"][n]["auroc"] is not None]
    if not names:
        return {"classes": [], "in_domain": None, "out_of_domain": None, "drop": None}
    in_auc = scoring.macro_over_scorable([in_report["per_class"][n]["auroc"] for n in names])
    out_auc = scoring.macro_over_scorable([out_report["per_class"][n]["auroc"] for n in names])
    return {"classes": names, "in_domain": in_auc, "out_of_domain": out_auc,
            "drop": in_auc - out_auc}
