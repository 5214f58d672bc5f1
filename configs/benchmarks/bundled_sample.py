"""The mini-suite: the 36 CinC 2021 records shipped with the package, two tasks, two protocols.

    crema-jax benchmark --models=mine=/runs/demo --tasks=configs/benchmarks/bundled_sample.py \
        --workdir=/tmp/bench_sample

It shows the shape of a benchmark in about a minute on a laptop CPU; with 36 records its
figures say nothing about the models (the confidence intervals say so too).
- "rhythm-3fold": 3 folds over patients (every record is tested once), the classes with at
  least 5 positives among the 36.
- "ningbo->georgia": a cross-domain pair: a head trained on the Ningbo records (prefix JS; 60%
  train, 20% val by a seeded re-split of each source), tested on every Georgia record (E).
Both read the same records, so each model's features are extracted once.
"""
import ml_collections

from crema_jax.data.index import dataset_index


def get_config():
    config = ml_collections.ConfigDict()
    root = str(dataset_index.sample_data_dir())
    config.datasets = {
        "sample_folds": {"layout": "wfdb_folder", "root": root, "label_type": "multilabel",
                         "min_positives": 5, "folds": 3},
        # Sinus tachycardia (427084000) is the one class both sources have enough of.
        "sample_split": {"layout": "wfdb_folder", "root": root, "label_type": "multilabel",
                         "split_fractions": [0.6, 0.2, 0.2], "classes": ["427084000"]},
    }
    config.tasks = [
        {"name": "rhythm-3fold", "dataset": "sample_folds"},
        {"name": "ningbo->georgia", "dataset": "sample_split", "train_source": "ningbo",
         "test_source": "georgia"},
    ]
    # Short heads: 36 records need no more, and the whole suite stays near a minute.
    config.protocols = {"probe": {"steps": 50}, "mlp": {"hidden": 32, "steps": 100}}
    config.bootstrap = 200
    config.alpha = 0.05
    config.seed = 0
    config.batch_size = 16
    return config
