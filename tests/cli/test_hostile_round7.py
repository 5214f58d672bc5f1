"""Careless and hostile datasets, seventh round: layout options of the wrong type, a CSV with a
quote that never closes, arrays of complex or boolean values, an EDF header with a negative
record count, a MIMIC-IV-ECG record list naming one study twice. Each is one line naming the
option or file, or a counted skip; none is read as something else."""
import csv
import json
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest

from crema_jax.data.index import dataset_index, registry
from crema_jax.data.reading import arrays, clinical_formats, read
from crema_jax.data.reading.ecg import RecordError
from crema_jax.data.reading.leads import LEADS
from tests.data import clinical_files

SAMPLE = dataset_index.sample_data_dir()


def _manifest(folder, rows: str) -> str:
    (folder / "manifest.csv").write_text("path,labels\n" + rows)
    return str(folder / "manifest.csv")


@pytest.mark.parametrize("layout, option, said", [
    ("manifest", {"label_names": 5}, 'option label_names=5, expected a list of names, e.g. '
                                     'AF,LBBB or ["AF","LBBB"]'),
    ("manifest", {"val_fraction": "abc"}, "option val_fraction='abc', expected a finite number"),
    ("manifest", {"test_fraction": float("nan")},
     "option test_fraction=nan, expected a finite number"),
    ("ptbxl", {"sampling_rate": 1.5}, "option sampling_rate=1.5, expected an integer"),
    ("ptbxl", {"drop_unlabelled": "yes"}, "option drop_unlabelled='yes', expected true or "
                                          "false"),
    ("code15", {"units": [1, 2]}, "option units=[1, 2], expected a text"),
])
def test_layout_options_of_the_wrong_type_are_named(tmp_path, layout, option, said):
    root = _manifest(tmp_path, f"{SAMPLE}/E07500,AF\n") if layout == "manifest" else tmp_path
    with pytest.raises(ValueError) as raised:
        registry.build_index(layout, root, **option)
    assert str(raised.value) == f"layout {layout}: {said}"


def test_label_names_given_as_text_are_a_list_of_names(tmp_path):
    """label_names=AF,LBBB from a flag is two classes, not the letters A, F, ',', L, B..."""
    root = _manifest(tmp_path, f"{SAMPLE}/E07500,AF\n{SAMPLE}/E07501,LBBB;X\n")
    for value in ("AF,LBBB", ["AF", "LBBB"], ("AF", "LBBB")):
        index = registry.build_index("manifest", root, label_names=value)
        assert index.label_names == ["AF", "LBBB"]
    assert registry.build_index("manifest", root, val_fraction=0).records[0].split in (
        "train", "test")


def test_a_wrong_layout_option_on_the_command_line_is_one_line(tmp_path):
    root = _manifest(tmp_path, f"{SAMPLE}/E07500,AF\n")
    done = subprocess.run([sys.executable, "-m", "crema_jax.main", "prepare", "--layout=manifest",
                           f"--root={root}", f"--out={tmp_path / 'cache'}",
                           "--layout_option=val_fraction=abc"],
                          capture_output=True, text=True, timeout=120,
                          env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 1, done.stderr
    errors = [line for line in done.stderr.splitlines() if "error" in line]
    assert errors == ["crema-jax prepare: error: layout manifest: option val_fraction='abc', "
                      "expected a finite number"], done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "cache").exists()


def test_a_quote_that_never_closes_is_an_error_not_one_swallowing_cell(tmp_path):
    """Read leniently, `"AF` opened a cell holding every following row: 1 record of 4, exit 0."""
    cells = ['"AF', "AF", "AF", "AF"]
    root = _manifest(tmp_path, "".join(f"{SAMPLE}/E0750{k},{cell}\n"
                                       for k, cell in enumerate(cells)))
    with pytest.raises(ValueError, match=r"manifest.csv: not a readable CSV file \(unexpected end "
                                         r"of data; a quote opens a cell that never closes\)"):
        registry.build_index("manifest", root)
    root = _manifest(tmp_path, f'{SAMPLE}/E07500,"AF,LBBB"\n{SAMPLE}/E07501,AF\n')
    index = registry.build_index("manifest", root)
    assert [r.labels for r in index.records] == [("AF", "LBBB"), ("AF",)]


@pytest.mark.parametrize("dtype", [np.complex64, np.bool_, "U4"])
def test_arrays_of_values_that_are_no_real_numbers_are_skipped(tmp_path, dtype):
    """complex -> float64 dropped the imaginary part with a ComplexWarning and went on."""
    values = np.ones((12, 1000)) * (1 + 2j)
    np.save(tmp_path / "x.npy", values.astype(dtype) if dtype != "U4" else values.astype("U4"))
    fmt = arrays.ArrayFormat(fs=500.0, leads=LEADS)
    with pytest.raises(RecordError, match=r"x.npy: array of (complex64|bool|<U4), expected real "
                                          r"numbers") as raised:
        read.read(str(tmp_path / "x.npy"), fmt)
    assert raised.value.reason == "bad_dtype"
    ints = np.random.default_rng(0).integers(-500, 500, (12, 1000)).astype(np.int16)
    np.save(tmp_path / "y.npy", ints)
    np.testing.assert_array_equal(read.read(str(tmp_path / "y.npy"), fmt, target_fs=None,
                                            derive_limb_leads=False).signal, ints)


def _edf(tmp_path, records_field: bytes):
    rng = np.random.default_rng(0)
    stored = clinical_files.write_edf(tmp_path / "x.edf", rng.normal(0, 0.5, (12, 2500)), 500)
    data = bytearray((tmp_path / "x.edf").read_bytes())
    data[236:244] = records_field.ljust(8)
    (tmp_path / "x.edf").write_bytes(bytes(data))
    return tmp_path / "x.edf", stored


def test_an_edf_with_a_negative_record_count_is_refused_and_minus_one_is_read_quietly(tmp_path):
    path, _ = _edf(tmp_path, b"-5")
    with pytest.raises(RecordError, match="EDF header says -5 data records, expected a count or "
                                          "-1") as raised:
        clinical_formats.parse(path)
    assert raised.value.reason == "unreadable"
    path, stored = _edf(tmp_path, b"-1")  # the length is unknown: the file's 5 records count
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        parsed = clinical_formats.parse(path)
    assert [str(w.message) for w in caught] == []
    assert parsed.units == ["uV"] * 12
    np.testing.assert_allclose(parsed.signal.T / 1000.0, stored, rtol=1e-12, atol=1e-12)


def test_a_study_listed_twice_in_mimic_record_list_is_a_counted_skip(tmp_path):
    """The second row's record would get the first study's report and labels."""
    with open(tmp_path / "record_list.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["subject_id", "study_id", "file_name", "ecg_time", "path"])
        for subject, study in ((1000, 5000), (1001, 5000), (1002, 5002)):
            writer.writerow([subject, study, study, "t", f"files/p{subject}/s{study}/{study}"])
    index = registry.build_index("mimic_iv_ecg", tmp_path)
    reasons = [r.reader.reason if r.reader is not None else None for r in index.records]
    assert reasons == [None, "duplicate_study_id", None]
    with pytest.raises(RecordError, match=r"record_list.csv:3: study_id 5000 appears again "
                                          r"\(line 2 is used\)"):
        read.read(index.records[1].path, index.records[1].reader)
    assert json.dumps([r.record_id for r in index.records]) == '["5000", "5000", "5002"]'


# ----------------------------------------------------------------------------- weights
def _crema_file(tmp_path, name: str, change=None, meta_change=None):
    """A tiny SiT exported in the crema layout, its tensors or saved model config changed."""
    import safetensors.numpy

    from crema_jax import config as config_lib
    from crema_jax.export import export_torch as export_lib
    from crema_jax.models import params as params_lib

    cfg = config_lib.default_config()
    cfg.model.size = "tiny"
    params = params_lib.init_params(cfg.model, 0)
    sd = export_lib.build_state_dict(params, cfg.model, layout="crema", include_decoder=False)
    meta = export_lib.resolved_model_config(cfg.model)
    sd = change(sd) if change else sd
    meta.update(meta_change or {})
    path = tmp_path / f"{name}.safetensors"
    safetensors.numpy.save_file(sd, str(path), metadata={"format": "pt",
                                                         "crema_model_config": json.dumps(meta)})
    return path


def _import_fails(tmp_path, capsys, path) -> str:
    from crema_jax.cli import import_torch
    from tests.cli.conftest import assert_one_error_line

    with pytest.raises(SystemExit) as exit_info:
        import_torch.COMMAND.run(["--format=crema", f"--out={tmp_path / 'out'}", str(path)])
    captured = capsys.readouterr()
    assert exit_info.value.code == 1, captured.err
    assert not (tmp_path / "out").exists()
    return assert_one_error_line("import-torch", captured.out, captured.err, str(path))


def test_weights_that_are_nan_or_integers_are_refused_naming_each_tensor(tmp_path, capsys):
    """A NaN file imported with exit 0; embed gave NaN features and compare a verdict."""
    def poison(sd):
        sd = dict(sd)
        key = sorted(sd)[3]
        sd[key] = sd[key].copy()
        sd[key].flat[[0, 5]] = [np.nan, np.inf]
        return sd

    line = _import_fails(tmp_path, capsys, _crema_file(tmp_path, "nan", poison))
    assert "holds unusable weights not finite (1): " in line and "2 NaN or inf values" in line
    ints = _crema_file(tmp_path, "ints", lambda sd: {k: np.round(v * 100).astype(np.int32)
                                                    for k, v in sd.items()})
    line = _import_fails(tmp_path, capsys, ints)
    assert "not floating-point (" in line and ": int32" in line


@pytest.mark.parametrize("field, value, said", [
    ("num_heads", -1, "its model config has config.model.num_heads=-1: expected an integer >= 0"),
    ("patch_size", 0, "its model config has config.model.patch_size=0: expected an integer >= 1"),
])
def test_a_weight_files_model_config_is_checked_before_a_model_is_built(tmp_path, capsys, field,
                                                                        value, said):
    """num_heads=-1 ended in a 98-line reshape traceback, patch_size=0 in a ZeroDivisionError."""
    line = _import_fails(tmp_path, capsys, _crema_file(tmp_path, field, meta_change={
        field: value}))
    assert line.endswith(said), line


def test_a_checkpoint_holding_nan_weights_is_damaged(tmp_path):
    from crema_jax import config as config_lib
    from crema_jax.models import params as params_lib
    from crema_jax.runtime import checkpoint, trees

    cfg = config_lib.default_config()
    cfg.model.size = "tiny"
    params = trees.flatten(params_lib.init_params(cfg.model, 0))
    first = sorted(params)[0]
    params[first] = np.array(params[first], copy=True)
    params[first].flat[0] = np.nan
    checkpoint.save_model_checkpoint(tmp_path / "run", trees.unflatten_like(
        params, params_lib.init_params(cfg.model, 0)), cfg)
    with pytest.raises(checkpoint.DamagedCheckpointError,
                       match=rf"the saved weights hold 1 NaN or inf values in 1 arrays \(first: "
                             rf"{first}\); the run that saved them diverged"):
        config_lib.load_checkpoint(tmp_path / "run")


def test_a_truncated_weight_file_is_one_short_line(tmp_path, capsys):
    """Every tensor past the cut was listed: one 'line' of several KB."""
    path = _crema_file(tmp_path, "whole")
    data = path.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[:len(data) // 2])
    line = _import_fails(tmp_path, capsys, cut)
    header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
    beyond = sum(1 for k, v in header.items() if k != "__metadata__"
                 and v["data_offsets"][1] > len(data) // 2 - 8 - int.from_bytes(data[:8], "little"))
    assert "not a complete safetensors file (truncated?): " in line
    assert f"and {beyond - 3} more tensors" in line and len(line) < 600, line


def test_preview_names_its_mask_flag_and_makes_the_out_folder(tmp_path, capsys):
    """--mask=bogus named config field data.mask.name; --out in a missing folder was an
    errno line naming no flag (embed makes the folder)."""
    from crema_jax.cli import preview
    from tests.cli.conftest import assert_one_error_line

    with pytest.raises(SystemExit) as exit_info:
        preview.COMMAND.run([f"--out={tmp_path / 'a.png'}", "--mask=bogus"])
    captured = capsys.readouterr()
    assert exit_info.value.code == 2
    assert assert_one_error_line("preview", captured.out, captured.err) == (
        "crema-jax preview: error: --mask=bogus: expected one of ['lead_drop', 'random_global', "
        "'random_per_lead', 'time_block']")
    out = tmp_path / "new" / "folder" / "p.png"
    preview.COMMAND.run([f"--out={out}"])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in out.parent.iterdir()) == ["p.png"]   # no temporary left


@pytest.mark.parametrize("flags, said", [
    (["--mask_ratio=0.999"], "flag --mask_ratio=0.999: expected a ratio that leaves a patch "
     "visible (random_per_lead masking of 30 patches a lead hides them all); lower it"),
    (["--mask=time_block", "--mask_ratio=0.99"], "flag --mask_ratio=0.99: expected a ratio that "
     "leaves a patch visible (time_block masking of 30 patches a lead hides them all); lower it"),
])
def test_preview_names_its_mask_ratio_when_it_hides_every_patch(tmp_path, capsys, flags, said):
    """Both had been 'mask ... leaves no visible patch; lower the ratio', exit 1, naming no
    flag, where --mask_ratio=1 is a flag error."""
    from crema_jax.cli import preview
    from tests.cli.conftest import _fails

    line = _fails(preview, [f"--out={tmp_path / 'p.png'}", *flags], capsys, code=2)
    assert line == f"crema-jax preview: error: {said}"
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc is Linux's")
def test_preview_names_an_out_it_cannot_write(capsys):
    """It was '[Errno 2] cannot write /proc/x.png: No such file or directory', naming no flag
    and no remedy."""
    from crema_jax.cli import preview
    from tests.cli.conftest import _fails

    line = _fails(preview, ["--out=/proc/x.png"], capsys)
    assert line == ("crema-jax preview: error: --out=/proc/x.png: cannot write the PNG there (No "
                    "such file or directory); choose a path in a folder you can write to")


def test_embed_of_inputs_that_are_all_unreadable_names_the_input_and_why(tmp_path, capsys):
    """It was 'the dataset yielded no readable records', naming neither."""
    from crema_jax.cli import embed
    from tests.cli.conftest import assert_one_error_line

    folder = tmp_path / "records"
    folder.mkdir()
    (folder / "A.hea").write_text((SAMPLE / "E07500.hea").read_text().replace("E07500", "A"))
    (folder / "A.mat").write_bytes((SAMPLE / "E07500.mat").read_bytes()[:5000])
    with pytest.raises(SystemExit) as exit_info:
        embed.COMMAND.run(["--checkpoint=random", f"--input={folder}",
                           f"--out={tmp_path / 'x.npy'}"])
    captured = capsys.readouterr()
    assert exit_info.value.code == 1, captured.err
    assert assert_one_error_line("embed", captured.out, captured.err) == (
        f"crema-jax embed: error: --input={folder}: no ECG could be read (1 skipped: "
        "truncated_signal 1); nothing written")
    assert not (tmp_path / "x.npy").exists()


def test_an_evaluation_workdir_with_an_earlier_report_says_it_is_replaced(tmp_path):
    """A second probe into the same --workdir replaced report.json, report.md and the plots
    without a word."""
    from crema_jax.evaluate import report

    said = []
    report.workdir_path(str(tmp_path / "new"), log=said.append)
    assert said == []
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "report.json").write_text("{}")
    report.workdir_path(str(tmp_path / "old"), log=said.append)
    assert said == [f"{tmp_path / 'old'}: replacing the report of an earlier evaluation "
                    "there; use a new --workdir to keep it"]
    # A folder where a figure goes: refused before the run (it had failed after replacing the
    # report's other files).
    (tmp_path / "old" / "roc.png").mkdir()
    with pytest.raises(ValueError, match=re.escape(
            f"--workdir={tmp_path / 'old'}: roc.png is a folder, where this command writes a "
            "file")):
        report.workdir_path(str(tmp_path / "old"), log=said.append)


def test_a_damaged_orbax_step_metadata_file_is_not_logged_as_errors(tmp_path, caplog):
    """_CHECKPOINT_METADATA (Orbax's timestamps) is read for nothing of ours: a damaged one
    printed its content on 2 to 4 ERROR lines for a checkpoint that loads."""
    from crema_jax import config as config_lib
    from crema_jax.models import params as params_lib
    from crema_jax.runtime import checkpoint

    cfg = config_lib.default_config()
    cfg.model.size = "tiny"
    step = checkpoint.save_model_checkpoint(tmp_path / "run", params_lib.init_params(cfg.model, 0),
                                            cfg)
    (step / "_CHECKPOINT_METADATA").write_text("{garbage")
    with caplog.at_level("INFO"):
        params, _, loaded = config_lib.load_checkpoint(tmp_path / "run")
    assert loaded == 0 and params
    assert not [r for r in caplog.records if "json parse" in r.getMessage()]


def test_a_checkpoint_read_past_an_incomplete_step_says_which_step(tmp_path, caplog):
    """An interrupted save left step 4 half-written: embed read step 0 without a word."""
    from crema_jax import config as config_lib
    from crema_jax.models import params as params_lib
    from crema_jax.runtime import checkpoint

    cfg = config_lib.default_config()
    cfg.model.size = "tiny"
    step = checkpoint.save_model_checkpoint(tmp_path / "run", params_lib.init_params(cfg.model, 0),
                                            cfg)
    (step.parent / "4" / "params").mkdir(parents=True)   # no commit marker, no config
    with caplog.at_level("WARNING"):
        _, _, loaded = config_lib.load_checkpoint(tmp_path / "run")
    said = [r.getMessage() for r in caplog.records if "incomplete" in r.getMessage()]
    assert loaded == 0
    assert said == [f"{step.parent}: step 4 is incomplete (a save cut short); reading step 0"]


def test_include_decoder_for_a_family_without_one_is_refused():
    """export-torch --include_decoder of a Net1D checkpoint was ignored without a word."""
    from crema_jax.export import export_torch as export_lib
    from crema_jax.models.net1d import default_net1d_config

    with pytest.raises(export_lib.ExportError, match="--include_decoder: a Net1D model has no "
                                                     "decoder"):
        export_lib.build_state_dict({}, default_net1d_config(), layout="ecgfounder",
                                    include_decoder=True)


def test_a_mask_ratio_that_hides_every_patch_is_a_config_error():
    """0.999 passed validation and failed in the data pipeline with a message naming no field.
    By hand: ST-MEM's per-lead masking hides round(0.999 * 30) = 30 of 30 patches a lead."""
    from crema_jax import config_checks
    from tests.configs import tiny_config

    config = tiny_config()
    config.data.mask.ratio = 0.999
    patches = config.data.crop_samples // config.data.patch_size
    with pytest.raises(config_checks.ConfigValueError,
                       match=rf"config.data.mask.ratio=0.999: expected a ratio that leaves a "
                             rf"patch visible \(random_per_lead masking of {patches} patches"):
        config_checks.validate(config)
    config.data.mask.ratio = 0.9
    config_checks.validate(config)


@pytest.mark.parametrize("leads, said", [(("I", "I"), "I named twice"),
                                         (("V1", "II", "V1", "II"), "II+V1 named twice"),
                                         (("I", "X"), "expected names from")])
def test_a_lead_fed_twice_or_unknown_is_a_config_error(leads, said):
    """data.leads=('I', 'I') had passed: one row fed twice, under two lead embeddings."""
    from crema_jax import config_checks
    from tests.configs import tiny_config

    config = tiny_config()
    config.data.leads = leads
    with pytest.raises(ValueError, match="^data.leads: ") as err:
        config_checks.validate(config)
    assert said in str(err.value)
    config.data.leads = ("V1", "II")
    config_checks.validate(config)
