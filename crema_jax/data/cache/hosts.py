"""Which part of a many-host `crema-jax prepare` this process writes.

A cache's shards are fixed by the record list and records_per_shard alone (shard s holds
records [s * R, (s + 1) * R) of the layout's order), so every host count writes the same
files; hosts only divide the list of shards: host h of H writes the contiguous block
`host_shards(S, H, h)` = [h * S // H, (h + 1) * S // H). One host's run, an H-host run and a
rerun with another H therefore produce byte-identical caches.

`detect()` gives the defaults of --host_index / --num_hosts, from the first of:
1. jax.distributed, when this process has already initialised it (jax.process_index/count);
2. a SLURM array job: SLURM_ARRAY_TASK_ID, SLURM_ARRAY_TASK_COUNT (ids counted from
   SLURM_ARRAY_TASK_MIN in steps of SLURM_ARRAY_TASK_STEP);
3. the tasks of one SLURM step (srun -n H): SLURM_PROCID, SLURM_NTASKS;
4. a TPU VM pod slice: TPU_WORKER_ID, and TPU_WORKER_HOSTNAMES (one name per worker);
5. otherwise one host.
Nothing is started or queried: preparing a cache needs no accelerator, and starting
jax.distributed would make each host wait for all the others before it could begin.
"""
from __future__ import annotations

import os
import sys
from typing import Mapping

from crema_jax.runtime import platforms


def host_shards(num_shards: int, num_hosts: int, host: int) -> range:
    """The shards host `host` of `num_hosts` writes (a contiguous block; see the docstring)."""
    if not 0 <= host < num_hosts:
        raise ValueError(f"--host_index={host} must be in [0, --num_hosts={num_hosts})")
    return range(host * num_shards // num_hosts, (host + 1) * num_shards // num_hosts)


def host_of_shard(shard: int, num_shards: int, num_hosts: int) -> int:
    return next(h for h in range(num_hosts) if shard in host_shards(num_shards, num_hosts, h))


def _int(environ: Mapping, name: str, default: int | None = None) -> int | None:
    value = environ.get(name, "")
    try:
        return int(value)
    except ValueError:
        return default


def detect(environ: Mapping | None = None) -> tuple[int, int, str]:
    """(host_index, num_hosts, where they came from); see the module docstring."""
    environ = os.environ if environ is None else environ
    distributed = getattr(sys.modules.get("jax"), "distributed", None)
    if distributed is not None and distributed.is_initialized():
        jax = sys.modules["jax"]
        return jax.process_index(), jax.process_count(), "jax.distributed"
    count, task = _int(environ, "SLURM_ARRAY_TASK_COUNT"), _int(environ, "SLURM_ARRAY_TASK_ID")
    if count and task is not None:
        first = _int(environ, "SLURM_ARRAY_TASK_MIN", 0)
        step = _int(environ, "SLURM_ARRAY_TASK_STEP", 1) or 1
        return (task - first) // step, count, "SLURM array (SLURM_ARRAY_TASK_ID/COUNT)"
    tasks, proc = _int(environ, "SLURM_NTASKS"), _int(environ, "SLURM_PROCID")
    if tasks and tasks > 1 and proc is not None:
        return proc, tasks, "SLURM tasks (SLURM_PROCID/NTASKS)"
    workers = platforms.tpu_worker_hosts(environ)
    worker = _int(environ, "TPU_WORKER_ID")
    if len(workers) > 1 and worker is not None:
        return worker, len(workers), "TPU VM (TPU_WORKER_ID/TPU_WORKER_HOSTNAMES)"
    return 0, 1, "one host"


def resolve(host_index: int, num_hosts: int, environ: Mapping | None = None
            ) -> tuple[int, int, str]:
    """The flags' values (-1 = not given) completed from `detect`; both given, or neither."""
    if (host_index < 0) != (num_hosts < 0):
        raise ValueError("--host_index and --num_hosts go together: give both or neither "
                         "(neither: taken from jax.distributed, SLURM or the TPU VM)")
    if host_index < 0:
        host_index, num_hosts, origin = detect(environ)
    else:
        origin = "flags"
    if num_hosts < 1 or not 0 <= host_index < num_hosts:
        raise ValueError(f"host {host_index} of {num_hosts} ({origin}): expected "
                         "0 <= --host_index < --num_hosts")
    return host_index, num_hosts, origin
