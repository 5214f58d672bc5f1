"""`crema-jax finetune`: full fine-tuning of the SiT encoder under the evaluation protocols.

    crema-jax finetune --checkpoint=PRETRAIN_WORKDIR --layout=ptbxl --root=/data/ptbxl \
        --label_set=superclass --workdir=/tmp/ft --epochs=50 --patience=10

Per protocol run: a fresh head on the checkpoint's encoder, ST-MEM's fine-tuning recipe, the best
epoch by validation macro AUROC, then the test split scored once. `--checkpoint=random` is the
supervised-from-scratch baseline.
"""
from crema_jax.cli import command, evaluation_flags

COMMAND = command.Command(
    "finetune", __doc__, usage="--checkpoint=DIR|random (--root=DIR | --cache_dir=DIR) "
    "--workdir=DIR")
evaluation_flags.add(COMMAND)
COMMAND.integer("epochs", 30, "Maximum fine-tuning epochs.", lower_bound=1)
COMMAND.float("base_lr", 1e-3, "Peak lr = base_lr x batch / 256 (ST-MEM fine-tuning).")
COMMAND.float("weight_decay", 0.05, "AdamW weight decay.")
COMMAND.float("layer_decay", 0.75, "Layer-wise lr decay (1 = off).")
COMMAND.float("drop_path", 0.1, "Stochastic depth (max rate).")
COMMAND.float("label_smoothing", 0.0, "Label smoothing.")
COMMAND.float("warmup_epochs", 1.0, "Linear lr warm-up in epochs.")
COMMAND.integer("patience", 10, "Early stopping: epochs without a better validation macro AUROC "
                "(0 = never stop early).", lower_bound=0)
COMMAND.list("augment", ["config"], "Training augmentations: 'config' = the checkpoint's "
             "data.augment.names, 'none', or names (amplitude_scale, baseline_wander, "
             "gaussian_noise, time_shift, lead_drop).")
COMMAND.integer("steps_per_epoch", 0, "0 = one pass over the training records per epoch.",
                lower_bound=0)


@COMMAND.main
def main(args) -> None:
    from crema_jax.evaluate import finetune, report

    settings = evaluation_flags.settings(args)
    ft = {"epochs": args.epochs, "base_lr": args.base_lr, "weight_decay": args.weight_decay,
          "layer_decay": args.layer_decay, "drop_path": args.drop_path,
          "label_smoothing": args.label_smoothing, "warmup_epochs": args.warmup_epochs,
          "patience": args.patience, "augment": list(args.augment),
          "steps_per_epoch": args.steps_per_epoch}
    result = finetune.run_finetune(settings, ft)
    print(report.markdown(result))
    print(f"wrote {settings['workdir']}/report.json, report.md, roc.png, embeddings_pca.png")
