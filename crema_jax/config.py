"""The full config, one for every command: data, model and loss sections from their owners, plus
the training sections (optim, train, mesh, checkpoint) defined here. configs/*.py start from
default_config(); every checkpoint stores one, and `from_saved` reads it back onto the defaults
(so code never needs `.get(field, default)` on a config).

Continued pretraining from imported or earlier weights: `--config.train.init_from=DIR` (or
`--workdir` pointing at an `import-torch --out` directory) loads the params and starts a fresh
optimizer; resuming the workdir's own training checkpoints needs nothing.
"""
from __future__ import annotations

import importlib.util
import pathlib

import ml_collections

from crema_jax.runtime import checkpoint


def default_optim_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = "adamw"
    c.base_lr = 1.5e-4           # ST-MEM/MAE: peak lr = base_lr x global_batch / 256.
    c.scale_lr_with_batch = True
    c.betas = (0.9, 0.95)        # MAE/ST-MEM: beta2 0.95 is steadier than 0.999 for ViT MAEs.
    c.eps = 1e-8
    c.weight_decay = 0.01        # ST-MEM pretraining value.
    c.decay_mask = False         # ST-MEM decays every trained param; True skips norms/biases/embeddings.
    c.warmup_steps = 100         # linear warm-up from 0 (per step).
    c.min_lr = 0.0               # cosine floor at train.num_steps.
    c.grad_clip_norm = 0.0       # 0 = off (ST-MEM does not clip).
    c.grad_accum_steps = 1       # micro-batches per optimizer step (scan inside the train step).
    return c


def default_train_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0                   # model init and per-step RNG (data order has its own data.seed).
    c.num_steps = 1000           # optimizer steps (the schedule's length).
    # ECGs per optimizer step over all processes and micro-batches: THE batch size of pretraining.
    # Each process reads global_batch_size / process count (config.data.batch_size is derived).
    c.global_batch_size = 64
    c.log_every_steps = 1        # metrics.jsonl / TensorBoard / progress line.
    c.stop_after_steps = 0       # > 0: leave the loop early (preemption drills); schedule unchanged.
    # A checkpoint (workdir, checkpoints dir or step dir) whose params start this run when the
    # workdir has no checkpoint of its own: continued pretraining from `import-torch` output or
    # another run. Only the weights (fixed tables included) are taken; the optimizer, RNG and data
    # order start fresh at step 0, because an imported file has no optimizer state to resume.
    # config.model must describe the same architecture. "" = random init.
    c.init_from = ""
    c.tensorboard = True
    # Persistent XLA compilation cache (local path or gs://): restarts and repeated runs of the
    # same step skip compilation. "" = off.
    c.compilation_cache_dir = ""
    # Compile the step at XLA backend optimisation level 0: ~2x faster compiles on CPU, slower
    # steps. For smoke tests and CI only.
    c.fast_compile = False
    c.reconstruction_png = False  # after training, plot a held-back ECG and its reconstruction.
    # "A:B": a jax.profiler trace of steps A+1..B (after step A, before step B+1) into
    # WORKDIR/profile (TensorBoard's profile plugin reads it); "" = off.
    c.profile_steps = ""
    # Multi-host: "auto" starts jax.distributed when a coordinator is given or a TPU pod is seen.
    c.distributed = "auto"
    c.coordinator_address = ""   # host:port of process 0 (CPU/GPU clusters; TPU pods need none).
    c.num_processes = 0
    c.process_id = -1
    return c


def default_mesh_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.data = -1                  # -1 = every device the other axes leave.
    c.fsdp = 1
    c.tensor = 1
    # Overrides of crema_jax/models/sharding.py DEFAULT_RULES: ((logical, mesh_axes), ...).
    c.rules = ()
    return c


def default_checkpoint_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.every_steps = 500
    c.max_to_keep = 3
    c.async_save = True          # the train loop keeps running while Orbax writes.
    c.resume = True              # continue from the latest complete checkpoint in the workdir.
    # resume=False on a workdir holding checkpoints is refused unless this is True; the old
    # checkpoints are then moved aside (checkpoints.replaced-TIME), never deleted.
    c.overwrite = False
    # A workdir lock from another host whose heartbeat is older than this is stale (a lock of a
    # process gone from this host always is); see runtime/workdir.WorkdirLock (local or gs://).
    c.lock_stale_seconds = 3600.0
    return c


def default_evals_config() -> ml_collections.ConfigDict:
    """Evaluators run while pretraining (crema_jax/evaluate/evaluators.py documents each)."""
    c = ml_collections.ConfigDict()
    c.names = ()                 # keys of EVALUATORS, run in this order; () = none.
    c.every_steps = 500          # evaluate at every multiple of this step, and at the last step.
    c.reconstruction = ml_collections.ConfigDict(dict(
        split="test",            # held-back records of the training data's layout.
        num_records=8,           # the first records of that split (several, never one).
        seed=0,                  # their crops and masks: the same at every evaluation.
        correlation_records=64,  # training records the correlated-lead baseline is measured on.
    ))
    c.fewshot_probe = ml_collections.ConfigDict(dict(
        layout="",               # "" = config.data.layout (and root) of the training data.
        root="",
        layout_options=ml_collections.ConfigDict(),
        split_fractions=(),      # () = the layout's splits; e.g. (0.6, 0.2, 0.2): seeded re-split.
        label_fraction=1.0,      # of the training split (protocols.label_fraction_subset).
        min_positives=2,         # classes with fewer training positives are left out.
        leads="12",              # a protocols.LEAD_SETS name.
        l2_grid=(1e-4, 1e-2, 1.0),
        batch_size=16,
        seed=0,
    ))
    return c


def default_config(model: str = "sit_pretrain") -> ml_collections.ConfigDict:
    """Every section's defaults; `model` (a config.model.name, models/families.py) picks the
    model section."""
    from crema_jax.data.config import default_data_config
    from crema_jax.losses.config import default_loss_config
    from crema_jax.models import families

    config = ml_collections.ConfigDict()
    config.data = default_data_config()
    config.model = families.family_of(model).default_config()
    config.model.name = model
    config.loss = default_loss_config()
    config.optim = default_optim_config()
    config.train = default_train_config()
    config.mesh = default_mesh_config()
    config.checkpoint = default_checkpoint_config()
    config.evals = default_evals_config()
    return config


# Sections whose saved value replaces the default wholesale (their keys vary by preset).
_FREE_FORM = ("data.preprocess", "data.augment", "data.layout_options", "mesh.rules",
              "evals.fewshot_probe.layout_options")


def from_saved(saved: dict) -> ml_collections.ConfigDict:
    """A config stored in a checkpoint (JSON-safe dict) read onto today's defaults.

    Fields the checkpoint lacks keep their default (a data field its data preset sets: the
    preset's value); fields today's config no longer has are dropped (an older or newer
    crema_jax wrote them); an older model name is read as today's. JSON lists come back as
    tuples.
    """
    from crema_jax.data import presets
    from crema_jax.models import families

    saved = _tuples(saved)
    model = saved.get("model", {})
    saved["model"] = {**model, "name": families.current_name(model.get("name", "sit_pretrain"))}
    config = default_config(saved["model"]["name"])
    _merge(config, saved, "")
    presets.fill_missing(config.data, saved.get("data", {}))
    return config


def load_config_module(path):
    """A config file (configs/*.py style) as a module: its docstring and `get_config()`. The one
    loader of config files, for the commands, benchmarks and tests. A file that cannot be loaded
    (missing, a syntax error, raising) is a ValueError naming it and the Python error's message."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise ValueError(f"config file {path}: " + ("a folder; expected a Python file"
                                                    if path.is_dir() else "no such file"))
    spec = importlib.util.spec_from_file_location(f"crema_jax_config_{path.stem}", path)
    if spec is None:
        raise ValueError(f"config file {path}: expected a Python config file (.py) with "
                         "get_config()")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as err:  # noqa: BLE001 - whatever the user's file raised, named once
        raise ValueError(f"config file {path}: {_python_error(err)}") from None
    return module


def load_config_file(path) -> ml_collections.ConfigDict:
    """The config a config file's `get_config()` returns; a file that cannot give one (also:
    empty, no get_config, raising in it, returning something else) is a ValueError naming it."""
    module = load_config_module(path)
    get_config = getattr(module, "get_config", None)
    if not callable(get_config):
        raise ValueError(f"config file {path}: defines no get_config() (expected a function "
                         "returning an ml_collections.ConfigDict, as configs/*.py do)")
    try:
        config = get_config()
    except Exception as err:  # noqa: BLE001 - whatever the user's file raised, named once
        raise ValueError(f"config file {path}: {_python_error(err)}") from None
    if not isinstance(config, ml_collections.ConfigDict):
        raise ValueError(f"config file {path}: get_config() returned {type(config).__name__}; "
                         "expected an ml_collections.ConfigDict")
    return config


def _python_error(err: BaseException) -> str:
    """'SyntaxError: invalid syntax (line 3)', 'ZeroDivisionError: division by zero', ..."""
    if isinstance(err, SyntaxError):
        return f"{type(err).__name__}: {err.msg} (line {err.lineno})"
    return " ".join(f"{type(err).__name__}: {err}".split())


def load_checkpoint(path) -> tuple[dict, ml_collections.ConfigDict, int]:
    """(params, config read onto today's defaults, step) of the latest complete checkpoint under
    `path` (a workdir, its checkpoints dir or a step dir)."""
    params, saved, step = checkpoint.load_model_checkpoint(path)
    return params, from_saved(saved), step


def load_checkpoint_config(path) -> ml_collections.ConfigDict:
    """Only the config of the latest complete checkpoint under `path`, on today's defaults."""
    return from_saved(checkpoint.load_saved_config(path))


def _tuples(x):
    if isinstance(x, dict):
        return {k: _tuples(v) for k, v in x.items()}
    if isinstance(x, list):
        return tuple(_tuples(v) for v in x)
    return x


def _merge(node: ml_collections.ConfigDict, saved: dict, prefix: str) -> None:
    with node.unlocked():
        for key, value in saved.items():
            path = f"{prefix}{key}"
            if key not in node:
                continue
            current = node[key]
            if path in _FREE_FORM or current is None or value is None:
                try:
                    node[key] = (ml_collections.ConfigDict(value) if isinstance(value, dict)
                                 else value)
                except TypeError as err:  # "preprocess": "x" onto a section
                    raise ValueError(f"saved config field {path}={value!r}: {err}") from None
            elif isinstance(current, ml_collections.ConfigDict) and isinstance(value, dict):
                _merge(current, value, path + ".")
            else:
                try:
                    node[key] = value
                except TypeError as err:
                    raise ValueError(f"saved config field {path}={value!r}: {err}") from None
