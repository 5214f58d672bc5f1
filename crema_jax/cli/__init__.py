"""The `crema-jax` subcommands: one module each (its flags and `main`), listed here.

COMMANDS: name -> (module, one-line help, re-execute with the huge-page malloc tunable). The
tunable (crema_jax/runtime/host_malloc.py) was measured to help XLA:CPU's train step only, so only
`pretrain` takes it. Importing this package imports nothing else: `crema-jax --help` is instant.
"""
COMMANDS = {
    "preview": ("crema_jax.cli.preview", "write a PNG of a bundled ECG with its patches and mask",
                False),
    "prepare": ("crema_jax.cli.prepare", "convert a dataset into a preprocessed ArrayRecord cache",
                False),
    "pretrain": ("crema_jax.cli.pretrain", "pretrain a SiT with a CREMA/MAE/contrastive loss",
                 True),
    "probe": ("crema_jax.cli.probe", "linear probing of frozen features", False),
    "finetune": ("crema_jax.cli.finetune", "full fine-tuning on a labelled dataset", False),
    "compare": ("crema_jax.cli.compare", "two models on the same folds, with paired tests",
                False),
    "benchmark": ("crema_jax.cli.benchmark", "many models x many tasks: a resumable leaderboard",
                  False),
    "embed": ("crema_jax.cli.embed", "write pooled features (or logits) for ECGs", False),
    "predict": ("crema_jax.cli.predict", "ECGFounder label probabilities for ECG records (WFDB "
                "or hospital exports)", False),
    "export-torch": ("crema_jax.cli.export_torch", "export a checkpoint to PyTorch weights",
                     False),
    "import-torch": ("crema_jax.cli.import_torch",
                     "import ST-MEM/ECGFounder/crema PyTorch weights", False),
}
