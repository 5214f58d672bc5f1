"""The config's checks, run before anything is built or compiled: a ConfigValueError naming the
field, its value and what is allowed. `validate` checks a whole config (crema_jax.config builds
and loads them); `validate_model` and `validate_data` what a weight file or a data path rests on."""
from __future__ import annotations

import math
import numbers

import ml_collections

from crema_jax.runtime.ranges import COUNT, INDEX, READERS, Range


class ConfigValueError(ValueError):
    """A config field outside its domain; `.config_field` names it ("train.global_batch_size"),
    so that a command can tell a value set by a --config.FIELD= override (a usage error, exit
    2) from one in the config file (exit 1). `related`: the other fields whose values the
    refusal also rests on (the mesh's sizes for a batch that does not divide over them); an
    override of one of them makes it a usage error too. config_field may then be "" (no one
    field: a mesh whose sizes do not multiply to the device count)."""

    def __init__(self, message: str, config_field: str, *, related=()):
        super().__init__(message)
        self.config_field = config_field
        self.related = tuple(related)


def _check(ok: bool, field: str, value, expected: str, *, related=()) -> None:
    if not ok:
        raise ConfigValueError(f"config.{field}={value!r}: expected {expected}", field,
                               related=related)


def _check_in(field: str, value, valid: Range) -> None:
    """`value` within `valid`, its refusal saying `valid.expected` (None is refused here: a Range
    lets it pass, as a setting left to a recipe)."""
    _check(value is not None and valid.ok(value), field, value, valid.expected)


def _one_of(config, field: str, allowed) -> None:
    section, name = field.split(".", 1)
    value = config[section]
    for key in name.split("."):
        value = value[key]
    _check(value in allowed, field, value, f"one of {sorted(allowed)}")


def profile_range(spec: str) -> tuple[int, int]:
    """config.train.profile_steps "A:B" -> (A, B) with 0 <= A < B."""
    try:
        first, last = (int(v) for v in str(spec).split(":"))
    except ValueError:
        first = last = -1
    _check(0 <= first < last, "train.profile_steps", spec,
           "'A:B' with integers 0 <= A < B (trace steps A+1..B)")
    return first, last


# Every numeric field's domain, a Range (runtime/ranges.py) whose `expected` the refusal says.
# Fields absent from a config (a model family without them) are not checked; every number
# anywhere must also be finite, checked first, so that these name no "finite number".
_NON_NEGATIVE = Range(0, what="")
_POSITIVE = Range(0, low_open=True, what="")
_DOMAINS = {
    **{f: COUNT for f in (
        "checkpoint.every_steps", "checkpoint.max_to_keep", "train.num_steps",
        "train.log_every_steps", "train.global_batch_size", "optim.grad_accum_steps",
        "evals.every_steps", "data.eval_num_crops", "data.per_worker_buffer_size",
        "data.prefetch_buffer_size", "evals.fewshot_probe.batch_size",
        "evals.fewshot_probe.min_positives", "evals.reconstruction.correlation_records")},
    **{f: INDEX for f in (
        "optim.warmup_steps", "train.seed", "train.stop_after_steps", "train.num_processes",
        "data.seed", "data.synthetic_records", "evals.fewshot_probe.seed",
        "evals.reconstruction.seed")},
    "data.num_workers": READERS, "data.read_threads": READERS,
    **{f: _NON_NEGATIVE for f in (
        "optim.base_lr", "optim.weight_decay", "optim.min_lr", "loss.contrastive_weight",
        "data.window_seconds")},
    "optim.grad_clip_norm": Range(0, what="", note="0 = no clipping"),
    "optim.eps": _POSITIVE, "loss.temperature": _POSITIVE,
    "checkpoint.lock_stale_seconds": _POSITIVE,
    "optim.betas": Range(0, 1, high_open=True, what="two decay rates"),
    "evals.fewshot_probe.l2_grid": Range(0, low_open=True, what="one or more penalties"),
    "evals.fewshot_probe.label_fraction": Range(0, 1, low_open=True, what="a fraction"),
    "evals.reconstruction.num_records": Range(2, integer=True),
    "train.process_id": Range(0, integer=True, what="an id", special=(-1, "auto")),
    **{f: Range(1, integer=True, special=(-1, "every device the other axes leave"))
       for f in ("mesh.data", "mesh.fsdp", "mesh.tensor")},
    "model.drop_path": Range(0, 1, high_open=True, what="a rate"),
    # The model's own numbers (also what a weight file's saved config can get wrong): SiT's
    # size overrides (0 = the size's own), and every count of either family.
    **{f"model.{f}": INDEX for f in (
        "width", "depth", "num_heads", "head_dim", "proj_hidden_dim", "proj_depth",
        "num_classes")},
    **{f"model.{f}": COUNT for f in (
        "patch_size", "num_patches", "num_lead_embeddings", "decoder_width", "decoder_depth",
        "decoder_num_heads", "decoder_head_dim", "proj_dim", "in_channels", "kernel", "stride",
        "group_width", "sample_rate", "num_samples")},
    **{f"model.{f}": _POSITIVE for f in ("mlp_ratio", "decoder_mlp_ratio")},
}
# The fields of _DOMAINS that hold a tuple, each of its numbers in the range: how many (None:
# one or more).
_TUPLE_LENGTHS = {"optim.betas": 2, "evals.fewshot_probe.l2_grid": None}


def _numbers(node, prefix: str = ""):
    """(dotted field, value, its numbers) of every numeric field of a config, tuples of
    numbers included (bools are not numbers here)."""
    def is_number(v):
        return isinstance(v, numbers.Real) and not isinstance(v, bool)

    for key in node.keys():
        value, path = node[key], f"{prefix}{key}"
        if hasattr(value, "keys"):
            yield from _numbers(value, path + ".")
        elif isinstance(value, (tuple, list)) and any(is_number(v) for v in value):
            yield path, value, [v for v in value if is_number(v)]
        elif is_number(value):
            yield path, value, [value]


def _check_domains(c, *, model: bool) -> None:
    """Every field of _DOMAINS that `c` has, of the model section or of the others, in its
    domain."""
    for field, valid in _DOMAINS.items():
        if field.startswith("model.") != model:
            continue
        section, *keys = field.split(".")
        value = c[section]
        for key in keys:
            value = value[key] if key in value else None
            if value is None:
                break
        if value is None:
            continue
        if field not in _TUPLE_LENGTHS:
            _check_in(field, value, valid)
            continue
        length = _TUPLE_LENGTHS[field]
        _check(isinstance(value, (tuple, list)) and None not in value
               and (len(value) == length if length is not None else len(value) >= 1)
               and all(valid.ok(v) for v in value), field, value, valid.expected)


def validate_model(config) -> None:
    """The model section's fields in their domains, and a SiT's widths even (its sin-cos position
    tables pair a sine with a cosine): ConfigValueError naming the field. What `validate` checks
    of the model, and all that a weight file's own model config is checked against."""
    model = config.model
    # Numbers finite and choices known here too, not only in `validate`: a weight file's model
    # config ("logit_scale_init": Infinity, "dtype": "float8") had been imported as it was.
    for field, value, values in _numbers(model, "model."):
        _check(all(math.isfinite(v) for v in values), field, value, "a finite number")
    _check_domains(config, model=True)
    from crema_jax.models import families
    if families.current_name(str(model.get("name", ""))) in families.MODEL_NAMES:
        for field, allowed in families.family_of(
                families.current_name(model.name)).field_choices.items():
            if field in model:
                _one_of(config, f"model.{field}", allowed)
    if "size" in model and "width" in model:
        from crema_jax.models.config import resolve_size  # numpy-free registry
        width = resolve_size(model)["width"]
        _check(width % 2 == 0, "model.width", model.width or width,
               f"an even width (size {model.size!r} with this override gives {width})")
    if "decoder_width" in model:
        _check(model.decoder_width % 2 == 0, "model.decoder_width", model.decoder_width,
               "an even width")


def _check_numbers(c) -> None:
    """Every number finite, every field of _DOMAINS in its domain; the augmentations (their
    keys vary by preset): probabilities in [0, 1], every other number >= 0."""
    for field, value, values in _numbers(c):
        _check(all(math.isfinite(v) for v in values), field, value, "a finite number")
    _check_domains(c, model=False)  # the model's: validate_model, once
    if "augment" in c.data:
        from crema_jax.data.signal.augment import AUGMENTS  # numpy only
        names = tuple(c.data.augment.get("names", ()) or ())
        _check(all(n in AUGMENTS and n in c.data.augment for n in names), "data.augment.names",
               names, f"names among {sorted(AUGMENTS)}, each with its data.augment.NAME "
               "section (it was found only once data loading began, after the compile)")
        for field, value, values in _numbers(c.data.augment, "data.augment."):
            valid = _PROBABILITY if field.endswith("prob") else _NON_NEGATIVE
            _check(all(valid.ok(v) for v in values), field, value, valid.expected)
        _check_augment_ranges(c.data.augment)


_PROBABILITY = Range(0, 1, what="a probability")
# Upper limits of the augmentations' numbers, where a larger one allocates or draws without
# bound (1e5 wander components: a (12, 1e5, T) array a view; a 1e30 s shift overflowed int64),
# and the wander's lowest frequency (its components are drawn from [0.05 Hz, max_freq_hz]).
_AUGMENT_RANGES = {"baseline_wander.max_freq_hz": Range(0.05, what="", unit="Hz"),
                   "baseline_wander.num_components": Range(high=64, what=""),
                   "time_shift.max_shift_s": Range(high=60.0, what="")}


def _check_augment_ranges(augment) -> None:
    """Each augmentation's numbers agreeing with each other (they had failed after the compile
    with numpy's "high - low < 0", naming no field) and within _AUGMENT_RANGES."""
    def get(path):
        section, key = path.split(".")
        return augment[section][key] if section in augment and key in augment[section] else None

    low, high = get("amplitude_scale.low"), get("amplitude_scale.high")
    if low is not None and high is not None:
        _check(low <= high, "data.augment.amplitude_scale.low", low,
               f"<= data.augment.amplitude_scale.high={high}")
    for path, valid in _AUGMENT_RANGES.items():
        if get(path) is not None:
            _check_in(f"data.augment.{path}", get(path), valid)


def validate_data(config) -> None:
    """The data path's fields, as every command reading records with them needs them (a
    weight folder's saved data path is checked with this on import: a negative target_fs had
    passed, and every record was then skipped as an unexpected error): numbers finite, choices
    known, and the preprocessing run once on a synthetic 10-s ECG at data.target_fs."""
    from crema_jax.data import presets

    c = config
    _check_numbers(c)
    _one_of(c, "data.preset", presets.NAMES)
    _one_of(c, "data.resample", ("polyphase", "fft"))
    _one_of(c, "data.nan_policy", ("interpolate", "zero", "drop_window"))
    _one_of(c, "data.flat_leads", ("absent", "keep"))
    _one_of(c, "data.eval_crop_average", ("embedding", "probability"))
    from crema_jax.data.reading.limits import FS_RANGE  # the rates a record file may have
    _check_in("data.target_fs", c.data.target_fs, Range(*FS_RANGE, what="a rate in Hz"))
    from crema_jax.data.reading import leads as leads_lib
    leads = tuple(c.data.leads)
    try:
        leads_lib.check_lead_names(leads, "data.leads")  # names known, each once
    except ValueError as err:
        # ml_collections reads a tuple override as a Python literal; anything else is ONE name.
        hint = ("; a tuple on the command line is a Python literal: --config.data.leads="
                "\"('I','II')\"" if any("," in str(name) for name in leads) else "")
        raise ConfigValueError(f"config.data.leads={leads!r}: "
                               f"{str(err).removeprefix('data.leads: ')}{hint}",
                               "data.leads") from None
    if c.data.preprocess is not None:
        import numpy as np

        from crema_jax.data.signal import preprocess
        from crema_jax.data.synthetic import synthetic_ecg
        fs = float(c.data.target_fs)
        try:
            out = preprocess.preprocess(synthetic_ecg(0, 10.0, fs), fs, c.data.preprocess)
            problem = None if np.isfinite(out).all() else "gives non-finite values"
        except (ValueError, TypeError, KeyError, AttributeError, ArithmeticError) as err:
            problem = f"fails ({type(err).__name__}: {err})"
        _check(problem is None, "data.preprocess", c.data.preprocess.to_dict()
               if isinstance(c.data.preprocess, ml_collections.ConfigDict) else c.data.preprocess,
               f"preprocessing that runs on a 10-s ECG at {fs:g} Hz (it {problem})")


def _check_dataset(c) -> None:
    """The records a pretraining run reads: synthetic ones or a dataset, not both; a known
    layout where one is read (no cache, no synthetic records), its options its own; splits an
    index holds (dataset_index.SPLITS) or "" (every record). They had been refused once the
    model was built: as --layout, a flag pretrain has not, and a split matching no record as
    "no record of the data could be read"."""
    from crema_jax.data.index import registry
    from crema_jax.data.index.dataset_index import SPLITS

    dataset = [f"data.{k}={c.data[k]!r}" for k in ("root", "cache_dir") if c.data[k]]
    # Synthetic records win over a dataset (data/pipeline/sources.py): a root beside them had
    # been left unused, the run training on synthetic ECGs with exit 0.
    _check(int(c.data.synthetic_records) == 0 or not dataset, "data.synthetic_records",
           c.data.synthetic_records, f"0 when a dataset is named ({', '.join(dataset)}, which "
           "synthetic records would leave unused): set data.synthetic_records=0 to train on it")
    if not c.data.cache_dir and int(c.data.synthetic_records) == 0:  # the layout is read
        _one_of(c, "data.layout", registry.NAMES)
        options = c.data.layout_options
        options = options.to_dict() if hasattr(options, "to_dict") else dict(options or {})
        try:
            if options:  # none: nothing to check, the layout's readers left unimported
                registry.check_options(c.data.layout, options)
        except ValueError as err:
            raise ConfigValueError(f"config.data.layout_options={options!r}: {err}",
                                   "data.layout_options", related=("data.layout",)) from None
    splits = {"data.split": c.data.split}
    if "split" in c.evals.get("reconstruction", {}):
        splits["evals.reconstruction.split"] = c.evals.reconstruction.split
    for field, split in splits.items():
        _check(split in ("", *SPLITS), field, split,
               f"one of {', '.join(map(repr, SPLITS))} or '' (every record)")


_MASK_RATIO = Range(0, 1, low_open=True, high_open=True, what="a fraction",
                    note="0 hides nothing to reconstruct, 1 leaves the encoder nothing to see")


def validate(config) -> None:
    """Impossible values refused before anything is built or compiled: a ValueError naming the
    field, its value and what is allowed."""
    from crema_jax import losses
    from crema_jax.data.pipeline import masking
    from crema_jax.models import families

    c = config
    validate_data(c)
    _check_dataset(c)
    _check_in("data.mask.ratio", c.data.mask.ratio, _MASK_RATIO)
    _one_of(c, "data.mask.name", masking.MASKS)
    _one_of(c, "data.num_views", (1, 2))
    from crema_jax.data import presets
    wrong = presets.contradictions(c.data)
    _check(not wrong, "data.preset", c.data.preset,
           f"the data path whose fields this config holds; {', '.join(wrong[:4])} contradict "
           "it (a preset's fields are set in the config file, presets.apply(config.data, "
           "NAME): a --config.data.preset= override renames the path only)")
    # The crop is cut into whole patches, at least one a lead: 0 and -75 had passed as
    # multiples of 75 and been refused as a mask ratio of "-1 patches a lead".
    _check_in("data.patch_size", c.data.patch_size,
              Range(1, integer=True, what="a whole number of samples"))
    crop, patch = c.data.crop_samples, c.data.patch_size
    _check(isinstance(crop, int) and crop >= patch and crop % patch == 0, "data.crop_samples",
           crop, f"a positive multiple of data.patch_size={patch} (whole patches, at least one "
           "a lead)", related=("data.patch_size",))
    patches = crop // patch
    try:  # the strategy's own count (0.999 of 30 patches a lead hides them all)
        masking.mask_sizes(c.data.mask.name, 12, patches, float(c.data.mask.ratio))
    except ValueError:
        _check(False, "data.mask.ratio", c.data.mask.ratio, f"a ratio that leaves a patch "
               f"visible ({c.data.mask.name} masking of {patches} patch"
               f"{'es' if patches > 1 else ''} a lead: data.crop_samples={crop} / "
               f"data.patch_size={patch})",
               related=("data.crop_samples", "data.patch_size", "data.mask.name"))
    _check(c.data.get("num_epochs") is None, "data.num_epochs", c.data.get("num_epochs"),
           "None for pretraining (an endless stream; train.num_steps ends the run)")
    from crema_jax.runtime import optimizer
    peak = optimizer.scaled_learning_rate(c.optim, int(c.train.global_batch_size))
    _check(peak < 1e30, "optim.base_lr", c.optim.base_lr,  # float32 overflows past ~3.4e38
           f"a learning rate float32 holds (x global_batch / 256 = {peak:g})")
    _check(c.optim.min_lr <= peak, "optim.min_lr", c.optim.min_lr,
           f"<= the peak learning rate {peak:g} (the cosine's floor; above it the rate climbs)")
    _one_of(c, "loss.name", losses.LOSSES)
    if c.train.profile_steps:
        profile_range(c.train.profile_steps)
    # A config file or flag written for an older version may use an older model name.
    c.model.name = families.current_name(c.model.name)
    _one_of(c, "model.name", families.MODEL_NAMES)
    family = families.family_of(c.model)
    for field, allowed in family.field_choices.items():
        _one_of(c, f"model.{field}", allowed)
    validate_model(c)
    validate_patches(c)
    if "projector" in losses.TRAINS.get(c.loss.name, ()):
        _check(c.data.num_views == 2, "data.num_views", c.data.num_views,
               f"2 for loss {c.loss.name!r} (its contrastive term pairs two views)")
    _check_mesh_rules(c.mesh)
    sizes = {a: c.mesh[a] for a in ("data", "fsdp", "tensor")}
    if list(sizes.values()).count(-1) > 1:
        raise ConfigValueError(
            f"config.mesh ({', '.join(f'{a}={v}' for a, v in sizes.items())}): expected at most "
            "one axis of size -1 (the one that takes every device the others leave)", "",
            related=tuple(f"mesh.{a}" for a in sizes))
    accum, batch = c.optim.grad_accum_steps, c.train.global_batch_size
    _check(batch % accum == 0, "optim.grad_accum_steps", accum,
           f"a divisor of train.global_batch_size={batch} (each optimizer step's batch is "
           f"split into this many equal micro-batches)", related=("train.global_batch_size",))


def validate_patches(config) -> None:
    """The data path cuts the patches a patch-reading model's weights read: data.patch_size is
    model.patch_size and data.crop_samples is model.num_patches x model.patch_size. `validate`
    checks it for a run; import-torch for a saved data path (config.json's patch_size=0 or
    crop_samples=7 had imported, embed then failing with a ZeroDivisionError or a refusal)."""
    from crema_jax.models import families
    model, data = config.model, config.data
    if not families.family_of(model).reads_patches:
        return
    _check(data.patch_size == model.patch_size, "data.patch_size", data.patch_size,
           f"the model's patch_size {model.patch_size} (the patches the model reads)",
           related=("model.patch_size",))
    crop = model.num_patches * model.patch_size
    _check(data.crop_samples == crop, "data.crop_samples", data.crop_samples,
           f"{crop}, the model's num_patches {model.num_patches} x patch_size "
           f"{model.patch_size} (the patches of one lead that the model reads)",
           related=("model.num_patches", "model.patch_size"))


def _check_mesh_rules(mesh) -> None:
    """config.mesh.rules: (logical axis, mesh axes) pairs naming axes that exist. An unknown
    mesh axis had been dropped (the parameter replicated) and an unknown logical axis ignored,
    both with exit 0."""
    import difflib

    from crema_jax.models.sharding import DEFAULT_RULES
    from crema_jax.runtime.mesh import MESH_AXES

    rules = mesh.rules
    logical = [name for name, _ in DEFAULT_RULES]

    def near(name, names):
        close = difflib.get_close_matches(str(name), names, n=1)
        return f" (did you mean {close[0]!r}?)" if close else ""

    _check(isinstance(rules, (tuple, list)), "mesh.rules", rules,
           "a tuple of (logical axis, mesh axes) pairs")
    for entry in rules:
        _check(isinstance(entry, (tuple, list)) and len(entry) == 2, "mesh.rules", rules,
               f"(logical axis, mesh axes) pairs; {entry!r} is not a pair")
        name, target = entry
        _check(name in logical, "mesh.rules", rules,
               f"logical axes among {logical}; {name!r} is none of them{near(name, logical)}")
        targets = (() if target is None else (target,) if isinstance(target, str)
                   else tuple(target) if isinstance(target, (tuple, list)) else (target,))
        for axis in targets:
            _check(axis in MESH_AXES, "mesh.rules", rules,
                   f"mesh axes among {list(MESH_AXES)}, a tuple of them or None; {axis!r} "
                   f"(for {name!r}) is no mesh axis{near(axis, list(MESH_AXES))}")
        _check(len(set(targets)) == len(targets), "mesh.rules", rules,
               f"each mesh axis once per entry; {entry!r} repeats one")
