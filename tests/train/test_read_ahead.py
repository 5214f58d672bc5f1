"""The input pipeline's read-ahead against the machine's memory: the batches its buffers hold,
counted from the batch contract's arrays (written out here), and the refusal naming the field."""
import pytest

from crema_jax import config_checks
from crema_jax.data.pipeline import batch as batch_lib
from crema_jax.train import layout
from tests.configs import tiny_config


def _one_view_batch_bytes(config, b):
    """One view of a pretraining batch, from batch.py's table: patches (B,L,N,P) float32, mask
    and patch_valid (B,L,N) bool, visible_idx + masked_idx (B, K + M = L*N) int32,
    lead_indices (B,L) int32."""
    leads = len(config.data.leads)
    n = config.data.crop_samples // config.data.patch_size
    p = config.data.patch_size
    return b * leads * n * (4 * p + 1 + 1 + 4) + b * leads * 4


@pytest.mark.parametrize("workers,threads,prefetch,buffered", [
    (0, 0, 64, 2), (0, 3, 64, 2), (4, 2, 10, 5), (3, 0, 10, 7)])
def test_read_ahead_bytes_count_each_readers_buffers(workers, threads, prefetch, buffered):
    config = tiny_config(**{"data.num_workers": workers, "data.read_threads": threads,
                            "data.prefetch_buffer_size": prefetch,
                            "data.per_worker_buffer_size": buffered})
    batch = _one_view_batch_bytes(config, 8)
    assert batch == 8 * 12 * 30 * (4 * 75 + 2 + 4) + 8 * 12 * 4   # 12 leads of 30 patches of 75
    readers = max(workers, 1)
    assert batch_lib.read_ahead_bytes(config.data, 8) == {
        "data.prefetch_buffer_size": readers * prefetch * batch if threads else 0,
        "data.per_worker_buffer_size": workers * buffered * batch}


def test_more_read_ahead_than_memory_is_refused_naming_the_larger_buffer():
    config = tiny_config(**{"data.num_workers": 2, "data.read_threads": 1,
                            "data.prefetch_buffer_size": 3, "data.per_worker_buffer_size": 50})
    batch = _one_view_batch_bytes(config, 8)
    total = 2 * (3 + 50) * batch
    layout.read_ahead(config, 8, memory=total)        # exactly fits
    with pytest.raises(config_checks.ConfigValueError) as err:
        layout.read_ahead(config, 8, memory=total - 1)
    assert err.value.config_field == "data.per_worker_buffer_size"
    assert "data.prefetch_buffer_size" in err.value.related
    assert "data.num_workers" in err.value.related
    message = str(err.value)
    assert message.startswith("config.data.per_worker_buffer_size=50: the input pipeline would "
                              f"hold at least {total / 1e9:,.1f} GB of batches read ahead (2 "
                              f"readers x 53 batches of 8 ECGs, {batch / 1e6:,.1f} MB each)")
    assert "data.prefetch_buffer_size=64, data.per_worker_buffer_size=2" in message  # defaults


def test_a_bounded_stream_and_the_defaults_pass():
    big = {"data.read_threads": 2, "data.prefetch_buffer_size": 10**9}
    layout.read_ahead(tiny_config(**big, **{"data.num_epochs": 1}), 8, memory=1)
    with pytest.raises(config_checks.ConfigValueError):
        layout.read_ahead(tiny_config(**big), 8, memory=10**9)
    layout.read_ahead(tiny_config(**{"data.read_threads": 2}), 8)   # this machine's memory


def _physical():
    with open("/proc/meminfo") as f:
        return 1024 * int(next(line for line in f if line.startswith("MemTotal:")).split()[1])


@pytest.mark.parametrize("limits,lower", [
    ((), False), (("max",), False), (("garbage\n",), False), (("1000000\n",), True),
    (("max", "2000000"), True), (("9223372036854771712",), False)])
def test_host_memory_is_the_physical_memory_or_a_lower_cgroup_limit(tmp_path, monkeypatch,
                                                                    limits, lower):
    files = []
    for i, text in enumerate(limits):
        files.append(tmp_path / f"limit{i}")
        files[-1].write_text(text)
    monkeypatch.setattr(layout, "CGROUP_LIMITS", (*map(str, files), str(tmp_path / "absent")))
    memory = layout.host_memory_bytes()
    if lower:
        assert memory == min(int(t) for t in limits if t.strip().isdigit())
    else:  # MemTotal leaves out the kernel's reserved pages; the physical pages count them
        assert 0.8 * _physical() <= memory <= 1.25 * _physical()
