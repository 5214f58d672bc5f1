"""PTB-XL's label sets on its own folds (Wagner et al. 2020; the protocol of ST-MEM and of the
2026 ECG foundation-model benchmark): strat_fold 1-8 train, 9 selects the head, 10 tests.

    crema-jax benchmark --models=crema=/runs/crema_base,stmem=/ckpt/stmem,founder=/ckpt/ecgfounder \
        --tasks=configs/benchmarks/ptbxl.py --workdir=/runs/bench_ptbxl
    PTBXL_ROOT=/data/ptb-xl/1.0.3 crema-jax benchmark ...   # where PTB-XL was downloaded

Root: $PTBXL_ROOT (default /data/ptbxl), the folder holding ptbxl_database.csv and
scp_statements.csv (https://physionet.org/content/ptb-xl/); records500/ are read (500 Hz).
The five label sets read the same records, so each model's features are extracted once per
lead set. Records with no label in a set are left out of it (the layout's drop_unlabelled), as
the published tables do.
"""
import os

import ml_collections

ROOT = os.environ.get("PTBXL_ROOT", "/data/ptbxl")
LABEL_SETS = ("superclass", "subclass", "diagnostic", "form", "rhythm")


def get_config():
    config = ml_collections.ConfigDict()
    # The layout's splits are PTB-XL's folds (folds 0, no re-split); multilabel throughout.
    config.datasets = {f"ptbxl_{name}": {"layout": "ptbxl", "root": ROOT,
                                         "layout_options": {"label_set": name},
                                         "label_type": "multilabel", "min_positives": 1}
                       for name in LABEL_SETS}
    config.tasks = [{"name": f"ptbxl-{name}", "dataset": f"ptbxl_{name}"}
                    for name in LABEL_SETS]
    # Label efficiency and reduced leads on the superclasses, as ST-MEM and CREMA report them.
    config.tasks.append({"name": "ptbxl-superclass-fewlabel", "dataset": "ptbxl_superclass",
                         "label_fractions": [0.01, 0.1]})
    config.tasks.append({"name": "ptbxl-superclass-leads", "dataset": "ptbxl_superclass",
                         "leads": ["limb6", "I"]})
    config.protocols = {"probe": {}, "mlp": {}, "finetune": {"epochs": 30}}
    config.bootstrap = 1000
    config.seed = 0
    config.batch_size = 64
    return config
