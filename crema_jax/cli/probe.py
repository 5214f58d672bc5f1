"""`crema-jax probe`: linear probing of frozen features, with the evaluation protocols.

    crema-jax probe --checkpoint=WORKDIR_OF_PRETRAIN --layout=wfdb_folder --root=DATA \
        --workdir=/tmp/probe --label_fractions=0.01,0.1,1.0 --lead_sets=12,limb6,I --cross_domain
    crema-jax probe --checkpoint=WORKDIR_OF_PRETRAIN --root=DATA --workdir=/tmp/cv --folds=5

Features are extracted once per lead set (the backbone's evaluation crops, averaged), then every
protocol trains a linear head on them; with --folds=K, K heads test every record once. Baselines:
--checkpoint=random --model_size=... (a random SiT); an imported ECGFounder checkpoint probes
Net1D's features. Two models on the same folds, with paired tests: `crema-jax compare`.
"""
from crema_jax.cli import command, evaluation_flags

COMMAND = command.Command(
    "probe", __doc__, usage="--checkpoint=DIR|random (--root=DIR | --cache_dir=DIR) "
    "--workdir=DIR")
evaluation_flags.add(COMMAND)
evaluation_flags.add_probe_head(COMMAND)


@COMMAND.main
def main(args) -> None:
    from crema_jax.evaluate import linear_probe, report

    settings = evaluation_flags.settings(args)
    result = linear_probe.run_probe(settings, evaluation_flags.probe_head(args))
    print(report.markdown(result))
    print(f"wrote {settings['workdir']}/report.json, report.md, roc.png, embeddings_pca.png, "
          "predictions.npz")
