"""Nothing lost: damaged and incomplete steps, a stale lock, a second run on one workdir,
starting over on a used workdir, and resuming with another model."""
import json
import re
import socket
import time

import jax
import pytest

from crema_jax.runtime import checkpoint as ckpt_lib
from crema_jax.runtime import workdir as workdir_lib
from crema_jax.train import trainer
from tests.configs import tiny_config
from tests.runtime.pids import dead_pid
from tests.train.helpers import start_cli

pytestmark = pytest.mark.slow  # drills: every test trains the tiny model, some several times


def _run(workdir, **overrides):
    return trainer.train(tiny_config(**overrides), workdir, devices=jax.devices()[:1])


def test_damaged_incomplete_and_stale_are_survived(tmp_path, capsys):
    workdir = tmp_path / "run"
    _run(workdir, **{"train.num_steps": 4})
    root = workdir / "checkpoints"
    assert workdir_lib.complete_steps(root) == [2, 4]

    # Step 4's array data overwritten (a disk fault), and the lock of a run that died.
    for path in (root / "4" / "params").rglob("*"):
        if path.is_file() and path.parent.name == "d":
            path.write_bytes(b"\0garbage" * 8)
    (workdir / workdir_lib.WorkdirLock.NAME).write_text(json.dumps(
        {"pid": dead_pid(), "host": socket.gethostname(), "started": "earlier"}))
    capsys.readouterr()
    out = _run(workdir, **{"train.num_steps": 6})
    printed = capsys.readouterr().out
    assert "took over the stale lock of pid" in printed
    assert "checkpoint step 4 could not be restored" in printed and "resumed from step 2" in printed
    assert sorted(out["losses"]) == [3, 4, 5, 6]
    damaged = [p.name for p in root.iterdir() if p.name.startswith("4.damaged-")]
    assert len(damaged) == 1 and (root / damaged[0] / "params").is_dir()   # kept, not deleted
    assert not (workdir / workdir_lib.WorkdirLock.NAME).exists()            # released

    # A crash while saving step 6: its commit marker never written. The rerun is not blocked.
    (root / "6" / workdir_lib.COMMIT_MARKER).unlink()
    out = _run(workdir, **{"train.num_steps": 8})
    printed = capsys.readouterr().out
    assert "checkpoint step 6 was left incomplete" in printed and "resumed from step 4" in printed
    assert sorted(out["losses"]) == [5, 6, 7, 8]
    assert workdir_lib.complete_steps(root)[-1] == 8
    assert any(p.name.startswith("6.incomplete-") for p in root.iterdir())


def test_optimizer_state_changed_after_saving_is_a_damaged_step(tmp_path, capsys):
    """Same-size damage to a data file (one byte) reads without an error from Orbax; the digests
    saved with the step catch it, and the run resumes from the step before."""
    workdir = tmp_path / "run"
    _run(workdir, **{"train.num_steps": 4})
    root = workdir / "checkpoints"
    data = max((p for p in (root / "4" / "opt_state").rglob("*")
                if p.is_file() and p.parent.name == "d"), key=lambda p: p.stat().st_size)
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0x10
    data.write_bytes(bytes(raw))
    capsys.readouterr()
    out = _run(workdir, **{"train.num_steps": 6})
    printed = " ".join(capsys.readouterr().out.split())
    assert (f"checkpoint step 4 could not be restored (DamagedCheckpointError: "
            f"{root / '4' / 'opt_state'}: damaged, 1 saved array differs from the digests") \
        in printed, printed
    assert "resumed from step 2" in printed and sorted(out["losses"]) == [3, 4, 5, 6]


def test_an_item_without_its_commit_marker_is_not_a_step(tmp_path):
    _run(tmp_path, **{"train.num_steps": 2})
    root = tmp_path / "checkpoints"
    assert workdir_lib.latest_step(root) == 2
    (root / "2" / "opt_state" / workdir_lib.COMMIT_MARKER).unlink()
    assert workdir_lib.latest_step(root) is None


def test_starting_over_on_a_used_workdir_needs_overwrite(tmp_path):
    _run(tmp_path, **{"train.num_steps": 2})
    with pytest.raises(ValueError, match="checkpoint.overwrite=True"):
        _run(tmp_path, **{"train.num_steps": 2, "checkpoint.resume": False})
    assert workdir_lib.complete_steps(tmp_path / "checkpoints") == [2]
    notes = workdir_lib.prepare_workdir(tmp_path, resume=False, overwrite=True)
    moved = [p for p in tmp_path.iterdir() if p.name.startswith("checkpoints.replaced-")]
    assert len(moved) == 1 and workdir_lib.complete_steps(moved[0]) == [2] and notes


def test_a_resume_whose_every_step_was_set_aside_is_refused_not_started_from_0(tmp_path):
    """After every step had been set aside as damaged, the next rerun had trained from step 0
    without a word; with resume=False it starts over, as asked."""
    root = tmp_path / "checkpoints"
    for name in ("2.damaged-20261206T100000Z", "4.damaged-20261206T100000Z"):
        (root / name).mkdir(parents=True)
    with pytest.raises(ValueError) as refused:
        workdir_lib.prepare_workdir(tmp_path, resume=True, overwrite=False)
    assert str(refused.value) == (
        f"{root}: every checkpoint step was set aside as damaged (2.damaged-20261206T100000Z, "
        "4.damaged-20261206T100000Z), so there is nothing to resume; choose a new --workdir, "
        "or pass --config.checkpoint.resume=False to train this one from step 0")
    assert workdir_lib.prepare_workdir(tmp_path, resume=False, overwrite=False) == []
    for folder in (root / "6", root / "6" / "params"):  # a committed step beside them
        folder.mkdir()
        (folder / workdir_lib.COMMIT_MARKER).write_text("")
    assert workdir_lib.complete_steps(root) == [6]
    assert workdir_lib.prepare_workdir(tmp_path, resume=True, overwrite=False) == []
    assert sorted(p.name for p in root.iterdir())[:2] == ["2.damaged-20261206T100000Z",
                                                          "4.damaged-20261206T100000Z"]


@pytest.mark.parametrize("name", ["checkpoints", "checkpoints/2",
                                  "checkpoints/2.orbax-checkpoint-tmp-1"])
def test_files_where_checkpoints_go_are_refused_and_kept(tmp_path, name):
    """A file named checkpoints had hung the first save (Orbax waited for ever); a file named
    like a step had been replaced by that step without a word."""
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("the user's")
    with pytest.raises(ValueError, match=re.escape(f"{path}: a file ")):
        _run(tmp_path, **{"train.num_steps": 2})
    assert path.read_text() == "the user's"


@pytest.mark.parametrize("inside", [False, True])
def test_a_file_given_as_the_workdir_is_named_and_kept(tmp_path, inside):
    """A file as --workdir (or as a folder above it) had stopped the run with only
    '[Errno 17] File exists'."""
    user_file = tmp_path / "notes.txt"
    user_file.write_text("the user's")
    workdir = user_file / "run" if inside else user_file
    lock = workdir_lib.WorkdirLock(workdir)
    with pytest.raises(ValueError, match=re.escape(f"{workdir}: {user_file} is a file, not a "
                                                   "folder")):
        lock.acquire()
    assert user_file.read_text() == "the user's" and not lock.held


def test_resuming_with_another_model_names_the_field(tmp_path, capsys):
    _run(tmp_path, **{"train.num_steps": 2})
    with pytest.raises(ValueError, match=r"config\.model\.size: checkpoint 'tiny', run 'small'"):
        _run(tmp_path, **{"train.num_steps": 4, "model.size": "small"})
    capsys.readouterr()
    _run(tmp_path, **{"train.num_steps": 4})                     # a longer run: allowed, said
    assert "resuming with changed config fields: train.num_steps 2 -> 4" in \
        capsys.readouterr().out


def test_a_damaged_saved_config_is_a_damaged_step(tmp_path, capsys):
    """Step 4's config/metadata emptied: pretrain sets step 4 aside and resumes from step 2
    (it stopped with "Expecting value: line 1 column 1", naming no file); reading the
    checkpoint elsewhere (embed, export-torch) names the file."""
    from crema_jax import config as config_lib
    _run(tmp_path, **{"train.num_steps": 4})
    metadata = tmp_path / "checkpoints" / "4" / "config" / "metadata"
    metadata.write_bytes(b"")
    with pytest.raises(ValueError, match=re.escape(f"{metadata}: damaged (")):
        config_lib.load_checkpoint_config(tmp_path)
    capsys.readouterr()
    out = _run(tmp_path, **{"train.num_steps": 6})
    printed = capsys.readouterr().out
    assert "checkpoint step 4 could not be restored (DamagedConfigError" in printed
    assert "resumed from step 2" in printed and sorted(out["losses"]) == [3, 4, 5, 6]


@pytest.mark.parametrize("field,value", [("model.decoder_depth", 2),
                                         ("train.global_batch_size", 4)])
def test_a_change_the_saved_state_cannot_follow_is_refused_before_any_restore(tmp_path, field,
                                                                             value):
    """A decoder field is outside the encoder architecture a warm start compares, yet it shapes
    the saved parameters: the restore of every step failed and each was set aside as damaged,
    and the corrected rerun then started again from step 0. The batch size shapes the saved
    data iterator (the step was then called with the old batch). Both are refused up front,
    naming the field; every step stays, and the corrected run resumes."""
    _run(tmp_path, **{"train.num_steps": 2})
    root = tmp_path / "checkpoints"
    with pytest.raises(ValueError, match=re.escape(f"config.{field}: checkpoint")):
        _run(tmp_path, **{"train.num_steps": 4, field: value})
    assert sorted(p.name for p in root.iterdir()) == ["2"]
    out = _run(tmp_path, **{"train.num_steps": 4})
    assert sorted(out["losses"]) == [3, 4]


def test_a_second_run_on_the_same_workdir_is_refused(tmp_path, jax_cache_dir):
    """Two real processes: the second is refused at once; the first finishes with its
    checkpoints intact."""
    first = start_cli(tmp_path, "--config.train.num_steps=6", "--config.checkpoint.every_steps=2",
                      step_delay_seconds=1.0, cache_dir=jax_cache_dir)
    lock = tmp_path / workdir_lib.WorkdirLock.NAME
    deadline = time.time() + 300
    while not lock.exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert lock.exists(), first.communicate()[0]
    second = start_cli(tmp_path, "--config.train.num_steps=6", cache_dir=jax_cache_dir)
    out2, _ = second.communicate(timeout=300)
    assert second.returncode == 1, out2
    lines = [line for line in out2.splitlines() if "error" in line]
    assert lines and "is in use: a run by pid" in lines[-1] and str(first.pid) in lines[-1]
    out1, _ = first.communicate(timeout=600)
    assert first.returncode == 0, out1
    assert workdir_lib.complete_steps(tmp_path / "checkpoints")[-1] == 6
    params, _, step = ckpt_lib.load_model_checkpoint(tmp_path)
    assert step == 6 and not lock.exists()


@pytest.mark.parametrize("failure", [
    ConnectionResetError(104, "Connection reset by peer"),
    MemoryError(),
    ValueError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 4.00GiB"),
])
def test_a_restore_that_fails_for_the_machine_or_store_keeps_the_step(tmp_path, capsys,
                                                                      monkeypatch, failure):
    """Out of memory, a dropped connection: not damage. The step stays where it is (set aside,
    every later resume would skip it) and the run stops, naming it and the cause."""
    workdir = tmp_path / "run"
    _run(workdir, **{"train.num_steps": 2})
    root = workdir / "checkpoints"
    before = sorted(p.name for p in root.iterdir())

    def fail(*args, **kwargs):
        try:
            raise failure
        except Exception as err:  # as Orbax does: the cause wrapped in its own error
            raise RuntimeError("restore failed") from err
    monkeypatch.setattr(ckpt_lib, "restore_train_state", fail)
    with pytest.raises(OSError, match=rf"^{re.escape(str(root / '2'))}: could not be restored "
                                      r"\(RuntimeError: restore failed\); this is no damage"):
        _run(workdir, **{"train.num_steps": 4})
    assert sorted(p.name for p in root.iterdir()) == before
    monkeypatch.undo()
    out = _run(workdir, **{"train.num_steps": 4})                  # the cause gone: it resumes
    assert sorted(out["losses"]) == [3, 4] and "resumed from step 2" in capsys.readouterr().out
