"""Backbones: sharded multi-crop features equal the unsharded model crop by crop; Net1D's lead
zero-fill; missing parameters named; the registry picks the family from the checkpoint; a
checkpoint of the older model name loads."""
import jax
import numpy as np
import pytest
from flax import nnx

from crema_jax import config as config_lib
from crema_jax.inference import backbones
from crema_jax.runtime import checkpoint
from crema_jax.runtime import mesh as mesh_lib
from crema_jax.models import PretrainModel, build_model, default_model_config
from crema_jax.models import params as params_lib
from crema_jax.models.net1d import Net1D


def _batches(rng, n, batch, leads, crops=3, patches=30, size=75):
    out = []
    for start in range(0, n, batch):
        real = min(batch, n - start)
        valid = np.arange(batch) < real
        pv = np.ones((batch, crops, len(leads), patches), bool)
        pv[:, :, :, -3:] = rng.random((batch, crops, len(leads), 3)) < 0.5  # some padding
        out.append({
            "patches": rng.normal(size=(batch, crops, len(leads), patches, size)).astype(
                np.float32),
            "patch_valid": pv, "lead_indices": np.tile(np.asarray(leads, np.int32), (batch, 1)),
            "labels": rng.random((batch, 2)).astype(np.float32),
            "index": np.arange(start, start + batch), "valid": valid})
    return out


def test_sharded_extraction_matches_per_crop_model():
    leads = (0, 1, 2, 3, 4, 5)  # a reduced lead set: lead embeddings follow lead_indices
    cfg = default_model_config()
    cfg.size = "tiny"
    model = build_model(cfg, rngs=nnx.Rngs(3))
    params = nnx.to_pure_dict(nnx.state(model))
    config = config_lib.default_config()
    config.model = cfg
    runner = backbones.RUNNERS["sit"]
    graphdef, state = runner.build(config, params, seed=0)
    backbone = backbones.Backbone(runner, graphdef, state, config, 0)
    mesh = mesh_lib.make_mesh()
    assert mesh.devices.size == 8
    batches = _batches(np.random.default_rng(0), 13, 8, leads)
    out = backbones.run(backbones.make_apply(backbone, mesh), batches)
    assert out["outputs"].shape == (13, 3, 64)
    np.testing.assert_array_equal(out["index"], np.arange(13))
    # Reference: the pretraining model's own encoder on the flattened crops, one device.
    encoder = model.encoder
    reference = jax.jit(lambda p, l, v: encoder.features(p, l, v))  # noqa: E731
    for b, batch in enumerate(batches):
        real = int(batch["valid"].sum())
        flat = lambda x: x[:real].reshape((real * 3,) + x.shape[2:])  # noqa: E731
        leads_rep = np.repeat(batch["lead_indices"][:real], 3, axis=0)
        ref = np.asarray(reference(flat(batch["patches"]), leads_rep, flat(batch["patch_valid"])))
        np.testing.assert_allclose(out["outputs"][b * 8:b * 8 + real].reshape(real * 3, -1),
                                   ref, rtol=1e-4, atol=1e-5)


def test_net1d_features_zero_fill_missing_leads():
    cfg = {"name": "net1d", "in_channels": 12, "num_classes": 3, "filters": [8],
           "blocks": [1], "kernel": 5, "stride": 2, "group_width": 4}
    import ml_collections
    model = Net1D(ml_collections.ConfigDict(cfg), rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    backbone = backbones.Backbone(backbones.RUNNERS["net1d"], graphdef, state, None, 0)
    rng = np.random.default_rng(1)
    batch = {"patches": rng.normal(size=(8, 1, 2, 10, 20)).astype(np.float32),
             "patch_valid": np.ones((8, 1, 2, 10), bool),
             "lead_indices": np.tile(np.array([1, 7], np.int32), (8, 1))}
    mesh = mesh_lib.make_mesh(devices=jax.devices()[:1])  # the zero-fill is under test
    got = np.asarray(backbones.make_apply(backbone, mesh)(batch))
    x = np.zeros((8, 12, 200), np.float32)
    x[:, 1] = batch["patches"][:, 0, 0].reshape(8, 200)
    x[:, 7] = batch["patches"][:, 0, 1].reshape(8, 200)
    ref = jax.jit(lambda x: model.features(x))(x)  # noqa: E731
    np.testing.assert_allclose(got[:, 0], np.asarray(ref), rtol=1e-4, atol=1e-5)


def test_checkpoint_missing_parameter_is_named():
    cfg = default_model_config()
    cfg.size = "tiny"
    params = nnx.to_pure_dict(nnx.state(build_model(cfg, rngs=nnx.Rngs(0))))
    del params["encoder"]["norm"]
    config = config_lib.default_config()
    config.model = cfg
    with pytest.raises(ValueError, match="norm/scale"):
        backbones.RUNNERS["sit"].build(config, params, seed=0)


def test_round_batch():
    mesh = mesh_lib.make_mesh(devices=jax.devices()[:8])
    assert [mesh_lib.round_batch(b, mesh) for b in (1, 8, 9, 64)] == [8, 8, 16, 64]


def test_the_family_comes_from_the_model_and_random_needs_a_name():
    assert backbones.runner_of(config_lib.default_config("net1d")).family.name == "net1d"
    assert backbones.runner_of(config_lib.default_config("sit_encoder")).family.name == "sit"
    config, params = backbones.load_config_and_params("random", backbone="net1d")
    assert params is None and config.model.name == "net1d"
    with pytest.raises(ValueError, match="expected one of"):
        backbones.load_config_and_params("random", backbone="resnet")


def test_a_checkpoint_of_the_older_model_name_loads_with_the_same_outputs(tmp_path):
    """Checkpoints written before the pretraining model was called "sit_pretrain" say "sit"."""
    config = config_lib.default_config()
    config.model.size = "tiny"
    model = build_model(config.model, rngs=nnx.Rngs(5))
    saved = checkpoint.config_to_json_dict(config)
    saved["model"]["name"] = "sit"
    checkpoint.save_model_checkpoint(tmp_path, nnx.to_pure_dict(nnx.state(model)), saved)

    params, loaded, _ = config_lib.load_checkpoint(tmp_path)
    assert loaded.model.name == "sit_pretrain"
    assert isinstance(params_lib.merge(loaded.model, params), PretrainModel)
    backbone = backbones.load(str(tmp_path))
    assert backbone.name == "sit"
    batches = _batches(np.random.default_rng(2), 4, 4, tuple(range(12)), crops=1)
    got = backbones.make_apply(backbone, mesh_lib.make_mesh(devices=jax.devices()[:1]))(
        batches[0])
    b = batches[0]
    want = model.encoder.features(b["patches"][:, 0], b["lead_indices"], b["patch_valid"][:, 0])
    assert np.shape(got) == (4, 1, 64)   # the tiny SiT's width
    np.testing.assert_allclose(np.asarray(got)[:, 0], np.asarray(want), rtol=1e-5, atol=1e-6)


def test_what_every_evaluation_sets_is_no_part_of_a_models_identity():
    """The fields eval_data_config sets itself (whatever the checkpoint held) are left out of
    the architecture digest, and only those and the pretraining ones: how a checkpoint's run
    read its records is not what an evaluation reads from one."""
    from tests.configs import tiny_config

    config, reading = tiny_config(), tiny_config()
    reading.data.read_threads, reading.data.prefetch_buffer_size = 7, 9
    reading.data.split, reading.data.strict, reading.data.num_epochs = "val", True, 5
    reading.data.batch_size, reading.data.cache_dir = 3, "/cache/elsewhere"
    assert backbones.architecture(reading) == backbones.architecture(config)
    got = backbones.eval_data_config(reading, ("I", "II"), batch_size=8)
    assert (got.read_threads, got.prefetch_buffer_size, got.split, got.strict, got.num_epochs,
            got.batch_size, got.cache_dir) == (2, 4, "", False, 1, 8, "")
    cropped = tiny_config()
    cropped.data.crop_samples = int(config.data.crop_samples) // 2
    assert backbones.architecture(cropped) != backbones.architecture(config)
