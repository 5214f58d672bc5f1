"""The allowed values of the evaluation settings (and of the sampling-rate flags), written
once: the commands' flags (cli/) and the benchmark's task file (benchmark_tasks.load_suite)
check the same ranges, each a runtime/ranges.py Range. Pure Python, so that `--help` imports
nothing heavy."""
from __future__ import annotations

from crema_jax.data.reading.limits import FS_RANGE
# The generic ranges (and Range itself) are runtime/ranges.py's, shared with the config's checks.
from crema_jax.runtime.ranges import (COUNT, FRACTION, INDEX, NON_NEGATIVE, POSITIVE,
                                      READERS, Range)

MIN_FOLDS = 3  # K-fold cross-validation: a test fold, a validation fold and a training fold
FOLDS_TEXT = (f"expected 0 (the layout's splits) or at least {MIN_FOLDS} (a test, a validation "
              "and a training fold)")

SAMPLING_RATE = Range(*FS_RANGE)   # Hz: the rates the readers accept from a file

# Fine-tuning counts its optimizer steps in int32 (the train state's step, the lr schedule's):
# epochs x steps per epoch, and the warm-up's steps, must stay below 2**31 (1e9 warm-up epochs
# had been an OverflowError traceback). A million epochs is far more than any run needs.
MAX_FINETUNE_STEPS = 2**31 - 1
MAX_EPOCHS = 1_000_000
FINETUNE = {"epochs": Range(1, MAX_EPOCHS, integer=True), "base_lr": POSITIVE,
            "weight_decay": NON_NEGATIVE, "layer_decay": Range(0, 1, low_open=True),
            "drop_path": FRACTION, "label_smoothing": FRACTION,
            "warmup_epochs": Range(0, MAX_EPOCHS), "patience": INDEX,
            "steps_per_epoch": Range(0, MAX_FINETUNE_STEPS, integer=True)}
PROBE = {"steps": COUNT}
MLP = {"hidden": COUNT, "steps": COUNT, "learning_rate": POSITIVE}
# Each recipe's defaults, beside its ranges, written once: the probe and finetune commands'
# flags, the heads' keywords (linear_probe.fit_linear_probe, mlp_head.fit_mlp_head) and the
# benchmark task file's protocols (benchmark_tasks.recipe) read them; docs/evaluation.md lists
# them. (They had been written three times, and the benchmark's copy said so.)
PROBE_DEFAULTS = {"l2_grid": (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1), "optimizer": "lbfgs",
                  "steps": 200}
# The linear head's full-batch optimizers (linear_probe._fit_one): --probe_optimizer's values,
# the head's check and the task file's (benchmark_tasks.recipe) read this tuple, here.
PROBE_OPTIMIZERS = ("lbfgs", "adam")
MLP_DEFAULTS = {"l2_grid": (1e-4, 1e-3, 1e-2, 1e-1), "hidden": 128, "steps": 300,
                "learning_rate": 1e-3}
# None: the data path's recipe (finetune.resolve_recipe); "augment": augment_names_problem.
FINETUNE_DEFAULTS = {"epochs": 30, "base_lr": 1e-3, "weight_decay": 0.05, "layer_decay": None,
                     "drop_path": None, "label_smoothing": 0.0, "warmup_epochs": 1.0,
                     "patience": 10, "augment": ("config",), "steps_per_epoch": 0}
L2 = NON_NEGATIVE                                  # each L2 strength of a grid
FRACTION_OF_LABELS = Range(0, 1, low_open=True)    # each label fraction
SPLIT_FRACTION = Range(0, 1)                       # each of train,val,test
DATASET = {"folds": INDEX, "min_positives": COUNT}   # a benchmark task file's dataset entry
# Records per evaluation batch: 10**12 asked Grain for 7 TiB (a traceback); a frozen-feature
# extraction is cut to the records there are (frozen_features.extract_features).
MAX_EVAL_BATCH = 65_536
# Seeds a PRNG takes (2**64 had been an OverflowError traceback); bootstrap resamples a run can
# finish (10**9 had run for ever). Reader processes: runtime/ranges.py's READERS, the config's.
SEED = Range(0, 2**32 - 1, integer=True)
BOOTSTRAP = Range(1, 100_000, integer=True)
SUITE = {"bootstrap": BOOTSTRAP, "alpha": Range(0, 1, low_open=True, high_open=True),
         "seed": SEED, "batch_size": Range(1, MAX_EVAL_BATCH, integer=True),
         "num_workers": READERS}


def split_fractions_ok(values) -> bool:
    """Three train,val,test fractions, each in [0, 1], summing to more than 0 and at most 1
    (a task file's [1, 1, 1] had become thirds, where the flag refuses it)."""
    return (isinstance(values, (list, tuple)) and len(values) == 3
            and all(SPLIT_FRACTION.ok(v) for v in values) and 0 < sum(values) <= 1 + 1e-9)


SPLIT_FRACTIONS_TEXT = ("expected three fractions, train,val,test, each in [0, 1], summing to "
                        "more than 0 and at most 1")


def finetune_steps_problem(ft: dict, where: str, steps_per_epoch: int | None = None,
                           steps_said: str = "") -> str | None:
    """Why fine-tuning recipe `ft` cannot count its steps in int32 ("{where}epochs=E x
    {where}steps_per_epoch=S = N optimizer steps: expected at most 2147483647"), or None.
    `steps_per_epoch`: the count a run derived for ft["steps_per_epoch"]=0, and `steps_said`
    how ("one pass over R records")."""
    steps = int(steps_per_epoch if steps_per_epoch is not None else ft["steps_per_epoch"])
    said = steps_said or f"{where}steps_per_epoch={steps}"
    total = int(ft["epochs"]) * steps
    warmup = round(float(ft["warmup_epochs"]) * steps)
    limit = f"expected at most {MAX_FINETUNE_STEPS} (steps are counted in int32)"
    if total > MAX_FINETUNE_STEPS:
        return f"{where}epochs={ft['epochs']} x {said} = {total} optimizer steps: {limit}"
    if warmup > MAX_FINETUNE_STEPS:
        return (f"{where}warmup_epochs={ft['warmup_epochs']} x {said} = {warmup} warm-up "
                f"steps: {limit}")
    return None


def augment_names_problem(names) -> str | None:
    """Why `names` is no fine-tuning recipe's augment list, or None. It is 'config' (the
    checkpoint's data.augment.names) alone, 'none' alone, or augmentation names (an empty list:
    none); the command's flag and the benchmark's task file had checked it by two rules, and
    the task file's ["config", "lead_drop"] had failed at its first fine-tuning cell."""
    from crema_jax.data.signal.augment import AUGMENTS  # here: --help imports no numpy

    expected = f"expected 'config', 'none', or names among {', '.join(AUGMENTS)}"
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        return f"not a list of names; {expected}"
    unknown = [n for n in names if n not in ("config", "none", *AUGMENTS)]
    if unknown:
        return f"unknown augmentation {unknown[0]!r}; {expected}"
    if len(names) > 1 and {"config", "none"} & set(names):
        return f"'config' and 'none' stand alone; {expected}"
    return None


def check(values: dict, ranges: dict, where: str) -> None:
    """ValueError naming the first of `values` outside its range in `ranges` ("{where}NAME=...")."""
    for name, valid in ranges.items():
        if name in values and not valid.ok(values[name]):
            raise ValueError(f"{where}{name}={values[name]!r}: {valid.text}")
