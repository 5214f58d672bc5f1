"""`crema-jax prepare` as an array job: real processes sharing one output folder, each writing its
shards, then one `--merge`, must write exactly the files of a one-host run, also when a task is
killed mid-way and rerun; nothing waits for anything."""
import csv
import hashlib
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from crema_jax.data.cache import hosts, prepare
from crema_jax.runtime import files

CLI = [os.path.join(os.path.dirname(sys.executable), "crema-jax"), "prepare"]
N, PER, SHARDS = 40, 2, 20          # host 0 of 2 writes shards 0-9, host 1 shards 10-19
NAN_ROWS = (3, 31)                  # one bad record in each host's part


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("hosts")
    rng = np.random.default_rng(1)
    x = rng.normal(0, 0.5, (N, 12, 5000)).astype(np.float32)  # 10 s at 500 Hz, mV
    x[list(NAN_ROWS)] = np.nan
    np.save(root / "ecgs.npy", x)
    with open(root / "ecgs.csv", "w", newline="") as f:
        csv.writer(f).writerows([["labels"]] + [["AF" if r % 3 else "SB"] for r in range(N)])
    return root / "ecgs.npy"


def _args(data, out, *extra):
    return CLI + ["--layout=numpy", f"--root={data}", "--layout_option=fs=500",
                  f"--out={out}", "--workers=1", f"--records_per_shard={PER}", *extra]


def _host(data, out, i, *extra):
    return _args(data, out, "--num_hosts=2", f"--host_index={i}", *extra)


def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(pathlib.Path(folder).iterdir())}


@pytest.fixture(scope="module")
def one_host(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "cache"
    done = subprocess.run(_args(dataset, out), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == f"prepared {N - 2} records, skipped 2"
    assert "ETA" in done.stderr and "ECG/s" in done.stderr
    return _files(out)


def _merge(data, out, *extra):
    return subprocess.run(_args(data, out, "--merge", *extra), capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow
def test_two_processes_then_merge_write_the_one_host_cache(dataset, one_host, tmp_path):
    out = tmp_path / "cache"
    procs = [subprocess.Popen(_host(dataset, out, i), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in (1, 0)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1] for o in outputs]
    host1, host0 = (o[0].strip().splitlines() for o in outputs)
    assert host1[-1] == (f"host 1/2: prepared {N // 2 - 1} records, skipped 1 (shards 10-19); "
                         "when every host is done, merge with `crema-jax prepare ... --merge`")
    assert host0[-1].startswith(f"host 0/2: prepared {N // 2 - 1} records, skipped 1 (shards "
                                "0-9)")
    assert ["no_signal", "1"] in [line.split() for line in host1]     # host 1's own table
    assert not (out / "index.json").exists()                           # nobody merged
    merged = _merge(dataset, out)
    assert merged.returncode == 0, merged.stderr
    lines = merged.stdout.strip().splitlines()
    assert lines[-1] == f"prepared {N - 2} records, skipped 2"
    assert ["no_signal", "2"] in [line.split() for line in lines]     # the merged table
    assert _files(out) == one_host


@pytest.mark.slow
def test_a_killed_host_reruns_only_its_missing_shards(dataset, one_host, tmp_path):
    out = tmp_path / "cache"
    host0 = subprocess.Popen(_host(dataset, out, 0), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    host1 = subprocess.Popen(_host(dataset, out, 1), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    first = out / f"shard-00010-of-000{SHARDS}.json"
    deadline = time.monotonic() + 240
    while not first.exists() and time.monotonic() < deadline and host1.poll() is None:
        time.sleep(0.001)
    host1.send_signal(signal.SIGKILL)
    host1.wait()
    written = sorted(p.name for p in out.glob("shard-000[1][0-9]-*.json"))
    assert first.name in written and len(written) < SHARDS // 2      # killed mid-way
    kept = {name: (out / name).stat().st_ino for name in written}
    _, stderr = host0.communicate(timeout=300)
    assert host0.returncode == 0, stderr                               # host 0 never waits
    assert not (out / "index.json").exists()

    rerun = subprocess.run(_host(dataset, out, 1), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert {name: (out / name).stat().st_ino for name in written} == kept  # not rewritten
    merged = _merge(dataset, out)
    assert merged.returncode == 0, merged.stderr
    assert not list(out.glob(".*.tmp"))
    assert _files(out) == one_host


@pytest.mark.slow
def test_merge_refuses_naming_the_missing_host(dataset, one_host, tmp_path):
    out = tmp_path / "cache"
    alone = subprocess.run(_host(dataset, out, 0), capture_output=True, text=True, timeout=300)
    assert alone.returncode == 0, alone.stderr
    early = _merge(dataset, out, "--num_hosts=2", "--host_index=0")
    assert early.returncode == 1
    assert "10 of 20 shards are not written yet" in early.stderr
    assert "hosts [1] of 2" in early.stderr and "--merge" in early.stderr
    assert subprocess.run(_host(dataset, out, 1), capture_output=True, timeout=300).returncode == 0
    assert not (out / "index.json").exists()
    merged = _merge(dataset, out)
    assert merged.returncode == 0, merged.stderr
    assert _files(out) == one_host


def test_host_shards_are_fixed_blocks_whatever_the_host_count():
    assert [list(hosts.host_shards(10, 3, h)) for h in range(3)] == [[0, 1, 2], [3, 4, 5],
                                                                     [6, 7, 8, 9]]
    assert [list(hosts.host_shards(2, 4, h)) for h in range(4)] == [[], [0], [], [1]]
    assert [hosts.host_of_shard(s, 10, 3) for s in range(10)] == [0] * 3 + [1] * 3 + [2] * 4
    with pytest.raises(ValueError, match="--host_index=2"):
        hosts.host_shards(10, 2, 2)


@pytest.mark.parametrize("environ,expected", [
    ({}, (0, 1)),
    ({"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "1",
      "SLURM_ARRAY_TASK_STEP": "2"}, (3, 4)),
    ({"SLURM_PROCID": "2", "SLURM_NTASKS": "8"}, (2, 8)),
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}, (0, 1)),
    ({"TPU_WORKER_ID": "3", "TPU_WORKER_HOSTNAMES": "w0,w1,w2,w3"}, (3, 4)),
    ({"TPU_WORKER_ID": "0", "TPU_WORKER_HOSTNAMES": "w0"}, (0, 1)),
])
def test_host_defaults_from_the_environment(environ, expected):
    assert hosts.detect(environ)[:2] == expected
    assert hosts.resolve(-1, -1, environ)[:2] == expected
    assert hosts.resolve(1, 5, environ) == (1, 5, "flags")


def test_half_given_host_flags_are_refused():
    with pytest.raises(ValueError, match="go together"):
        hosts.resolve(1, -1, {})
    with pytest.raises(ValueError, match="0 <= --host_index < --num_hosts"):
        hosts.resolve(-1, -1, {"SLURM_PROCID": "9", "SLURM_NTASKS": "4"})



@pytest.mark.parametrize("left_by_host_0", [["crema_jax.prepare-host0.lock"],
                                            [".settings.json.k3j2.99999.tmp"]])
def test_a_host_starting_beside_another_accepts_its_lock_and_half_written_settings(
        tmp_path, cinc_sample_dir, left_by_host_0):
    """Two hosts start together: host 1 finds only host 0's lock, or its settings.json still
    under a temporary name, and must go on (not refuse the folder as someone else's); a user's
    file is still refused."""
    out = tmp_path / "cache"
    out.mkdir()
    for name in left_by_host_0:
        (out / name).write_text("")
    result = prepare.prepare(layout="wfdb_folder", root=str(cinc_sample_dir), out=str(out),
                             records_per_shard=16, workers=1, num_hosts=2, host_index=1)
    written = [json.loads(p.with_suffix(".json").read_text()) for p in out.glob("*.arrayrecord")]
    assert written and result["records"] == sum(s["num_records"] for s in written)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("a user's file")
    with pytest.raises(files.OutputError, match="did not write"):
        prepare.prepare(layout="wfdb_folder", root=str(cinc_sample_dir), out=str(other),
                        records_per_shard=16, workers=1, num_hosts=2, host_index=1)


@pytest.fixture
def six_records(tmp_path, cinc_sample_dir):
    root = tmp_path / "six"
    root.mkdir()
    for head in sorted(cinc_sample_dir.glob("*.hea"))[:6]:
        for suffix in (".hea", ".mat"):
            shutil.copy(head.with_suffix(suffix), root / head.with_suffix(suffix).name)
    return root


def test_a_merge_refuses_a_shard_built_with_other_settings(tmp_path, six_records):
    """Host 1's shards written with other settings and copied beside host 0's had been merged
    (exit 0) into a cache whose settings.json still claimed host 0's: half its records raw
    500 Hz signals, half normalised 250 Hz ones. The same copy with the same settings (the
    array-job workflow) merges."""
    common = dict(layout="wfdb_folder", root=str(six_records), records_per_shard=2, workers=1,
                  num_hosts=2)
    for other, settings in (("same", {}), ("other", dict(preprocess="none", target_fs=500.0))):
        out, host1 = tmp_path / f"merged-{other}", tmp_path / f"host1-{other}"
        prepare.prepare(out=str(out), host_index=0, **common)
        prepare.prepare(out=str(host1), host_index=1, **{**common, **settings})
        copied = sorted(p.name for p in host1.glob("shard-*"))
        assert copied and not set(copied) & {p.name for p in out.glob("shard-*")}
        for name in copied:
            shutil.copy(host1 / name, out / name)
        if not settings:
            assert prepare.prepare(out=str(out), merge_only=True, **common)["records"] == 6
            continue
        first = out / sorted(n for n in copied if n.endswith(".json"))[0]
        with pytest.raises(prepare.PrepareError, match=re.escape(
                f"{first}: it was built for other settings than this folder's settings.json")):
            prepare.prepare(out=str(out), merge_only=True, **common)
        assert not (out / "index.json").exists()


@pytest.mark.parametrize("edit, said", [
    (lambda s: s.update(file="shard-00002-of-00003.arrayrecord"),
     "it names the shard 'shard-00002-of-00003.arrayrecord', not shard-00001-of-00003"),
    (lambda s: s.update(num_records=1), "num_records=1 for 2 records"),
    (lambda s: s.update(num_records=True), "num_records=True for 2 records"),
    (lambda s: s.update(records=["oops"]), "its records are not this shard's rows"),
    (lambda s: s.update(skipped=[{"path": "x"}]), "its skipped entries are not"),
    (lambda s: s.update(skipped=["oops"]), "its skipped entries are not"),
], ids=["other_file", "count", "bool_count", "records", "skip_fields", "skip_type"])
def test_a_hand_edited_sidecar_is_named_on_the_rerun(tmp_path, six_records, edit, said):
    """A shard's sidecar naming another shard had put that shard's records in the index twice
    (exit 0); a wrong count was written into an index readers refused; bad skip entries were
    KeyError and AttributeError tracebacks."""
    out = tmp_path / "cache"
    kwargs = dict(layout="wfdb_folder", root=str(six_records), out=str(out),
                  records_per_shard=2, workers=1)
    prepare.prepare(**kwargs)
    for name in ("index.json", "summary.json"):
        (out / name).unlink()
    path = out / "shard-00001-of-00003.json"
    sidecar = json.loads(path.read_text())
    edit(sidecar)
    path.write_text(json.dumps(sidecar))
    with pytest.raises(prepare.PrepareError) as raised:
        prepare.prepare(**kwargs)
    assert str(raised.value).startswith(f"{path}: {said}")
    assert str(raised.value).endswith("; delete it and shard-00001-of-00003.arrayrecord, then "
                                      "rerun prepare (it rewrites that shard)")


def test_a_merge_before_every_host_is_done_names_only_what_it_knows(tmp_path, six_records):
    """A plain --merge knows no host count: it had named "hosts [0] of 1", the host that was
    done. A refused merge into a mistyped folder had left the folder made."""
    common = dict(layout="wfdb_folder", root=str(six_records), records_per_shard=2, workers=1)
    out = tmp_path / "cache"
    prepare.prepare(out=str(out), num_hosts=3, host_index=0, **common)
    with pytest.raises(prepare.PrepareError) as plain:
        prepare.prepare(out=str(out), merge_only=True, **common)
    assert str(plain.value) == ("2 of 3 shards are not written yet (shard-00001-of-00003, ...): "
                                "run (or rerun) the hosts that write them, then `crema-jax "
                                "prepare ... --merge`")
    with pytest.raises(prepare.PrepareError, match=re.escape(
            "(shard-00001-of-00003, ...; hosts [1, 2] of 3): run (or rerun)")):
        prepare.prepare(out=str(out), merge_only=True, num_hosts=3, **common)
    typo = tmp_path / "typo" / "deep"
    with pytest.raises(prepare.PrepareError, match="no settings.json; nothing to merge"):
        prepare.prepare(out=str(typo), merge_only=True, **common)
    assert not (tmp_path / "typo").exists()


def test_another_programs_settings_json_is_not_called_a_cache(tmp_path, six_records):
    out = tmp_path / "editor"
    out.mkdir()
    (out / "settings.json").write_text('{"editor.tabSize": 4}')
    with pytest.raises(prepare.PrepareError, match=re.escape(
            f"{out / 'settings.json'}: not the settings of a crema_jax cache (no \"format\": "
            "\"crema_jax.cache/3\"); use a new --out folder")):
        prepare.prepare(layout="wfdb_folder", root=str(six_records), out=str(out), workers=1)
    assert (out / "settings.json").read_text() == '{"editor.tabSize": 4}'


@pytest.mark.parametrize("earlier", ["crema_jax.cache/1", "crema_jax.cache/2"])
def test_a_cache_of_an_earlier_format_is_not_resumed(tmp_path, six_records, earlier):
    """Its finished shards' rows keep no patient id (/1) or keep it as written (/2): resumed,
    one cache would mix the two."""
    out = tmp_path / "older"
    prepare.prepare(layout="wfdb_folder", root=str(six_records), out=str(out), workers=1,
                    stop_after_shards=1, records_per_shard=2)
    settings = json.loads((out / "settings.json").read_text())
    (out / "settings.json").write_text(json.dumps({**settings, "format": earlier}))
    with pytest.raises(prepare.PrepareError, match=re.escape(
            f"{out / 'settings.json'}: a cache of format {earlier}, not this version's "
            "crema_jax.cache/3 (resumed, it would mix the two); use a new --out folder")):
        prepare.prepare(layout="wfdb_folder", root=str(six_records), out=str(out), workers=1,
                        records_per_shard=2)


def test_a_merge_takes_a_shard_cut_short_since_its_host_wrote_it_as_not_written(
        tmp_path, six_records, capsys):
    """A host's shard truncated after its sidecar was written had been merged into the index
    (its sidecar was all the merge looked at). Now it is named as not written, with its host;
    that host's rerun rewrites it and the merge then succeeds."""
    common = dict(layout="wfdb_folder", root=str(six_records), records_per_shard=2, workers=1,
                  num_hosts=2)
    out = tmp_path / "cache"
    for host in (0, 1):   # 3 shards: host 0 writes shard 0, host 1 shards 1 and 2
        prepare.prepare(out=str(out), host_index=host, **common)
    shard = out / "shard-00002-of-00003.arrayrecord"
    written = shard.read_bytes()
    shard.write_bytes(written[:len(written) // 2])
    capsys.readouterr()
    with pytest.raises(prepare.PrepareError, match=re.escape(
            "1 of 3 shards are not written yet (shard-00002-of-00003; hosts [1] of 2)")):
        prepare.prepare(out=str(out), merge_only=True, **common)
    assert capsys.readouterr().out.startswith(
        f"prepare: {shard}: is {len(written) // 2} bytes, not the {len(written)} prepare wrote")
    assert not (out / "index.json").exists()
    prepare.prepare(out=str(out), host_index=1, **common)
    assert shard.read_bytes() == written
    assert prepare.prepare(out=str(out), merge_only=True, **common)["records"] == 6


def test_a_cache_is_not_resumed_with_another_patient_salt(tmp_path, six_records, monkeypatch):
    """Cache rows keep patient ids as salted hashes: a rerun (or another host) with another
    CREMA_JAX_PATIENT_SALT would give one patient two ids, and the splits and folds would part
    its records. settings.json holds the salted hash of a fixed key, which the rerun compares;
    the same salt resumes. A cache of records without patient ids (wfdb_folder) is the same
    under any salt and resumes under another."""
    manifest = tmp_path / "m.csv"
    with open(manifest, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "labels", "patient_id"])
        for i, head in enumerate(sorted(six_records.glob("*.hea"))):
            writer.writerow([str(head.with_suffix("")), "1000", f"P{i // 2}"])
    out, plain = tmp_path / "salted", tmp_path / "plain"
    monkeypatch.setenv("CREMA_JAX_PATIENT_SALT", "first secret")
    for layout, root, folder in (("manifest", manifest, out), ("wfdb_folder", six_records, plain)):
        prepare.prepare(layout=layout, root=str(root), out=str(folder), workers=1,
                        stop_after_shards=1, records_per_shard=2)
    check = json.loads((out / "settings.json").read_text())["patient_salt_check"]
    assert check == "p" + hashlib.sha256(b"first secret\0crema_jax.salt-check").hexdigest()[:16]
    assert json.loads((plain / "settings.json").read_text())["patient_salt_check"] is None
    monkeypatch.setenv("CREMA_JAX_PATIENT_SALT", "second secret")
    with pytest.raises(prepare.PrepareError, match=re.escape(
            f"{out} holds a cache whose patient ids were hashed with another "
            "CREMA_JAX_PATIENT_SALT (patient_salt_check): resumed, one patient would get two "
            "ids; set the salt it was built with, or use a new --out folder")):
        prepare.prepare(layout="manifest", root=str(manifest), out=str(out), workers=1,
                        records_per_shard=2)
    prepare.prepare(layout="wfdb_folder", root=str(six_records), out=str(plain), workers=1,
                    records_per_shard=2)
    monkeypatch.setenv("CREMA_JAX_PATIENT_SALT", "first secret")
    prepare.prepare(layout="manifest", root=str(manifest), out=str(out), workers=1,
                    records_per_shard=2)
    assert (out / "index.json").is_file() and (plain / "index.json").is_file()


def test_ids_that_are_all_missing_value_words_are_no_patient_ids(tmp_path, six_records,
                                                                 monkeypatch):
    """A layout whose patient ids are all "NaN", "N/A", ... (the rows keep none of them) had
    counted them as ids: the public-salt warning, a patient_salt_check, and a rerun under another
    salt refused. Such a cache is the same under any salt, as one without ids is."""
    from crema_jax.data.index import registry
    from crema_jax.data.reading import clinical

    build = registry.build_index
    words = ("NaN", "N/A", " none ", "", "NULL", "na")

    def index_with_missing_ids(*args, **kwargs):
        index = build(*args, **kwargs)
        for record, word in zip(index.records, words):
            record.meta["patient_id"] = word
        return index

    warned = []
    monkeypatch.setattr(registry, "build_index", index_with_missing_ids)
    monkeypatch.setattr(clinical, "warn_if_public_salt", lambda: warned.append(1))
    out = tmp_path / "cache"
    for salt in ("first secret", "second secret"):
        monkeypatch.setenv("CREMA_JAX_PATIENT_SALT", salt)
        prepare.prepare(layout="wfdb_folder", root=str(six_records), out=str(out), workers=1,
                        records_per_shard=2)
    assert json.loads((out / "settings.json").read_text())["patient_salt_check"] is None
    assert warned == [] and (out / "index.json").is_file()


def test_an_older_cache_of_missing_value_ids_is_refused_for_that_not_another_salt(
        tmp_path, six_records, monkeypatch):
    """A cache begun by a version that counted "NaN", "N/A", ... as patient ids has a
    patient_salt_check; this version, counting none, records none. The rerun was refused as
    "hashed with another salt" under the very same salt: now the message says what differs."""
    from crema_jax.data.cache import settings_file
    from crema_jax.data.index import registry

    build = registry.build_index

    def index_with_missing_ids(*args, **kwargs):
        index = build(*args, **kwargs)
        for record, word in zip(index.records, ("NaN", "N/A", "none", "NULL", "na", "nan")):
            record.meta["patient_id"] = word
        return index

    monkeypatch.setattr(registry, "build_index", index_with_missing_ids)
    monkeypatch.setenv("CREMA_JAX_PATIENT_SALT", "one secret")
    out = tmp_path / "cache"
    common = dict(layout="wfdb_folder", root=str(six_records), out=str(out), workers=1,
                  records_per_shard=2)
    with monkeypatch.context() as older:   # that version's test for ids
        older.setattr(settings_file, "has_patient_ids", lambda index: any(
            r.meta.get("patient_id") not in (None, "") for r in index.records))
        prepare.prepare(stop_after_shards=1, **common)
    assert json.loads((out / "settings.json").read_text())["patient_salt_check"] == \
        "p" + hashlib.sha256(b"one secret\0crema_jax.salt-check").hexdigest()[:16]
    with pytest.raises(prepare.PrepareError) as err:
        prepare.prepare(**common)
    assert str(err.value) == (
        f"{out} holds a cache of these records whose settings.json has a patient-id salt check "
        "(patient_salt_check) although none of them has a patient id (each is blank or a "
        "missing-value word: NaN, N/A, ...; an earlier version counted such words as ids): its "
        "rows hold no ids, but its shards were written for that settings.json; use a new --out "
        "folder")
