"""`crema-jax compare`: two models on the same folds and crops; is their difference real?

    crema-jax compare --checkpoint=PRETRAIN_WORKDIR --checkpoint_b=random --root=DATA \
        --workdir=/tmp/cmp --folds=5
    crema-jax compare --checkpoint=CREMA --checkpoint_b=ECGFOUNDER_IMPORT --root=DATA \
        --workdir=/tmp/cmp_net1d --folds=5 --cross_domain --split_fractions=0.6,0.2,0.2

Model A (--checkpoint) and model B (--checkpoint_b: a checkpoint, or 'random' = A's
architecture and data path randomly initialised, from --init_seed_b when given) go through the
same runs (the same splits or folds, label fractions and lead sets) by linear probing or
fine-tuning (--method). Two random inits calibrate the test (how far two models that differ by
their init alone score apart):

    crema-jax compare --checkpoint=random --checkpoint_b=random --init_seed_b=1 --root=DATA \
        --workdir=/tmp/cmp_null --folds=5

Per class: AUROC(A) - AUROC(B) with a paired permutation test (DeLong's at 100 positives and
negatives) and DeLong's CI; macro AUROC and AUPRC: a paired bootstrap
over patients; a verdict "A better / B better / no detectable difference at alpha". With
--cross_domain: each model's in-domain minus out-of-domain drop and the paired difference of the
drops. A and B that are the same model (the same weights, or the same random init) are said to
be, in one line (and in report.md). Prints each comparison's verdict and macro AUROCs as plain
text; writes report.json, report.md (the whole report, Markdown), paired_differences.png and
predictions.npz.
"""
from crema_jax.cli import command, evaluation_flags
from crema_jax.evaluate import ranges

COMMAND = command.Command(
    "compare", __doc__, usage="--checkpoint=DIR|random --checkpoint_b=DIR|random "
    "(--root=DIR | --cache_dir=DIR) --workdir=DIR")
evaluation_flags.add(COMMAND)
COMMAND.string("checkpoint_b", None, "Model B: a checkpoint (workdir or step dir, e.g. an "
               "imported ECGFounder), or 'random': model A's architecture and data path with "
               "a random init (seeded by --seed, or --init_seed_b).", required=True)
COMMAND.integer("init_seed_b", None, "With --checkpoint_b=random: the seed of B's random init "
                "alone (default --seed: a random A's own init). --seed still draws the folds, "
                "label subsets and bootstrap, so varying this one calibrates against random "
                "inits.", lower_bound=ranges.SEED.low, upper_bound=ranges.SEED.high)
COMMAND.string("backbone_b", "", "With --checkpoint_b=random: sit or net1d instead of model "
               "A's family (then that family's default; a SiT of --model_size).")
COMMAND.enum("method", "probe", ["probe", "finetune"], "How both models are evaluated: a "
             "linear probe of frozen features, or full fine-tuning.")
COMMAND.float("alpha", 0.05, "Significance level of the verdicts and level of the "
              "(1 - alpha) CIs of the differences.", valid=ranges.SUITE["alpha"])
evaluation_flags.add_probe_head(COMMAND)
evaluation_flags.add_finetune_recipe(COMMAND)


@COMMAND.main
def main(args) -> None:
    from crema_jax.evaluate import compare, report_markdown  # run time: --help needs no JAX

    if args.init_seed_b is not None and args.checkpoint_b != "random":
        raise command.FlagValueError(f"--init_seed_b={args.init_seed_b}: only with "
                                     "--checkpoint_b=random (a checkpoint's weights are not "
                                     "drawn)")
    settings = {**evaluation_flags.settings(args), "checkpoint_b": args.checkpoint_b,
                "init_seed_b": args.init_seed_b, "backbone_b": args.backbone_b,
                "method": args.method, "alpha": args.alpha}
    method_kwargs = (evaluation_flags.probe_head(args) if args.method == "probe"
                     else evaluation_flags.finetune_recipe(args))
    result = compare.run_compare(settings, method_kwargs)
    print("\n".join(report_markdown.summary(result)))  # plain text: report.md is Markdown
    print(f"wrote {settings['workdir']}/report.json, report.md (the whole report: models, runs, "
          "per-class tests), paired_differences.png, predictions.npz")
    evaluation_flags.refuse_if_nothing_scored(result)
