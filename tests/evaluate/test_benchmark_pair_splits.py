"""benchmark: a dataset with `folds` and a cross-domain task. The pair trains on its train_source's
train split and selects on its val split whatever the folds, and those splits had been read with
no check (the folds switched every split check off): a patient in train and val, or no val
split at all, went through. The checks now run over the splits the tasks read (train and val);
the test split, which neither the pair nor the folds read, is neither required nor warned of.
Patients are checked among the pair's train_source's records (its test source's splits are not
read as splits), and folds are not suggested where the pair would still read the split.

The manifest is written by hand: sources "a" (the pair's train_source) and "b"; patient id and
split per record."""
import csv

import pytest

from crema_jax.evaluate import benchmark_datasets, benchmark_tasks
from tests.evaluate import sample_records

# (source, patient_id, split) per record; labels alternate 1000 / 2000.
ROWS = [("a", "P0", "train"), ("a", "P0", "val"), ("a", "P1", "train"), ("a", "P2", "train"),
        ("a", "P3", "val"), ("a", "P4", "val"), ("a", "P5", "train"), ("a", "P6", "val"),
        ("b", "P7", "train"), ("b", "P8", "train"), ("b", "P9", "val"), ("b", "P10", "val")]
TESTS = [("a", "P12", "test"), ("b", "P13", "test")]   # the test split an in-domain task reads


def _tasks(tmp_path, cinc_sample_dir, rows, *, folds=3, in_domain=True) -> str:
    """A task file over a manifest of `rows`: dataset d with `folds`, the pair a -> b (after an
    in-domain task on d when `in_domain`); returns its path."""
    heads = sample_records.distinct_heads(cinc_sample_dir, len(rows))
    manifest = tmp_path / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "labels", "source", "patient_id", "split"])
        for i, (head, (source, patient, split)) in enumerate(zip(heads, rows)):
            writer.writerow([str(head.with_suffix("")), "1000" if i % 2 else "2000", source,
                             patient, split])
    tasks = ('{"name": "in", "dataset": "d"}, ' if in_domain else "") + \
        '{"name": "pair", "dataset": "d", "train_source": "a", "test_source": "b"}'
    path = tmp_path / "tasks.py"
    path.write_text(f"""import ml_collections
def get_config():
    c = ml_collections.ConfigDict()
    c.datasets = {{"d": {{"layout": "manifest", "root": {str(manifest)!r},
                        "label_type": "multilabel", "folds": {folds}}}}}
    c.tasks = [{tasks}]
    c.protocols = {{"probe": {{}}}}
    return c
""")
    return str(path)


def _load(path):
    return benchmark_datasets.Datasets(benchmark_tasks.load_suite(path), path).get("d")


@pytest.mark.parametrize("folds, in_domain", [(3, True), (0, False), (0, True)])
def test_a_patient_in_the_train_and_val_splits_a_pair_reads_is_refused(
        tmp_path, cinc_sample_dir, folds, in_domain):
    """P0 in a's train and val. No folds suggested: with them the pair still reads a's train and
    val (folds had been suggested to a dataset a pair reads, and gave the same refusal)."""
    path = _tasks(tmp_path, cinc_sample_dir, ROWS + TESTS, folds=folds, in_domain=in_domain)
    heads = sample_records.distinct_heads(cinc_sample_dir, 2)
    with pytest.raises(ValueError) as raised:
        _load(path)
    read, task = ("train/val/test", "in") if in_domain and not folds else (
        "train/val", "in" if in_domain else "pair")
    assert str(raised.value) == (
        f"{tmp_path / 'manifest.csv'}: its own splits put 1 patient(s) in more than one of "
        f"{read} (2 records, e.g. records {heads[0].stem}, {heads[1].stem}): a test score on "
        "patients the head trained or was selected on is inflated; pass task file "
        f"{path}: task '{task}': datasets['d'].split_fractions=0.6,0.2,0.2 (a seeded re-split, "
        "a patient's records in one split)")


def test_a_patient_in_the_splits_of_a_pairs_test_source_is_no_refusal(tmp_path, cinc_sample_dir):
    """P7 in b's train and val: the pair a -> b trains and selects on a's train and val alone,
    and the in-domain task reads no split with folds, so no run reads b's splits; their check
    had stopped a benchmark that used to run. (Without folds the in-domain task reads them.)"""
    rows = [ROWS[0], ("a", "P11", "val")] + ROWS[2:9] + [("b", "P7", "val"), ROWS[10]] + TESTS
    data, _, _ = _load(_tasks(tmp_path, cinc_sample_dir, rows))
    assert data.splits.tolist() == [split for _, _, split in rows]
    assert data.counts["patients_across_splits"] == {"patients": 0, "records": 0,
                                                     "examples": []}
    with pytest.raises(ValueError, match=r"1 patient\(s\) in more than one of train/val/test "):
        _load(_tasks(tmp_path, cinc_sample_dir, rows, folds=0))


@pytest.mark.parametrize("folds", [3, 0])
def test_an_empty_val_split_is_refused_with_no_folds_suggested(tmp_path, cinc_sample_dir, folds):
    """A dataset only a pair reads: with folds it still reads the train and val splits, so
    folds are not suggested (they had been, without folds, and gave the same refusal)."""
    rows = [(source, patient, "train") for source, patient, _ in ROWS]
    path = _tasks(tmp_path, cinc_sample_dir, rows, folds=folds, in_domain=False)
    with pytest.raises(ValueError) as raised:
        _load(path)
    assert str(raised.value) == (
        f"the 'val' split of {tmp_path / 'manifest.csv'} is empty; pass task file {path}: task "
        "'pair': datasets['d'].split_fractions=0.6,0.2,0.2 (a seeded re-split per source)")


@pytest.mark.parametrize("folds", [3, 0])
def test_the_test_split_nothing_reads_is_neither_required_nor_warned_of(
        tmp_path, cinc_sample_dir, capsys, folds):
    """P0 in train and test, and no other test record: with folds (the in-domain task's) or
    with the pair alone, no run reads the test split."""
    rows = [("a", "P0", "train"), ("a", "P0", "test")] + ROWS[2:]
    path = _tasks(tmp_path, cinc_sample_dir, rows, folds=folds, in_domain=bool(folds))
    data, _, _ = _load(path)
    assert data.splits.tolist() == [split for _, _, split in rows]
    assert data.counts["patients_across_splits"] == {"patients": 0, "records": 0,
                                                     "examples": []}
    assert "the test split" not in capsys.readouterr().out


def test_with_folds_alone_no_split_is_read_or_checked(tmp_path, cinc_sample_dir):
    """An in-domain task on a dataset with folds reads no split: P0 in train and val stays."""
    path = _tasks(tmp_path, cinc_sample_dir, ROWS)
    suite = benchmark_tasks.load_suite(path)
    suite["tasks"] = [t for t in suite["tasks"] if not t["train_source"]]
    data, plan, _ = benchmark_datasets.Datasets(suite, path).get("d")
    assert data.counts["patients_across_splits"] is None and plan is not None
