"""benchmark: a mistake in a later task's dataset (a layout, a layout option, a root, a lead set,
a class code) had surfaced only once every earlier task's cells had run, and named flags the
benchmark has not got (--layout, --lead_sets) or called a mistyped class one with too few
positives. Each is now one line naming the task file, the task and the field, before any cell
or feature is computed."""
import pytest

from crema_jax.data.index import dataset_index
from crema_jax.evaluate import benchmark
from crema_jax.runtime import workdir as workdir_lib

# The first task is fine; every case below changes only the second task or its dataset.
TWO_TASKS = """import ml_collections
def get_config():
    c = ml_collections.ConfigDict()
    c.datasets = {"first": {"root": ROOT, "folds": 3, "min_positives": 5},
                  "other": {"layout": "wfdb_folder", "root": ROOT, "min_positives": 5,
                            "folds": 3, "classes": ["427084000"]}}
    c.tasks = [{"name": "first", "dataset": "first"}, {"name": "second", "dataset": "other"}]
    c.protocols = {"probe": {"steps": 5}}
    return c
"""
ROOT = str(dataset_index.sample_data_dir())
LAYOUTS = "['clinical_exports', 'code15', 'manifest', 'mimic_iv_ecg', 'numpy', 'ptbxl', " \
    "'wfdb_folder']"


@pytest.mark.parametrize("old, new, said", [
    ('"layout": "wfdb_folder"', '"layout": "wfdb_foldr"',
     "datasets['other'].layout='wfdb_foldr': unknown dataset layout (did you mean "
     f"'wfdb_folder'?); expected one of {LAYOUTS}"),
    ('"root": ROOT, "min_positives": 5,\n', '"root": ROOT + "x", "min_positives": 5,\n',
     f"datasets['other'].root='{ROOT}x': no such file or folder (give --roots=other=FOLDER "
     "where the data lives)"),
    ('"folds": 3, "classes"', '"folds": 3, "layout_options": {"lable_set": "x"}, "classes"',
     "datasets['other'].layout_options: layout wfdb_folder: unknown option 'lable_set'; it "
     "takes val_fraction, test_fraction, label_names, source"),
    ('"dataset": "other"}', '"dataset": "other", "leads": ["limb 6"]}',
     "leads entry 'limb 6': unknown leads ['limb 6']; expected one of ['12', 'I', 'limb6'] or "
     "'+'-joined names from ('I', 'II', 'III', 'aVR', 'aVL', 'aVF', 'V1', 'V2', 'V3', 'V4', "
     "'V5', 'V6')"),
    ('"classes": ["427084000"]', '"classes": ["42708400"]',
     "datasets['other'].classes: '42708400' is not a class of the dataset: no record is "
     "labelled with it (did you mean '427084000'?); its "),
    ('"classes": ["427084000"]', '"classes": ["55827005"]',   # 3 records of the sample
     "datasets['other'].classes: ['55827005'] have fewer than min_positives=5 positives "
     "(among the training records; among all records with folds); "),
], ids=["layout", "root", "layout_option", "leads", "class_typo", "class_too_rare"])
def test_a_later_tasks_dataset_mistake_stops_the_run_before_any_cell(tmp_path, old, new, said):
    assert old in TWO_TASKS
    path = tmp_path / "tasks.py"
    path.write_text(TWO_TASKS.replace(old, new, 1).replace("ROOT", repr(ROOT)))
    with pytest.raises(ValueError) as raised:
        benchmark.run_benchmark(["r=random"], str(path), str(tmp_path / "bench"))
    message = str(raised.value)
    assert "\n" not in message and message.startswith(
        f"task file {path}: task 'second': {said}"), message
    assert not [p for p in (tmp_path / "bench").rglob("*") if p.is_file()
                and p.name != workdir_lib.WorkdirLock.NAME]   # no cell, no feature


def test_a_dataset_no_task_reads_is_not_checked(tmp_path):
    """An entry of `datasets` that no task names is never loaded, so its root (here one that
    does not exist, and one left at the default "") is not refused; a task's is."""
    from crema_jax.evaluate import benchmark_datasets, benchmark_tasks

    spare = TWO_TASKS.replace(
        '"folds": 3, "classes": ["427084000"]}}',
        '"folds": 3, "classes": ["427084000"]},\n                  "spare": {"root": "/no/such"},'
        ' "blank": {}}').replace("ROOT", repr(ROOT))
    path = tmp_path / "tasks.py"
    path.write_text(spare)
    suite = benchmark_tasks.load_suite(str(path))
    assert {"spare", "blank"} <= set(suite["datasets"])
    benchmark_datasets.check_datasets(suite, str(path))   # no error
    path.write_text(spare.replace('"dataset": "other"}', '"dataset": "spare"}'))
    suite = benchmark_tasks.load_suite(str(path))
    with pytest.raises(ValueError, match=r"task 'second': datasets\['spare'\]\.root='/no/such'"):
        benchmark_datasets.check_datasets(suite, str(path))

