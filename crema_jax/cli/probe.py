"""`crema-jax probe`: linear probing of frozen features, with the evaluation protocols.

    crema-jax probe --checkpoint=WORKDIR_OF_PRETRAIN --layout=wfdb_folder --root=DATA \
        --workdir=/tmp/probe --label_fractions=0.01,0.1,1.0 --lead_sets=12,limb6,I --cross_domain

Features are extracted once per lead set (the backbone's evaluation crops, averaged), then every
protocol trains a linear head on them. Baselines: --checkpoint=random --model_size=... (a random
SiT); an imported ECGFounder checkpoint probes Net1D's features.
"""
from crema_jax.cli import command, evaluation_flags

COMMAND = command.Command(
    "probe", __doc__, usage="--checkpoint=DIR|random (--root=DIR | --cache_dir=DIR) "
    "--workdir=DIR")
evaluation_flags.add(COMMAND)
COMMAND.list("l2_grid", [], "L2 strengths tried; the best validation macro AUROC wins "
             "(default: six decades, 1e-6 to 0.1).")
COMMAND.enum("probe_optimizer", "lbfgs", ["lbfgs", "adam"], "Full-batch optimizer of the "
             "linear head.")
COMMAND.integer("probe_steps", 200, "Full-batch optimizer steps.", lower_bound=1)


@COMMAND.main
def main(args) -> None:
    from crema_jax.evaluate import linear_probe, report

    settings = evaluation_flags.settings(args)
    try:
        l2_grid = tuple(float(v) for v in args.l2_grid) or linear_probe.DEFAULT_L2_GRID
    except ValueError as err:
        raise command.CommandError(f"--l2_grid: {err}") from None
    probe_kwargs = {"l2_grid": l2_grid, "optimizer": args.probe_optimizer,
                    "steps": args.probe_steps}
    result = linear_probe.run_probe(settings, probe_kwargs)
    print(report.markdown(result))
    print(f"wrote {settings['workdir']}/report.json, report.md, roc.png, embeddings_pca.png")
