"""Cache record format, stored-dtype precision, and cache -> pipeline == raw -> pipeline."""
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from crema_jax.data import presets
from crema_jax.data.cache import record_format
from crema_jax.data.index import wfdb_folder
from crema_jax.data.pipeline import datasets
from crema_jax.data.pipeline import sources
from crema_jax.data.reading import wfdb_records
from crema_jax.data.signal import preprocess
from tests.data.configs import one_epoch_config


def _preprocessed(path):
    ecg = wfdb_records.read_record(path, target_fs=250.0)
    return preprocess.preprocess(ecg.signal, ecg.fs, presets.preprocessing("crema"),
                                 lead_present=ecg.lead_present), ecg.lead_present


def test_int16_round_trip_bound_and_header():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((12, 2500)) * rng.uniform(0.01, 20, (12, 1))).astype(np.float32)
    x[5] = 0.0
    present = np.ones(12, bool)
    present[[5, 9]] = False
    data = record_format.encode_record(x, present)
    assert len(data) == 16 + 12 * 4 + 12 * 2500 * 2 and data[:4] == b"CRMA"
    out = record_format.decode_record(data)
    assert out["signal"].dtype == np.float32 and out["signal"].shape == (12, 2500)
    np.testing.assert_array_equal(out["lead_present"], present)
    # Half a quantisation step per lead, plus float32 rounding of the decoded product.
    bound = np.abs(x).max(axis=1) * (1 / 65534 + 2 ** -23)
    assert (np.abs(out["signal"] - x).max(axis=1) <= bound).all()
    assert not out["signal"][5].any()
    half = record_format.decode_record(record_format.encode_record(x, present, "float16"))["signal"]
    np.testing.assert_allclose(half, x, rtol=2 ** -11, atol=0)
    with pytest.raises(ValueError, match="not a crema_jax cache record"):
        record_format.decode_record(b"\0" * 64)


def test_int16_beats_float16_on_real_ecgs(cinc_sample_dir):
    """The measurement behind record_format.py's int16 (max abs error after normalisation)."""
    errors = {"int16": [], "float16": []}
    for info in wfdb_folder.wfdb_folder(cinc_sample_dir).records[:10]:
        x, present = _preprocessed(info.path)
        for dtype in errors:
            encoded = record_format.encode_record(x, present, dtype)
            y = record_format.decode_record(encoded)["signal"]
            errors[dtype].append(np.abs(y - x).max())
    assert max(errors["int16"]) < 1e-3 and max(errors["int16"]) * 2 < max(errors["float16"])


@pytest.fixture(scope="module")
def sample_cache(tmp_path_factory, cinc_sample_dir):
    out = tmp_path_factory.mktemp("cache")
    cli = os.path.join(os.path.dirname(sys.executable), "crema-jax")
    result = subprocess.run([cli, "prepare", f"--root={cinc_sample_dir}", f"--out={out}",
                             "--records_per_shard=16", "--workers=1"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return out


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["pretrain", "eval"])
def test_cache_batches_equal_raw_batches(sample_cache, cinc_sample_dir, mode):
    make = datasets.make_pretrain_dataset if mode == "pretrain" else datasets.make_eval_dataset
    raw = list(make(one_epoch_config(root=str(cinc_sample_dir)), process_index=0,
                    process_count=1))
    cached = list(make(one_epoch_config(cache_dir=str(sample_cache)), process_index=0,
                       process_count=1))
    assert len(raw) == len(cached) == (6 if mode == "pretrain" else 7)
    index = wfdb_folder.wfdb_folder(cinc_sample_dir)
    for a, b in zip(raw, cached):
        assert a.keys() == b.keys()
        for key in a:
            if key != "patches":
                np.testing.assert_array_equal(a[key], b[key], err_msg=key)
        for row, i in enumerate(a["index"]):
            if mode == "eval" and not a["valid"][row]:
                continue
            signal, _ = _preprocessed(index.records[int(i)].path)
            step = np.abs(signal).max(axis=1) / 32767  # int16 step of each lead of the record.
            diff = np.abs(a["patches"][row] - b["patches"][row]).max(axis=(0, 2, 3))
            assert (diff <= step / 2 + np.abs(signal).max(axis=1) * 2 ** -23 + 1e-7).all()


@pytest.mark.slow
def test_cache_split_and_settings_checks(sample_cache, cinc_sample_dir):
    train = {info.record_id for info in wfdb_folder.wfdb_folder(cinc_sample_dir).records
             if info.split == "train"}
    source = sources.make_source(one_epoch_config(cache_dir=str(sample_cache), split="train"))
    assert set(source.record_ids) == train and len(source) == len(train)
    assert repr(source) == repr(sources.make_source(one_epoch_config(cache_dir=str(sample_cache),
                                                         split="train")))
    with pytest.raises(ValueError, match="target_fs=500"):
        sources.make_source(one_epoch_config(cache_dir=str(sample_cache), target_fs=500.0))
    cfg = one_epoch_config(cache_dir=str(sample_cache))
    cfg.preprocess.high_hz = 30.0
    with pytest.raises(ValueError, match="rebuild it"):
        sources.make_source(cfg)
    # The peers' paths read NaN and flat leads otherwise than `prepare` did: raw files only.
    for preset, field in (("ecgfounder", "data.nan_policy='interpolate'"),
                          ("stmem", "raw records")):
        cfg = presets.apply(one_epoch_config(cache_dir=str(sample_cache)), preset)
        with pytest.raises(ValueError, match=re.escape(field)):
            sources.make_source(cfg)
    cfg = one_epoch_config(cache_dir=str(sample_cache), flat_leads="keep")
    with pytest.raises(ValueError, match="data.flat_leads='absent'"):
        sources.make_source(cfg)


def test_a_cache_of_other_preprocessing_names_the_fields_and_the_prepare_flag():
    """The refusal had printed the cache's and the data path's 15-field dicts whole."""
    from crema_jax.data import presets
    from crema_jax.data.cache import settings_check

    crema = presets.preprocessing("crema").to_dict()
    wanted = dict(crema, high_hz=20.0, filter_order=3)
    index = {"settings": {"preprocess": crema, "preprocess_preset": "crema",
                          "derive_limb_leads": True, "target_fs": 250.0}}
    with pytest.raises(ValueError) as err:
        settings_check.check_settings(index, "/c", preprocess=wanted)
    assert str(err.value) == (
        "/c: cache built with other preprocessing than data.preprocess (cache "
        f"--preprocess=crema; filter_order: cache {crema['filter_order']!r}, data 3, high_hz: "
        f"cache {crema['high_hz']!r}, data 20.0); rebuild it with `crema-jax prepare`")
    with pytest.raises(ValueError, match=r"rebuild it with `crema-jax prepare "
                                         r"--preprocess=ecgfounder`$"):
        settings_check.check_settings(index, "/c", preprocess=presets.preprocessing(
            "ecgfounder").to_dict())
    settings_check.check_settings(index, "/c", preprocess=dict(crema))   # the same: no error


def test_no_preprocessing_is_checked_and_only_unchecked_settings_pass():
    """data.preprocess=None (no record preprocessing) is a value to check, not "unchecked": a
    cache of preprocessed records is refused for it; UNCHECKED (the default) lets any pass."""
    from crema_jax.data import presets
    from crema_jax.data.cache import settings_check

    index = {"settings": {"preprocess": presets.preprocessing("crema").to_dict(),
                          "preprocess_preset": "crema", "derive_limb_leads": True,
                          "target_fs": 250.0}}
    with pytest.raises(ValueError, match=r"^/c: cache built with other preprocessing than "
                                         r"data.preprocess \(cache --preprocess=crema, data no "
                                         r"record preprocessing\)"):
        settings_check.check_settings(index, "/c", preprocess=None)
    with pytest.raises(ValueError, match=r"^/c: cache built at target_fs=250.0 but "
                                         r"data.target_fs=500.0;"):
        settings_check.check_settings(index, "/c", target_fs=500.0)
    with pytest.raises(ValueError, match=r"^/c: cache built with derive_limb_leads=True but "
                                         r"data.derive_limb_leads=False;"):
        settings_check.check_settings(index, "/c", derive_limb_leads=False)
    settings_check.check_settings(index, "/c")   # nothing asked: nothing refused
    unpreprocessed = {"settings": dict(index["settings"], preprocess=None)}
    settings_check.check_settings(unpreprocessed, "/c", preprocess=None)


def test_array_record_write_failures_become_os_errors():
    """array_record reports a failed system call as a RuntimeError holding strerror's text."""
    import errno

    from crema_jax.data.cache import shard_writer
    full = shard_writer.os_error(RuntimeError(
        "write() failed: No space left on device; writing /c/.s.tmp; at byte 7; Failed to close "
        "chunk_writer"), "/c/.s.tmp")
    assert isinstance(full, OSError) and (full.errno, full.strerror, full.filename) == (
        errno.ENOSPC, "No space left on device", "/c/.s.tmp")
    odd = shard_writer.os_error(RuntimeError("fsync() failed: a reason of its own; x"), "/t")
    assert isinstance(odd, OSError) and odd.errno is None and str(odd) == "a reason of its own: /t"
    bug = RuntimeError("Invalid options: chunk_size:x")
    assert shard_writer.os_error(bug, "/t") is bug
