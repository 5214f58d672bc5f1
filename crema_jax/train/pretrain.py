"""`crema-jax pretrain`: self-supervised pretraining from a config file.

    crema-jax pretrain --config=configs/crema_base.py --workdir=/tmp/crema_base \
        [--config.data.root=/data/ptbxl --config.train.num_steps=20000 ...]
    crema-jax pretrain --config=configs/crema_large.py --dry_run --topology=v5p:4x4x4 \
        [--config.data.batch_size=64 ...]      # check a pod config here: needs libtpu, no TPU

Re-running the same command resumes from the latest complete checkpoint in the workdir. SIGTERM
(preemption) saves a checkpoint at the current step and exits 0. A NaN/Inf loss exits 1 with a
message naming the step; the NaN state is never saved.
"""
from __future__ import annotations

import json
import sys

from absl import flags
from absl import logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "configs/NAME.py; override fields with --config.SECTION.FIELD=VALUE",
    lock_config=True)
flags.DEFINE_string("workdir", None, "output folder (local path or gs://): checkpoints, "
                    "metrics.jsonl, tensorboard/, reconstruction.png")
flags.DEFINE_bool("dry_run", False, "lower and compile the train step for the configured mesh "
                  "against abstract arrays; print FLOPs and memory per device, train nothing")
flags.DEFINE_string("topology", "", "with --dry_run: compile for this TPU slice instead of this "
                    "machine's devices, e.g. v5e:4x4, v5p:2x2x2, v6e:8x8 (needs libtpu: "
                    "pip install \"crema_jax[tpu]\"; no TPU). config.data.batch_size is per host")
flags.DEFINE_integer("num_devices", 0, "with --dry_run: compile for this many CPU devices (checks "
                     "that a GPU cluster's mesh and batch divide; CPU memory plan)")
flags.DEFINE_string("coordinator_address", "", "host:port of process 0 for multi-process runs "
                    "(overrides config.train.coordinator_address; TPU pods need none)")
flags.DEFINE_integer("num_processes", 0, "number of processes (with --coordinator_address)")
flags.DEFINE_integer("process_id", -1, "this process's id (with --coordinator_address)")


def main(argv) -> None:
    if len(argv) > 1:
        raise SystemExit(f"crema-jax pretrain: unexpected arguments {argv[1:]}")
    if not FLAGS["verbosity"].present:
        # Orbax logs every async-save phase at INFO; the progress line is what users read.
        logging.set_verbosity(logging.WARNING)
    config = FLAGS.config
    if config is None:
        raise SystemExit("crema-jax pretrain: --config=configs/NAME.py is required")
    if not FLAGS.workdir and not FLAGS.dry_run:
        raise SystemExit("crema-jax pretrain: --workdir is required (a local path or gs://...)")
    if (FLAGS.topology or FLAGS.num_devices) and not FLAGS.dry_run:
        raise SystemExit("crema-jax pretrain: --topology and --num_devices only go with --dry_run")
    if FLAGS.topology and FLAGS.num_devices:
        raise SystemExit("crema-jax pretrain: give --topology or --num_devices, not both")
    if FLAGS.dry_run and (FLAGS.topology or FLAGS.num_devices):
        import jax
        # Before any backend starts: the machine's own devices are CPUs here; libtpu (when
        # installed) only describes and compiles for the slice, it never opens a TPU.
        jax.config.update("jax_platforms", "cpu")
        if FLAGS.num_devices:
            jax.config.update("jax_num_cpu_devices", FLAGS.num_devices)

    # jax.distributed must start before anything touches a JAX backend.
    from crema_jax.train import mesh as mesh_lib
    mesh_lib.maybe_initialize_distributed(
        coordinator_address=FLAGS.coordinator_address or config.train.coordinator_address,
        num_processes=FLAGS.num_processes or config.train.num_processes,
        process_id=FLAGS.process_id if FLAGS.process_id >= 0 else config.train.process_id,
        mode=config.train.distributed)

    import jax
    if config.train.compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", config.train.compilation_cache_dir)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)

    from crema_jax.train import trainer
    if FLAGS.dry_run:
        try:  # an unknown slice, or a mesh or batch that does not fit: the message says why
            devices = mesh_lib.tpu_topology_devices(FLAGS.topology) if FLAGS.topology else None
            report = trainer.dry_run(config, devices=devices)
        except ValueError as err:
            raise SystemExit(f"crema-jax pretrain --dry_run: {err}") from None
        mem = report["memory_per_device"]
        print(f"{report['devices']} x {report['device_kind']} on {report['processes']} "
              f"host(s), mesh {report['mesh']}  global batch {report['global_batch']}")
        print(f"FLOPs per step: {report['flops_per_step']:.4g} "
              f"({report['flops_per_step_per_device']:.4g} per device)")
        if mem:
            print(f"memory per device: {mem['total_bytes'] / 2**30:.3f} GiB "
                  f"(arguments {mem['argument_size_in_bytes'] / 2**30:.3f}, temporaries "
                  f"{mem['temp_size_in_bytes'] / 2**30:.3f}, outputs "
                  f"{mem['output_size_in_bytes'] / 2**30:.3f}, aliased "
                  f"{mem['alias_size_in_bytes'] / 2**30:.3f})")
        if "step_seconds_at_peak" in report:
            print(f"step time at 100% of peak: {report['step_seconds_at_peak'] * 1e3:.3g} ms "
                  f"(at 40% MFU: {report['step_seconds_at_peak'] / 0.4 * 1e3:.3g} ms)")
        print(json.dumps(report))
        return

    try:
        result = trainer.train(config, FLAGS.workdir)
    except trainer.NonFiniteLossError as err:
        print(f"crema-jax pretrain: {err}", file=sys.stderr, flush=True)
        sys.exit(1)
    if config.train.reconstruction_png:
        if jax.process_count() > 1:
            print("reconstruction.png skipped: single-process runs only")
            return
        from crema_jax.train import reconstruction
        path = reconstruction.write_png(config, result, FLAGS.workdir)
        print(f"wrote {path}")
