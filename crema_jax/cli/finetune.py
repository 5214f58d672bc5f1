"""`crema-jax finetune`: full fine-tuning of the SiT encoder under the evaluation protocols.

    crema-jax finetune --checkpoint=PRETRAIN_WORKDIR --layout=ptbxl --root=/data/ptbxl \
        --label_set=superclass --workdir=/tmp/ft --epochs=50 --patience=10

Per protocol run: a fresh head on the checkpoint's encoder, ST-MEM's fine-tuning recipe, the best
epoch by validation macro AUROC, then the test split scored once. `--checkpoint=random` is the
supervised-from-scratch baseline. --folds=K fine-tunes K times, each record tested once.
"""
from crema_jax.cli import evaluation_flags

COMMAND = evaluation_flags.evaluation_command("finetune", __doc__,
                                              evaluation_flags.add_finetune_recipe)


@COMMAND.main
def main(args) -> None:
    from crema_jax.evaluate import finetune  # here: --help answers without importing JAX

    evaluation_flags.run_and_report(finetune.run_finetune, args,
                                    evaluation_flags.finetune_recipe(args))
