"""`crema-jax probe`: linear probing of frozen features, with the evaluation protocols.

    crema-jax probe --checkpoint=WORKDIR_OF_PRETRAIN --layout=wfdb_folder --root=DATA \
        --workdir=/tmp/probe --label_fractions=0.01,0.1,1.0 --lead_sets=12,limb6,I --cross_domain
    crema-jax probe --checkpoint=WORKDIR_OF_PRETRAIN --root=DATA --workdir=/tmp/cv --folds=5

Features are extracted once per lead set (the backbone's evaluation crops, averaged), then every
protocol trains a linear head on them; with --folds=K, K heads test every record once. Baselines:
--checkpoint=random --model_size=... (a random SiT); an imported ECGFounder checkpoint probes
Net1D's features. Two models on the same folds, with paired tests: `crema-jax compare`.
"""
from crema_jax.cli import evaluation_flags

COMMAND = evaluation_flags.evaluation_command("probe", __doc__, evaluation_flags.add_probe_head)


@COMMAND.main
def main(args) -> None:
    from crema_jax.evaluate import linear_probe  # here: --help answers without importing JAX

    evaluation_flags.run_and_report(linear_probe.run_probe, args, evaluation_flags.probe_head(args))
