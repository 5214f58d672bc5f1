"""Two real processes x two CPU devices (gloo collectives over localhost, the code path of a TPU
pod slice) give the losses of one process driving four devices on the same global batches."""
import json
import socket

import jax
import numpy as np
import pytest

from crema_jax.data.pipeline import datasets
from crema_jax.data.pipeline import sources
from crema_jax.train import trainer
from tests.configs import tiny_config
from tests.train.helpers import start_cli

PER_PROCESS_BATCH = 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _TwoProcessBatches:
    """What the two processes feed, as one process sees it: process 0's rows, then process 1's
    (make_array_from_process_local_data lays the global batch out in process order)."""

    def __init__(self, config):
        local = tiny_config().data
        local.batch_size = PER_PROCESS_BATCH
        source = sources.make_source(local)
        self.iters = [iter(datasets.make_pretrain_dataset(local, source=source,
                                                          process_index=i, process_count=2))
                      for i in range(2)]

    def __next__(self):
        parts = [next(it) for it in self.iters]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path, jax_cache_dir):
    port = _free_port()
    workdir = tmp_path / "two"
    # The global batch is split between the processes: each reads PER_PROCESS_BATCH.
    procs = [start_cli(workdir, f"--config.train.global_batch_size={2 * PER_PROCESS_BATCH}",
                       "--config.train.num_steps=5", f"--coordinator_address=127.0.0.1:{port}",
                       "--num_processes=2", f"--process_id={i}", num_devices=2,
                       cache_dir=jax_cache_dir) for i in range(2)]
    outs = [p.communicate(timeout=400)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out
    assert "mesh {'data': 4, 'fsdp': 1, 'tensor': 1}" in outs[0], outs[0]
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    two = np.array([r["loss"] for r in rows])          # process 0 alone writes metrics
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]

    config = tiny_config(**{"train.global_batch_size": 2 * PER_PROCESS_BATCH, "mesh.data": 4})
    one = trainer.train(config, tmp_path / "one", devices=jax.devices()[:4],
                        batch_iter=_TwoProcessBatches(config))
    np.testing.assert_allclose(two, [one["losses"][s] for s in range(1, 6)], rtol=1e-5, atol=1e-6)
