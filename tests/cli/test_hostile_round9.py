"""Careless and hostile evaluation inputs, ninth round: a benchmark task file whose fields have
the wrong kind or name a value twice, a cross-domain pair of one source, model and task names
that were paths ("..") or another row's ("random:a"), lead sets and label fractions given twice,
a sampling rate no ECG has, a record name holding a newline or a comma, and a batch larger than
the dataset. Each is one line naming the field or flag (exit 2 for a flag), or is read as what
it is."""
import os
import pathlib
import types

import numpy as np
import pytest

from crema_jax.cli import embed, predict, probe
from crema_jax import config as config_lib
from crema_jax.data import synthetic
from crema_jax.evaluate import benchmark_tasks, linear_probe
from crema_jax.models import params as params_lib
from crema_jax.runtime import checkpoint, files
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


@pytest.mark.parametrize("item, said", [
    ("random:a=random:net1d", "names starting with 'random:' are the random-init rows"),
    ("..=/ckpt", "expected NAME=CHECKPOINT"), (".=/ckpt", "expected NAME=CHECKPOINT"),
])
def test_model_names_that_were_paths_or_another_rows_are_refused(item, said):
    """"random:a" shared the added random row's files (both rows printed one model's figure);
    ".." put a model's cells beside the workdir."""
    with pytest.raises(ValueError, match=said):
        benchmark_tasks.parse_models(["a=/ckpt", item])


def test_a_folder_name_is_never_a_path_step():
    for text in ("..", ".", "", "..."):
        name = files.folder_name(text)
        assert name not in ("", ".", "..") and "/" not in name
        assert len({name, files.folder_name(text + "x")}) == 2
    assert files.folder_name("rhythm") == "rhythm" and files.folder_name(".x") == ".x"


@pytest.mark.parametrize("flag, said", [
    ("--lead_sets=", "--lead_sets=: expected one or more distinct lead sets"),
    ("--lead_sets=I+I", "--lead_sets entry 'I+I': I named twice"),
    ("--lead_sets=V1+v1", "--lead_sets entry 'V1+v1': unknown leads ['v1']"),
    ("--lead_sets=I,12,I", "--lead_sets=I,12,I: expected one or more distinct lead sets"),
    ("--label_fractions=1,1.0", "--label_fractions=1,1.0: expected one or more distinct "
                                "fractions"),
    ("--label_fractions=", "--label_fractions=: expected one or more distinct fractions"),
    ("--batch_size=1000000000000", "--batch_size"),
])
def test_evaluation_flags_listing_nothing_or_a_value_twice_are_usage_errors(
        sit_checkpoint, tmp_path, capsys, flag, said):
    _fails(probe, [f"--checkpoint={sit_checkpoint}", f"--root={tmp_path}",
                   f"--workdir={tmp_path / 'w'}", flag], capsys, said, code=2)


def test_embed_refuses_a_rate_no_ecg_has(sit_checkpoint, tmp_path, capsys):
    """--fs=0.03 resampled 5,000 samples to millions and was killed at 24 GB."""
    np.save(tmp_path / "x.npy", np.zeros((1, 12, 5000), np.float32))
    for fs in ("0.03", "49", "10001"):
        _fails(embed, [f"--checkpoint={sit_checkpoint}", f"--input={tmp_path / 'x.npy'}",
                       f"--out={tmp_path / 'y.npy'}", f"--fs={fs}"], capsys,
               f"--fs={fs}: a sampling rate in Hz, expected a finite number in [50, 10000]",
               code=2)


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """Three synthetic WFDB records, two of them copied to odd/: a header file named
    "A<newline>B.hea" (its signal file keeps its name), and a record in a folder named "c,d"."""
    root = tmp_path_factory.mktemp("records")
    paths = [pathlib.Path(p) for p in synthetic.write_synthetic_wfdb(
        root / "plain", 3, fs=500.0, seconds=10.0, seed=5)]
    odd, comma = root / "odd", root / "odd" / "c,d"
    comma.mkdir(parents=True)
    first, second = paths[0], paths[1]
    (odd / "A\nB.hea").write_text(first.with_suffix(".hea").read_text())
    (odd / f"{first.name}.dat").write_bytes(first.with_suffix(".dat").read_bytes())
    (comma / "E1.hea").write_text(second.with_suffix(".hea").read_text().replace(second.name,
                                                                                 "E1"))
    (comma / "E1.dat").write_bytes(second.with_suffix(".dat").read_bytes())
    return root, paths


def test_a_record_name_with_a_newline_stays_on_one_line_of_records_txt(
        sit_checkpoint, records, tmp_path):
    """"A\\nB" took two lines of Y.records.txt, and every later row was named wrongly."""
    root, _ = records
    out = tmp_path / "f.npy"
    assert embed.COMMAND.run([f"--checkpoint={sit_checkpoint}", f"--input={root / 'odd'}",
                              f"--out={out}"]) is None
    lines = out.with_suffix(".records.txt").read_text().split("\n")
    assert len(np.load(out)) == 2 and lines[-1] == "" and len(lines) == 3, lines
    assert sorted(lines[:2]) == ["A\\nB", "E1"], lines


def test_a_record_name_that_is_not_utf8_is_escaped_in_records_txt(sit_checkpoint, records,
                                                                  tmp_path):
    """A file name with the byte 0xff had ended in a UnicodeEncodeError naming no file, Y.npy
    written and Y.records.txt not (or left from the last run)."""
    root, paths = records
    folder = tmp_path / "odd"
    folder.mkdir()
    first = paths[0]
    (folder / os.fsdecode(b"r\xffx.hea")).write_text(first.with_suffix(".hea").read_text())
    (folder / f"{first.name}.dat").write_bytes(first.with_suffix(".dat").read_bytes())
    out = tmp_path / "f.npy"
    assert embed.COMMAND.run([f"--checkpoint={sit_checkpoint}", f"--input={folder}",
                              f"--out={out}"]) is None
    assert len(np.load(out)) == 1
    assert out.with_suffix(".records.txt").read_bytes() == b"r\\xffx\n"


def test_predict_reads_a_record_path_with_a_comma_as_one_path(records, tmp_path, capsys):
    """Positional records were joined with "," and split again: "c,d/E1" became "c" and
    "d/E1", neither of them a record."""
    root, plain = records
    net = config_lib.default_config("net1d")
    net.model.filters, net.model.blocks = [16, 32], [1, 1]
    checkpoint.save_model_checkpoint(tmp_path / "net1d", params_lib.init_params(net.model, 0),
                                     net)
    csv = tmp_path / "p.csv"
    assert predict.COMMAND.run([f"--checkpoint={tmp_path / 'net1d'}", str(plain[2]),
                                str(root / "odd" / "c,d" / "E1"), f"--out={csv}"]) is None
    printed = capsys.readouterr().out
    assert "skipped" not in printed, printed
    rows = csv.read_text().splitlines()[1:]
    assert [r.split(",")[0] for r in rows] == [plain[2].name, "E1"], rows


def test_frozen_features_of_a_small_dataset_use_a_batch_no_larger_than_it(monkeypatch):
    """--batch_size=2048 on 45 records padded every batch to 2,048 ECGs (killed at 23 GB)."""
    seen = {}

    def capture(backbone, leads, *, batch_size, **kwargs):
        seen["batch_size"] = batch_size
        raise StopIteration  # nothing further is needed from the extraction

    monkeypatch.setattr(linear_probe.backbones, "eval_data_config", capture)
    mesh = types.SimpleNamespace(shape={"data": 1, "fsdp": 1})
    data = types.SimpleNamespace(infos=[None] * 45)
    with pytest.raises(StopIteration):
        linear_probe.extract_features(None, data, "12", {"batch_size": 2048, "num_workers": 0,
                                                         "preset": ""}, mesh)
    assert seen["batch_size"] == 45


@pytest.mark.parametrize("samples, reason", [(1, "too_short"), (2, "too_short"),
                                             (5000, "no_signal")])
def test_a_one_sample_record_is_named_too_short_not_signal_less(samples, reason):
    """One sample is flat in every lead: it was called no_signal, two samples too_short."""
    from crema_jax.data.reading.ecg import RecordError, canonical_ecg
    from crema_jax.data.reading.leads import LEADS

    with pytest.raises(RecordError) as raised:
        canonical_ecg(np.full((samples, 12), 0.5), list(LEADS), ["mV"] * 12, 500.0, path="r")
    assert raised.value.reason == reason, str(raised.value)


def test_a_bad_models_flag_is_a_usage_error(tmp_path, capsys):
    from crema_jax.cli import benchmark as benchmark_cli

    _fails(benchmark_cli, ["--models=random:a=random", f"--tasks={tmp_path / 'none.py'}",
                           f"--workdir={tmp_path / 'w'}"], capsys,
           "--models entry 'random:a=random': names starting with 'random:'", code=2)
    assert not (tmp_path / "w").exists()
