"""What would make a table lie, at loading: the label type decided before --min_positives drops
a class (records left with no class dropped and counted), and one ECG listed twice (the same
path, or byte-identical signal files under two ids) never in two folds or two splits. Counts
and hashes are computed here from the CSV rows and the files' bytes."""
import csv
import hashlib
import shutil

import numpy as np
import pytest

from crema_jax.evaluate import datasets, folds
from tests.evaluate import sample_records

# The rows' own labels (not the headers'): a one-class-per-record dataset with a rare class.
COMMON, OTHER, RARE = "1000", "2000", "9999"


def _settings(root, **more):
    return {"root": str(root), "cache_dir": "", "layout": "manifest", "layout_options": {},
            "seed": 0, "split_fractions": [0.6, 0.2, 0.2], "min_positives": 1,
            "label_type": "auto", "folds": 0, **more}


def _write(path, rows):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "labels", "record_id"])
        writer.writerows(rows)
    return path


def _signal_hash(path_without_suffix) -> str:
    return hashlib.sha256(open(f"{path_without_suffix}.mat", "rb").read()).hexdigest()


@pytest.fixture
def one_class_manifest(cinc_sample_dir, tmp_path):
    """30 records with distinct signals, one class each: 3 of RARE, the rest COMMON or OTHER."""
    heads, seen = [], set()
    for head in sorted(cinc_sample_dir.glob("*.hea")):
        if _signal_hash(head.with_suffix("")) not in seen and len(heads) < 30:
            seen.add(_signal_hash(head.with_suffix("")))
            heads.append(head)
    labels = [RARE if i < 3 else (COMMON if i % 2 else OTHER) for i in range(len(heads))]
    rows = [[str(h.with_suffix("")), label, h.stem] for h, label in zip(heads, labels)]
    return _write(tmp_path / "manifest.csv", rows), labels


def test_a_class_dropped_by_min_positives_leaves_the_label_type_as_it_was(one_class_manifest,
                                                                            capsys):
    path, labels = one_class_manifest
    data = datasets.load_dataset(_settings(path, min_positives=4, folds=5))
    rare = labels.count(RARE)
    assert rare == 3
    assert data.label_type == "multiclass"  # every row has exactly one class before the drop
    assert data.classes == [COMMON, OTHER]
    assert data.counts["no_class_left"] == rare
    assert len(data.infos) == len(labels) - rare
    assert np.all(data.labels.sum(1) == 1)
    out = capsys.readouterr().out
    assert "label type: multiclass (auto" in out
    # The two counts of the line are records, then classes: each says which it counts.
    assert (f"--min_positives=4: {rare} records whose classes were all dropped (2 of 3 classes "
            "kept) are left out\n") in out
    # The class itself is named (a class with positives in test only had vanished unsaid).
    assert f"--min_positives=4: 1 class(es) with fewer positives left out (e.g. {RARE})" in out


def test_without_a_drop_nothing_is_left_out_and_the_flag_fixes_the_type(one_class_manifest):
    path, labels = one_class_manifest
    data = datasets.load_dataset(_settings(path, folds=5))
    assert data.label_type == "multiclass" and len(data.infos) == len(labels)
    assert data.counts["no_class_left"] == 0
    fixed = datasets.load_dataset(_settings(path, folds=5, min_positives=4,
                                            label_type="multilabel"))
    assert fixed.label_type == "multilabel"
    assert fixed.counts["no_class_left"] == labels.count(RARE)


# Two classes never on one record, with a third that shares records with both.
PAIRED = ["1000;3000", "2000", "1000", "2000;3000"]


@pytest.fixture
def paired_manifest(cinc_sample_dir, tmp_path):
    """20 records with distinct signals labelled PAIRED in turn: a multi-label vocabulary in
    which 1000 and 2000 are mutually exclusive."""
    heads = sample_records.distinct_heads(cinc_sample_dir, 20)
    labels = [PAIRED[i % len(PAIRED)] for i in range(len(heads))]
    rows = [[str(h.with_suffix("")), label, h.stem] for h, label in zip(heads, labels)]
    return _write(tmp_path / "paired.csv", rows), labels


def test_auto_decides_from_the_classes_a_task_lists(paired_manifest, capsys):
    """The two listed classes are one per record (multiclass); the vocabulary, with 3000 on
    half the records, is not."""
    path, labels = paired_manifest
    whole = datasets.load_dataset(_settings(path))
    assert whole.label_type == "multilabel" and whole.classes == ["1000", "2000", "3000"]
    listed = datasets.load_dataset(_settings(path, classes=["1000", "2000"],
                                             flag_prefix="the task file's datasets['d']."))
    assert listed.label_type == "multiclass"
    assert listed.counts["not_one_class"] == 0 and len(listed.infos) == len(labels)
    by_id = {row[2]: row[1] for row in list(csv.reader(open(path)))[1:]}
    expected = [[float("1000" in by_id[i.record_id].split(";")),
                 float("2000" in by_id[i.record_id].split(";"))] for i in listed.infos]
    assert listed.labels.tolist() == expected
    assert ("label type: multiclass (auto: from the 2 classes of the task file's "
            "datasets['d'].classes, before the task file's datasets['d'].min_positives)\n"
            ) in capsys.readouterr().out


def test_one_listed_class_is_a_binary_task_not_a_softmax_of_one(one_class_manifest):
    """Every record has one class of the vocabulary, so the vocabulary alone said multiclass:
    the one listed class then kept only its own records, each a positive of a constant
    softmax."""
    path, labels = one_class_manifest
    data = datasets.load_dataset(_settings(path, classes=[COMMON]))
    assert data.label_type == "multilabel" and data.classes == [COMMON]
    assert len(data.infos) == len(labels) and data.counts["not_one_class"] == 0
    assert int(data.labels.sum()) == labels.count(COMMON) == 14
    assert data.counts["other_classes_only"] == len(labels) - 14


def test_records_with_no_label_are_kept_as_negatives_and_counted(one_class_manifest, tmp_path,
                                                                 capsys):
    """A row with no label (a header without its `# Dx:` line) counts as a negative of every
    class: kept, as CODE-15%'s normal ECGs must be, but said and counted, not silently."""
    path, labels = one_class_manifest
    rows = list(csv.reader(open(path)))[1:]
    for row in rows[3:8]:
        row[1] = ""
    data = datasets.load_dataset(_settings(_write(tmp_path / "some_unlabelled.csv", rows),
                                           label_type="multilabel", folds=5))
    assert data.counts["unlabelled"] == 5 and len(data.infos) == len(labels)
    assert int((data.labels.sum(1) == 0).sum()) == 5
    assert "5 records carry no label of the layout's" in capsys.readouterr().out


@pytest.fixture
def duplicated_manifest(cinc_sample_dir, tmp_path):
    """20 records with their header labels; the first listed twice (two rows, one path), and
    the second copied byte for byte under a new id. (The CinC sample itself holds two records
    with byte-identical signals.)"""
    heads = sorted(cinc_sample_dir.glob("*.hea"))[:20]
    rows = []
    for head in heads:
        dx = [line[5:] for line in head.read_text().splitlines() if line.startswith("# Dx:")]
        rows.append([str(head.with_suffix("")), dx[0].strip().replace(",", ";"), head.stem])
    copy = tmp_path / "copy" / "X99999"
    copy.parent.mkdir()
    shutil.copyfile(heads[1].with_suffix(".mat"), copy.with_suffix(".mat"))
    header = heads[1].read_text().replace(heads[1].stem, copy.name)
    copy.with_suffix(".hea").write_text(header)
    rows += [[rows[0][0], rows[0][1], "again"], [str(copy), rows[1][1], copy.name],
             [rows[2][0], "1234567", "relabelled"]]   # a row that disagrees with the first
    path = _write(tmp_path / "manifest.csv", rows)
    return path, len(rows), len({_signal_hash(row[0]) for row in rows})


def test_a_duplicated_ecg_is_merged_and_never_in_two_folds(duplicated_manifest, capsys):
    path, n_rows, distinct = duplicated_manifest
    assert n_rows - distinct >= 2  # the two made here, and any in the sample
    settings = _settings(path, folds=5, split_fractions=[])
    data = datasets.load_dataset(settings)
    assert data.counts["indexed"] == n_rows
    assert data.counts["duplicates_merged"] == n_rows - distinct
    assert len(data.infos) == distinct
    out = capsys.readouterr().out
    assert f"duplicates: {n_rows - distinct} records repeat an ECG" in out
    # Only the relabelled row disagrees with its kept row: said, not merged unsaid.
    assert ("duplicates: 1 of them give other labels than the row kept (e.g. relabelled); "
            "the kept row's are used") in out
    plan, _ = folds.dataset_plan(data, settings)
    fold_of = {}
    for part in plan:
        for row in part["test"]:
            key = _signal_hash(data.infos[row].path)
            assert key not in fold_of, f"{data.infos[row].record_id} in folds {fold_of[key]}, " \
                                       f"{part['fold']}"
            fold_of[key] = part["fold"]
    assert len(fold_of) == distinct  # every distinct ECG tested once


def test_a_duplicated_ecg_is_never_in_train_and_test(duplicated_manifest):
    path, n_rows, distinct = duplicated_manifest
    data = datasets.load_dataset(_settings(path))
    hashes = np.asarray([_signal_hash(info.path) for info in data.infos])
    assert len(set(hashes.tolist())) == len(hashes) == distinct - data.counts["no_class_left"]
    assert not set(hashes[data.splits == "train"]) & set(hashes[data.splits == "test"])


def test_duplicates_can_be_refused_with_their_count(duplicated_manifest):
    path, n_rows, distinct = duplicated_manifest
    with pytest.raises(ValueError, match=f"{n_rows - distinct} records repeat an ECG listed"):
        datasets.load_dataset(_settings(path, duplicates="refuse"))


@pytest.mark.parametrize("patients, fractions, said", [
    (1, [0.6, 0.2, 0.2], "its 30 records belong to 1 patient(s) (patient_id, else record id), "
                         "and a patient's records stay in one split; evaluating needs records "
                         "of at least 3 patients"),
    (2, [0.6, 0.2, 0.2], "its 30 records belong to 2 patient(s)"),
    (30, [1.0, 0.0, 0.0], "is empty after --split_fractions=1.0,0.0,0.0 (30 records of 30 "
                          "patients); give it a larger fraction"),
])
def test_an_empty_split_says_what_would_fill_it(one_class_manifest, tmp_path, patients,
                                                fractions, said):
    """Every record of one patient: no re-split can fill val and test, and the message said
    to pass the --split_fractions the user had passed."""
    path, _ = one_class_manifest
    rows = list(csv.reader(open(path)))[1:]
    with open(tmp_path / "patients.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "labels", "record_id", "patient_id"])
        writer.writerows(row + [f"P{i % patients}"] for i, row in enumerate(rows))
    with pytest.raises(ValueError, match=r"split of .* (is empty: |is empty after)") as raised:
        datasets.load_dataset(_settings(tmp_path / "patients.csv", split_fractions=fractions))
    assert said in str(raised.value)


def test_a_root_without_records_says_so(tmp_path):
    (tmp_path / "empty").mkdir()
    settings = {**_settings(tmp_path / "empty"), "layout": "wfdb_folder"}
    with pytest.raises(ValueError, match=r"^--root=.*empty: the wfdb_folder layout finds no "
                                         r"record there$"):
        datasets.load_dataset(settings)


@pytest.mark.parametrize("field, value, said", [
    ("min_positives", 1000, "(--config.evals.fewshot_probe.min_positives); "),
    ("split_fractions", (1.0, 0.0, 0.0),
     "is empty after --config.evals.fewshot_probe.split_fractions=1.0,0.0,0.0 ("),
])
def test_the_pretraining_probe_names_its_config_fields(one_class_manifest, field, value, said):
    """The probe inside pretraining had been told to pass the probe command's --min_positives
    and --split_fractions, flags pretrain has not got."""
    from crema_jax.evaluate import evaluators
    from tests.configs import tiny_config

    config = tiny_config()
    opts = config.evals.fewshot_probe
    opts.root, opts.layout = str(one_class_manifest[0]), "manifest"
    opts[field] = value
    with pytest.raises(ValueError) as raised:
        evaluators.FewShotProbe(config, None, {})
    assert said in str(raised.value) and "--folds" not in str(raised.value)


def test_a_small_test_split_is_said_to_be_noise_and_k_folds_are_not(one_class_manifest,
                                                                     capsys):
    """A plain probe of the 50 sample records had reported the macro AUROC of 3 test records
    without a word. The test split's size is counted here from the split column."""
    path, _ = one_class_manifest
    data = datasets.load_dataset(_settings(path))
    n_test = int(np.sum(data.splits == "test"))
    assert 0 < n_test < datasets.SMALL_TEST_SPLIT
    assert (f"warning: the test split holds {n_test} records (fewer than 30): its figures are "
            "mostly noise, as their confidence intervals show; --folds=5 tests every record "
            "once (cross-validation)") in capsys.readouterr().out.splitlines()
    datasets.load_dataset(_settings(path, folds=5))
    assert "test split holds" not in capsys.readouterr().out


@pytest.mark.parametrize("folds", [0, 5])
def test_with_cross_domain_a_small_test_split_is_said_without_the_folds_hint(
        one_class_manifest, capsys, folds):
    """Cross-domain heads test in-domain on the test split, with or without folds: the folds
    hint had been printed to --cross_domain, and with --folds the split went unsaid."""
    path, _ = one_class_manifest
    data = datasets.load_dataset(_settings(path, cross_domain=True, folds=folds))
    n_test = int(np.sum(data.splits == "test"))
    assert 0 < n_test < datasets.SMALL_TEST_SPLIT
    warnings = [line for line in capsys.readouterr().out.splitlines()
                if line.startswith("warning:")]
    assert warnings == [
        f"warning: the test split holds {n_test} records (fewer than 30): its figures are "
        "mostly noise, as their confidence intervals show; --cross_domain's in-domain tests "
        "read it with or without --folds"]


@pytest.mark.parametrize("cross_domain, hint", [
    (False, " or --folds=5 (cross-validation)"),
    (True, ""),   # its heads read the splits with folds too: folds would not fill it
])
def test_an_empty_given_split_suggests_folds_only_where_they_replace_it(
        one_class_manifest, tmp_path, cross_domain, hint):
    path, _ = one_class_manifest
    rows = list(csv.reader(open(path)))[1:]
    with open(tmp_path / "no_test.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "labels", "record_id", "split"])
        writer.writerows(row + ["train" if i % 3 else "val"] for i, row in enumerate(rows))
    with pytest.raises(ValueError) as raised:
        datasets.load_dataset(_settings(tmp_path / "no_test.csv", split_fractions=[],
                                        cross_domain=cross_domain))
    assert str(raised.value) == (
        f"the 'test' split of {tmp_path / 'no_test.csv'} is empty; pass "
        f"--split_fractions=0.6,0.2,0.2 (a seeded re-split per source){hint}")


def test_multiclass_left_with_one_class_by_min_positives_is_refused(one_class_manifest, capsys):
    """min_positives=14 keeps COMMON alone (14 positives; OTHER 13, RARE 3): the records of the
    other two dropped, a softmax over one column had been trained, a constant 1 on every
    record. Refused in one line naming the classes dropped, before any other line of it."""
    path, labels = one_class_manifest
    assert (labels.count(COMMON), labels.count(OTHER), labels.count(RARE)) == (14, 13, 3)
    with pytest.raises(ValueError) as raised:
        datasets.load_dataset(_settings(path, min_positives=14, folds=5))
    assert str(raised.value) == (
        f"--min_positives=14 leaves one class, {COMMON}, and drops the other 2 (fewer "
        f"positives: {OTHER}, {RARE}): a multiclass (softmax) head over one class is a "
        "constant: every record left is its positive; lower --min_positives")
    assert "left out" not in capsys.readouterr().out
    # Under multilabel one class is a binary task: not refused.
    kept = datasets.load_dataset(_settings(path, min_positives=14, folds=5,
                                           label_type="multilabel"))
    assert kept.classes == [COMMON]


def test_multiclass_of_one_listed_class_is_refused(one_class_manifest):
    path, _ = one_class_manifest
    settings = _settings(path, classes=[COMMON], label_type="multiclass",
                         flag_prefix="the task file's datasets['d'].")
    with pytest.raises(ValueError) as raised:
        datasets.load_dataset(settings)
    assert str(raised.value) == (
        f"the task file's datasets['d'].label_type=multiclass with one class, {COMMON}: a "
        "multiclass (softmax) head over one class is a constant: every record left is its "
        "positive; give two classes or more, or the task file's datasets['d'].label_type="
        "multilabel (one class: a binary task)")
