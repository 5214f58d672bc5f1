"""Hostile inputs through whole commands, each run as `crema-jax` in a child process with a
timeout and an address-space limit (tests/data/bounded.py): a dataset folder holding FIFOs, a
header linked to /dev/zero and a header claiming 10^9 samples (`prepare` finishes, each counted
with its reason); a folder with a symlink loop (`embed --input=FOLDER` returns); a damaged
cache (`pretrain` stops in one line naming the shard, or skips and counts with the flag). Every
input and pre-existing file is unchanged (sha256)."""
import json
import os
import shutil

import numpy as np
import pytest

from crema_jax.data.cache import record_format
from crema_jax.data.index import dataset_index
from tests.data.bounded import REPO, hashes, run_bounded

SAMPLE = dataset_index.sample_data_dir()
TINY = str(REPO / "configs" / "crema_tiny.py")
CLI = "import sys\nfrom crema_jax.main import run\nrun(['crema-jax', *sys.argv[1:]])\n"


def _crema_jax(*argv, timeout_s: float = 300, memory_gib: float = 3.0):
    return run_bounded(CLI, argv=tuple(map(str, argv)), timeout_s=timeout_s,
                       memory_gib=memory_gib)


def _one_error_line(result, command: str, *fragments: str) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr + result.stdout, result.stderr[-3000:]
    errors = [line for line in lines if line.startswith(f"crema-jax {command}: error: ")]
    assert len(errors) == 1, result.stderr[-3000:]
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
    return errors[0]


def _copy_record(folder, name: str, source: str = "E07500") -> str:
    text = (SAMPLE / f"{source}.hea").read_text().replace(source, name)
    (folder / f"{name}.hea").write_text(text)
    shutil.copyfile(SAMPLE / f"{source}.mat", folder / f"{name}.mat")
    return text


def test_prepare_skips_special_files_and_oversized_claims_with_reasons(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for i, source in enumerate(("E07500", "E07501", "E07502")):
        _copy_record(data, f"good{i}", source)
    os.mkfifo(data / "fifo.hea")                       # blocked prepare for ever
    (data / "zero.hea").symlink_to("/dev/zero")        # read without bound
    lines = _copy_record(data, "huge").splitlines()    # asked for 24 GB
    record = lines[0].split()
    record[3] = "1000000000"
    (data / "huge.hea").write_text("\n".join([" ".join(record), *lines[1:]]) + "\n")
    before = hashes(data)
    out = tmp_path / "cache"
    result = _crema_jax("prepare", f"--root={data}", f"--out={out}", "--workers=1",
                        timeout_s=240, memory_gib=3.0)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    table = [line.split() for line in result.stdout.splitlines()]
    assert ["not_a_regular_file", "2"] in table and ["truncated_signal", "1"] in table, \
        result.stdout
    summary = json.loads((out / record_format.SUMMARY_FILE).read_text())
    assert summary["records_written"] == 3
    assert summary["skipped"]["not_a_regular_file"]["paths"] == [str(data / "fifo"),
                                                                 str(data / "zero")]
    assert hashes(data) == before


def test_embed_returns_on_a_folder_with_symlink_loops(sit_checkpoint, tmp_path):
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    _copy_record(data, "r1")
    _copy_record(data / "sub", "r2", "E07501")
    (data / "sub" / "up").symlink_to(data)             # an endless recursive glob before
    (data / "self").symlink_to(".")
    before = hashes(data, sit_checkpoint)
    out = tmp_path / "features.npy"
    result = _crema_jax("embed", f"--checkpoint={sit_checkpoint}", f"--input={data}",
                        f"--out={out}", timeout_s=300, memory_gib=12.0)
    assert result.returncode == 0, result.stderr[-3000:]
    # each record once: neither `self` nor `sub/up` is walked
    assert (tmp_path / "features.records.txt").read_text().split() == ["r1", "r2"]
    assert np.load(out).shape[0] == 2
    assert hashes(data, sit_checkpoint) == before


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
    before = hashes(flipped_cache)
    workdir = tmp_path / "run"
    common = [f"--config={TINY}", f"--workdir={workdir}",
              f"--config.data.cache_dir={flipped_cache}", "--config.data.split=",
              "--config.train.global_batch_size=8", "--config.train.num_steps=2"]
    result = _crema_jax("pretrain", *common, timeout_s=400, memory_gib=12.0)
    shard = flipped_cache / (record_format.shard_name(0, 2) + ".arrayrecord")
    _one_error_line(result, "pretrain", str(shard), "hash mismatch", "crema-jax prepare",
                    "--config.data.skip_damaged_cache_records=true")
    assert hashes(flipped_cache) == before


def test_pretrain_skips_and_counts_damaged_records_with_the_flag(flipped_cache, tmp_path):
    before = hashes(flipped_cache)
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
    assert hashes(flipped_cache) == before


def test_probe_features_of_a_damaged_cache_stop_or_skip_with_the_flag(flipped_cache):
    """The evaluation commands read a cache through the same source: without
    --skip_damaged_cache_records a damaged shard stops them naming that flag; with it, every
    record but the damaged one has its features (tiny random SiT, in this process; the flag is
    on probe's, finetune's and compare's --help: tests/cli/test_command.py)."""
    import jax

    from crema_jax.data.cache.source import DamagedCacheError
    from crema_jax.evaluate import datasets, linear_probe
    from crema_jax.inference import backbones
    from crema_jax.runtime import mesh as mesh_lib

    before = hashes(flipped_cache)
    settings = {"root": "", "cache_dir": str(flipped_cache), "seed": 0, "split_fractions": [],
                "folds": 3,
                "min_positives": 1, "label_type": "auto", "batch_size": 8, "num_workers": 0,
                "preset": ""}
    backbone = backbones.load("random", backbone="sit", model_size="tiny")
    mesh = mesh_lib.make_mesh(devices=jax.devices()[:1])
    data = datasets.load_dataset(settings)
    damaged = data.infos.index(next(i for i in data.infos if i.meta["cache_row"] == 1))
    with pytest.raises(DamagedCacheError, match="--skip_damaged_cache_records for probe"):
        linear_probe.extract_features(backbone, data, "12", settings, mesh)
    data = datasets.load_dataset({**settings, "skip_damaged_cache_records": True})
    features = linear_probe.extract_features(backbone, data, "12", settings, mesh)
    assert sorted(features.rows) == [r for r in range(len(data.infos)) if r != damaged]
    assert np.isfinite(features.values).all()
    assert hashes(flipped_cache) == before
