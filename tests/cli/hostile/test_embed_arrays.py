"""embed of a .npy array: NaN and Inf samples (counted and repaired, or refused with --raw), an ECG
with no finite sample, a row skipped (the others keep their row numbers); a text file named
.npy, a header announcing terabytes, a FIFO, a scalar, a shape or length no ECG has, complex
values, samples beyond float32 or beyond any ECG's scale; a sampling rate no ECG has, a preset
whose crops do not fit the model. Each is one line naming the input and what was expected, or a
counted skip; nothing is written on error."""
import io
import os
import warnings

import numpy as np
import pytest

from crema_jax.cli import embed
from crema_jax.data.pipeline import skips
from crema_jax.data.reading.ecg import MAX_ABS_MV
from tests.cli.conftest import _fails, assert_one_error_line, run_in_process
from tests.cli.hostile.helpers import _cli, _hashes


def test_nan_and_inf_arrays_are_counted_repaired_and_said(sit_checkpoint, tmp_path, capsys):
    x = np.random.default_rng(0).normal(size=(3, 12, 2500)).astype(np.float32)
    x[0, 2, 100:110] = np.nan
    x[1, 5, 7] = np.inf
    np.save(tmp_path / "x.npy", x)
    before = _hashes(tmp_path / "x.npy")
    embed.COMMAND.run([f"--checkpoint={sit_checkpoint}", f"--input={tmp_path / 'x.npy'}",
                       f"--out={tmp_path / 'y.npy'}"])
    printed = capsys.readouterr().out
    assert "11 non-finite samples (NaN/Inf) in 2 of 3 ECGs, interpolated" in printed
    assert np.isfinite(np.load(tmp_path / "y.npy")).all()
    assert _hashes(tmp_path / "x.npy") == before
    _fails(embed, [f"--checkpoint={sit_checkpoint}", f"--input={tmp_path / 'x.npy'}",
                   f"--out={tmp_path / 'z.npy'}", "--raw"], capsys, "NaN/Inf")
    assert not (tmp_path / "z.npy").exists()


def test_an_ecg_with_no_finite_sample_is_not_counted_as_repaired(sit_checkpoint, tmp_path,
                                                                 capsys):
    """One all-NaN ECG of three, skipped, had been counted as "interpolated": "60005
    non-finite samples ... in 2 of 3 ECGs, interpolated" beside "skipped 1 unreadable
    records"."""
    x = np.random.default_rng(0).normal(size=(3, 12, 5000)).astype(np.float32)
    x[1] = np.nan
    x[2, 4, 10:15] = np.nan
    np.save(tmp_path / "x.npy", x)
    embed.COMMAND.run([f"--checkpoint={sit_checkpoint}", f"--input={tmp_path / 'x.npy'}",
                       f"--out={tmp_path / 'y.npy'}", "--fs=500"])
    printed = capsys.readouterr().out
    assert ("input: 5 non-finite samples (NaN/Inf) in 1 of 3 ECGs, interpolated (a lead with "
            "no finite sample left out); 1 of 3 ECGs hold no finite sample at all (nothing to "
            "repair)") in printed, printed
    assert "skipped 1 unreadable records" in printed, printed
    assert np.load(tmp_path / "y.npy").shape[0] == 2


def test_embed_names_each_rows_ecg_when_an_array_row_is_skipped(tmp_path, sit_checkpoint):
    """Row 1 (all Inf) is skipped: Y held 2 rows and nothing said they were rows 0 and 2."""
    x = np.random.default_rng(0).normal(size=(3, 12, 2500)).astype(np.float32)
    x[1] = np.inf
    np.save(tmp_path / "x.npy", x)
    done = _cli("embed", f"--checkpoint={sit_checkpoint}", f"--input={tmp_path / 'x.npy'}",
                f"--out={tmp_path / 'y.npy'}")
    assert done.returncode == 0, done.stderr
    assert np.load(tmp_path / "y.npy").shape[0] == 2
    assert (tmp_path / "y.records.txt").read_text().split() == ["0", "2"]


def test_a_text_file_named_npy_and_a_bad_rate(sit_checkpoint, tmp_path, capsys):
    (tmp_path / "x.npy").write_text("this is not an array\n")
    _fails(embed, [f"--checkpoint={sit_checkpoint}", f"--input={tmp_path / 'x.npy'}",
                   f"--out={tmp_path / 'y.npy'}"], capsys, str(tmp_path / "x.npy"))
    np.save(tmp_path / "ok.npy", np.zeros((1, 12, 2500), np.float32))
    _fails(embed, [f"--checkpoint={sit_checkpoint}", f"--input={tmp_path / 'ok.npy'}",
                   f"--out={tmp_path / 'y.npy'}", "--fs=abc"], capsys,
           "--fs=abc: a sampling rate in Hz", code=2)
    assert not (tmp_path / "y.npy").exists()


def _npy_claiming(path, shape):
    """A .npy whose header announces `shape` float32 but holds 64 bytes of data."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "<f4", "fortran_order": False,
                                                  "shape": shape})
    path.write_bytes(buffer.getvalue() + bytes(64))


def test_embed_refuses_a_bad_npy_before_allocating_it(tmp_path, sit_checkpoint, capsys):
    huge = tmp_path / "huge.npy"
    _npy_claiming(huge, (100_000_000, 12, 5000))   # 24 TB: np.load raised MemoryError
    fifo = tmp_path / "pipe.npy"
    os.mkfifo(fifo)
    for given, said in ((huge, "is truncated: its header announces (100000000, 12, 5000)"),
                        (fifo, "is a FIFO"), (tmp_path / "none.npy", "does not exist")):
        done = run_in_process(capsys, "embed", f"--checkpoint={sit_checkpoint}",
                              f"--input={given}", f"--out={tmp_path / 'y.npy'}")
        assert done.returncode == 1
        assert_one_error_line("embed", done.stdout, done.stderr, f"--input={given} {said}")
    assert not (tmp_path / "y.npy").exists()


def test_a_scalar_array_is_refused_for_its_shape(sit_checkpoint, tmp_path, capsys):
    """A 0-d .npy had ended in `TypeError: len() of unsized object`."""
    np.save(tmp_path / "scalar.npy", np.float32(3))
    for raw, fragment in (([], "got shape ()"),
                          (["--raw"], "(30 patches of 75 samples), got ()")):
        _fails(embed, [f"--checkpoint={sit_checkpoint}", f"--input={tmp_path / 'scalar.npy'}",
                       f"--out={tmp_path / 'y.npy'}", *raw], capsys, fragment)
    assert not (tmp_path / "y.npy").exists()


@pytest.mark.parametrize("shape, message", [
    ((2, 15, 2500), "expected an array (N, 12, samples) in canonical lead order, or (N, 1, "
     "samples) of lead I, with N >= 1; got shape (2, 15, 2500)"),
    ((2, 12, 10), "ECGs of 10 samples at 250 Hz (0.04 s), expected at least"),
])
def test_an_arrays_shape_is_named_with_its_file(sit_checkpoint, tmp_path, capsys, shape,
                                                message):
    """They had said "error: expected an array ..." and "error: ECGs of 10 samples ...",
    naming no file."""
    x = tmp_path / "x.npy"
    np.save(x, np.zeros(shape, np.float32))
    _fails(embed, [f"--checkpoint={sit_checkpoint}", f"--input={x}",
                   f"--out={tmp_path / 'y.npy'}"], capsys, f"error: --input={x}: {message}")
    assert not (tmp_path / "y.npy").exists()


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


def test_a_float64_sample_beyond_float32_is_a_bad_units_skip_not_a_missing_one(
        sit_checkpoint, tmp_path, capsys, monkeypatch):
    """A float64 1e300 had become Inf in float32 (numpy's overflow warning printed), then been
    interpolated as a missing sample: the ECG embedded as if clean."""
    x = np.random.default_rng(1).standard_normal((3, 12, 2500)) * 0.5
    x[1, 4, 100] = 1e300
    np.save(tmp_path / "x.npy", x)
    reasons = []
    monkeypatch.setattr(skips.logging, "warning", lambda msg, *args: reasons.append(args[1])
                        if msg.startswith("skipping %s [%s]") else None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's overflow warning fails the test
        embed.COMMAND.run([f"--checkpoint={sit_checkpoint}", f"--input={tmp_path / 'x.npy'}",
                           f"--out={tmp_path / 'y.npy'}"])
    captured = capsys.readouterr()
    assert "non-finite" not in captured.out and "skipped 1 unreadable" in captured.out
    assert reasons == ["bad_units"]
    assert np.load(tmp_path / "y.npy").shape[0] == 2
    assert (tmp_path / "y.records.txt").read_text().split() == ["0", "2"]


def test_raw_input_beyond_any_ecgs_scale_is_refused(sit_checkpoint, tmp_path, capsys):
    """--raw of 1e19-scaled noise had written every ECG the features of a flat one, exit 0."""
    x = np.random.default_rng(0).standard_normal((2, 12, 2250)).astype(np.float32)
    x[1, 3, 5] = -1e19
    np.save(tmp_path / "big.npy", x)
    _fails(embed, [f"--checkpoint={sit_checkpoint}", f"--input={tmp_path / 'big.npy'}",
           f"--out={tmp_path / 'y.npy'}", "--raw"], capsys,
           f"raw input holds a sample of magnitude 1e+19, above {MAX_ABS_MV:g}")
    assert not (tmp_path / "y.npy").exists()


def test_embed_refuses_a_rate_no_ecg_has(sit_checkpoint, tmp_path, capsys):
    """--fs=0.03 resampled 5,000 samples to millions and was killed at 24 GB."""
    np.save(tmp_path / "x.npy", np.zeros((1, 12, 5000), np.float32))
    for fs in ("0.03", "49", "10001"):
        _fails(embed, [f"--checkpoint={sit_checkpoint}", f"--input={tmp_path / 'x.npy'}",
                       f"--out={tmp_path / 'y.npy'}", f"--fs={fs}"], capsys,
               f"--fs={fs}: a sampling rate in Hz, expected a finite number in [50, 10000]",
               code=2)


def test_a_preset_whose_crops_do_not_fit_the_sit_is_named(sit_checkpoint, tmp_path, capsys):
    """--preset=ecgfounder (one 5000-sample window) on a SiT had failed in the model with
    "patches have 1 patches per lead; config.model.num_patches is 30"."""
    np.save(tmp_path / "x.npy", np.zeros((1, 12, 5000), np.float32))
    _fails(embed, [f"--checkpoint={sit_checkpoint}", f"--input={tmp_path / 'x.npy'}",
                   f"--out={tmp_path / 'y.npy'}", "--preset=ecgfounder", "--fs=500"], capsys,
           "--preset=ecgfounder cuts crops of 5000 samples in patches of 5000, but this SiT "
           "reads 30 patches of 75 samples (2250) a lead: that data path does not fit this "
           "model (without --preset, the checkpoint's own data path is used)")
    assert not (tmp_path / "y.npy").exists()
