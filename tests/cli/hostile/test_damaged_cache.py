"""A prepared cache that is damaged, or no cache: with one bit of a shard flipped, pretrain (a
`crema-jax` child process under a timeout and an address-space limit) stops in one line naming
the shard, or skips and counts the record with --config.data.skip_damaged_cache_records; the
evaluation commands' features stop or skip the same way with --skip_damaged_cache_records. A
cache_dir that is a file is named as such. The cache is never modified (sha256). Two shards
swapped: probe stops in one line naming the shard and the `prepare` rerun, which mends it."""
import os
import shutil

import numpy as np
import pytest

from crema_jax.data.cache import record_format
from tests.cli.conftest import run_in_process
from tests.cli.hostile.helpers import SAMPLE, TINY, _crema_jax, _hashes, _one_error_line


@pytest.fixture(scope="module")
def flipped_cache(tmp_path_factory):
    """A cache of 8 records in 2 shards with one bit of record 1 of shard 0 flipped."""
    records = tmp_path_factory.mktemp("records")
    for name in sorted(os.listdir(SAMPLE))[:16]:
        shutil.copyfile(SAMPLE / name, records / name)
    out = tmp_path_factory.mktemp("cache") / "cache"
    result = _crema_jax("prepare", f"--root={records}", f"--out={out}", "--workers=1",
                        "--records_per_shard=4", timeout_s=240)
    assert result.returncode == 0, result.stderr[-3000:]
    shard = out / (record_format.shard_name(0, 2) + ".arrayrecord")
    data = bytearray(shard.read_bytes())
    data[64 + 3 * 60_000 // 2] ^= 0x10     # inside record 1 (records are ~60 kB each)
    shard.write_bytes(bytes(data))
    return out


def test_pretrain_stops_on_a_damaged_cache_naming_the_shard(flipped_cache, tmp_path):
    before = _hashes(flipped_cache)
    workdir = tmp_path / "run"
    common = [f"--config={TINY}", f"--workdir={workdir}",
              f"--config.data.cache_dir={flipped_cache}", "--config.data.split=",
              "--config.train.global_batch_size=8", "--config.train.num_steps=2"]
    result = _crema_jax("pretrain", *common, timeout_s=400, memory_gib=12.0)
    shard = flipped_cache / (record_format.shard_name(0, 2) + ".arrayrecord")
    _one_error_line(result, "pretrain", str(shard), "hash mismatch", "crema-jax prepare",
                    "--config.data.skip_damaged_cache_records=true")
    assert _hashes(flipped_cache) == before


def test_pretrain_skips_and_counts_damaged_records_with_the_flag(flipped_cache, tmp_path):
    before = _hashes(flipped_cache)
    workdir = tmp_path / "run"
    result = _crema_jax("pretrain", f"--config={TINY}", f"--workdir={workdir}",
                        f"--config.data.cache_dir={flipped_cache}", "--config.data.split=",
                        "--config.train.global_batch_size=8", "--config.train.num_steps=2",
                        "--config.data.skip_damaged_cache_records=true",
                        f"--config.data.root={tmp_path / 'raw'}", timeout_s=400,
                        memory_gib=12.0)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "step 2/2" in result.stdout
    # The run's first line names what it reads, and the root beside the cache it does not.
    assert result.stdout.splitlines()[0] == (
        f"data: 8 ECGs from the cache {flipped_cache} (data.root={tmp_path / 'raw'} not read)")
    shard = flipped_cache / (record_format.shard_name(0, 2) + ".arrayrecord")
    assert f"skipping {shard}#1 [damaged_cache_record]" in result.stderr
    assert _hashes(flipped_cache) == before


def test_probe_features_of_a_damaged_cache_stop_or_skip_with_the_flag(flipped_cache):
    """The evaluation commands read a cache through the same source: without
    --skip_damaged_cache_records a damaged shard stops them naming that flag; with it, every
    record but the damaged one has its features (tiny random SiT, in this process; the flag is
    on probe's, finetune's and compare's --help: tests/cli/test_command.py)."""
    import jax

    from crema_jax.data.cache.source import DamagedCacheError
    from crema_jax.evaluate import datasets, frozen_features
    from crema_jax.inference import backbones
    from crema_jax.runtime import mesh as mesh_lib

    before = _hashes(flipped_cache)
    settings = {"root": "", "cache_dir": str(flipped_cache), "seed": 0, "split_fractions": [],
                "folds": 3,
                "min_positives": 1, "label_type": "auto", "batch_size": 8, "num_workers": 0,
                "preset": ""}
    backbone = backbones.load("random", backbone="sit", model_size="tiny")
    mesh = mesh_lib.make_mesh(devices=jax.devices()[:1])
    data = datasets.load_dataset(settings)
    damaged = data.infos.index(next(i for i in data.infos if i.meta["cache_row"] == 1))
    with pytest.raises(DamagedCacheError, match="--skip_damaged_cache_records for probe"):
        frozen_features.extract_features(backbone, data, "12", settings, mesh)
    data = datasets.load_dataset({**settings, "skip_damaged_cache_records": True})
    features = frozen_features.extract_features(backbone, data, "12", settings, mesh)
    assert sorted(features.rows) == [r for r in range(len(data.infos)) if r != damaged]
    assert np.isfinite(features.values).all()
    assert _hashes(flipped_cache) == before


def test_a_cache_dir_that_is_a_file_is_named_as_such(tmp_path):
    """It said to build the cache with `prepare --out=x.npy`, which prepare refuses."""
    from crema_jax.data.cache import source

    (tmp_path / "x.npy").write_bytes(b"not a folder")
    with pytest.raises(NotADirectoryError, match=r"^" + __import__("re").escape(
            f"{tmp_path / 'x.npy'}: a file, not a cache folder")):
        source.load_index(str(tmp_path / "x.npy"))


def test_probe_on_swapped_shards_stops_and_the_named_rerun_mends_the_cache(
        tmp_path, capsys, sit_checkpoint):
    """Two shards of 8 records swapped: probe had written report.json (exit 0) from ECGs paired
    with other records' labels. Now it stops in one line naming the shard and the `prepare`
    command that rewrites it; that command, run as said, gives back the cache as built."""
    import shlex

    from crema_jax.data.cache import prepare

    records = tmp_path / "records"
    records.mkdir()
    for name in sorted(os.listdir(SAMPLE))[:32]:
        shutil.copyfile(SAMPLE / name, records / name)
    built, cache = tmp_path / "built", tmp_path / "cache"
    prepare.prepare(layout="wfdb_folder", root=str(records), out=str(built), workers=1,
                    records_per_shard=8)
    shutil.copytree(built, cache)
    first, second = (cache / (record_format.shard_name(s, 2) + ".arrayrecord") for s in (0, 1))
    first.write_bytes((built / second.name).read_bytes())
    second.write_bytes((built / first.name).read_bytes())
    before = _hashes(cache)
    done = run_in_process(capsys, "probe", f"--checkpoint={sit_checkpoint}",
                          f"--cache_dir={cache}", f"--workdir={tmp_path / 'probe'}",
                          "--split_fractions=0.6,0.2,0.2", "--min_positives=1")
    assert done.returncode == 1 and not (tmp_path / "probe" / "report.json").exists()
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith(f"crema-jax probe: error: {first}: does not hold the bytes prepare "
                           "wrote there"), line
    assert "--skip_damaged_cache_records for probe" in line
    assert _hashes(cache) == before
    rerun = shlex.split(line.split("rerun `", 1)[1].split("`", 1)[0])
    assert rerun[:2] == ["crema-jax", "prepare"] and f"--out={cache}" in rerun
    assert run_in_process(capsys, *rerun[1:]).returncode == 0
    assert _hashes(cache) == {path.replace(str(built), str(cache)): digest
                              for path, digest in _hashes(built).items()}
