"""What the trainer compiles depends on its target: the global batch comes from
config.train.global_batch_size, and the XLA:CPU workaround (layers.residual_boundary) is in a CPU
program only, never in one compiled for a TPU slice."""
import jax
import pytest

from crema_jax.data.pipeline import batch as batch_lib
from crema_jax.runtime import mesh as mesh_lib
from crema_jax.train import trainer
from tests.configs import tiny_config


def _lowered(config, devices):
    """(setup, the step lowered to StableHLO) for `devices`."""
    setup = trainer.build(config, devices=devices)
    batch = mesh_lib.abstract_batch(batch_lib.pretrain_spec(config.data,
                                                            setup.per_process_batch),
                                    setup.mesh)
    rng = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=setup.replicated)
    with setup.on_mesh():
        return setup, setup.step_fn.lower(trainer.abstract_state(setup), batch, rng)


# The workaround's trace in StableHLO: its opaque predicate, an rng draw (nothing else in the
# step draws with stablehlo.rng: dropout and drop-path use threefry). Its conditional is only
# told apart from jnp.diagonal's constant-predicate ones after XLA folds those: see compiled.
WORKAROUND = "stablehlo.rng"


def test_global_batch_size_sets_the_global_batch_on_8_devices():
    flops = {}
    for global_batch in (8, 16):
        config = tiny_config(**{"train.global_batch_size": global_batch, "mesh.data": 8})
        setup, lowered = _lowered(config, jax.devices()[:8])
        assert setup.global_batch == global_batch and setup.mesh.shape["data"] == 8
        assert setup.per_process_batch == global_batch            # one process
        patches = lowered.args_info[0][1]["patches"]   # (args, kwargs): (state, batch, rng)
        assert patches.shape[0] == global_batch                      # what the step is fed
        flops[global_batch] = lowered.cost_analysis()["flops"]
    # XLA's own count of the step's work doubles with the batch.
    assert flops[16] / flops[8] == pytest.approx(2.0, rel=0.05)
    with pytest.raises(ValueError, match=r"global_batch_size=12: expected a multiple of the 8 "
                       r"batch shards"):
        trainer.build(tiny_config(**{"train.global_batch_size": 12, "mesh.data": 8}),
                      devices=jax.devices()[:8])
    with pytest.raises(ValueError, match="data.batch_size=4: pretraining derives"):
        trainer.build(tiny_config(**{"data.batch_size": 4}), devices=jax.devices()[:1])


def test_a_tpu_program_carries_no_cpu_workaround():
    config = tiny_config(**{"train.global_batch_size": 8, "mesh.data": 4})
    _, cpu = _lowered(config, jax.devices()[:4])
    assert WORKAROUND in cpu.as_text()                              # the workaround, on CPU
    setup, tpu = _lowered(config, mesh_lib.tpu_topology_devices("v5e:2x2"))
    assert setup.mesh.devices.flat[0].platform == "tpu"
    assert setup.model_cfg.residual_boundary == "off"
    assert WORKAROUND not in tpu.as_text()   # (the dry-run test compiles such a program)
