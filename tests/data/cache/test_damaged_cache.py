"""A damaged cache is named, never trained on: a truncated or bit-flipped shard, an index
pointing past a shard's end, an index listing a missing shard, a truncated index.json and an
index without its keys each stop the read with one message naming the file and what to do
(rerun `prepare`, or data.skip_damaged_cache_records); with that flag the damaged records are
skipped and counted as `damaged_cache_record`, the others read. Each case reads the whole split
through the evaluation pipeline in a child process, under a timeout and RLIMIT_AS
(tests/data/bounded.py), and no file of the cache changes."""
import hashlib
import json
import os
import shutil

import numpy as np
import pytest

from crema_jax.data.cache import prepare, record_format
from crema_jax.data.index import dataset_index
from tests.data.bounded import hashes, run_bounded

RECORDS, PER_SHARD = 6, 3
SHARDS = [record_format.shard_name(s, 2) + ".arrayrecord" for s in range(2)]
SKIP_FLAG = "--config.data.skip_damaged_cache_records=true"

# Reads every record of the cache argv[1] through make_eval_dataset (argv[2]: "skip" sets
# data.skip_damaged_cache_records) and prints the outcome as JSON.
READ_CACHE = """
import json, sys
from crema_jax.data import config
from crema_jax.data.pipeline import datasets
from crema_jax.data.pipeline.skips import SkipStats
cfg = config.default_data_config()
cfg.cache_dir, cfg.split, cfg.num_epochs, cfg.batch_size = sys.argv[1], "", 1, 4
cfg.skip_damaged_cache_records = sys.argv[2] == "skip"
stats = SkipStats()
try:
    batches = list(datasets.make_eval_dataset(cfg, stats=stats, process_index=0,
                                              process_count=1))
except Exception as err:
    print(json.dumps({"error": type(err).__name__, "message": str(err)}))
else:
    read = sorted(int(i) for b in batches for i, v in zip(b["index"], b["valid"]) if v)
    print(json.dumps({"read": read, "skips": stats.summary()}))
"""


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A 6-record cache in 2 shards of 3, built from the bundled records."""
    root = tmp_path_factory.mktemp("records")
    for name in sorted(os.listdir(dataset_index.sample_data_dir()))[:2 * RECORDS]:
        shutil.copyfile(dataset_index.sample_data_dir() / name, root / name)
    out = tmp_path_factory.mktemp("cache") / "cache"
    prepare.prepare(layout="wfdb_folder", root=str(root), out=str(out), workers=1,
                    records_per_shard=PER_SHARD)
    assert sorted(f for f in os.listdir(out) if f.endswith(".arrayrecord")) == SHARDS
    return out


def _damaged(cache, tmp_path, damage) -> str:
    copy = tmp_path / "cache"
    shutil.copytree(cache, copy)
    damage(copy)
    return str(copy)


def _read(cache_dir: str, *, skip: bool = False) -> dict:
    before = hashes(cache_dir)
    # 4.5 GiB of address space: pandas (imported by wfdb) imports pyarrow where it is installed
    # (apache-beam brings it), and pyarrow reserves about 1.2 GiB more at import.
    result = run_bounded(READ_CACHE, argv=(cache_dir, "skip" if skip else "stop"),
                         timeout_s=120, memory_gib=4.5)
    assert result.returncode == 0, result.stderr[-3000:]
    assert hashes(cache_dir) == before            # nothing in the cache touched
    return json.loads(result.stdout.strip().splitlines()[-1])


def _refused(outcome: dict, file: str, *fragments: str) -> None:
    assert outcome.get("error") == "DamagedCacheError", outcome
    message = outcome["message"]
    assert "\n" not in message and message.startswith(f"{file}: "), message
    for fragment in ("crema-jax prepare", *fragments):
        assert fragment in message, (fragment, message)


def _index(cache_dir: str) -> dict:
    with open(os.path.join(cache_dir, "index.json"), encoding="utf-8") as f:
        return json.load(f)


def _rows_of_shard(cache_dir: str, shard: str) -> list[int]:
    return [i for i, r in enumerate(_index(cache_dir)["records"]) if r["shard"] == shard]


def test_intact_cache_reads_every_record(cache):
    assert _read(str(cache)) == {"read": list(range(RECORDS)), "skips": {}}


def _truncate_shard(copy):
    path = copy / SHARDS[1]
    path.write_bytes(path.read_bytes()[:os.path.getsize(path) // 2])


def test_truncated_shard_is_named_or_skipped_and_counted(cache, tmp_path):
    cache_dir = _damaged(cache, tmp_path, _truncate_shard)
    shard = os.path.join(cache_dir, SHARDS[1])
    _refused(_read(cache_dir), shard, "holds 0 records, the index lists 3", SKIP_FLAG)
    outcome = _read(cache_dir, skip=True)
    bad = _rows_of_shard(cache_dir, SHARDS[1])
    assert outcome["read"] == [i for i in range(RECORDS) if i not in bad]
    assert outcome["skips"] == {"damaged_cache_record": {
        "count": 3, "paths": sorted(f"{shard}#{p}" for p in range(3))}}


def _flip_a_record_byte(copy):
    """One bit of the second record of shard 0, in its signal data (Riegeli's chunk data hash
    covers it: uncompressed chunks of one record each)."""
    path = copy / SHARDS[0]
    data = bytearray(path.read_bytes())
    record = record_format.encode_record(np.zeros((12, 2500), np.float32), np.ones(12, bool))
    # Each record is ~len(record) bytes after a 64-byte file header; aim at the middle of the
    # second one.
    offset = 64 + len(record) + len(record) // 2
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))


def test_bit_flipped_shard_is_named_or_skipped_and_counted(cache, tmp_path):
    cache_dir = _damaged(cache, tmp_path, _flip_a_record_byte)
    shard = os.path.join(cache_dir, SHARDS[0])
    _refused(_read(cache_dir), shard, "hash mismatch", SKIP_FLAG)
    outcome = _read(cache_dir, skip=True)
    assert len(outcome["read"]) == RECORDS - 1
    (skipped,) = outcome["skips"]["damaged_cache_record"]["paths"]
    assert skipped.startswith(f"{shard}#") and outcome["skips"][
        "damaged_cache_record"]["count"] == 1


def test_index_pointing_past_a_shards_end(cache, tmp_path):
    def damage(copy):
        index = _index(copy)  # as if the shard had been cut short after the index was made
        index["records"][1]["position"] = 50
        shard = next(s for s in index["shards"] if s["file"] == index["records"][1]["shard"])
        shard["num_records"] = 51
        (copy / "index.json").write_text(json.dumps(index))
    cache_dir = _damaged(cache, tmp_path, damage)
    shard = os.path.join(cache_dir, _index(cache_dir)["records"][1]["shard"])
    _refused(_read(cache_dir), shard, "holds 3 records", "position 50", SKIP_FLAG)
    outcome = _read(cache_dir, skip=True)
    assert outcome["skips"]["damaged_cache_record"]["count"] == 3


def test_index_listing_a_missing_shard(cache, tmp_path):
    cache_dir = _damaged(cache, tmp_path, lambda copy: os.remove(copy / SHARDS[0]))
    shard = os.path.join(cache_dir, SHARDS[0])
    _refused(_read(cache_dir), shard, "missing", SKIP_FLAG)
    assert _read(cache_dir, skip=True)["skips"]["damaged_cache_record"]["count"] == 3


def test_shard_replaced_by_a_fifo_is_named_without_opening_it(cache, tmp_path):
    def damage(copy):
        os.remove(copy / SHARDS[0])
        os.mkfifo(copy / SHARDS[0])
    cache_dir = _damaged(cache, tmp_path, damage)
    _refused(_read(cache_dir), os.path.join(cache_dir, SHARDS[0]), "FIFO", SKIP_FLAG)


@pytest.fixture(scope="module")
def float16_cache(cache, tmp_path_factory):
    """The records of `cache` stored as float16: shards of the same record counts and byte
    sizes, holding other bytes (another cache's shards)."""
    out = tmp_path_factory.mktemp("float16") / "cache"
    prepare.prepare(layout="wfdb_folder", root=_root(cache), out=str(out), workers=1,
                    records_per_shard=PER_SHARD, dtype="float16")
    return out


def _root(cache) -> str:
    return json.loads((cache / "settings.json").read_text())["root"]


def _swap_shards(copy):
    first, second = copy / SHARDS[0], copy / SHARDS[1]
    data = first.read_bytes()
    first.write_bytes(second.read_bytes())
    second.write_bytes(data)


def _foreign_shard(float16_cache):
    def damage(copy):
        assert os.path.getsize(float16_cache / SHARDS[1]) == os.path.getsize(copy / SHARDS[1])
        shutil.copyfile(float16_cache / SHARDS[1], copy / SHARDS[1])
    return damage


def _fingerprint(path) -> tuple[int, str, str]:
    """(size, SHA-256, SHA-256 of the first and last 256 KiB) of a file, computed here."""
    data, window = path.read_bytes(), 256 * 1024
    edges = data if len(data) <= 2 * window else data[:window] + data[-window:]
    return len(data), hashlib.sha256(data).hexdigest(), hashlib.sha256(edges).hexdigest()


def test_the_index_keeps_each_shards_fingerprint(cache):
    for shard in _index(cache)["shards"]:
        assert (shard["size"], shard["sha256"], shard["edge_sha256"]) == _fingerprint(
            cache / shard["file"])
        sidecar = json.loads((cache / shard["file"].replace(".arrayrecord", ".json")).read_text())
        assert {k: sidecar[k] for k in ("size", "sha256", "edge_sha256")} == {
            k: shard[k] for k in ("size", "sha256", "edge_sha256")}


@pytest.mark.parametrize("kind", ["swapped", "foreign"])
def test_a_swapped_or_foreign_shard_is_named_with_the_prepare_rerun(cache, float16_cache,
                                                                    tmp_path, kind):
    """Both had been read without a word (the same record counts): each ECG paired with another
    record's labels, and a probe's report written from them."""
    damage = _swap_shards if kind == "swapped" else _foreign_shard(float16_cache)
    cache_dir = _damaged(cache, tmp_path, damage)
    shard = os.path.join(cache_dir, SHARDS[0] if kind == "swapped" else SHARDS[1])
    _refused(_read(cache_dir), shard, f"{shard}: does not hold the bytes prepare wrote there: "
             "the SHA-256 of its first and last 256 KiB is",
             f"rerun `crema-jax prepare --layout=wfdb_folder --root={_root(cache)} "
             f"--out={cache_dir} --target_fs=250.0 --preprocess=crema --dtype=int16 "
             f"--records_per_shard={PER_SHARD}` (it rewrites the shards", f"or set {SKIP_FLAG} "
             "(pretrain; --skip_damaged_cache_records for probe, finetune and compare, "
             "skip_damaged_cache_records in a benchmark dataset) to skip and count its records")
    if kind == "foreign":
        outcome = _read(cache_dir, skip=True)
        bad = _rows_of_shard(cache_dir, SHARDS[1])
        assert outcome["read"] == [i for i in range(RECORDS) if i not in bad]
        assert outcome["skips"]["damaged_cache_record"]["count"] == PER_SHARD


@pytest.mark.parametrize("kind", ["swapped", "foreign", "truncated", "grown"])
def test_a_prepare_rerun_rewrites_a_shard_changed_since_it_was_written(
        cache, float16_cache, tmp_path, capsys, kind):
    """A rerun had trusted every shard with a sidecar: one truncated, swapped or replaced after
    it was written stayed in the cache. Now its file is checked against the sidecar's
    fingerprint, said, and written again: the cache equals the one first built, byte for byte."""
    damage = {"swapped": _swap_shards, "foreign": _foreign_shard(float16_cache),
              "truncated": lambda copy: (copy / SHARDS[1]).write_bytes(
                  (copy / SHARDS[1]).read_bytes()[:-4096]),
              "grown": lambda copy: (copy / SHARDS[1]).write_bytes(
                  (copy / SHARDS[1]).read_bytes() + b"\0")}[kind]
    cache_dir = _damaged(cache, tmp_path, damage)
    capsys.readouterr()
    result = prepare.prepare(layout="wfdb_folder", root=_root(cache), out=cache_dir, workers=1,
                             records_per_shard=PER_SHARD)
    assert result["records"] == RECORDS
    said = [line for line in capsys.readouterr().out.splitlines() if line.startswith("prepare: ")]
    changed = SHARDS if kind == "swapped" else SHARDS[1:]
    assert [line.split(": ")[1] for line in said] == [os.path.join(cache_dir, s) for s in changed]
    assert all(line.endswith("it counts as not written (the run of the host that writes it "
                             "rewrites it)") for line in said), said
    for name in sorted(os.listdir(cache)):
        assert (cache / name).read_bytes() == open(os.path.join(cache_dir, name), "rb").read(), \
            name


def test_a_cache_from_before_fingerprints_still_reads(cache, tmp_path):
    def strip(copy):
        index = _index(copy)
        index["shards"] = [{"file": s["file"], "num_records": s["num_records"]}
                           for s in index["shards"]]
        (copy / "index.json").write_text(json.dumps(index))
    assert _read(_damaged(cache, tmp_path, strip)) == {"read": list(range(RECORDS)), "skips": {}}


@pytest.mark.parametrize("damage, fragment", [
    (lambda text: text[:len(text) // 2], "not JSON"),
    (lambda text: json.dumps({k: v for k, v in json.loads(text).items() if k != "records"}),
     "no 'records' list"),
    (lambda text: json.dumps({**json.loads(text), "records": [
        {k: v for k, v in r.items() if k != "shard"} for r in json.loads(text)["records"]]}),
     "record 0 lacks ['shard']"),
    (lambda text: json.dumps({**json.loads(text), "shards": [
        {**s, "file": "../" + s["file"]} for s in json.loads(text)["shards"]]}),
     "shard 0 is '../shard-00000-of-00002.arrayrecord', expected a file name in the cache"),
    (lambda text: json.dumps({**json.loads(text), "settings": {}}),
     "its settings lack ['target_fs', 'preprocess', 'derive_limb_leads']"),
], ids=["truncated", "no_records", "record_without_shard", "shard_outside", "no_settings"])
def test_damaged_index_is_named_with_the_rebuild(cache, tmp_path, damage, fragment):
    def write(copy):
        path = copy / "index.json"
        path.write_text(damage(path.read_text()))
    cache_dir = _damaged(cache, tmp_path, write)
    index = os.path.join(cache_dir, "index.json")
    for skip in (False, True):   # nothing says what a damaged index held: never skipped
        _refused(_read(cache_dir, skip=skip), index, fragment, f"--out={cache_dir}")


@pytest.mark.parametrize("name", ["sidecar", "settings.json"])
def test_prepare_rerun_names_a_damaged_sidecar_or_settings(cache, tmp_path, name):
    """A rerun of `prepare` into a cache whose shard sidecar or settings.json was cut short:
    one message naming the file and what to do, and no file changed."""
    file = SHARDS[1].replace(".arrayrecord", ".json") if name == "sidecar" else name
    def cut(copy):
        text = (copy / file).read_text()
        (copy / file).write_text(text[:len(text) // 2])
    cache_dir = _damaged(cache, tmp_path, cut)
    root = json.loads((cache / "settings.json").read_text())["root"]
    before = hashes(cache_dir)
    with pytest.raises(prepare.PrepareError) as error:
        prepare.prepare(layout="wfdb_folder", root=root, out=cache_dir, workers=1,
                        records_per_shard=PER_SHARD)
    message = str(error.value)
    assert message.startswith(f"{os.path.join(cache_dir, file)}: damaged (") and "\n" not in \
        message, message
    assert ("rerun prepare" if name == "sidecar" else "new --out") in message
    assert hashes(cache_dir) == before


def _records_edited(edit):
    def damage(text):
        index = json.loads(text)
        for i, row in enumerate(index["records"]):
            edit(i, row)
        return json.dumps(index)
    return damage


@pytest.mark.parametrize("damage, fragment", [
    (_records_edited(lambda i, r: r.update(position=10**30) if i == 0 else None),
     "record 0 at position 1000000000000000000000000000000 of shard shard-00000-of-00002"
     ".arrayrecord, expected 0 to 2"),
    (_records_edited(lambda i, r: r.update(shard=SHARDS[0], position=0)),
     "record 1 at position 0 of shard shard-00000-of-00002.arrayrecord, where an earlier "
     "record is"),
    (_records_edited(lambda i, r: r.update(labels=None)), "record 0: record_id, path, split"),
    (_records_edited(lambda i, r: r.update(labels="AF")), "record 0: record_id, path, split"),
    (_records_edited(lambda i, r: r.update(split=7)), "record 0: record_id, path, split"),
    (lambda text: json.dumps({**json.loads(text), "label_names": [1, 2, 3]}),
     "its label_names are not all strings"),
    (lambda text: json.dumps({**json.loads(text), "shards": [
        {**s, "size": "big"} for s in json.loads(text)["shards"]]}),
     "shard 0: its size is 'big', expected a byte count"),
    (lambda text: json.dumps({**json.loads(text), "settings": {
        **json.loads(text)["settings"], "target_fs": "abc"}}),
     "its settings' target_fs is 'abc', expected a rate in Hz"),
], ids=["position_overflow", "one_position_for_all", "labels_null", "labels_text", "split_number",
        "label_names_numbers", "shard_size_text", "target_fs_text"])
def test_an_index_whose_rows_cannot_be_right_is_named(cache, tmp_path, damage, fragment):
    """Each had been a traceback (OverflowError, TypeError), an error naming no file, a
    'no class has >= 1 training positives' blaming the data, or (one position for every
    record) a report computed from one ECG read 6 times."""
    from crema_jax.data.cache import source

    def edit(copy):
        path = copy / "index.json"
        path.write_text(damage(path.read_text()))
    cache_dir = _damaged(cache, tmp_path, edit)
    with pytest.raises(source.DamagedCacheError) as raised:
        source.load_index(cache_dir)
    assert str(raised.value).startswith(f"{cache_dir}/index.json: {fragment}")


def test_the_named_prepare_command_rebuilds_a_cache_of_other_flags(tmp_path):
    """The rerun a swapped shard's message names carries every flag the cache was built with
    (layout options, rate, preprocessing, dtype, shard size; paths with spaces quoted): run as
    given, it resumes that cache (other flags would be refused) and restores it."""
    import shlex

    from crema_jax.cli import prepare as prepare_cli
    from crema_jax.data.cache import source

    root, out = tmp_path / "my data", tmp_path / "the cache"
    root.mkdir()
    signals = np.random.default_rng(0).normal(0, 0.5, (4, 12, 5000)).astype(np.float32)
    np.save(root / "ecgs.npy", signals)
    prepare.prepare(layout="numpy", root=str(root / "ecgs.npy"), out=str(out), workers=1,
                    layout_options={"fs": 500}, target_fs=100.0, preprocess="none",
                    dtype="float16", records_per_shard=2)
    built = hashes(out)
    _swap_shards(out)
    with pytest.raises(source.DamagedCacheError) as raised:
        source.CacheSource(str(out))
    command = str(raised.value).split("rerun `", 1)[1].split("`", 1)[0]
    argv = shlex.split(command)
    assert argv[:2] == ["crema-jax", "prepare"] and "--layout_option=fs=500" in argv, command
    assert prepare_cli.COMMAND.run(argv[2:]) == 0
    assert hashes(out) == built


def _of_an_earlier_format(damage):
    """`damage`, in a cache whose settings say format crema_jax.cache/1 (as one written by an
    earlier version, which prepare refuses to resume)."""
    def both(copy):
        damage(copy)
        for name in ("settings.json", "index.json"):
            data = json.loads((copy / name).read_text())
            (data["settings"] if name == "index.json" else data)["format"] = "crema_jax.cache/1"
            (copy / name).write_text(json.dumps(data))
    return both


@pytest.mark.parametrize("damage", [_truncate_shard, _swap_shards])
def test_a_damaged_shard_of_an_earlier_format_is_sent_to_a_new_out(cache, tmp_path, damage):
    """The advice to rerun prepare into the same --out failed for such a cache: that rerun
    refuses its settings.json (checked below), so the message names a new --out instead."""
    from crema_jax.data.cache import source

    cache_dir = _damaged(cache, tmp_path, _of_an_earlier_format(damage))
    with pytest.raises(source.DamagedCacheError) as caught:
        source.CacheSource(cache_dir)
    message = str(caught.value)
    assert ("the cache is damaged: prepare the cache again into a new --out (this one is of "
            "format crema_jax.cache/1, which prepare does not resume: it writes "
            f"{record_format.FORMAT}), or set ") in message, message
    assert "same --out" not in message and "rerun `crema-jax prepare" not in message
    assert "\n" not in message
    with pytest.raises(prepare.PrepareError, match="a cache of format crema_jax.cache/1"):
        prepare.prepare(layout="wfdb_folder", root=_root(cache), out=cache_dir, workers=1,
                        records_per_shard=PER_SHARD)
