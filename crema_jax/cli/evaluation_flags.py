"""The flags `probe` and `finetune` share (backbone, dataset, protocols), declared once."""
from crema_jax.cli import command


def add(cmd: command.Command) -> None:
    cmd.string("checkpoint", None, "Checkpoint workdir or step dir (from `crema-jax pretrain` or "
               "`import-torch`), or 'random' for a freshly initialised backbone.", required=True)
    cmd.string("backbone", "", "With --checkpoint=random: sit (a SiT of --model_size) or net1d "
               "(ECGFounder's Net1D). A checkpoint's own model decides otherwise.")
    cmd.enum("preset", "", ["", "crema", "stmem", "ecgfounder"], "The data path, file to model "
             "input (data/presets.py): '' = the checkpoint's own (import-torch writes ST-MEM's "
             "or ECGFounder's; ours is crema).")
    cmd.string("model_size", "tiny", "SiT size for --checkpoint=random (tiny/small/base/large).")
    cmd.string("layout", "wfdb_folder", "Dataset layout: wfdb_folder, ptbxl, manifest, code15, "
               "mimic_iv_ecg or numpy.")
    cmd.string("root", None, "Dataset folder (or the manifest CSV); not needed with --cache_dir.")
    cmd.string("label_set", "superclass", "ptbxl layout: label set (superclass, subclass, "
               "diagnostic, form, rhythm, all).")
    cmd.multi_string("layout_option", [], "A layout keyword argument KEY=VALUE (repeatable), e.g. "
                     "source=site (PTB-XL: one source per recording site).")
    cmd.string("cache_dir", "", "A `crema-jax prepare` cache built with the checkpoint's "
               "preprocessing: its records (labels, splits, sources, preprocessed signals) "
               "replace --layout/--root's WFDB files.")
    cmd.string("workdir", None, "Output folder: report.json, report.md, roc.png, "
               "embeddings_pca.png, predictions.npz.", required=True)
    cmd.enum("label_type", "auto", ["auto", "multilabel", "multiclass"], "BCE per class or "
             "softmax CE; auto = multiclass when every record has exactly one class.")
    cmd.integer("min_positives", 1, "Keep classes with at least this many positives in the "
                "training split.", lower_bound=1)
    cmd.list("split_fractions", [], "train,val,test fractions of a seeded per-source re-split "
             "(default: the layout's splits). Small datasets need it so every split has records.")
    cmd.list("label_fractions", ["1.0"], "Fractions of the training labels, e.g. 0.01,0.1,1.0.")
    cmd.list("lead_sets", ["12"], "Lead sets: 12, limb6, I, or '+'-joined lead names (the same "
             "weights see fewer leads).")
    cmd.boolean("cross_domain", False, "Also train on each source and test in-domain and on "
                "every other source.")
    cmd.integer("batch_size", 64, "Records per batch (rounded up to a multiple of the device "
                "count).", lower_bound=1)
    cmd.integer("num_workers", 0, "Grain worker processes reading records.", lower_bound=0)
    cmd.integer("bootstrap", 1000, "Bootstrap resamples for the 95% CI.", lower_bound=1)
    cmd.integer("seed", 0, "Seed of splits, label fractions, init and bootstrap.")


def settings(args) -> dict:
    """The shared flags as the settings dict the evaluation library reads (and reports)."""
    if not args.cache_dir and not args.root:
        raise command.CommandError("--root (the dataset folder) or --cache_dir is required")
    options = {"label_set": args.label_set} if args.layout == "ptbxl" else {}
    options.update(command.parse_key_values(args.layout_option, flag="layout_option"))
    try:
        label_fractions = [float(f) for f in args.label_fractions]
        split_fractions = [float(f) for f in args.split_fractions]
    except ValueError as err:
        raise command.CommandError(f"--label_fractions/--split_fractions: {err}") from None
    return {
        "checkpoint": args.checkpoint, "backbone": args.backbone, "model_size": args.model_size,
        "preset": args.preset,
        "layout": args.layout, "root": args.root or "", "cache_dir": args.cache_dir,
        "label_set": args.label_set, "layout_options": options, "workdir": args.workdir,
        "label_type": args.label_type, "min_positives": args.min_positives,
        "split_fractions": split_fractions, "label_fractions": label_fractions,
        "lead_sets": list(args.lead_sets), "cross_domain": args.cross_domain,
        "batch_size": args.batch_size, "num_workers": args.num_workers,
        "bootstrap": args.bootstrap, "seed": args.seed,
    }
