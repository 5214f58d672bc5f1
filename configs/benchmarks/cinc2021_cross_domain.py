"""Cross-domain pairs over PhysioNet/CinC 2021's sources: a head trained on one hospital's
records, tested on another's (the robustness question of the CinC 2021 challenge).

    crema-jax benchmark --models=crema=/runs/crema_base,founder=/ckpt/ecgfounder \
        --tasks=configs/benchmarks/cinc2021_cross_domain.py \
        --roots=cinc2021=/data/cinc2021/training --workdir=/runs/bench_cinc_xd

Root: the CinC 2021 training folder (WFDB, `# Dx:` SNOMED-CT codes); the wfdb_folder layout
names each record's source by its prefix (A cpsc2018, Q cpsc2018_extra, I incart, S ptb, HR
ptbxl, E georgia, JS ningbo: Chapman-Shaoxing and Ningbo share the JS prefix, so they are one
source here). Each source is re-split 60/20/20 (seeded, a patient's records together); a pair
trains on the first source's train split, selects on its val split and tests on every record
of the second. Classes: six the sources share, as CinC 2021 codes them (NSR 426783006, AF
164889003, sinus bradycardia 426177001, sinus tachycardia 427084000, RBBB 59118001, 1st-degree
AV block 270492004); a class the test source lacks is not scored there.
"""
import os

import ml_collections

PAIRS = [("ptbxl", "georgia"), ("georgia", "ptbxl"), ("ningbo", "georgia"),
         ("cpsc2018", "ptbxl"), ("ptbxl", "ningbo")]


def get_config():
    config = ml_collections.ConfigDict()
    config.datasets = {"cinc2021": {
        "layout": "wfdb_folder", "root": os.environ.get("CINC2021_ROOT", "/data/cinc2021"),
        "classes": ["426783006", "164889003", "426177001", "427084000", "59118001",
                    "270492004"],
        "label_type": "multilabel", "split_fractions": [0.6, 0.2, 0.2]}}
    config.tasks = [{"name": f"{a}->{b}", "dataset": "cinc2021", "train_source": a,
                     "test_source": b} for a, b in PAIRS]
    config.protocols = {"probe": {}, "mlp": {}}
    config.bootstrap = 1000
    config.seed = 0
    config.batch_size = 64
    return config
