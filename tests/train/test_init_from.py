"""Continued pretraining from a params-only checkpoint (what `import-torch` writes): the run must
start from exactly the saved weights (fixed tables included) with a fresh optimizer."""
import pathlib

import jax
import numpy as np
import pytest

from crema_jax.models import params as params_lib
from crema_jax.models.config import SIZES
from crema_jax.runtime import checkpoint as ckpt_lib
from crema_jax.runtime import workdir as workdir_lib
from crema_jax.train import trainer
from tests.configs import tiny_config


def _flat(tree, prefix=""):
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = np.asarray(v)
    return out


def _recognisable(tree, counter=None):
    """Every leaf replaced by a distinct smooth pattern no initialiser would produce."""
    counter = counter if counter is not None else [0]
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out[k] = _recognisable(v, counter)
        else:
            counter[0] += 1
            n = int(np.prod(v.shape))
            out[k] = (0.05 * np.sin(0.37 * np.arange(n) + counter[0])).reshape(v.shape).astype(
                np.float32)
    return out


@pytest.fixture(scope="module")
def tiny_params():
    """A tiny model's param shapes, filled with recognisable values (no init needed)."""
    config = tiny_config()
    config.model.scan_layers = False
    return config, _recognisable(params_lib.abstract_params(config.model))


def _saved_model(tmp_path, tiny_params, name="imported", drop=()):
    """The params as import-torch writes them: unscanned blocks, params + config only."""
    config, params = tiny_params
    params = {k: v for k, v in params.items() if k not in drop}
    ckpt_lib.save_model_checkpoint(tmp_path / name, params, config, step=0)
    return tmp_path / name, _flat(params)


def _frozen_config(**overrides):
    # lr 0: two optimizer steps leave every weight as loaded, so the state after training shows
    # exactly what initialisation produced (AdamW's decay is scaled by the lr too). The MAE loss
    # on one view compiles faster than CREMA's two; the model (and so the params) is the same.
    return tiny_config(**{"train.num_steps": 2, "optim.base_lr": 0.0, "loss.name": "mae",
                          "data.num_views": 1, **overrides})


def _expected_stacked(saved: dict) -> dict:
    """Per-layer `.../blocks/{i}/x` leaves stacked into `.../blocks/x` (scan_layers layout)."""
    groups = {}
    for path, value in saved.items():
        parts = path.split("/")
        if "blocks" in parts:
            at = parts.index("blocks")
            key = "/".join(parts[:at + 1] + parts[at + 2:])
            groups.setdefault(key, {})[int(parts[at + 1])] = value
        else:
            groups[path] = {None: value}
    return {k: v[None] if None in v else np.stack([v[i] for i in range(len(v))])
            for k, v in groups.items()}


def test_init_from_starts_from_the_saved_weights_with_scan_layers(tmp_path, tiny_params, capsys):
    source, saved = _saved_model(tmp_path, tiny_params)
    # fsdp 2: the loaded host arrays are split onto the mesh.
    config = _frozen_config(**{"train.init_from": str(source), "model.scan_layers": True,
                               "mesh.fsdp": 2})
    out = trainer.train(config, tmp_path / "run", devices=jax.devices()[:2])
    assert "initialised params from" in capsys.readouterr().out
    assert sorted(out["losses"]) == [1, 2] and all(np.isfinite(list(out["losses"].values())))
    state = out["state"]
    assert int(state["step"]) == 2
    got = {**_flat(state["params"]), **_flat(state["fixed"])}
    expected = _expected_stacked(saved)
    assert sorted(got) == sorted(expected)
    for path, value in expected.items():
        np.testing.assert_array_equal(got[path], value, err_msg=path)
    # The fixed sin-cos tables were compared above as well: they came from the file (recognisable
    # values, not sincos_table) and the two steps left them as loaded.
    assert {"encoder/pos_embedding", "decoder/pos_embedding"} <= set(_flat(state["fixed"]))
    # The run's own checkpoint (step 2) is a full training checkpoint of the same weights.
    params, _, step = ckpt_lib.load_model_checkpoint(tmp_path / "run")
    assert step == 2 and workdir_lib.has_train_state(tmp_path / "run", 2)
    np.testing.assert_array_equal(_flat(params)["encoder/pos_embedding"],
                                  saved["encoder/pos_embedding"])


def test_params_only_workdir_continues_with_fresh_optimizer(tmp_path, tiny_params, capsys):
    # The workdir IS the import output; the projection head is absent from it.
    proj_key = "projector"
    workdir, saved = _saved_model(tmp_path, tiny_params, name="workdir", drop=(proj_key,))
    out = trainer.train(_frozen_config(), workdir, devices=jax.devices()[:1])
    printed = capsys.readouterr().out
    assert f"initialised params from {workdir}" in printed and "freshly initialised" in printed
    # Fresh optimizer at the imported step 0: both steps ran and were counted.
    assert sorted(out["losses"]) == [1, 2] and int(out["state"]["step"]) == 2
    got = {**_flat(out["state"]["params"]), **_flat(out["state"]["fixed"])}
    for path, value in saved.items():
        np.testing.assert_array_equal(got[path], value, err_msg=path)
    fresh = {p: v for p, v in got.items() if p.startswith(proj_key + "/")}
    kernels = [v for p, v in fresh.items() if p.endswith("kernel")]
    assert len(fresh) == 4 and len(kernels) == 2
    assert all(np.isfinite(v).all() and v.std() > 0.01 for v in kernels)  # xavier, not zeros
    assert workdir_lib.latest_step(workdir_lib.checkpoints_dir(workdir)) == 2


def test_other_architecture_is_a_clear_error(tmp_path, tiny_params):
    source, _ = _saved_model(tmp_path, tiny_params)
    config = _frozen_config(**{"train.init_from": str(source), "model.width": 96,
                               "model.depth": 3})
    with pytest.raises(ValueError) as err:
        trainer.train(config, tmp_path / "run", devices=jax.devices()[:1])
    message = str(err.value)
    assert str(source) in message
    assert "config.model.width: run 96, checkpoint 64" in message
    assert "config.model.depth: run 3, checkpoint 2" in message


def test_misshaped_params_are_listed(tmp_path, tiny_params):
    # The decoder is not part of the architecture check: the shape check names its params.
    source, _ = _saved_model(tmp_path, tiny_params)
    config = _frozen_config(**{"train.init_from": str(source), "model.decoder_width": 48})
    with pytest.raises(ValueError) as err:
        trainer.train(config, tmp_path / "run", devices=jax.devices()[:1])
    message = str(err.value)
    assert str(source) in message and "other shapes" in message
    assert "decoder/norm/scale: checkpoint (32,), model (48,)" in message


@pytest.mark.parametrize("field, value", [("width", 128), ("depth", 3)])
def test_a_resume_refused_for_another_size_field_names_the_values_it_resolves_to(field, value):
    """A size override of 0 is the size's own value: "config.model.depth: checkpoint 0, run 3;
    (model depth: 2 vs 3)" named the placeholder, then the values. Each field once, as it
    takes effect."""
    from crema_jax.train import resume

    saved, run = tiny_config(), tiny_config(**{f"model.{field}": value})
    with pytest.raises(ValueError) as raised:
        resume.resume_changes(run, saved, source="W")
    ckpt = SIZES[saved.model.size][field]   # the registry's, e.g. tiny's depth 2
    assert str(raised.value) == (
        f"W: this run cannot resume the workdir's checkpoint: config.model.{field}: checkpoint "
        f"{ckpt!r}, run {value!r}. Use the checkpoint's values, or a new --workdir")


def test_a_resume_with_another_worker_count_is_refused_before_any_restore():
    """data.num_workers 0 -> 2 on resume had failed to restore Grain's per-worker iterator
    state at every step, set each aside as damaged, and the next rerun started from step 0."""
    from crema_jax.train import resume

    saved, run = tiny_config(), tiny_config(**{"data.num_workers": 2})
    with pytest.raises(ValueError) as raised:
        resume.resume_changes(run, saved, source="W")
    assert str(raised.value) == (
        f"W: this run cannot resume the workdir's checkpoint: config.data.num_workers: "
        f"checkpoint {saved.data.num_workers!r}, run 2. Use the checkpoint's values, or a new "
        "--workdir")


def test_a_warm_start_refuses_other_patch_norms_and_names_what_it_leaves_unused(tiny_params):
    """A checkpoint with ST-MEM's patch norms warm-started a run without them: the norms were
    dropped unsaid, and embeddings differed by up to 0.58 from the checkpoint's."""
    from crema_jax.train import warm_start

    config, params = tiny_params
    without = tiny_config(**{"model.patch_norms": False})
    with pytest.raises(ValueError, match="config.model.patch_norms: run False, checkpoint True"):
        warm_start.check_architecture(without.model, config.model, source="ckpt")
    template = params_lib.abstract_params(without.model)
    fitted, missing, unused = warm_start.fit_params(params, template, source="ckpt")
    assert missing == [] and unused == ["encoder/patch_embed/in_norm",
                                        "encoder/patch_embed/out_norm"]
    np.testing.assert_array_equal(fitted["encoder"]["patch_embed"]["proj"]["kernel"],
                                  params["encoder"]["patch_embed"]["proj"]["kernel"])
    position = tiny_config(**{"model.lead_embedding": "position"})
    assert warm_start.meaning_changes(position.model, config.model) == [
        "config.model.lead_embedding: run 'position', checkpoint 'canonical'"]
    assert warm_start.meaning_changes(config.model, config.model) == []


def test_imported_step_is_kept_by_retention_and_is_never_a_damaged_training_step(
        tmp_path, tiny_params, capsys):
    """The workdir is an import (params-only step 0). Orbax's max_to_keep had deleted step 0,
    the one converted copy of the imported weights; and when the run's own step went bad, step
    0 had been restored as a training state, renamed `0.damaged-*`, and the run refused."""
    workdir, saved = _saved_model(tmp_path, tiny_params, name="workdir")
    config = _frozen_config(**{"checkpoint.every_steps": 1, "checkpoint.max_to_keep": 1})
    trainer.train(config, workdir, devices=jax.devices()[:1])
    root = workdir_lib.checkpoints_dir(workdir)
    assert workdir_lib.complete_steps(root) == [0, 2]       # step 1 retired, step 0 kept

    for path in pathlib.Path(root, "2", "params").rglob("*"):  # step 2's weights: a disk fault
        if path.is_file() and path.parent.name == "d":
            path.write_bytes(b"\0garbage" * 8)
    capsys.readouterr()
    out = trainer.train(config, workdir, devices=jax.devices()[:1])
    printed = capsys.readouterr().out
    assert "checkpoint step 2 could not be restored" in printed
    assert f"no training checkpoint of {workdir} restores; starting again from its imported " \
           "weights" in printed and f"initialised params from {workdir}" in printed
    assert sorted(out["losses"]) == [1, 2]
    names = sorted(p.name for p in root.iterdir())
    assert "0" in names and not any(n.startswith("0.damaged") for n in names)
    assert sum(n.startswith("2.damaged-") for n in names) == 1
    got = {**_flat(out["state"]["params"]), **_flat(out["state"]["fixed"])}
    for path, value in saved.items():                       # lr 0: still the imported weights
        np.testing.assert_array_equal(got[path], value, err_msg=path)


def test_init_from_beside_an_imported_workdir_is_refused(tmp_path, tiny_params):
    """Both name the starting weights; config.train.init_from had been ignored without a word."""
    workdir, _ = _saved_model(tmp_path, tiny_params, name="workdir")
    other, _ = _saved_model(tmp_path, tiny_params, name="other")
    with pytest.raises(ValueError, match=rf"^config\.train\.init_from={other}: the workdir "
                       rf"{workdir} holds imported weights too \(checkpoints/0, params only\)"):
        trainer.train(_frozen_config(**{"train.init_from": str(other)}), workdir,
                      devices=jax.devices()[:1])
    assert workdir_lib.complete_steps(workdir_lib.checkpoints_dir(workdir)) == [0]
