"""A dataset's own splits (a manifest's `split` column) that put one patient's records in two of
train/val/test are refused, or with --patients_across_splits=allow kept, printed and counted in
report.json, named by the ids of their records (never by patient id: a hospital's record number
must not reach a report); a prepared cache of the manifest groups patients as the manifest
does (its rows keep the patient ids' salted hashes), and an older cache without them still
reads, saying so.
The manifest below is written by hand: P0 (train + test), P1 (val +
test) and P2 (train + val) straddle splits, 3 patients with 6 records; P3 to P5 do not, and two
records without a patient id (each its own patient) sit in train and test."""
import csv
import hashlib
import json
import pathlib
import re
from collections import defaultdict
from types import SimpleNamespace

import pytest

from crema_jax.cli import probe
from crema_jax.data.cache import prepare
from crema_jax.data.cache import source as cache_source
from crema_jax.data.cache.source import DamagedCacheError, cache_index
from crema_jax.evaluate import datasets, folds, protocols
from tests.cli.conftest import _fails
from tests.evaluate import sample_records
from tests.evaluate.test_cli import _run

# (patient_id, split) per record, in manifest order; labels alternate 1000 / 2000.
ROWS = [("P0", "train"), ("P0", "test"), ("P1", "val"), ("P1", "test"), ("P2", "train"),
        ("P2", "val"), ("P3", "train"), ("P3", "train"), ("", "train"), ("", "test"),
        ("P4", "test"), ("P5", "val")]
STRADDLING = ("P0", "P1", "P2")


@pytest.fixture
def split_manifest(cinc_sample_dir, tmp_path):
    """ROWS over 12 CinC records with distinct signals (a duplicate would be merged)."""
    heads = sample_records.distinct_heads(cinc_sample_dir, len(ROWS))
    path = tmp_path / "split_manifest.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "labels", "patient_id", "split"])
        for i, (head, (patient, split)) in enumerate(zip(heads, ROWS)):
            writer.writerow([str(head.with_suffix("")), "1000" if i % 2 else "2000", patient,
                             split])
    return path


def _settings(root, **more):
    return {"root": str(root), "cache_dir": "", "layout": "manifest", "layout_options": {},
            "seed": 0, "split_fractions": [], "min_positives": 1, "label_type": "auto",
            "folds": 0, "patients_across_splits": "refuse", **more}


def _shared(manifest) -> dict:
    """What loading should find, read back from the manifest: the straddling patients' records
    named by file name (the manifest layout's record id), the first five in row order."""
    with open(manifest, newline="") as f:
        ids = [pathlib.Path(row["path"]).name for row in csv.DictReader(f)
               if row["patient_id"] in STRADDLING]
    assert len(ids) == 6
    return {"patients": 3, "records": 6, "examples": ids[:5]}


def _said(root) -> str:
    return (f"{root}: its own splits put 3 patient(s) in more than one of train/val/test "
            f"(6 records, e.g. records {', '.join(_shared(root)['examples'])})")


def test_patients_in_two_splits_are_counted_by_their_ids_alone():
    """A record without a patient id is its own patient (patient_keys: its record id) and is
    never counted, even where its id equals a patient's."""
    infos = [SimpleNamespace(record_id=r, meta={"patient_id": p}) for r, p in [
        ("r1", "a"), ("r2", "a"), ("r3", "b"), ("r4", None), ("a", ""), ("r6", "c"),
        ("r7", "c"), ("r8", "c"), ("r9", "d")]]
    splits = ["train", "test", "val", "test", "train", "val", "val", "test", "test"]
    ids = [i.record_id for i in infos]
    found = protocols.patients_across_splits(splits, protocols.patient_keys(infos), ids)
    assert found == {"patients": 2, "records": 5, "examples": ["r1", "r2", "r6", "r7", "r8"]}
    assert protocols.patients_across_splits(splits, protocols.patient_keys(infos), ids,
                                            show=3)["examples"] == ["r1", "r2", "r6"]
    assert protocols.patients_across_splits(["train"] * 9, protocols.patient_keys(infos),
                                            ids) == {"patients": 0, "records": 0, "examples": []}


def test_given_splits_with_a_patient_in_two_are_refused_with_the_remedy(split_manifest):
    with pytest.raises(ValueError) as raised:
        datasets.load_dataset(_settings(split_manifest))
    assert str(raised.value) == (
        f"{_said(split_manifest)}: a test score on patients the head trained or was selected "
        "on is inflated; pass --split_fractions=0.6,0.2,0.2 (a seeded re-split, a patient's "
        "records in one split) or --folds=5 (folds over patients), or "
        "--patients_across_splits=allow to keep these splits")


@pytest.mark.parametrize("folds", [0, 3])
def test_cross_domain_checks_the_given_splits_and_suggests_no_folds(split_manifest, folds):
    """Cross-domain heads train, select and test on the given splits with or without folds:
    the check runs with --folds too, and --folds=5 (which had been suggested) would not help."""
    with pytest.raises(ValueError) as raised:
        datasets.load_dataset(_settings(split_manifest, cross_domain=True, folds=folds))
    assert str(raised.value) == (
        f"{_said(split_manifest)}: a test score on patients the head trained or was selected "
        "on is inflated; pass --split_fractions=0.6,0.2,0.2 (a seeded re-split, a patient's "
        "records in one split), or --patients_across_splits=allow to keep these splits")


def test_a_task_file_is_told_its_own_fields(split_manifest):
    """The benchmark's task file has split_fractions and folds, and no allow."""
    settings = _settings(split_manifest, flag_prefix="the task file's datasets['d'].")
    del settings["patients_across_splits"]
    with pytest.raises(ValueError) as raised:
        datasets.load_dataset(settings)
    assert str(raised.value).endswith(
        "pass the task file's datasets['d'].split_fractions=0.6,0.2,0.2 (a seeded re-split, a "
        "patient's records in one split) or the task file's datasets['d'].folds=5 (folds over "
        "patients)")


def test_allowed_they_are_kept_printed_and_counted(split_manifest, capsys):
    data = datasets.load_dataset(_settings(split_manifest, patients_across_splits="allow"))
    assert len(data.infos) == len(ROWS) and data.splits.tolist() == [s for _, s in ROWS]
    assert data.counts["patients_across_splits"] == _shared(split_manifest)
    assert (f"warning: {_said(split_manifest)}; kept (--patients_across_splits=allow): the "
            "scores of their test records are inflated\n") in capsys.readouterr().out


@pytest.mark.parametrize("more, checked", [
    ({"split_fractions": [0.6, 0.2, 0.2]}, False),   # a re-split groups patients
    ({"folds": 3}, False),                            # so do folds (the splits are not read)
    ({"folds": 3, "cross_domain": True}, True),       # cross-domain runs read the splits
])
def test_only_the_given_splits_that_are_read_are_checked(split_manifest, more, checked):
    settings = _settings(split_manifest, **more)
    if checked:
        with pytest.raises(ValueError, match="its own splits put 3 patient"):
            datasets.load_dataset(settings)
        return
    data = datasets.load_dataset(settings)
    assert data.counts["patients_across_splits"] is None


def test_the_probe_refuses_in_one_line_and_allowed_records_it_in_report_json(
        split_manifest, tmp_path, capsys):
    argv = ["--checkpoint=random", "--layout=manifest", f"--root={split_manifest}",
            f"--workdir={tmp_path / 'refused'}"]
    _fails(probe, argv, capsys, _said(split_manifest).removeprefix(f"{split_manifest}: "),
           "--patients_across_splits=allow")
    assert not (tmp_path / "refused").exists()
    for more in (["--cross_domain"], ["--cross_domain", "--folds=3"]):
        line = _fails(probe, argv + more, capsys,
                      _said(split_manifest).removeprefix(f"{split_manifest}: "),
                      "--patients_across_splits=allow")
        assert "--folds" not in line
    _run(probe, checkpoint="random", layout="manifest", root=str(split_manifest),
         workdir=str(tmp_path / "allowed"), patients_across_splits="allow", probe_steps=5,
         bootstrap=20, batch_size=8, l2_grid=["0.01"])
    report = json.loads((tmp_path / "allowed" / "report.json").read_text())
    assert report["records"]["patients_across_splits"] == _shared(split_manifest)
    assert not any(f"\"{p}\"" in json.dumps(report) for p in STRADDLING)   # no patient id
    assert (report["records"]["train"], report["records"]["val"], report["records"]["test"]) \
        == (5, 3, 4)


@pytest.fixture
def cached(split_manifest, tmp_path):
    """split_manifest prepared into a cache (settings: the cache alone, no root)."""
    out = tmp_path / "cache"
    prepare.prepare(layout="manifest", root=str(split_manifest), out=str(out), workers=1,
                    records_per_shard=5)
    return out


def test_a_cache_refuses_the_given_splits_as_its_raw_manifest_does(split_manifest, cached):
    """A cache's rows had no patient id: its given splits were accepted, 0 patients found."""
    with pytest.raises(ValueError) as raw:
        datasets.load_dataset(_settings(split_manifest))
    with pytest.raises(ValueError) as from_cache:
        datasets.load_dataset(_settings("", cache_dir=str(cached)))
    assert str(from_cache.value) == str(raw.value)
    assert str(from_cache.value).startswith(f"{_said(split_manifest)}: a test score")


def _parts(data, settings) -> dict:
    """record id -> its split (a re-split) or the fold that tests it (folds)."""
    plan, _ = folds.dataset_plan(data, settings)
    if plan is None:
        return {info.record_id: str(s) for info, s in zip(data.infos, data.splits)}
    return {data.infos[i].record_id: part["fold"] for part in plan for i in part["test"]}


@pytest.mark.parametrize("more", [{"split_fractions": [0.6, 0.2, 0.2]}, {"folds": 3}])
def test_a_cache_re_splits_and_folds_by_patient_as_its_raw_manifest_does(split_manifest, cached,
                                                                         more):
    """Each patient's records in one part, as on the raw manifest; which part a patient lands
    in follows its hashed id (the cache keeps no raw id), so it may differ from the raw's."""
    raw_settings = _settings(split_manifest, **more)
    cache_settings = _settings("", cache_dir=str(cached), **more)
    raw = _parts(datasets.load_dataset(raw_settings), raw_settings)
    from_cache = _parts(datasets.load_dataset(cache_settings), cache_settings)
    assert sorted(from_cache) == sorted(raw) and len(raw) == len(ROWS)
    with open(split_manifest, newline="") as f:   # the patients, read back from the CSV
        patient_of = {pathlib.Path(row["path"]).name: row["patient_id"]
                      for row in csv.DictReader(f)}
    parts = defaultdict(set)
    for record_id, part in from_cache.items():
        if patient_of[record_id]:
            parts[patient_of[record_id]].add(part)
    assert sorted(parts) == ["P0", "P1", "P2", "P3", "P4", "P5"]
    assert all(len(found) == 1 for found in parts.values()), parts


def test_a_cache_keeps_the_salted_hash_of_each_patient_id_never_the_id(cached, monkeypatch):
    """The manifest's ids had gone into index.json and the sidecars as written (a cache is
    handed around; clinical exports' ids were already hashed). The hash is computed here from
    the default salt, as clinical.patient_hash documents it."""
    monkeypatch.delenv("CREMA_JAX_PATIENT_SALT", raising=False)
    rows = json.loads((cached / "index.json").read_text())["records"]
    expected = ["p" + hashlib.sha256(f"crema_jax.patient\0{p}".encode()).hexdigest()[:16]
                if p else None for p, _ in ROWS]
    assert [r["meta"].get("patient_id") for r in rows] == expected
    for path in cached.glob("*.json"):
        text = path.read_text()
        assert not any(f"\"{p}\"" in text for p in {p for p, _ in ROWS if p}), path


def _rewrite_index(cache, change) -> None:
    path = cache / "index.json"
    index = json.loads(path.read_text())
    change(index)
    path.write_text(json.dumps(index))


def test_a_cache_written_before_rows_kept_patient_ids_reads_and_says_so_once(cached, capsys):
    def older(index):   # as crema_jax.cache/1 wrote it: no row meta
        index["settings"]["format"] = "crema_jax.cache/1"
        for row in index["records"]:
            del row["meta"]
    _rewrite_index(cached, older)
    data = datasets.load_dataset(_settings("", cache_dir=str(cached)))
    assert len(data.infos) == len(ROWS)
    assert data.counts["patients_across_splits"] == {"patients": 0, "records": 0,
                                                      "examples": []}
    out = capsys.readouterr().out
    note = (f"note: {cached} was prepared before caches kept patient ids (format "
            "crema_jax.cache/1): each of its records is taken as its own patient "
            "(patients-across-splits check, re-splits, folds, bootstrap); prepare it again into "
            "a new --out to keep them\n")
    assert out.count(note) == 1, out
    # Read again in this process (compare, each host of a run): not said again.
    assert len(cache_index(str(cached)).records) == len(ROWS)
    assert "note:" not in capsys.readouterr().out
    # A wfdb_folder layout never has patient ids: its older cache groups as its records do.
    cache_source._NOTED.discard(str(cached))   # as in a fresh process
    _rewrite_index(cached, lambda index: index["settings"].update(layout="wfdb_folder"))
    assert len(cache_index(str(cached)).records) == len(ROWS)
    assert "note:" not in capsys.readouterr().out


def test_a_cache_row_whose_meta_is_no_object_is_a_damaged_index(cached):
    _rewrite_index(cached, lambda index: index["records"][3].update(meta="P1"))
    with pytest.raises(DamagedCacheError, match=re.escape(
            f"{cached / 'index.json'}: record 3: meta is 'P1', expected an object; the cache "
            "index is damaged")):
        cache_index(str(cached))


def _distinct_heads(cinc_sample_dir):
    heads, seen = [], set()
    for head in sorted(cinc_sample_dir.glob("*.hea")):
        digest = hashlib.sha256(head.with_suffix(".mat").read_bytes()).hexdigest()
        if digest not in seen:
            seen.add(digest)
            heads.append(head)
    return heads


def _sha1_split(key: str) -> str:
    """The documented hash split, written out: u = first 8 bytes of SHA-1 / 2**64, cut at
    0.8 / 0.9 (the default 0.1 val and test fractions)."""
    u = int.from_bytes(hashlib.sha1(key.encode()).digest()[:8], "big") / 2.0**64
    return "train" if u < 0.8 else "val" if u < 0.9 else "test"


@pytest.mark.parametrize("word", ["NaN", "nan", "NA", "N/A", " None ", "null"])
def test_a_missing_value_word_as_patient_id_is_no_patient(cinc_sample_dir, tmp_path, word):
    """20 of the 49 distinct records carry the word, the rest their own P<i>: each of the 20 is
    its own patient, as with an empty cell (one patient "NaN" had given 37/6/6 and all 20 one
    hashed split)."""
    heads = _distinct_heads(cinc_sample_dir)
    assert len(heads) == 49
    path = tmp_path / "m.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "labels", "patient_id"])
        for i, head in enumerate(heads):
            writer.writerow([str(head.with_suffix("")), "1000" if i % 2 else "2000",
                             word if i < 20 else f"P{i}"])
    data = datasets.load_dataset(_settings(path, split_fractions=[0.6, 0.2, 0.2]))
    # 49 one-record patients cut at 0.6 / 0.2 / 0.2 of 49: 9.8 -> 10 val and 10 test.
    assert data.splits.tolist().count("train") == 29
    assert data.splits.tolist().count("test") == 10
    keys = protocols.patient_keys(data.infos).tolist()
    assert keys[:20] == [h.name.removesuffix(".hea") for h in heads[:20]]
    hashed = datasets.load_dataset(_settings(path))
    assert hashed.splits.tolist()[:20] == [_sha1_split(h.stem) for h in heads[:20]]
