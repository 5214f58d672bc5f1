"""benchmark: a cross-domain task (train on one source, test on another) had been warned of a
small in-domain test split it never reads, with the hint to use folds, which do not apply to a
pair. A dataset only cross-domain tasks read says nothing of its split; each pair with fewer
than 30 test records says so of its own test set (counted here from the files)."""
import hashlib

from crema_jax.data.index import dataset_index
from crema_jax.evaluate import benchmark_datasets, benchmark_tasks

ROOT = dataset_index.sample_data_dir()
TASKS = f"""import ml_collections
def get_config():
    c = ml_collections.ConfigDict()
    c.datasets = {{"split": {{"root": {str(ROOT)!r}, "label_type": "multilabel",
                            "split_fractions": [0.6, 0.2, 0.2], "classes": ["427084000"]}}}}
    c.tasks = [{{"name": "x", "dataset": "split", "train_source": "ningbo",
                "test_source": "georgia"}}]
    c.protocols = {{"probe": {{}}}}
    return c
"""


def _georgia_records() -> int:
    """The sample's Georgia (E) records, byte-identical signal files counted once; each record
    is its own patient, so none shares a patient with the Ningbo records."""
    return len({hashlib.sha256(p.with_suffix(".mat").read_bytes()).hexdigest()
                for p in ROOT.glob("E*.hea")})


def _loaded(tmp_path, text, capsys) -> tuple[list, str]:
    path = tmp_path / "tasks.py"
    path.write_text(text)
    benchmark_datasets.Datasets(benchmark_tasks.load_suite(path), str(path)).get("split")
    return [line for line in capsys.readouterr().out.splitlines()
            if line.startswith("warning:")], str(path)


def test_a_cross_domain_task_is_warned_of_its_own_test_set_not_of_folds(tmp_path, capsys):
    warnings, _ = _loaded(tmp_path, TASKS, capsys)
    n = _georgia_records()
    assert n == 13
    assert warnings == [
        "warning: the test set of task 'x' (its 'georgia' records, less those of patients in "
        f"the train and val splits of 'ningbo') holds {n} records (fewer than 30): its figures are "
        "mostly noise, as their confidence intervals show; a cross-domain pair tests every such "
        "record (folds do not apply): only more 'georgia' records narrow them"]


def test_an_in_domain_task_on_the_same_dataset_is_still_warned_of_its_split(tmp_path, capsys):
    both = TASKS.replace('    c.tasks = [', '    c.tasks = [{"name": "in", "dataset": "split"}, ')
    warnings, path = _loaded(tmp_path, both, capsys)
    assert len(warnings) == 2
    assert warnings[0].startswith("warning: the test split holds ") and warnings[0].endswith(
        f"records (fewer than 30): its figures are mostly noise, as their confidence intervals "
        f"show; task file {path}: task 'in': datasets['split'].folds=5 tests every record once "
        "(cross-validation)")
    assert warnings[1].startswith("warning: the test set of task 'x' ")
