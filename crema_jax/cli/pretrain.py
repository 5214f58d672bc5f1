"""`crema-jax pretrain`: self-supervised pretraining from a config file.

    crema-jax pretrain --config=configs/crema_base.py --workdir=/tmp/crema_base \
        [--config.data.root=/data/ptbxl --config.train.num_steps=20000 ...]
    crema-jax pretrain --config=configs/crema_large.py --dry_run --topology=v5p:4x4x4 \
        [--config.train.global_batch_size=512 ...]   # check a pod config here: libtpu, no TPU

Re-running the same command resumes from the latest complete checkpoint in the workdir. SIGTERM
(preemption) saves a checkpoint at the current step, then ends as on any command: `terminated`,
exit 143 (the run is unfinished; the same command resumes it). A NaN/Inf loss exits 1 with a
message naming the step; the NaN state is never saved.
"""
from __future__ import annotations

import json

from crema_jax.cli import command

COMMAND = command.Command(
    "pretrain", __doc__, usage="--config=configs/NAME.py (--workdir=DIR | --dry_run) "
    "[--config.SECTION.FIELD=VALUE ...]")
COMMAND.config_file("config", "configs/NAME.py; override any field with "
                    "--config.SECTION.FIELD=VALUE (sections: data, model, loss, optim, train, "
                    "mesh, checkpoint, evals).")
COMMAND.string("workdir", None, "Output folder (local path or gs://): checkpoints, "
               "metrics.jsonl, tensorboard/, reconstruction.png. Re-using it resumes the run.")
COMMAND.boolean("dry_run", False, "Lower and compile the train step for the configured mesh "
                "against abstract arrays; print FLOPs and memory per device, train nothing.")
COMMAND.string("topology", "", "With --dry_run: compile for this TPU slice instead of this "
               "machine's devices, e.g. v5e:4x4, v5p:2x2x2, v6e:8x8 (needs libtpu: "
               "pip install \"crema_jax[tpu]\"; no TPU).")
COMMAND.integer("num_devices", 0, "With --dry_run: compile for this many CPU devices (does a "
                "GPU cluster's mesh and batch divide? CPU memory plan); at most 2048, what "
                "XLA's CPU backend compiles for in one process.", lower_bound=0,
                upper_bound=2048)
COMMAND.string("coordinator_address", "", "host:port of process 0 for multi-process runs "
               "(overrides config.train.coordinator_address; TPU pods need none).")
COMMAND.integer("num_processes", 0, "Number of processes (with --coordinator_address).")
COMMAND.integer("process_id", -1, "This process's id (with --coordinator_address).")


@COMMAND.main
def main(args) -> None:
    config = args.config
    if not args.workdir and not args.dry_run:
        raise command.CommandError("--workdir is required (a local path or gs://...)")
    if (args.topology or args.num_devices) and not args.dry_run:
        raise command.CommandError("--topology and --num_devices only go with --dry_run")
    if args.topology and args.num_devices:
        raise command.CommandError("give --topology or --num_devices, not both")
    # Here, as every import below: --help answers without importing JAX.
    from crema_jax import config_checks

    config_checks.validate(config)  # before the workdir or a backend is touched
    if args.dry_run and (args.topology or args.num_devices):
        import jax
        # Before any backend starts: the machine's own devices are CPUs here; libtpu (when
        # installed) only describes and compiles for the slice, it never opens a TPU.
        jax.config.update("jax_platforms", "cpu")
        if args.num_devices:
            jax.config.update("jax_num_cpu_devices", args.num_devices)

    # jax.distributed must start before anything touches a JAX backend (importing the trainer
    # and evaluators below may).
    from crema_jax.runtime import mesh as mesh_lib

    mesh_lib.maybe_initialize_distributed(
        coordinator_address=args.coordinator_address or config.train.coordinator_address,
        num_processes=args.num_processes or config.train.num_processes,
        process_id=args.process_id if args.process_id >= 0 else config.train.process_id,
        mode=config.train.distributed)

    import jax

    if config.train.compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", config.train.compilation_cache_dir)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)

    from crema_jax.evaluate import evaluators  # after the distributed start, as said above
    from crema_jax.train import hooks, loop, trainer

    evaluators.check_names(config)  # what the run would refuse, the dry run refuses too
    if args.dry_run and config.train.init_from:
        _check_init_from(config)
    devices = None
    if args.topology:
        try:
            devices = mesh_lib.tpu_topology_devices(args.topology)
        except ValueError as err:  # a slice no TPU type has, or one libtpu refuses: a bad flag
            raise command.FlagValueError(str(err)) from None
    if args.dry_run:
        _print_dry_run(trainer.dry_run(config, devices=devices))
        return

    if not args.verbose:
        from crema_jax.runtime import checkpoint_errors

        checkpoint_errors.quiet_background_save_errors()
    try:
        result = trainer.train(config, args.workdir, evaluators=evaluators.build,
                               drill=hooks.FaultDrill.from_env())
    except loop.NonFiniteLossError as err:
        raise command.CommandError(str(err)) from None
    if result["preempted"]:  # saved, unfinished: `terminated`, exit 143, as any command's
        raise command.Terminated()  # SIGTERM (a `pretrain && probe` had gone on, exit 0)
    if config.train.reconstruction_png:
        from crema_jax.evaluate import reconstruction  # matplotlib: only for this figure

        skipped = reconstruction.png_skip_reason(config)
        if skipped:
            print(f"reconstruction.png skipped: {skipped}")
            return
        path = reconstruction.write_png(config, result, args.workdir)
        print(f"wrote {path}")


def _check_init_from(config) -> None:
    """The dry run's check of config.train.init_from, as the run makes it before loading the
    weights (train/resume.py): a checkpoint there, of this run's architecture. A run checks it
    itself, and only when its workdir holds no training state of its own."""
    from crema_jax import config as config_lib
    from crema_jax.train import warm_start

    source = str(config.train.init_from)
    saved = config_lib.load_checkpoint_config(source)
    warm_start.check_architecture(config.model, saved.model, source=source)


def _print_dry_run(report: dict) -> None:
    """The dry run's lines, then its report as one JSON line."""
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
