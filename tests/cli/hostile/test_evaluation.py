"""probe, finetune and compare: --root and --cache_dir together, --split_fractions the folds
replace, fewer than three folds, unknown augmentations, lead sets and label fractions listing
nothing or a value twice, a --batch_size larger than the dataset, a --workdir holding an earlier
report or a folder where a figure goes. Each is one line naming the flag (exit 2) or folder, or
is done right and said."""
import re
import types

import pytest

from crema_jax.cli import probe
from crema_jax.evaluate import frozen_features
from tests.cli.conftest import _fails
from tests.cli.hostile.helpers import _cli, _hashes, _one_line


def test_root_and_cache_dir_together_are_refused(tmp_path, cinc_sample_dir, sit_checkpoint):
    cache = tmp_path / "cache"
    cache.mkdir()
    before = _hashes(tmp_path, sit_checkpoint)
    done = _cli("probe", f"--checkpoint={sit_checkpoint}", f"--root={cinc_sample_dir}",
                f"--cache_dir={cache}", f"--workdir={tmp_path / 'probe'}")
    _one_line(done, "probe", f"--root={cinc_sample_dir} and --cache_dir={cache}: give one")
    assert _hashes(tmp_path, sit_checkpoint) == before


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


def test_folds_below_three_and_unknown_augmentations_are_flag_errors(tmp_path, capsys,
                                                                    cinc_sample_dir):
    """--folds=2 had been refused with exit 1 after the whole dataset was indexed, and
    --augment=bogus with exit 1 naming a config field (data.augment.names)."""
    from crema_jax.cli import finetune, probe
    common = ["--checkpoint=random", f"--root={cinc_sample_dir}", f"--workdir={tmp_path / 'w'}"]
    for k in (1, 2):
        _fails(probe, [*common, f"--folds={k}"], capsys, f"--folds={k}: expected 0 (the "
               "layout's splits) or at least 3 (a test, a validation and a training fold)",
               code=2)
    names = "amplitude_scale, baseline_wander, gaussian_noise, time_shift, lead_drop"
    _fails(finetune, [*common, "--augment=gaussian_noise,bogus"], capsys,
           "--augment=gaussian_noise,bogus: unknown augmentation 'bogus'; expected 'config', "
           f"'none', or names among {names}", code=2)
    _fails(finetune, [*common, "--augment=none,lead_drop"], capsys,
           "--augment=none,lead_drop: 'config' and 'none' stand alone", code=2)
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("flag, said", [
    ("--lead_sets=", "--lead_sets=: expected one or more distinct lead sets"),
    ("--lead_sets=I+I", "--lead_sets entry 'I+I': I named twice"),
    ("--lead_sets=V1+v1", "--lead_sets entry 'V1+v1': unknown leads ['v1']"),
    ("--lead_sets=I,12,I", "--lead_sets=I,12,I: expected one or more distinct lead sets"),
    ("--label_fractions=1,1.0", "--label_fractions=1,1.0: expected one or more distinct "
                                "fractions"),
    ("--label_fractions=", "--label_fractions=: expected one or more distinct fractions"),
    ("--batch_size=1000000000000", "--batch_size"),
])
def test_evaluation_flags_listing_nothing_or_a_value_twice_are_usage_errors(
        sit_checkpoint, tmp_path, capsys, flag, said):
    _fails(probe, [f"--checkpoint={sit_checkpoint}", f"--root={tmp_path}",
                   f"--workdir={tmp_path / 'w'}", flag], capsys, said, code=2)


def test_frozen_features_of_a_small_dataset_use_a_batch_no_larger_than_it(monkeypatch):
    """--batch_size=2048 on 45 records padded every batch to 2,048 ECGs (killed at 23 GB)."""
    seen = {}

    def capture(backbone, leads, *, batch_size, **kwargs):
        seen["batch_size"] = batch_size
        raise StopIteration  # nothing further is needed from the extraction

    monkeypatch.setattr(frozen_features.backbones, "eval_data_config", capture)
    mesh = types.SimpleNamespace(shape={"data": 1, "fsdp": 1})
    data = types.SimpleNamespace(infos=[None] * 45)
    with pytest.raises(StopIteration):
        frozen_features.extract_features(None, data, "12", {"batch_size": 2048,
                                                            "num_workers": 0, "preset": ""}, mesh)
    assert seen["batch_size"] == 45


def test_an_evaluation_workdir_with_an_earlier_report_says_it_is_replaced(tmp_path):
    """A second probe into the same --workdir replaced report.json, report.md and the plots
    without a word."""
    from crema_jax.evaluate import report

    said = []
    report.workdir_path(str(tmp_path / "new"), log=said.append)
    assert said == []
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "report.json").write_text("{}")
    report.workdir_path(str(tmp_path / "old"), log=said.append)
    assert said == [f"{tmp_path / 'old'}: replacing the report of an earlier evaluation "
                    "there; use a new --workdir to keep it"]
    # A folder where a figure goes: refused before the run (it had failed after replacing the
    # report's other files).
    (tmp_path / "old" / "roc.png").mkdir()
    with pytest.raises(ValueError, match=re.escape(
            f"--workdir={tmp_path / 'old'}: roc.png is a folder, where this command writes a "
            "file")):
        report.workdir_path(str(tmp_path / "old"), log=said.append)
