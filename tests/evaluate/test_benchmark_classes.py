"""benchmark: a task file's `classes` define its task, and min_positives applies to them. The
records had been dropped by min_positives over the layout's whole vocabulary BEFORE the list
restricted the classes: a record whose only label was a rare class outside the list was left
out, one whose only label was a frequent class outside it was kept as a negative of every
listed class, so the records evaluated depended on classes the task does not use. Counts here
are worked out by hand from the rows written."""
import csv

import numpy as np
import pytest

from crema_jax.evaluate import benchmark_datasets, benchmark_tasks, datasets
from tests.evaluate import sample_records

A, B, FREQUENT, RARE = "1000", "2000", "3000", "9999"   # FREQUENT and RARE: not in the list
# The rows' labels: A x6 (one with FREQUENT), B x5, FREQUENT alone x2, RARE alone x1, none x1:
# with min_positives=2 over every class, FREQUENT (3 positives) stays and RARE (1) goes.
ROWS = [A] * 5 + [B] * 5 + [RARE, FREQUENT, FREQUENT, "", f"{A};{FREQUENT}"]
TASKS = """import ml_collections
def get_config():
    c = ml_collections.ConfigDict()
    c.datasets = {{"d": {{"layout": "manifest", "root": {root!r}, "folds": 3,
                        "min_positives": 2, "label_type": {label_type!r},
                        "classes": ["{b}", "{a}"]}}}}
    c.tasks = [{{"name": "t", "dataset": "d"}}]
    c.protocols = {{"probe": {{}}}}
    return c
"""


def _manifest(cinc_sample_dir, tmp_path, rows):
    """One row per entry of `rows`, each a distinct signal of the sample (no duplicates
    merged)."""
    heads = sample_records.distinct_heads(cinc_sample_dir, len(rows))
    path = tmp_path / "manifest.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "labels", "record_id"])
        writer.writerows([str(h.with_suffix("")), labels, f"r{i}"]
                         for i, (h, labels) in enumerate(zip(heads, rows)))
    return path


@pytest.fixture
def manifest(cinc_sample_dir, tmp_path):
    return _manifest(cinc_sample_dir, tmp_path, ROWS)


def _datasets(manifest, tmp_path, label_type):
    tasks = tmp_path / "tasks.py"
    tasks.write_text(TASKS.format(root=str(manifest), label_type=label_type, a=A, b=B))
    return benchmark_datasets.Datasets(benchmark_tasks.load_suite(tasks), str(tasks))


def _load(manifest, tmp_path, label_type):
    return _datasets(manifest, tmp_path, label_type).get("d")[0]


def test_a_record_of_other_classes_only_is_a_negative_whatever_their_positives(
        manifest, tmp_path, capsys):
    data = _load(manifest, tmp_path, "multilabel")
    # Every row is evaluated: RARE's record as FREQUENT's, a negative of A and B (it had been
    # left out, 14 records, RARE having fewer than 2 positives among all the layout's classes).
    assert [i.record_id for i in data.infos] == [f"r{i}" for i in range(len(ROWS))]
    assert data.classes == [B, A]   # the task file's order
    expected = np.asarray([[B in row.split(";"), A in row.split(";")] for row in ROWS], float)
    np.testing.assert_array_equal(data.labels, expected)
    assert {k: data.counts[k] for k in ("no_class_left", "not_one_class", "unlabelled",
                                        "other_classes_only")} == {
        "no_class_left": 0, "not_one_class": 0, "unlabelled": 1, "other_classes_only": 3}
    out = capsys.readouterr().out
    assert "records whose classes were all dropped" not in out
    assert "class(es) with fewer positives left out" not in out   # RARE is no class of the task
    assert (f"task file {tmp_path / 'tasks.py'}: task 't': datasets['d'].classes: 3 records "
            "carry only classes outside this list: each is scored as a negative of every "
            "class of the list\n") in out


def test_a_multiclass_task_keeps_the_records_of_exactly_one_listed_class(manifest, tmp_path):
    """Softmax targets: a record without exactly one listed class (RARE alone, FREQUENT alone,
    no label) is left out, counted once, as not_one_class: the rows of A and B, and A;FREQUENT
    stay."""
    data = _load(manifest, tmp_path, "multiclass")
    kept = [i for i, row in enumerate(ROWS) if len({A, B} & set(row.split(";"))) == 1]
    assert len(kept) == 11
    assert [i.record_id for i in data.infos] == [f"r{i}" for i in kept]
    np.testing.assert_array_equal(data.labels.sum(1), np.ones(11))
    assert (data.counts["not_one_class"], data.counts["no_class_left"]) == (4, 0)


def test_a_listed_class_with_too_few_positives_is_refused_not_dropped(manifest, tmp_path):
    tasks = tmp_path / "tasks.py"
    tasks.write_text(TASKS.format(root=str(manifest), label_type="multilabel", a=A, b=RARE))
    with pytest.raises(ValueError) as raised:
        benchmark_datasets.Datasets(benchmark_tasks.load_suite(tasks), str(tasks)).get("d")
    assert str(raised.value).startswith(
        f"task file {tasks}: task 't': datasets['d'].classes: ['{RARE}'] have fewer than "
        "min_positives=2 positives")


def test_a_cell_follows_the_label_type_auto_decides(cinc_sample_dir, tmp_path, monkeypatch):
    """auto is decided from the listed classes: multiclass here, every row having exactly one
    of A and B. The whole vocabulary had decided multilabel (A;FREQUENT has two), over the same
    records, splits and labels, so the dataset digest (part of every cell's spec) was the same
    and a resumed benchmark reused the cells trained under the other label type."""
    path = _manifest(cinc_sample_dir, tmp_path, [A] * 5 + [B] * 5 + [f"{A};{FREQUENT}"])
    now = _datasets(path, tmp_path, "auto")
    new = now.get("d")[0]

    def whole_vocabulary(settings, infos, label_names):   # the rule before
        labels = np.asarray([[c in i.labels for c in label_names] for i in infos], float)
        return ("multiclass" if np.all(labels.sum(1) == 1) else "multilabel"), "vocabulary"

    monkeypatch.setattr(datasets, "decide_label_type", whole_vocabulary)
    before = _datasets(path, tmp_path, "auto")
    old = before.get("d")[0]
    assert (new.label_type, old.label_type) == ("multiclass", "multilabel")
    assert [i.record_id for i in new.infos] == [i.record_id for i in old.infos] == [
        f"r{i}" for i in range(11)]
    assert new.splits.tolist() == old.splits.tolist() and new.classes == old.classes == [B, A]
    np.testing.assert_array_equal(new.labels, old.labels)
    assert now.fingerprint("d") != before.fingerprint("d")
