"""benchmark: task files whose fields have the wrong kind, a number out of range or a value listed
twice, a cross-domain pair of one source or a source no record has, a class the training source
lacks; --models entries that were paths ("..") or another row's ("random:a"); cells that must
follow their dataset and never share a file. Each is one line naming the field or flag, or is
scored as what it is."""
import pathlib
import shutil

import pytest

from crema_jax.data.index import dataset_index
from crema_jax.evaluate import benchmark, benchmark_datasets, benchmark_models, benchmark_tasks
from crema_jax.runtime import files
from crema_jax.runtime import workdir as workdir_lib
from tests.cli.conftest import _fails


TASK_FILE = """import ml_collections
def get_config():
    c = ml_collections.ConfigDict()
    c.datasets = {"d": {"root": "/data", "folds": 3}}
    c.tasks = [{"name": "t", "dataset": "d"}]
    c.protocols = {"probe": {}}
    return c
"""


ALL_TWELVE = "V6+V5+V4+V3+V2+V1+aVF+aVL+aVR+III+II+I"   # lead set "12", in another order


def _suite_error(tmp_path, old: str, new: str) -> str:
    path = tmp_path / "tasks.py"
    assert old in TASK_FILE
    path.write_text(TASK_FILE.replace(old, new))
    with pytest.raises(ValueError) as raised:
        benchmark_tasks.load_suite(path)
    message = str(raised.value)
    assert message.startswith(f"task file {path}: ") and "\n" not in message, message
    return message.removeprefix(f"task file {path}: ")


@pytest.mark.parametrize("old, new, said", [
    ('"name": "t"', '"name": 5', "tasks[0].name=5: expected a string"),
    ('"dataset": "d"}', '"dataset": "d", "leads": 12}', "tasks[0].leads=12: expected a list of "
                                                        "strings"),
    ('"dataset": "d"}', '"dataset": "d", "leads": [12]}', "tasks[0].leads=[12]: expected a list "
                                                          "of strings"),
    ('"dataset": "d"}', '"dataset": "d", "label_fractions": 0.5}',
     "tasks[0].label_fractions=0.5: expected a list of numbers"),
    ('"folds": 3', '"folds": 3, "classes": 427084000',
     "datasets['d'].classes=427084000: expected a list of strings"),
    ('"folds": 3', '"folds": 3, "classes": "427084000"',
     "datasets['d'].classes='427084000': expected a list of strings"),
    ('"folds": 3', '"folds": 3, "layout_options": "x=1"',
     "datasets['d'].layout_options='x=1': expected a mapping {key: value}"),
    ('"folds": 3', '"folds": 3, "label_type": "weird"',
     "datasets['d'].label_type='weird': expected one of ['auto', 'multilabel', 'multiclass']"),
    ('c.datasets = {"d": {"root": "/data", "folds": 3}}', 'c.datasets = [1, 2]',
     "`datasets` is a list; expected a mapping {name: {fields}}"),
    ('c.tasks = [{"name": "t", "dataset": "d"}]', 'c.tasks = {"name": "t", "dataset": "d"}',
     "`tasks` is a dict; expected a list of tasks, each a mapping {name, dataset, ...}"),
    ('c.tasks = [{"name": "t", "dataset": "d"}]', 'c.tasks = ["t"]',
     "tasks[0]: 't': expected a mapping of its fields"),
    ('{"probe": {}}', '{"probe": "fast"}', "protocols['probe']='fast': expected a mapping"),
])
def test_a_task_field_of_the_wrong_kind_is_named(tmp_path, old, new, said):
    assert _suite_error(tmp_path, old, new).startswith(said)


@pytest.mark.parametrize("old, new, said", [
    ('"folds": 3', '"folds": 3, "classes": ["427084000", "427084000", "426783006"]',
     "datasets['d'].classes=['427084000', '427084000', '426783006']: a value is listed twice"),
    ('"dataset": "d"}', '"dataset": "d", "leads": ["I", "I"]}',
     "tasks[0].leads=['I', 'I']: a value is listed twice"),
    ('"dataset": "d"}', '"dataset": "d", "leads": ["12", "' + ALL_TWELVE + '"]}',
     f"tasks[0].leads=['12', '{ALL_TWELVE}']: expected distinct lead sets"),
    ('"dataset": "d"}', '"dataset": "d", "label_fractions": [1.0, 1]}',
     "tasks[0].label_fractions=[1.0, 1]: a value is listed twice"),
])
def test_a_value_listed_twice_is_refused(tmp_path, old, new, said):
    """A class listed twice was scored twice in the macro AUROC (0.756 against 0.723)."""
    assert _suite_error(tmp_path, old, new).startswith(said)


def test_a_cross_domain_pair_of_one_source_is_refused(tmp_path):
    """train_source == test_source tested on the training records (0.937 against 0.570)."""
    said = _suite_error(tmp_path, '"dataset": "d"}', '"dataset": "d", "train_source": "georgia",'
                                                     ' "test_source": "georgia"}')
    assert said.startswith("task 't': train_source and test_source are both 'georgia'")


SPLIT_TASKS = """import ml_collections
def get_config():
    c = ml_collections.ConfigDict()
    c.datasets = {"folds": {"root": ROOT, "folds": 3, "min_positives": 5,
                            "layout_options": {"source": "all"}},   # extracted first
                  "split": {"root": ROOT, "split_fractions": [0.6, 0.2, 0.2]}}
    c.tasks = [{"name": "in", "dataset": "folds"},
               {"name": "x", "dataset": "split", "train_source": TRAIN, "test_source": TEST}]
    c.protocols = {"probe": {"steps": 5}}
    return c
"""
# CinC 2021's published record prefixes and the sources they name, written out here.
CINC_TABLE = ("A cpsc2018, Q cpsc2018_extra, I incart, S ptb, HR ptbxl, E georgia, JS ningbo")


def _split_tasks(tmp_path, root, train: str, test: str) -> pathlib.Path:
    path = tmp_path / "tasks.py"
    path.write_text(SPLIT_TASKS.replace("ROOT", repr(str(root))).replace(
        "TRAIN", repr(train)).replace("TEST", repr(test)))
    return path


def test_a_source_no_record_has_is_refused_before_any_feature_is_extracted(tmp_path):
    """test_source "E" (the prefix of georgia's records) matched no record: the run stopped only
    after extracting every model's features (here: the first task's, on another dataset)."""
    root = dataset_index.sample_data_dir()   # sources georgia (E...), ningbo (JS...), ptbxl (HR...)
    path = _split_tasks(tmp_path, root, "ningbo", "E")
    with pytest.raises(ValueError) as raised:
        benchmark.run_benchmark(["r=random"], str(path), str(tmp_path / "bench"))
    assert str(raised.value) == (
        f"task file {path}: task 'x': test_source='E' is not a source of dataset 'split' (its "
        "sources: georgia, ningbo, ptbxl); 'E' is a CinC 2021 record prefix: the source of its "
        f"records is 'georgia' (prefix and source: {CINC_TABLE})")
    assert not [p for p in (tmp_path / "bench").rglob("*") if p.is_file()
                and p.name != workdir_lib.WorkdirLock.NAME]   # no feature, no cell
    path = _split_tasks(tmp_path, root, "nowhere", "georgia")   # no prefix: no table
    with pytest.raises(ValueError) as raised:
        benchmark_datasets.Datasets(benchmark_tasks.load_suite(path), path).get("split")
    assert str(raised.value) == (f"task file {path}: task 'x': train_source='nowhere' is not a "
                                 "source of dataset 'split' (its sources: georgia, ningbo, ptbxl)")


def _renamed_copy(record: pathlib.Path, folder: pathlib.Path, name: str) -> None:
    """A WFDB record under another name: its header's record and signal-file names replaced."""
    folder.mkdir(parents=True, exist_ok=True)
    header = record.with_suffix(".hea").read_text().replace(record.name, name)
    (folder / f"{name}.hea").write_text(header)
    shutil.copyfile(record.with_suffix(".mat"), folder / f"{name}.mat")


def test_sources_named_after_folders_a_and_e_are_sources_like_any_other(tmp_path):
    """Records whose ids carry no CinC prefix take their folder's name as their source: a
    private dataset in folders A/ and E/ had been refused as if A and E were CinC prefixes."""
    sample = dataset_index.sample_data_dir()
    for folder, prefix in (("A", "JS"), ("E", "E")):   # A/ holds what were ningbo records
        for k, head in enumerate(sorted(sample.glob(f"{prefix}*.hea"))[:12]):
            _renamed_copy(head.with_suffix(""), tmp_path / "data" / folder, f"rec{folder}{k:02d}")
    suite = benchmark_tasks.load_suite(_split_tasks(tmp_path, tmp_path / "data", "A", "E"))
    data = benchmark_datasets.Datasets(suite).get("split")[0]
    assert sorted(set(data.sources.tolist())) == ["A", "E"]
    assert all(i.record_id.startswith(f"rec{s}") for i, s in zip(data.infos, data.sources))


def _task_file(tmp_path, root, extra: str) -> pathlib.Path:
    path = tmp_path / "tasks.py"
    path.write_text(
        "import ml_collections\n\ndef get_config():\n    c = ml_collections.ConfigDict()\n"
        f"    c.datasets = {{'d': {{'root': {str(root)!r}}}}}\n"
        "    c.tasks = [{'name': 't', 'dataset': 'd'}]\n"
        "    c.protocols = {'probe': {}}\n" + extra + "    return c\n")
    return path


@pytest.mark.parametrize("extra, said", [
    ("    c.bootstrap = float('nan')\n", "bootstrap=nan: expected an integer in [1, 100000]"),
    ("    c.bootstrap = -3\n", "bootstrap=-3: expected an integer in [1, 100000]"),
    ("    c.batch_size = 0\n", "batch_size=0: expected an integer in [1, 65536]"),
    ("    c.alpha = 1.0\n", "alpha=1.0: expected a finite number in (0, 1)"),
    ("    c.tasks = [{'name': 't', 'dataset': 'd', 'label_fractions': [0.0]}]\n",
     "tasks 't': label_fractions=[0.0]: each expected a finite number in (0, 1]")])
def test_a_task_files_numbers_are_checked(tmp_path, extra, said):
    path = _task_file(tmp_path, tmp_path, extra)
    with pytest.raises(ValueError) as raised:
        benchmark_tasks.load_suite(path)
    assert str(raised.value) == f"task file {path}: {said}"


@pytest.mark.parametrize("protocol, fields, said", [
    ("probe", {"steps": -5}, "protocols['probe'].steps=-5: expected an integer >= 1"),
    ("probe", {"l2_grid": [float("nan")]}, "protocols['probe'].l2_grid=[nan]: expected"),
    ("mlp", {"learning_rate": 0.0}, "protocols['mlp'].learning_rate=0.0: expected a finite"),
    ("finetune", {"drop_path": 1.0}, "protocols['finetune'].drop_path=1.0: expected"),
    # Past int32 step counts: an OverflowError traceback in the first cell.
    ("finetune", {"warmup_epochs": 1e9}, "protocols['finetune'].warmup_epochs=1000000000.0: "
     "expected a finite number in [0, 1000000]"),
    ("finetune", {"epochs": 1000, "steps_per_epoch": 3_000_000},
     "protocols['finetune'].epochs=1000 x protocols['finetune'].steps_per_epoch=3000000 = "
     "3000000000 optimizer steps: expected at most 2147483647 (steps are counted in int32)"),
    # A null where the default is a number: int(None), a TypeError traceback, had been the
    # first cell's error. Only fields whose default is null (the data path's) may be null.
    ("finetune", {"epochs": None}, "protocols['finetune'].epochs=None: expected an integer in "
     "[1, 1000000]"),
    ("finetune", {"warmup_epochs": None}, "protocols['finetune'].warmup_epochs=None: expected "
     "a finite number in [0, 1000000]"),
    ("finetune", {"steps_per_epoch": None}, "protocols['finetune'].steps_per_epoch=None: "
     "expected an integer in [0, 2147483647]"),
    ("probe", {"steps": None}, "protocols['probe'].steps=None: expected an integer >= 1")])
def test_a_task_files_protocol_numbers_are_checked(protocol, fields, said):
    with pytest.raises(ValueError, match=r"^task file t\.py: " + __import__("re").escape(said)):
        benchmark_tasks.recipe(fields, protocol, "t.py")


def test_a_null_is_allowed_where_the_default_is_the_data_paths():
    got = benchmark_tasks.recipe({"layer_decay": None, "drop_path": None}, "finetune", "t.py")
    assert got["layer_decay"] is None and got["drop_path"] is None


def test_a_cross_domain_class_the_training_source_lacks_is_not_scored():
    """Ningbo had no record of a class: its Georgia AUROC (noise: no head ever learnt it) was
    scored and ranked. Such a class is left out of the cell's predictions, and named."""
    import types

    import numpy as np

    from crema_jax.evaluate import benchmark
    from crema_jax.evaluate.benchmark_tasks import Column
    rng = np.random.default_rng(0)
    sources = np.array(["ningbo"] * 12 + ["georgia"] * 6)
    splits = np.array(["train"] * 8 + ["val"] * 4 + ["test"] * 6)
    labels = np.zeros((18, 3), np.float32)
    labels[[0, 3, 8, 13], 0] = 1                     # class a: in both sources
    labels[[1, 2, 9, 14], 2] = 1                     # class c: in both
    labels[[12, 15], 1] = 1                          # class b: Georgia only
    data = types.SimpleNamespace(sources=sources, splits=splits, labels=labels,
                                 classes=["a", "b", "c"])
    seen = {}

    def fit_predict(train, val, tests):
        seen["train"] = train
        test = tests["test"]
        return {"info": {}, "val": {"probs": rng.random((len(val), 3)), "labels": labels[val]},
                "tests": {"test": {"probs": rng.random((len(test), 3)),
                                   "labels": labels[test], "rows": test,
                                   "ids": test.astype(str)}}}

    column = Column("x", "x", "d", "12", 1.0, "ningbo", "georgia")
    fields, pred, learnt = benchmark._cross_domain_cell(fit_predict, data, column, seed=0)
    assert learnt.tolist() == [True, False, True]
    assert fields["classes_without_train_positives"] == ["b"]
    assert pred["probs"].shape == (6, 2) and pred["labels"].tolist() == labels[12:][:, [0, 2]] \
        .tolist()
    assert set(seen["train"]) <= set(range(8))
    assert fields["out_of_domain_left_out"] == {"georgia": 0}
    # Per test source, as report.json's cross_domain entries hold it (it had been a bare int):
    # Georgia's record 13 is the patient of Ningbo's training record 0.
    patients = np.array([f"p{i}" for i in range(18)])
    patients[13] = "p0"
    fields, pred, _ = benchmark._cross_domain_cell(fit_predict, data, column, seed=0,
                                                   groups=patients)
    assert fields["out_of_domain_left_out"] == {"georgia": 1} and len(pred["probs"]) == 5


def test_a_cross_domain_cell_with_no_class_to_learn_says_so_before_training():
    """A training source whose records hold no class with both a positive and a negative: the
    cell is an error naming the task and the source, raised before any head is trained (the
    head had been trained first; probe --cross_domain leaves such a source out, saying so)."""
    import types

    import numpy as np

    from crema_jax.evaluate import benchmark
    from crema_jax.evaluate.benchmark_tasks import Column
    sources = np.array(["ningbo"] * 12 + ["georgia"] * 6)
    splits = np.array(["train"] * 8 + ["val"] * 4 + ["test"] * 6)
    labels = np.zeros((18, 2), np.float32)
    labels[:8, 0] = 1                                # class a: every Ningbo training record
    labels[[9, 13], 1] = 1                           # class b: none of them
    data = types.SimpleNamespace(sources=sources, splits=splits, labels=labels,
                                 classes=["a", "b"])
    trained = []
    column = Column("x", "pair", "d", "12", 1.0, "ningbo", "georgia")
    with pytest.raises(ValueError) as raised:
        benchmark._cross_domain_cell(lambda *args: trained.append(args), data, column, seed=0)
    assert str(raised.value) == ("task 'pair': no class has both positives and negatives in the "
                                 "8 training records of 'ningbo': the head has nothing to learn")
    assert trained == []


@pytest.mark.parametrize("item, said", [
    ("random:a=random:net1d", "names starting with 'random:' are the random-init rows"),
    ("..=/ckpt", "expected NAME=CHECKPOINT"), (".=/ckpt", "expected NAME=CHECKPOINT"),
])
def test_model_names_that_were_paths_or_another_rows_are_refused(item, said):
    """"random:a" shared the added random row's files (both rows printed one model's figure);
    ".." put a model's cells beside the workdir."""
    with pytest.raises(ValueError, match=said):
        benchmark_models.parse_models(["a=/ckpt", item])


def test_a_bad_models_flag_is_a_usage_error(tmp_path, capsys):
    from crema_jax.cli import benchmark as benchmark_cli

    _fails(benchmark_cli, ["--models=random:a=random", f"--tasks={tmp_path / 'none.py'}",
                           f"--workdir={tmp_path / 'w'}"], capsys,
           "--models entry 'random:a=random': names starting with 'random:'", code=2)
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("name, text, said", [
    ("none.py", None, "no such file"), ("", None, "a folder; expected a Python file"),
    ("bad.py", "def get_config(:\n", "SyntaxError: "),
    ("empty.py", "", "defines no get_config()"),
])
def test_a_task_file_that_does_not_load_is_named_with_the_tasks_flag(tmp_path, capsys, name,
                                                                     text, said):
    """A missing --tasks file had said "config file none.py: no such file", naming no flag."""
    from crema_jax.cli import benchmark as benchmark_cli

    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    line = _fails(benchmark_cli, ["--models=a=random", f"--tasks={path}",
                                  f"--workdir={tmp_path / 'w'}"], capsys)
    assert line.startswith(f"crema-jax benchmark: error: --tasks: config file {path}: {said}")
    assert not (tmp_path / "w").exists()


def test_the_task_file_is_loaded_once(tmp_path, capsys):
    """The command loaded --tasks to name the flag in a load error, and run_benchmark loaded it
    again: the user's get_config() ran twice."""
    from crema_jax.cli import benchmark as benchmark_cli

    calls = tmp_path / "calls.txt"
    path = tmp_path / "tasks.py"
    path.write_text(TASK_FILE.replace("def get_config():\n", "def get_config():\n    open("
                                      f"{str(calls)!r}, 'a').write('called\\n')\n"))
    _fails(benchmark_cli, ["--models=a=random", f"--tasks={path}",
                           f"--workdir={tmp_path / 'w'}"], capsys, "root='/data'")
    assert calls.read_text() == "called\n"


def test_a_folder_name_is_never_a_path_step():
    for text in ("..", ".", "", "..."):
        name = files.folder_name(text)
        assert name not in ("", ".", "..") and "/" not in name
        assert len({name, files.folder_name(text + "x")}) == 2
    assert files.folder_name("rhythm") == "rhythm" and files.folder_name(".x") == ".x"


def test_benchmark_cells_follow_their_dataset_and_never_share_a_file(tmp_path, cinc_sample_dir):
    """A rerun after records were added or removed or a label edited reused every cell of the
    old data (the digest held the dataset's settings only); "rhythm a" and "rhythm_a" (and
    "random:m" and "random_m") shared one cell file, so each rerun recomputed the other's."""
    from crema_jax.evaluate import benchmark_datasets, benchmark_tasks
    from crema_jax.runtime import files
    root = tmp_path / "data"
    root.mkdir()
    for k in range(10):
        for ext in (".hea", ".mat"):
            (root / f"E075{k:02d}{ext}").write_bytes(
                (cinc_sample_dir / f"E075{k:02d}{ext}").read_bytes())
    tasks = tmp_path / "tasks.py"
    tasks.write_text("import ml_collections\ndef get_config():\n    c = ml_collections."
                     f"ConfigDict()\n    c.datasets = {{'d': {{'root': {str(root)!r}, "
                     "'folds': 3}}\n"
                     "    c.tasks = [{'name': 't', 'dataset': 'd'}]\n"
                     "    c.protocols = {'probe': {}}\n    return c\n")

    def digest():
        suite = benchmark_tasks.load_suite(tasks)
        return benchmark_datasets.Datasets(suite).fingerprint("d")

    first = digest()
    assert digest() == first                                  # the same data, the same digest
    header = root / "E07501.hea"   # a class it lacks, which other records have
    header.write_text(header.read_text().replace("# Dx: ", "# Dx: 426177001,", 1))
    relabelled = digest()
    assert relabelled != first
    for ext in (".hea", ".mat"):                              # a record removed
        (root / f"E07502{ext}").unlink()
    assert digest() not in (first, relabelled)
    paths = {benchmark.cell_path(tmp_path, m, c, "probe")
             for m in ("m", "random:m", "random_m") for c in ("rhythm a", "rhythm_a")}
    assert len(paths) == 6
    assert benchmark.cell_path(tmp_path, "m", "rhythm_a", "probe") == \
        tmp_path / "cells" / "m" / "rhythm_a" / "probe.npz"    # plain names keep their paths
    assert files.folder_name("rhythm a").startswith("rhythm_a-")
