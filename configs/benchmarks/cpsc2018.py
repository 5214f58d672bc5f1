"""CPSC2018 (the China Physiological Signal Challenge 2018): its nine rhythm/conduction classes,
5 folds over patients (each record is tested once).

    crema-jax benchmark --models=crema=/runs/crema_base,founder=/ckpt/ecgfounder \
        --tasks=configs/benchmarks/cpsc2018.py --roots=cpsc2018=/data/cinc2021/training/cpsc_2018 \
        --workdir=/runs/bench_cpsc

Records: the WFDB copy PhysioNet/CinC 2021 distributes (training/cpsc_2018, records A0001-
A6877, labels as SNOMED-CT codes in `# Dx:`), read by the wfdb_folder layout. The challenge's
own distribution (.mat files with a REFERENCE.csv of class numbers 1-9) has no layout here; it
would need one mapping REFERENCE.csv's numbers to these classes.
The nine classes as CinC 2021 codes them: NSR 426783006, AF 164889003, I-AVB 270492004, LBBB
164909002, RBBB 59118001, PAC 284470004, PVC 427172004, STD 429622005, STE 164931005. CinC 2021
also codes some RBBB as CRBBB (713427006) and some PVC as VEB (17338001); those records keep
the code they carry, so score them under their own names if wanted.
"""
import os

import ml_collections

CLASSES = ["426783006", "164889003", "270492004", "164909002", "59118001", "284470004",
           "427172004", "429622005", "164931005"]


def get_config():
    config = ml_collections.ConfigDict()
    config.datasets = {"cpsc2018": {
        "layout": "wfdb_folder", "root": os.environ.get("CPSC2018_ROOT", "/data/cpsc_2018"),
        # Some records carry two classes: multilabel, one sigmoid per class.
        "classes": CLASSES, "label_type": "multilabel", "folds": 5}}
    config.tasks = [{"name": "cpsc2018-9class", "dataset": "cpsc2018"}]
    config.protocols = {"probe": {}, "mlp": {}, "finetune": {"epochs": 30}}
    config.bootstrap = 1000
    config.seed = 0
    config.batch_size = 64
    return config
