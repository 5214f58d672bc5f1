"""`crema-jax prepare --runner=DirectRunner` (Apache Beam, two worker processes) writes the cache
the local path writes, byte for byte; the preparation code runs without importing jax."""
import collections
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from tests.data import broken_records

CLI = [os.path.join(os.path.dirname(sys.executable), "crema-jax"), "prepare"]
BEAM = ["--runner=DirectRunner", "--beam_option=direct_num_workers=2",
        "--beam_option=direct_running_mode=multi_processing"]


def _prepare(*args):
    return subprocess.run(CLI + list(args), capture_output=True, text=True, timeout=600)


def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(pathlib.Path(folder).iterdir())}


@pytest.fixture(scope="module")
def mixed_root(tmp_path_factory, cinc_sample_dir):
    """The 50 bundled CinC records and the broken ones, with the skips expected by reason (the
    broken records the wfdb_folder layout lists: those with a header, and a signal file without
    one, counted as missing_header)."""
    root = tmp_path_factory.mktemp("mixed")
    for path in sorted(cinc_sample_dir.iterdir()):
        shutil.copy(path, root / path.name)
    broken = broken_records.make_broken_records(root / "broken")
    listed = [name for name, path in broken.items()
              if any(os.path.isfile(path + suffix) for suffix in (".hea", ".dat", ".mat"))]
    expected = collections.Counter(broken_records.EXPECTED_REASONS[name] for name in listed
                                   if broken_records.EXPECTED_REASONS[name] is not None)
    readable = sum(broken_records.EXPECTED_REASONS[name] is None for name in listed)
    return root, expected, 50 + readable


@pytest.mark.slow
def test_direct_runner_two_processes_equals_local_prepare(mixed_root, tmp_path):
    root, expected, written = mixed_root
    common = [f"--root={root}", "--records_per_shard=8"]
    local = _prepare(*common, f"--out={tmp_path / 'local'}", "--workers=2")
    assert local.returncode == 0, local.stderr
    beam = _prepare(*common, f"--out={tmp_path / 'beam'}", *BEAM)
    assert beam.returncode == 0, beam.stderr
    skipped = sum(expected.values())
    for run in (local, beam):
        lines = run.stdout.strip().splitlines()
        assert lines[-1] == f"prepared {written} records, skipped {skipped}"
        # The skip table by reason (Beam's: its counters).
        for reason, count in expected.items():
            assert [reason, str(count)] in [line.split() for line in lines]
    local_files, beam_files = _files(tmp_path / "local"), _files(tmp_path / "beam")
    num_shards = -(-(written + skipped) // 8)
    assert sum(name.endswith(".arrayrecord") for name in beam_files) == num_shards
    assert {"index.json", "settings.json", "summary.json"} <= set(beam_files)
    assert beam_files == local_files  # every file, byte for byte, and no other file


@pytest.mark.parametrize("mode", [["--beam_option=direct_running_mode=in_memory"], BEAM[1:]])
def test_a_strict_failure_leaves_no_plan_and_no_index(mixed_root, tmp_path, mode):
    """--strict on Beam stops at the first broken record, naming it in the command's last line
    (also when it failed in a worker process: the launcher then gets the worker's traceback as
    text), and removes its plan file (the shard tasks it wrote for the workers); no index.json
    claims a finished cache."""
    root, _, _ = mixed_root
    out = tmp_path / "beam"
    done = _prepare(f"--root={root}", f"--out={out}", "--records_per_shard=16", "--strict",
                    "--runner=DirectRunner", *mode)
    assert done.returncode == 1, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("crema-jax prepare: error: (--strict) "), last
    assert str(root / "broken") in last
    assert "RuntimeError" not in done.stderr      # no launcher traceback
    assert "INFO:apache_beam" not in done.stderr  # the workers log critical errors only
    names = {p.name for p in out.iterdir()}
    assert "settings.json" in names
    assert not names & {"prepare_plan.jsonl", "index.json", "summary.json"}


def test_preparation_code_never_imports_jax(tmp_path, cinc_sample_dir):
    """A Beam worker needs the data stack only: import every module of `prepare` (and Beam) and
    write a shard in a fresh interpreter, then look for jax."""
    code = f"""
import sys
import apache_beam
from crema_jax.cli import prepare as cli
from crema_jax.data.cache import beam_pipeline, hosts, prepare, shard_writer, source
from crema_jax.data import presets
task = {{"out_dir": {str(tmp_path)!r}, "shard": 0, "num_shards": 1,
        "records": [{{"record_id": "E07500", "path": {str(cinc_sample_dir / 'E07500')!r},
                     "labels": [], "split": "train", "source": "x", "reader": None}}],
        "target_fs": 250.0, "preprocess": presets.preprocessing("crema").to_dict(),
        "derive_limb_leads": True, "dtype": "int16", "strict": False, "settings_digest": "x"}}
sidecar = shard_writer.build_shard(task)
print(sidecar["num_records"], sorted(m for m in sys.modules if m == "jax" or
                                     m.startswith(("jax.", "jaxlib", "flax", "orbax"))))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[-2] == "1 []"


@pytest.mark.parametrize("option, said", [
    ("direct_num_workers=abc", "--beam_option: argument --direct_num_workers: invalid int "
                               "value: 'abc'"),
    ("direct_num_wokers=2", "--beam_option: Beam has no option direct_num_wokers"),
])
def test_a_beam_option_beam_refuses_is_one_line_before_anything_is_written(tmp_path, option,
                                                                           said):
    """Beam parses its options only when the pipeline runs: a bad value had printed 129 lines
    of usage after --out was made and its settings.json written; a misspelt option had been
    dropped with a warning (exit 0)."""
    from crema_jax.data.cache import beam_pipeline, prepare

    out = tmp_path / "cache"
    with pytest.raises(prepare.PrepareError) as raised:
        beam_pipeline.prepare_on_beam(layout="wfdb_folder", root=str(tmp_path), out=str(out),
                                      beam_options=dict([option.split("=")]))
    assert str(raised.value) == said and not out.exists()


def test_ctrl_c_inside_the_direct_runner_is_an_interruption(tmp_path):
    """The DirectRunner hands a Ctrl-C back as RuntimeError('KeyboardInterrupt [while running
    ...]'): it had ended in a 223-line traceback instead of `prepare: interrupted`."""
    import apache_beam as beam

    from crema_jax.data.cache import beam_pipeline

    pipeline = beam.Pipeline()

    def interrupted():
        raise RuntimeError("KeyboardInterrupt [while running 'read, preprocess, write shards']")
    pipeline.run = interrupted
    with pytest.raises(KeyboardInterrupt):
        beam_pipeline.run_pipeline(pipeline, str(tmp_path), [], [], {})


def test_a_beam_rerun_rewrites_a_shard_swapped_since_it_was_written(tmp_path, cinc_sample_dir):
    """Beam's shard step (beam_pipeline.write_shard, here outside a pipeline) checks a written
    shard against its sidecar's fingerprint as the local path does: shards swapped since are
    written again, the others kept."""
    from crema_jax.data.cache import beam_pipeline, prepare

    root = tmp_path / "records"
    root.mkdir()
    for head in sorted(cinc_sample_dir.glob("*.hea"))[:6]:
        for suffix in (".hea", ".mat"):
            shutil.copy(head.with_suffix(suffix), root / head.with_suffix(suffix).name)
    out = tmp_path / "cache"
    prepare.prepare(layout="wfdb_folder", root=str(root), out=str(out), workers=1,
                    records_per_shard=2)
    built = _files(out)
    names = [f"shard-{s:05d}-of-00003.arrayrecord" for s in range(3)]
    (out / names[0]).write_bytes(built[names[1]])
    (out / names[1]).write_bytes(built[names[0]])
    plan = prepare.make_plan(layout="wfdb_folder", root=str(root), out=str(out),
                             records_per_shard=2)
    stamps = {name: os.stat(out / name).st_mtime_ns for name in names}
    spans = beam_pipeline.write_plan(plan, strict=False)
    for span in spans:
        beam_pipeline.write_shard(span, str(out / beam_pipeline.PLAN_FILE))
    (out / beam_pipeline.PLAN_FILE).unlink()
    assert _files(out) == built
    assert os.stat(out / names[2]).st_mtime_ns == stamps[names[2]]   # kept, not rewritten
