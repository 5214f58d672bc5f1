"""The flags the evaluation commands share, declared once: `add` (backbone, dataset, protocols:
probe, finetune, compare), `add_probe_head` (probe, compare) and `add_finetune_recipe`
(finetune, compare)."""

from crema_jax.cli import command
from crema_jax.data.index import registry
from crema_jax.evaluate import ranges


def add(cmd: command.Command) -> None:
    cmd.string("checkpoint", None, "Checkpoint workdir or step dir (from `crema-jax pretrain` or "
               "`import-torch`), or 'random' for a freshly initialised backbone.", required=True)
    cmd.string("backbone", "", "With --checkpoint=random: sit (a SiT of --model_size) or net1d "
               "(ECGFounder's Net1D). A checkpoint's own model decides otherwise.")
    cmd.enum("preset", "", ["", "crema", "stmem", "ecgfounder"], "The data path, file to model "
             "input (data/presets.py): '' = the checkpoint's own (import-torch writes ST-MEM's "
             "or ECGFounder's; ours is crema).")
    cmd.string("model_size", "tiny", "SiT size for --checkpoint=random (tiny/small/base/large).")
    cmd.string("layout", "wfdb_folder", f"Dataset layout: {', '.join(registry.NAMES)}.")
    cmd.string("root", None, "Dataset folder (or the manifest CSV); not with --cache_dir.")
    cmd.string("label_set", "superclass", "ptbxl layout: label set (superclass, subclass, "
               "diagnostic, form, rhythm, all).")
    cmd.multi_string("layout_option", [], "A layout keyword argument KEY=VALUE (repeatable), e.g. "
                     "source=site (PTB-XL: one source per recording site).")
    cmd.string("cache_dir", "", "A `crema-jax prepare` cache built with the checkpoint's "
               "preprocessing: its records (labels, splits, sources, preprocessed signals) "
               "replace --layout/--root's WFDB files.")
    cmd.boolean("skip_damaged_cache_records", False, "With --cache_dir: skip the records of a "
                "damaged shard (missing, truncated, failing its checksum), counted as "
                "damaged_cache_record, instead of stopping.")
    cmd.string("workdir", None, "Output folder, a local path: report.json, report.md, roc.png, "
               "embeddings_pca.png, predictions.npz.", required=True)
    cmd.enum("label_type", "auto", ["auto", "multilabel", "multiclass"], "BCE per class or "
             "softmax CE; auto = multiclass when every record has exactly one class of the "
             "layout's (two or more), decided before --min_positives drops any (printed).")
    cmd.enum("duplicates", "merge", ["merge", "refuse"], "Records holding the same ECG (a path "
             "listed twice, or byte-identical signal files under two ids): merge = keep each "
             "ECG's first row (counted and printed), refuse = stop with their count.")
    cmd.integer("min_positives", 1, "Keep classes with at least this many positives in the "
                "training split (with --folds: in all records); records left with no class are "
                "dropped and counted.", lower_bound=1)
    cmd.list("split_fractions", [], "train,val,test fractions of a seeded per-source re-split, "
             "a patient's records in one split (default: the layout's splits). Small datasets "
             "need it (or --folds) so every split has records.")
    cmd.enum("patients_across_splits", "refuse", ["refuse", "allow"], "The layout's own splits "
             "(a split column: of a manifest, of the numpy layout's CSV or of clinical_exports' "
             "labels CSV) putting a patient's records in two of train/val/test: "
             "refuse = stop with their count (re-split with --split_fractions, or --folds "
             "without --cross_domain, whose heads read the splits with folds too), "
             "allow = keep the splits (printed, and counted in report.json): scores of those "
             "patients' test records are inflated.")
    cmd.list("label_fractions", ["1.0"], "Fractions of the training labels, e.g. 0.01,0.1,1.0.")
    cmd.list("lead_sets", ["12"], "Lead sets: 12, limb6, I, or '+'-joined lead names (the same "
             "weights see fewer leads).")
    cmd.integer("folds", 0, "K-fold cross-validation (K >= 3): folds stratified by label, a "
                "patient's records in one fold, seeded; every record is tested once (fold f "
                "tests, fold f+1 selects, the rest train). 0 = the layout's (or "
                "--split_fractions') train/val/test splits.", lower_bound=0)
    cmd.boolean("cross_domain", False, "Also train on each source and test in-domain and on "
                "every other source (on the splits, also with --folds).")
    cmd.integer("batch_size", 64, "Records per batch (rounded up to a multiple of the device "
                "count; frozen features: at most the records there are).", lower_bound=1,
                upper_bound=ranges.MAX_EVAL_BATCH)
    cmd.integer("num_workers", 0, "Grain worker processes reading records.",
                lower_bound=ranges.READERS.low, upper_bound=ranges.READERS.high)
    cmd.integer("bootstrap", 1000, "Bootstrap resamples for the 95% CI.",
                lower_bound=ranges.BOOTSTRAP.low, upper_bound=ranges.BOOTSTRAP.high)
    cmd.integer("seed", 0, "Seed of splits, label fractions, init, bootstrap and permutation "
                "tests.",
                lower_bound=ranges.SEED.low, upper_bound=ranges.SEED.high)


def check_model_size(size: str) -> None:
    """A usage error naming --model_size unless it is a SiT size (config.model.size='huge' had
    named a field the user never wrote)."""
    from crema_jax.models.config import SIZES  # at run time: --help imports no model code

    if size not in SIZES:
        raise command.FlagValueError(f"--model_size={size!r}: expected one of {list(SIZES)}")


def settings(args) -> dict:
    """The shared flags as the settings dict the evaluation library reads (and reports)."""
    if not args.cache_dir and not args.root:
        raise command.CommandError("--root (the dataset folder) or --cache_dir is required")
    if args.cache_dir and args.root:
        raise command.CommandError(f"--root={args.root} and --cache_dir={args.cache_dir}: give "
                                   "one (the cache's records replace the dataset folder's)")
    check_model_size(args.model_size)
    options = {"label_set": args.label_set} if args.layout == "ptbxl" else {}
    options.update(command.parse_key_values(args.layout_option, flag="layout_option"))
    label_fractions = _numbers(args.label_fractions, "label_fractions",
                               ranges.FRACTION_OF_LABELS)
    _distinct(label_fractions, args.label_fractions, "label_fractions", "fractions")
    _distinct(_lead_sets(args.lead_sets), args.lead_sets, "lead_sets", "lead sets")
    split_fractions = _numbers(args.split_fractions, "split_fractions", ranges.SPLIT_FRACTION,
                               "three, train,val,test, ")
    if split_fractions and not ranges.split_fractions_ok(split_fractions):
        raise command.FlagValueError(f"--split_fractions={','.join(args.split_fractions)}: "
                                     f"{ranges.SPLIT_FRACTIONS_TEXT}")
    if 0 < args.folds < ranges.MIN_FOLDS:  # wrong whatever the data: before it is indexed
        raise command.FlagValueError(f"--folds={args.folds}: {ranges.FOLDS_TEXT}")
    if args.folds and split_fractions and not args.cross_domain:  # it was ignored, unsaid
        raise command.CommandError(f"--split_fractions with --folds={args.folds}: the folds "
                                   "replace the splits (only --cross_domain reads both); give "
                                   "one of the two")
    return {
        "checkpoint": args.checkpoint, "backbone": args.backbone, "model_size": args.model_size,
        "preset": args.preset,
        "layout": args.layout, "root": args.root or "", "cache_dir": args.cache_dir,
        "skip_damaged_cache_records": args.skip_damaged_cache_records,
        "label_set": args.label_set, "layout_options": options, "workdir": args.workdir,
        "label_type": args.label_type, "min_positives": args.min_positives,
        "duplicates": args.duplicates, "patients_across_splits": args.patients_across_splits,
        "split_fractions": split_fractions, "label_fractions": label_fractions,
        "lead_sets": list(args.lead_sets), "folds": args.folds, "cross_domain": args.cross_domain,
        "batch_size": args.batch_size, "num_workers": args.num_workers,
        "bootstrap": args.bootstrap, "seed": args.seed,
    }


def _lead_sets(items) -> list[tuple[str, ...]]:
    from crema_jax.evaluate import protocols  # run time: --help imports no numpy

    try:
        return [protocols.lead_set(item) for item in items]
    except ValueError as err:
        raise command.FlagValueError(str(err)) from None


def _distinct(values, items, flag: str, what: str) -> None:
    """A usage error when a list flag is empty or names one value twice (each copy was run
    again under the same name, and added a test to Holm's correction in compare)."""
    if not values or len(set(values)) != len(values):
        raise command.FlagValueError(f"--{flag}={','.join(items)}: expected one or more "
                                     f"distinct {what}")


def _numbers(items, flag: str, valid: ranges.Range, which: str = "") -> list[float]:
    """A list flag's items as floats, each in `valid`, else a usage error naming the flag."""
    try:
        values = [float(v) for v in items]
    except ValueError:
        values = [float("nan")]
    if not all(valid.ok(v) for v in values):
        raise command.FlagValueError(f"--{flag}={','.join(items)}: expected numbers, {which}"
                                     f"each {valid.expected}")
    return values


def add_probe_head(cmd: command.Command) -> None:
    probe = ranges.PROBE_DEFAULTS
    cmd.list("l2_grid", [], "L2 strengths tried; the best validation macro AUROC wins "
             f"(default: {', '.join(f'{v:g}' for v in probe['l2_grid'])}).")
    cmd.enum("probe_optimizer", probe["optimizer"], ranges.PROBE_OPTIMIZERS, "Full-batch "
             "optimizer of the linear head.")
    cmd.integer("probe_steps", probe["steps"], "Full-batch optimizer steps.", lower_bound=1)


def probe_head(args) -> dict:
    """The linear head's settings (evaluate.linear_probe.fit_linear_probe's keywords)."""
    l2_grid = (tuple(_numbers(args.l2_grid, "l2_grid", ranges.L2))
               or ranges.PROBE_DEFAULTS["l2_grid"])
    return {"l2_grid": l2_grid, "optimizer": args.probe_optimizer, "steps": args.probe_steps}


def add_finetune_recipe(cmd: command.Command) -> None:
    ft, default = ranges.FINETUNE, ranges.FINETUNE_DEFAULTS
    cmd.integer("epochs", default["epochs"], "Maximum fine-tuning epochs.",
                lower_bound=ft["epochs"].low, upper_bound=ft["epochs"].high)
    cmd.float("base_lr", default["base_lr"], "Peak lr = base_lr x batch / 256 (ST-MEM "
              "fine-tuning).", valid=ft["base_lr"])
    cmd.float("weight_decay", default["weight_decay"], "AdamW weight decay.",
              valid=ft["weight_decay"])
    cmd.float("layer_decay", default["layer_decay"], "Layer-wise lr decay (1 = off). Default: "
              "the checkpoint's data path's recipe: 0.75 (crema), 1 (stmem: ST-MEM's configs "
              "decay no layer).", valid=ft["layer_decay"])
    cmd.float("drop_path", default["drop_path"], "Stochastic depth (max rate). Default: the "
              "data path's recipe: 0.1 (crema), 0 (stmem).", valid=ft["drop_path"])
    cmd.float("label_smoothing", default["label_smoothing"], "Label smoothing.",
              valid=ft["label_smoothing"])
    cmd.float("warmup_epochs", default["warmup_epochs"], "Linear lr warm-up in epochs.",
              valid=ft["warmup_epochs"])
    cmd.integer("patience", default["patience"], "Early stopping: epochs without a better "
                "validation macro AUROC (0 = never stop early).", lower_bound=0)
    cmd.list("augment", list(default["augment"]), "Training augmentations: 'config' = the "
             "checkpoint's data.augment.names, 'none', or names (amplitude_scale, "
             "baseline_wander, gaussian_noise, time_shift, lead_drop).")
    cmd.integer("steps_per_epoch", default["steps_per_epoch"], "0 = one pass over the training "
                "records per epoch (epochs x steps_per_epoch below 2**31).",
                lower_bound=ft["steps_per_epoch"].low, upper_bound=ft["steps_per_epoch"].high)


def finetune_recipe(args) -> dict:
    """The fine-tuning recipe (evaluate.finetune's `ft`)."""
    problem = ranges.augment_names_problem(list(args.augment))
    if problem:
        raise command.FlagValueError(f"--augment={','.join(args.augment)}: {problem}")
    ft = {"epochs": args.epochs, "base_lr": args.base_lr, "weight_decay": args.weight_decay,
          "layer_decay": args.layer_decay, "drop_path": args.drop_path,
          "label_smoothing": args.label_smoothing, "warmup_epochs": args.warmup_epochs,
          "patience": args.patience, "augment": list(args.augment),
          "steps_per_epoch": args.steps_per_epoch}
    problem = ranges.finetune_steps_problem(ft, "--")
    if problem:
        raise command.FlagValueError(problem)
    return ft


def evaluation_command(name: str, doc: str, add_recipe) -> command.Command:
    """The `probe` or `finetune` command: the evaluation flags (add) and its recipe's flags."""
    cmd = command.Command(name, doc, usage="--checkpoint=DIR|random (--root=DIR | "
                          "--cache_dir=DIR) --workdir=DIR")
    add(cmd)
    add_recipe(cmd)
    return cmd


def run_and_report(run, args, recipe: dict) -> None:
    """An evaluation command's body: `run(settings, recipe)` (run_probe or run_finetune) on the
    parsed flags, then its report printed and the files it wrote named."""
    from crema_jax.evaluate import report_markdown  # here: --help answers without importing JAX

    chosen = settings(args)
    result = run(chosen, recipe)
    print(report_markdown.markdown(result))
    print(f"wrote {chosen['workdir']}/report.json, report.md, roc.png, embeddings_pca.png, "
          "predictions.npz")
    refuse_if_nothing_scored(result)


def refuse_if_nothing_scored(result: dict) -> None:
    """Exit 1 (after the report is written) when no test set could be scored at all: a script
    must not read a report of dashes as a result."""
    from crema_jax.evaluate import report  # here: --help answers without importing JAX

    problem = report.nothing_scored(result)
    if problem:
        raise command.CommandError(problem)
