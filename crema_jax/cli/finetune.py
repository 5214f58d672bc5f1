"""`crema-jax finetune`: full fine-tuning of the SiT encoder under the evaluation protocols.

    crema-jax finetune --checkpoint=PRETRAIN_WORKDIR --layout=ptbxl --root=/data/ptbxl \
        --label_set=superclass --workdir=/tmp/ft --epochs=50 --patience=10

Per protocol run: a fresh head on the checkpoint's encoder, ST-MEM's fine-tuning recipe, the best
epoch by validation macro AUROC, then the test split scored once. `--checkpoint=random` is the
supervised-from-scratch baseline. --folds=K fine-tunes K times, each record tested once.
"""
from crema_jax.cli import command, evaluation_flags

COMMAND = command.Command(
    "finetune", __doc__, usage="--checkpoint=DIR|random (--root=DIR | --cache_dir=DIR) "
    "--workdir=DIR")
evaluation_flags.add(COMMAND)
evaluation_flags.add_finetune_recipe(COMMAND)


@COMMAND.main
def main(args) -> None:
    from crema_jax.evaluate import finetune, report

    settings = evaluation_flags.settings(args)
    result = finetune.run_finetune(settings, evaluation_flags.finetune_recipe(args))
    print(report.markdown(result))
    print(f"wrote {settings['workdir']}/report.json, report.md, roc.png, embeddings_pca.png, "
          "predictions.npz")
