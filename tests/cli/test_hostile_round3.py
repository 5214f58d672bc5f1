"""Careless and hostile use, third round: Ctrl-C during a multi-worker `prepare`, exports their
own libraries fail on, records sharing a file name, label CSVs with a byte order mark, duplicate
rows and rows naming no file, complex and too-short arrays, a folder with a comma in its name.
Each case ends in one line (no traceback) and loses nothing a rerun would not redo."""
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from crema_jax.data.cache import shard_writer
from crema_jax.data.reading import read as read_lib

CLI = [os.path.join(os.path.dirname(sys.executable), "crema-jax")]
REPO = pathlib.Path(__file__).resolve().parents[2]


def test_an_interrupted_shard_finishes_its_record_and_writes_nothing(tmp_path, monkeypatch,
                                                                    cinc_sample_dir):
    """In a worker, Ctrl-C arriving mid-read lets that read finish (a KeyboardInterrupt inside
    it could cut an import or a file read short, and the next records were then committed as
    broken); the shard stops before its next record and writes no file."""
    records = [{"record_id": n, "path": str(cinc_sample_dir / n), "labels": [], "split": "train",
                "source": "x", "reader": None} for n in ("E07500", "E07501", "E07502")]
    task = {"out_dir": str(tmp_path), "shard": 0, "num_shards": 1, "records": records,
            "target_fs": 500.0, "preprocess": None, "derive_limb_leads": True,
            "dtype": "float16", "strict": False}
    reads, real_read = [], read_lib.read

    def read_then_interrupted(path, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # arrives while this record is being read
        ecg = real_read(path, *args, **kwargs)
        reads.append(path)
        return ecg

    monkeypatch.setattr(shard_writer.read_lib, "read", read_then_interrupted)
    previous = signal.getsignal(signal.SIGINT)
    try:
        shard_writer.finish_record_on_interrupt()
        with pytest.raises(KeyboardInterrupt):
            shard_writer.build_shard(task)
    finally:
        signal.signal(signal.SIGINT, previous)
        shard_writer._INTERRUPTED.clear()
    assert reads == [records[0]["path"]]      # the read finished, the next never started
    assert list(tmp_path.iterdir()) == []     # no shard, no sidecar, no temporary


def test_ctrl_c_during_prepare_is_one_line_and_the_rerun_has_every_record(tmp_path,
                                                                          cinc_sample_dir):
    out = tmp_path / "cache"
    args = CLI + ["prepare", f"--root={cinc_sample_dir}", f"--out={out}", "--workers=2",
                  "--records_per_shard=2"]
    run = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           start_new_session=True)
    deadline = time.monotonic() + 120
    while not list(out.glob("shard-*.json")) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(run.pid, signal.SIGINT)  # as a terminal's Ctrl-C: every process of the group
    stdout, stderr = run.communicate(timeout=120)
    assert run.returncode == 130, stderr
    assert "Traceback" not in stderr and stderr.strip().splitlines()[-1].endswith(
        "crema-jax prepare: interrupted")
    written = sorted(out.glob("shard-*.json"))
    assert written and len(written) < 25  # it stopped part-way
    for sidecar in written:               # every record of the sample is readable
        assert json.loads(sidecar.read_text())["skipped"] == [], sidecar
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "prepared 50 records, skipped 0"


def _library_failures(folder, cinc_sample_dir):
    """Exports on which pydicom or edfio themselves raise (no RecordError of ours): a DICOM
    ChannelBaseline written with a comma decimal ("0,0", as some European systems write it);
    EDF headers giving a 0-s data record or 0 signals."""
    import wfdb

    from tests.data import clinical_files as cf
    signal_mv = wfdb.rdrecord(str(cinc_sample_dir / "E07500")).p_signal.T.copy()
    cf.write_dicom(folder / "good.dcm", signal_mv, 500.0)
    data = (folder / "good.dcm").read_bytes()
    tag = b":\x00\x13\x02DS\x04\x00"  # (003A,0213) ChannelBaseline, DS, 4 bytes
    assert tag + b"0.0 " in data
    (folder / "comma.dcm").write_bytes(data.replace(tag + b"0.0 ", tag + b"0,0 "))
    cf.write_edf(folder / "edf.edf", signal_mv, 500.0)
    edf = (folder / "edf.edf").read_bytes()
    (folder / "duration0.edf").write_bytes(edf[:244] + b"0       " + edf[252:])
    (folder / "signals0.edf").write_bytes(edf[:252] + b"0   " + edf[256:])
    (folder / "edf.edf").unlink()
    return ["comma.dcm", "duration0.edf", "signals0.edf"]


def test_an_export_its_library_cannot_parse_is_a_counted_skip(tmp_path, cinc_sample_dir):
    folder = tmp_path / "exports"
    folder.mkdir()
    bad = _library_failures(folder, cinc_sample_dir)
    out = tmp_path / "cache"
    done = subprocess.run(CLI + ["prepare", "--layout=clinical_exports", f"--root={folder}",
                                 f"--out={out}", "--workers=1"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "prepared 1 records, skipped 3"
    skipped = json.loads((out / "summary.json").read_text())["skipped"]
    assert {r: s["count"] for r, s in skipped.items()} == {"unreadable": 3}
    examples = json.dumps(skipped)
    assert all(name in examples for name in bad)


def test_records_sharing_a_name_are_told_apart_in_records_txt(tmp_path, cinc_sample_dir,
                                                             sit_checkpoint):
    """Two different ECGs named rec0 in p1/ and p2/: Y.records.txt said "rec0" twice, so rows
    could not be mapped back to files; it now gives each path below the input folder."""
    import shutil

    import numpy as np

    from crema_jax.cli import embed
    from crema_jax.inference.embed import row_names
    for folder, source in (("p1", "E07500"), ("p2", "E07501")):
        (tmp_path / "in" / folder).mkdir(parents=True)
        for ext in (".hea", ".mat"):
            text = (cinc_sample_dir / f"{source}{ext}").read_bytes()
            if ext == ".hea":
                text = text.replace(source.encode(), b"rec0")
            (tmp_path / "in" / folder / f"rec0{ext}").write_bytes(text)
    out = tmp_path / "y.npy"
    embed.COMMAND.run([f"--checkpoint={sit_checkpoint}", f"--input={tmp_path / 'in'}",
                       f"--out={out}"])
    assert (tmp_path / "y.records.txt").read_text().split() == ["p1/rec0", "p2/rec0"]
    rows = np.load(out)
    assert rows.shape[0] == 2 and not np.allclose(rows[0], rows[1])
    # Unique file names keep their plain ids; windows keep their "#k".
    assert row_names(["/a/x", "/b/y"], [0, 1, 1], [-1, 0, 1]) == ["x", "y#0", "y#1"]
    shutil.rmtree(tmp_path / "in")


def test_label_csvs_with_a_bom_duplicates_and_strays(tmp_path, cinc_sample_dir, monkeypatch):
    """A spreadsheet's "CSV UTF-8" starts with a byte order mark, which hid the first column
    (manifest and clinical_exports refused the file); two rows for one file that disagree
    were resolved silently (the last won); rows naming no file were ignored unsaid."""
    import wfdb

    from crema_jax.data.index import clinical_exports, registry
    from tests.data import clinical_files as cf
    signal_mv = wfdb.rdrecord(str(cinc_sample_dir / "E07500")).p_signal.T[:, :1000].copy()
    for name in ("a.dcm", "b.dcm"):
        cf.write_dicom(tmp_path / name, signal_mv, 500.0)
    bom = "\ufeff".encode()
    (tmp_path / "labels.csv").write_bytes(
        bom + b"file,labels\na.dcm,AF\nb.dcm,NORM\nb.dcm,NORM\nmissing.dcm,AF\n")
    monkeypatch.setenv("CREMA_JAX_PATIENT_SALT", "site-secret")
    warned = []
    monkeypatch.setattr(clinical_exports.logging, "warning",
                        lambda msg, *args: warned.append(msg % args))
    index = registry.build_index("clinical_exports", tmp_path, labels="labels.csv")
    assert {r.record_id: r.labels for r in index.records} == {"a.dcm": ("AF",),
                                                              "b.dcm": ("NORM",)}
    assert len(warned) == 1 and "1 row(s) name no file" in warned[0] and "missing.dcm" in \
        warned[0]
    (tmp_path / "labels.csv").write_bytes(b"file,labels\na.dcm,AF\nb.dcm,NORM\na.dcm,NORM\n")
    with pytest.raises(ValueError, match=r"labels\.csv:4: a\.dcm has labels \('NORM',\).*"
                                         r"line 2 gives it others"):
        registry.build_index("clinical_exports", tmp_path, labels="labels.csv")

    manifest = tmp_path / "manifest.csv"
    manifest.write_bytes(bom + f"path,labels\n{cinc_sample_dir / 'E07500'},AF\n".encode())
    index = registry.build_index("manifest", manifest)
    assert [(r.record_id, r.labels) for r in index.records] == [("E07500", ("AF",))]


def test_embed_refuses_complex_and_too_short_arrays(tmp_path, sit_checkpoint, capsys):
    """A complex array lost its imaginary part with a numpy warning only; a 0.12-s array was
    embedded silently where the same ECG as a file is a too_short skip."""
    import numpy as np

    from crema_jax.cli import embed
    rng = np.random.default_rng(0)
    cases = {"complex.npy": (rng.normal(size=(2, 12, 2500)) * (1 + 1j), "real numeric"),
             "short.npy": (rng.normal(size=(2, 12, 30)), "expected at least 2 s")}
    for name, (array, fragment) in cases.items():
        np.save(tmp_path / name, array)
        for raw in ([], ["--raw"]) if name == "complex.npy" else ([],):
            with pytest.raises(SystemExit) as exit_:
                embed.COMMAND.run([f"--checkpoint={sit_checkpoint}",
                                   f"--input={tmp_path / name}", f"--out={tmp_path / 'y.npy'}",
                                   "--fs=250", *raw])
            err = capsys.readouterr().err.strip().splitlines()
            assert exit_.value.code == 1 and len(err) == 1 and fragment in err[0], err
            assert not (tmp_path / "y.npy").exists()


def test_prepare_help_lists_every_layout():
    from crema_jax.cli import prepare
    from crema_jax.data.index import registry
    text = prepare.COMMAND.help()
    assert all(name in text for name in registry.LAYOUTS), text


def test_a_records_folder_with_a_comma_in_its_name_is_one_folder(tmp_path, cinc_sample_dir):
    """`--input="ECG, 2021"` was split at the comma into two paths that do not exist."""
    from crema_jax.data.index.dataset_index import expand_records
    folder = tmp_path / "ECG, 2021"
    folder.mkdir()
    for ext in (".hea", ".mat"):
        (folder / f"E07500{ext}").write_bytes((cinc_sample_dir / f"E07500{ext}").read_bytes())
    assert expand_records(str(folder)) == [str(folder / "E07500")]
    assert expand_records(f"{folder / 'E07500'}") == [str(folder / "E07500")]
    assert expand_records(f"{cinc_sample_dir / 'E07500'},{cinc_sample_dir / 'E07501'}") == [
        str(cinc_sample_dir / "E07500"), str(cinc_sample_dir / "E07501")]


def test_a_rerun_retries_the_records_an_unexpected_error_skipped(tmp_path, cinc_sample_dir,
                                                                 monkeypatch, capsys):
    """A record skipped for an unexpected error (here a MemoryError on its first read: not
    damage of the record's own) is read again by the rerun, which rebuilds its shard."""
    from crema_jax.data.cache import prepare
    root = tmp_path / "records"
    root.mkdir()
    for name in ("E07500", "E07501", "E07502"):
        for ext in (".hea", ".mat"):
            (root / f"{name}{ext}").write_bytes((cinc_sample_dir / f"{name}{ext}").read_bytes())
    real_read = shard_writer.read_lib.read

    def out_of_memory_once(path, *args, **kwargs):
        if path.endswith("E07501"):
            raise MemoryError("cannot allocate")
        return real_read(path, *args, **kwargs)

    kwargs = dict(layout="wfdb_folder", root=str(root), out=str(tmp_path / "cache"), workers=1,
                  records_per_shard=2)
    monkeypatch.setattr(shard_writer.read_lib, "read", out_of_memory_once)
    first = prepare.prepare(**kwargs)
    assert first["records"] == 2 and first["skipped"]["unexpected_error"]["count"] == 1
    monkeypatch.setattr(shard_writer.read_lib, "read", real_read)
    second = prepare.prepare(**kwargs)
    assert second["records"] == 3 and second["skipped"] == {}
    assert "rebuilding 1 shard(s) that skipped records for unexpected errors" in \
        capsys.readouterr().out


def test_a_single_value_flag_given_twice_is_refused(capsys):
    """absl keeps the last value silently: `benchmark --models=m=A --models=f=B` benchmarked f
    alone, `predict --out=a.csv --out=b.csv` wrote b.csv only. Repeatable flags (--roots,
    --layout_option, config overrides) stay repeatable."""
    from crema_jax.cli import benchmark, predict, prepare
    for command, argv, fragment in (
            (benchmark, ["--models=m=/a", "--models=f=/b", "--workdir=/tmp/x"],
             "--models given 2 times; give it once (one comma-separated list)"),
            (predict, ["--checkpoint=/c", "--out=a.csv", "--out=b.csv", "r"],
             "--out given 2 times; give it once"),
            (prepare, ["--root=/r", "--out=/o", "--strict", "--nostrict"],
             "--strict given 2 times")):
        with pytest.raises(SystemExit) as exit_:
            command.COMMAND.run(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert exit_.value.code == 2 and len(err) == 1 and fragment in err[0], err
    args = prepare.COMMAND.parse(["--root=/r", "--out=/o", "--layout_option=a=1",
                                  "--layout_option=b=2"])
    assert args.layout_option == ["a=1", "b=2"]


def test_an_unknown_layout_option_is_one_line_naming_it(tmp_path, cinc_sample_dir, capsys):
    """It was a 25-line TypeError traceback ("unexpected keyword argument 'colour'") in probe,
    compare, prepare and benchmark task files alike: all go through registry.build_index."""
    from crema_jax.cli import prepare
    from crema_jax.data.index import registry
    with pytest.raises(ValueError, match="layout wfdb_folder: unknown option 'colour'; it "
                                         "takes val_fraction, test_fraction, label_names"):
        registry.build_index("wfdb_folder", cinc_sample_dir, colour="blue")
    with pytest.raises(SystemExit) as exit_:
        prepare.COMMAND.run([f"--root={cinc_sample_dir}", f"--out={tmp_path / 'c'}",
                             "--layout_option=label_set=rhythm"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 1 and len(err) == 1 and "unknown option 'label_set'" in err[0]
    assert not (tmp_path / "c").exists()


def test_a_batch_larger_than_the_input_is_cut_to_the_input(tmp_path, cinc_sample_dir,
                                                          sit_checkpoint):
    """A batch was padded to --batch_size: a million for one record is ~120 GB of input."""
    import numpy as np

    from crema_jax.cli import embed
    out = tmp_path / "y.npy"
    embed.COMMAND.run([f"--checkpoint={sit_checkpoint}", f"--input={cinc_sample_dir / 'E07500'}",
                       f"--out={out}", "--batch_size=1000000"])
    assert np.load(out).shape[0] == 1


def test_benchmark_cells_follow_their_dataset_and_never_share_a_file(tmp_path, cinc_sample_dir):
    """A rerun after records were added or removed or a label edited reused every cell of the
    old data (the digest held the dataset's settings only); "rhythm a" and "rhythm_a" (and
    "random:m" and "random_m") shared one cell file, so each rerun recomputed the other's."""
    from crema_jax.evaluate import benchmark, benchmark_tasks
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
        return benchmark.Datasets(suite).fingerprint("d")

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


def test_a_lead_i_model_skips_a_record_without_lead_i(tmp_path, cinc_sample_dir):
    """A record holding V1 alone gave a lead-I model's prediction of an all-zero ECG, without
    a word; it is a no_signal skip naming the record and the lead."""
    import numpy as np
    import wfdb

    from crema_jax.data.pipeline.sources import Reading
    from crema_jax.data.reading.ecg import RecordError
    signal = wfdb.rdrecord(str(cinc_sample_dir / "E07500")).p_signal
    reading = Reading(leads=("I",))
    present = np.zeros(12, bool)
    present[6] = True                                        # V1 only
    with pytest.raises(RecordError) as err:
        reading.element(signal.T.astype(np.float32), 500.0, present, None, path="one_V1")
    assert err.value.reason == "no_signal" and "one_V1" in str(err.value) and "(I)" in str(
        err.value)
    present[0] = True                                        # with lead I: read as before
    out = reading.element(signal.T.astype(np.float32), 500.0, present, None, path="x")
    assert out["lead_present"].tolist() == [True] + [False] * 11
    np.testing.assert_allclose(out["signal"][0], signal[:, 0], rtol=1e-6)
    assert not out["signal"][1:].any()


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


def test_split_fractions_with_folds_and_no_cross_domain_is_refused(tmp_path, cinc_sample_dir,
                                                                   capsys):
    """The folds replace the splits: the fractions were ignored without a word."""
    from crema_jax.cli import probe
    with pytest.raises(SystemExit) as exit_:
        probe.COMMAND.run([f"--root={cinc_sample_dir}", f"--workdir={tmp_path / 'w'}",
                           "--checkpoint=random", "--folds=3", "--split_fractions=0.6,0.2,0.2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 1 and len(err) == 1, err
    assert "--split_fractions with --folds=3: the folds replace the splits" in err[0]
    assert not (tmp_path / "w").exists()


def test_an_unknown_augmentation_is_refused_with_the_config():
    """data.augment.names=('foo',) passed validation and --dry_run, and stopped the run only
    once data loading began, after the compile."""
    from crema_jax import config as config_lib
    from crema_jax import config_checks
    from crema_jax.data.signal.augment import AUGMENTS
    config = config_lib.load_config_file(str(REPO / "configs" / "crema_tiny.py"))
    config.data.augment.names = ("gaussian_noise",)
    config_checks.validate(config)
    config.data.augment.names = ("gaussian_noise", "foo")
    with pytest.raises(ValueError) as err:
        config_checks.validate(config)
    assert str(err.value).startswith("config.data.augment.names=('gaussian_noise', 'foo'): "
                                     f"expected names among {sorted(AUGMENTS)}")
