"""CODE-15%: its six abnormalities (1dAVb, RBBB, LBBB, SB, ST, AF) on splits by patient.

    crema-jax benchmark --models=crema=/runs/crema_base,founder=/ckpt/ecgfounder \
        --tasks=configs/benchmarks/code15.py --roots=code15=/data/code15 --workdir=/runs/bench_code15

Root: exams.csv and exams_part*.hdf5 as the authors distribute them (the code15 layout; 400 Hz,
docs/data.md). Prepare a cache first for speed (`crema-jax prepare --layout=code15`) and give
it as the dataset's cache_dir. Splits: the layout's by patient hash (80/10/10). The published
CODE test set (827 exams annotated by cardiologists, CODE-test) is another download with no
layout here; a table on it needs a layout reading its ecg_tracings.hdf5 and annotations.
"""
import os

import ml_collections


def get_config():
    config = ml_collections.ConfigDict()
    config.datasets = {"code15": {
        "layout": "code15", "root": os.environ.get("CODE15_ROOT", "/data/code15"),
        "classes": ["1dAVb", "RBBB", "LBBB", "SB", "ST", "AF"], "label_type": "multilabel"}}
    config.tasks = [{"name": "code15-6class", "dataset": "code15",
                     "label_fractions": [0.01, 1.0]}]
    config.protocols = {"probe": {}, "mlp": {}, "finetune": {"epochs": 10}}
    config.bootstrap = 1000
    config.seed = 0
    config.batch_size = 64
    return config
