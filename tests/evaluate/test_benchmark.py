"""`crema-jax benchmark` on the records shipped with the package (configs/benchmarks/
bundled_sample.py): a tiny SiT checkpoint, random init and an imported ECGFounder Net1D, two
tasks (3 folds over patients; a cross-domain pair) by two protocols (linear probe, MLP head).
Every figure of leaderboard.json is recomputed from the saved predictions with scikit-learn and
the references of test_paired.py; Holm's correction by hand; a run killed mid-way and rerun
reuses its finished cells and gives the uninterrupted run's leaderboard."""
import hashlib
import json
import math
import os
import pathlib
import re
import shutil
import socket
import subprocess
import sys

import matplotlib.image
import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from crema_jax import config as config_lib
from crema_jax.cli import benchmark as benchmark_cli
from crema_jax.data.index import dataset_index
from crema_jax.evaluate import benchmark, benchmark_models, benchmark_tasks, holm
from crema_jax.inference import backbones
from crema_jax.export import import_torch
from crema_jax.models import params as params_lib
from crema_jax.runtime import checkpoint
from crema_jax.runtime import workdir as workdir_lib
from tests import xla_flags
from tests.evaluate.conftest import header_labels
from tests.evaluate.test_paired import _reference_paired_bootstrap, delong_testable
from tests.evaluate.test_permutation import _auroc_by_pairs, reference_exchange_p
from tests.references.ecgfounder_torch import Net1DRef

REPO = pathlib.Path(__file__).resolve().parents[2]
TASKS = REPO / "configs" / "benchmarks" / "bundled_sample.py"
BOOTSTRAP, ALPHA = 200, 0.05  # the task file's
SMALL_NET1D = {"in_channels": 12, "filters": (16, 32), "blocks": (1, 2), "n_classes": 150}


@pytest.fixture(scope="module")
def model_flags(tmp_path_factory):
    """tiny: a tiny SiT checkpoint (seed 1, so not the random row's seed-0 init); random; net1d:
    a small ECGFounder Net1D imported from PyTorch."""
    root = tmp_path_factory.mktemp("models")
    config = config_lib.default_config()
    config.model.size = "tiny"
    checkpoint.save_model_checkpoint(root / "sit", params_lib.init_params(config.model, 1),
                                     config)
    torch.manual_seed(3)
    torch.save({"state_dict": Net1DRef(**SMALL_NET1D).eval().state_dict()}, root / "net1d.pth")
    import_torch.run_import(str(root / "net1d.pth"), "ecgfounder", str(root / "net1d"))
    return [f"tiny={root / 'sit'}", "random=random", f"net1d={root / 'net1d'}"]


def _run(models, workdir) -> dict:
    assert benchmark_cli.COMMAND.run([f"--models={','.join(models)}", f"--tasks={TASKS}",
                                      f"--workdir={workdir}"]) is None
    return json.loads((workdir / "leaderboard.json").read_text())


@pytest.fixture(scope="module")
def uninterrupted(model_flags, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("bench")
    return workdir, _run(model_flags, workdir)


def _cells(workdir, board) -> dict:
    """{(model, column, protocol): the cell's saved arrays}, read with numpy alone; a cell
    names the weights it is filed under, each model of the board its own."""
    name = {m["filed_as"]: m["name"] for m in board["models"]}
    out = {}
    for path in (workdir / "cells").rglob("*.npz"):
        with np.load(path, allow_pickle=False) as saved:
            arrays = {k: saved[k] for k in saved.files}
        meta = json.loads(str(arrays["meta"]))
        out[(name[meta["model"]], meta["column"], meta["protocol"])] = arrays
    return out


def _per_record(cell):
    """Record ids (sorted), their probabilities (a record's examples averaged), labels, rows."""
    ids, inverse = np.unique(cell["record_id"], return_inverse=True)
    probs = np.zeros((len(ids), cell["probs"].shape[1]))
    for k in range(len(ids)):
        probs[k] = cell["probs"][inverse == k].mean(0)
    first = [int(np.flatnonzero(inverse == k)[0]) for k in range(len(ids))]
    return ids, probs, cell["labels"][first]


def _reference_ci(labels, probs, n_resamples, seed):
    """Records (each its own patient here) drawn with replacement, scikit-learn's macro AUROC
    over the classes the resample can score."""
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_resamples):
        idx = rng.integers(0, len(labels), len(labels))
        cols = [c for c in range(labels.shape[1]) if 0 < labels[idx, c].sum() < len(idx)]
        if cols:
            values.append(roc_auc_score(labels[idx][:, cols], probs[idx][:, cols]))
    return np.percentile(values, [2.5, 97.5])


def _auroc(y, scores) -> float:
    """AUROC by definition, the mean over (positive, negative) pairs of 1 if the positive scores
    higher, 1/2 if tied: the paired bootstraps' ~120,000 resampled AUROCs, as scikit-learn's
    roc_auc_score gives them (test_paired.py holds the bootstrap to scikit-learn itself) in
    1/100 of its time."""
    return float(_auroc_by_pairs(np.asarray(y) > 0.5, np.asarray(scores)[None, :])[0])


def holm_by_hand(p_values):
    """Holm (1979): the i-th smallest of m p-values times (m - i + 1), capped at 1, made
    non-decreasing in that order."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted, running = [0.0] * len(p_values), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def _first_of_each_content(root, stems) -> list:
    """The record ids left when byte-identical signal files are merged (the first id kept)."""
    seen, kept = set(), []
    for stem in sorted(stems):
        digest = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(root.glob(stem + ".*"))
                                         if p.suffix != ".hea")).hexdigest()
        if digest not in seen:
            seen.add(digest)
            kept.append(stem)
    return kept


def test_holm_on_numbers_worked_by_hand():
    # sorted: 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 = 0.04 -> 0.06.
    assert holm.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02],
                                                                   abs=1e-15)
    assert holm.holm([0.5, 0.9]) == [1.0, 1.0] and holm.holm([]) == []


def test_task_file_and_model_errors_name_the_field(tmp_path):
    bad = tmp_path / "tasks.py"
    bad.write_text("import ml_collections\ndef get_config():\n    c = ml_collections."
                   "ConfigDict()\n    c.datasets = {'d': {'root': '/x', 'fold': 3}}\n"
                   "    c.tasks = [{'name': 't', 'dataset': 'd'}]\n    c.protocols = "
                   "{'probe': {}}\n    return c\n")
    with pytest.raises(ValueError, match=r"datasets\['d'\]: unknown field\(s\) \['fold'\]"):
        benchmark_tasks.load_suite(bad)
    # No root (or --roots=d=): "" indexed the working directory, recursively.
    bad.write_text(bad.read_text().replace(", 'fold': 3", "").replace("'/x'", "''"))
    for roots in (None, {"d": ""}):
        with pytest.raises(ValueError, match=r"datasets\['d'\] has no root; give one in the "
                                             r"file or --roots=d=FOLDER"):
            benchmark_tasks.load_suite(bad, roots=roots)
    assert benchmark_tasks.load_suite(bad, roots={"d": "/x"})["datasets"]["d"]["root"] == "/x"
    # A dataset field of the wrong kind ("three" folds was an int() error naming nothing).
    template = bad.read_text()
    for field, value, said in (("folds", "'three'", "folds='three': expected an integer >= 0"),
                               ("min_positives", "0", "min_positives=0: expected an integer >= 1"),
                               ("split_fractions", "[0.5, 0.5]", "split_fractions=[0.5, 0.5]: "
                                "expected three fractions, train,val,test, each in [0, 1], "
                                "summing to more than 0 and at most 1"),
                               # [1, 1, 1] had become thirds (the flag refuses it)
                               ("split_fractions", "[1, 1, 1]", "split_fractions=[1, 1, 1]: "
                                "expected three fractions, train,val,test, each in [0, 1], "
                                "summing to more than 0 and at most 1")):
        bad.write_text(template.replace("'root': ''", f"'root': '/x', '{field}': {value}"))
        with pytest.raises(ValueError) as raised:
            benchmark_tasks.load_suite(bad)
        assert str(raised.value) == f"task file {bad}: datasets['d'].{said}"
    # Suite fields past what a run can use: 20.0 resamples had been a TypeError traceback,
    # seed 2**64 an OverflowError, 10**9 resamples a run that never ended.
    for field, value, said in (("bootstrap", "20.0", "expected an integer in [1, 100000]"),
                               ("bootstrap", "10**9", "expected an integer in [1, 100000]"),
                               ("seed", "2**64", "expected an integer in [0, 4294967295]"),
                               ("num_workers", "10**20", "expected an integer in [0, 256]")):
        bad.write_text(template.replace("'root': ''", "'root': '/x'").replace(
            "    return c", f"    c.{field} = {value}\n    return c"))
        with pytest.raises(ValueError) as raised:
            benchmark_tasks.load_suite(bad)
        assert str(raised.value) == f"task file {bad}: {field}={eval(value)!r}: {said}"
    # A typo at the top had been ignored; folds beside split_fractions had dropped the split.
    bad.write_text(template.replace("'root': ''", "'root': '/x'").replace(
        "    return c", "    c.boostrap = 200\n    return c"))
    with pytest.raises(ValueError, match=re.escape(f"task file {bad}: unknown field(s) "
                                                   "['boostrap']; expected [")):
        benchmark_tasks.load_suite(bad)
    bad.write_text(template.replace("'root': ''", "'root': '/x', 'folds': 3, "
                                    "'split_fractions': [0.6, 0.2, 0.2]"))
    with pytest.raises(ValueError, match=re.escape(
            f"task file {bad}: datasets['d'] gives folds and split_fractions, and no "
            "cross-domain task reads its splits")):
        benchmark_tasks.load_suite(bad)
    # The flag the user gave is named (both had named --backbone, a flag neither command has).
    with pytest.raises(ValueError, match=re.escape("--models entry 'a': random:FAMILY, "
                                                   "FAMILY='foo': expected one of")):
        benchmark_models.load_models(["a=random:foo"], seed=0)
    from crema_jax.evaluate import compare
    with pytest.raises(ValueError, match=re.escape("--backbone_b='foo': expected one of")):
        compare.load_models({"checkpoint": "random", "backbone": "", "model_size": "tiny",
                             "checkpoint_b": "random", "backbone_b": "foo"})
    with pytest.raises(ValueError, match="expected NAME=CHECKPOINT"):
        benchmark_models.parse_models(["just_a_path"])
    with pytest.raises(ValueError, match="expected distinct names"):
        benchmark_models.parse_models(["a=random", "a=random:net1d"])


def test_other_weights_at_the_same_checkpoint_path_are_another_model(tmp_path):
    """A checkpoint retrained or replaced at the same path must not reuse the cells and features
    of the weights it held before: both are keyed by a digest of the weights themselves."""
    from crema_jax.evaluate import feature_store
    from tests.configs import tiny_config

    config = tiny_config()
    params = {"encoder": {"w": np.arange(6, dtype=np.float32).reshape(2, 3),
                          "b": np.zeros(3, np.float32)}}
    same = {"encoder": {"w": params["encoder"]["w"].copy(), "b": np.zeros(3, np.float32)}}
    nudged = {"encoder": {"w": params["encoder"]["w"].copy(), "b": np.zeros(3, np.float32)}}
    nudged["encoder"]["w"][1, 2] = np.nextafter(np.float32(5), np.float32(6))   # one ulp
    renamed = {"encoder": {"w2": params["encoder"]["w"], "b": params["encoder"]["b"]}}
    def digest(config, params, seed=0):
        return backbones.weights_digest(config, params, seed)

    assert digest(config, params) == digest(config, same) == digest(config, params, seed=1)
    assert len({digest(config, p) for p in (params, nudged, renamed)}) == 3
    other = tiny_config(**{"model.depth": 3})
    assert digest(config, None) == digest(tiny_config(), None) != digest(other, None)
    assert digest(config, None) != digest(config, params)
    # Random weights drawn with another seed are another model (their features had been reused).
    assert digest(config, None, seed=1) != digest(config, None)
    # The same weights under another data path or model config are another model: a copy whose
    # preprocessing differed had reused the first checkpoint's features, exit 0.
    filtered = tiny_config()
    filtered.data.preprocess.high_hz = 20.0
    assert digest(filtered, params) != digest(config, params)
    assert digest(other, params) != digest(config, params)
    # What only pretraining used (where the records were, masks, views) leaves it one model.
    elsewhere = tiny_config()
    elsewhere.data.synthetic_records, elsewhere.data.root = 0, "/data/other"
    elsewhere.data.mask.ratio, elsewhere.data.num_workers = 0.5, 4
    elsewhere.data.leads = ("I",)       # each column feeds its own lead set
    assert digest(elsewhere, params) == digest(config, params)
    assert digest(elsewhere, None) == digest(config, None)
    # Augmentations: a fine-tuning recipe of augment "config" trains with the checkpoint's.
    augmented = tiny_config()
    augmented.data.augment.amplitude_scale.prob = 0.9
    assert digest(augmented, None) != digest(config, None)

    models = [benchmark_models.Model("tiny", "/runs/tiny", config, p,
                                    weights=digest(config, p)) for p in (params, nudged)]
    column = benchmark_tasks.Column("c", "t", "d", "12", 1.0, "", "")
    suite = {"datasets": {"d": {}}, "protocols": {"probe": {}}, "seed": 0, "batch_size": 8}
    specs = [benchmark_tasks.cell_spec(m, column, "probe", suite) for m in models]
    assert specs[0] != specs[1]

    path = tmp_path / "features.npz"
    np.savez(path, values=np.zeros((1, 2), np.float32), record_key=np.asarray(["r1"]),
             ids=np.asarray(["r1"]), tried=np.asarray(["r1", "r2"]),
             checkpoint=np.asarray("/runs/tiny"), weights=np.asarray(models[0].weights))
    load = feature_store.FeatureStore._load
    assert load(path, models[0].weights, ["r1"]) is not None
    assert load(path, models[1].weights, ["r1"]) is None            # retrained at that path
    assert load(path, models[0].weights, ["r3"]) is None            # a record never read


def test_cells_of_older_evaluation_rules_are_recomputed_and_features_reused(monkeypatch):
    """A resumed benchmark had reused cells computed under older evaluation rules (cross-domain
    cells with no patient exclusion) beside new ones: the rules' version is in the cell spec.
    The feature cache's key (records, lead set, weights) does not hold it."""
    from crema_jax.evaluate import feature_store
    from tests.configs import tiny_config
    model = benchmark_models.Model("tiny", "/runs/tiny", tiny_config(), None, weights="w")
    column = benchmark_tasks.Column("c", "t", "d", "12", 1.0, "", "")
    suite = {"datasets": {"d": {}}, "protocols": {"probe": {}}, "seed": 0, "batch_size": 8}
    settings = {"layout": "wfdb", "root": "/data", "layout_options": {}, "cache_dir": ""}
    before = benchmark_tasks.cell_spec(model, column, "probe", suite)
    features_before = feature_store.record_set_digest(settings)
    assert benchmark_tasks.cell_spec(model, column, "probe", suite) == before
    monkeypatch.setattr(benchmark_tasks, "EVALUATION_RULES", benchmark_tasks.EVALUATION_RULES + 1)
    assert benchmark_tasks.cell_spec(model, column, "probe", suite) != before
    assert feature_store.record_set_digest(settings) == features_before


@pytest.mark.slow
def test_leaderboard_figures_are_recomputed_from_the_saved_predictions(uninterrupted):
    workdir, board = uninterrupted
    assert [m["name"] for m in board["models"]] == ["tiny", "random", "net1d", "random:net1d"]
    assert {m["name"]: m["random_row"] for m in board["models"]} == {
        "tiny": "random", "random": "random", "net1d": "random:net1d",
        "random:net1d": "random:net1d"}
    # One extraction per model (both tasks read records of the same folder), 4 x 2 x 2 cells.
    # 16 cells' scores and 16 paired tests (statistics), none from a cache yet.
    assert board["counts"] == {"cells_computed": 16, "cells_reused": 0,
                               "cells_not_applicable": 0, "feature_extractions": 4,
                               "features_reused": 12, "statistics_computed": 32,
                               "statistics_reused": 0}
    cells = _cells(workdir, board)
    assert len(cells) == 16
    root = dataset_index.sample_data_dir()
    scores = {(s["model"], s["column"], s["protocol"]): s for s in board["cells"]}
    # The paired tests' resamples: the task file's 200, raised to 4 m / alpha - 1 for Holm over
    # the table's m macro comparisons (so that the bound 2 / (B + 1) can reach alpha / 2); the
    # permutation tests' exchanges: 9,999 at least, 2 m' / alpha - 1 for m' per-class tests.
    resamples = max(BOOTSTRAP, math.ceil(4 * len(board["comparisons"]) / ALPHA) - 1)
    assert board["settings"]["test_resamples"] == resamples
    per_class_m = sum(len(cells[(t["model"], t["column"], t["protocol"])]["classes"])
                      for t in board["comparisons"])
    permutations = max(9999, math.ceil(2 * per_class_m / ALPHA) - 1)
    assert board["settings"]["test_permutations"] == permutations
    for panel in board["panels"]:
        column, protocol = panel["column"], panel["protocol"]
        per = {m: _per_record(cells[(m, column, protocol)]) for m in
               ["tiny", "random", "net1d", "random:net1d"]}
        ids, _, labels = per["tiny"]
        classes = [str(c) for c in cells[("tiny", column, protocol)]["classes"]]
        for rid, row in zip(ids, labels):   # the labels are the headers' `# Dx:` codes
            codes = header_labels(root / f"{rid}.hea")
            assert [c for c, y in zip(classes, row) if y] == [c for c in classes if c in codes]
        # rhythm-3fold: every record with a class kept (>= 5 positives among the 36; a record
        # left with no class is dropped); ningbo->georgia: every Georgia (E) record.
        # A record whose signal bytes equal an earlier record's is merged into it (duplicates).
        expected = ([p.stem for p in root.glob("*.hea") if set(header_labels(p)) & set(classes)]
                    if column == "rhythm-3fold" else [p.stem for p in root.glob("E*.hea")])
        assert sorted(ids) == _first_of_each_content(root, expected)
        ok = [c for c in range(len(classes)) if 0 < labels[:, c].sum() < len(labels)]
        macro = {}
        for name, (other_ids, probs, _) in per.items():
            np.testing.assert_array_equal(other_ids, ids)
            s = scores[(name, column, protocol)]
            macro[name] = roc_auc_score(labels[:, ok], probs[:, ok], average="macro")
            assert s["macro_auroc"] == pytest.approx(macro[name], abs=1e-12)
            assert s["macro_auprc"] == pytest.approx(np.mean(
                [average_precision_score(labels[:, c], probs[:, c]) for c in ok]), abs=1e-12)
            low, high = _reference_ci(labels, probs, BOOTSTRAP, 0)
            assert (s["ci"]["low"], s["ci"]["high"]) == pytest.approx((low, high), abs=1e-12)
            assert s["n"] == len(ids) and s["unpaired"] == 0
        assert panel["top"] == max(macro, key=macro.get)
        assert (panel["n"], panel["n_classes"]) == (len(ids), len(ok))
        if "fold" in cells[("tiny", column, protocol)]:  # 3 folds: f tests, f + 1 selects
            fold = cells[("tiny", column, protocol)]["fold"]
            record_fold = {r: f for r, f in zip(cells[("tiny", column, protocol)]["record_id"],
                                                fold)}
            pools = [sum(f not in (k, k % 3 + 1) for f in record_fold.values())
                     for k in (1, 2, 3)]
            assert panel["n_train_pool"] == round(np.mean(pools), 1)
        assert panel["label_fraction"] == panel["label_fraction_used"] == 1.0  # all labels
        assert panel["n_labelled"] == panel["n_train_pool"]
        random_row = {"tiny": "random", "net1d": "random:net1d"}
        expected = {frozenset((m, panel["top"])) for m in macro if m != panel["top"]}
        expected |= {frozenset(pair) for pair in random_row.items()}
        tests = [t for t in board["comparisons"]
                 if (t["column"], t["protocol"]) == (column, protocol)]
        assert {frozenset((t["model"], t["reference"])) for t in tests} == expected
        for t in tests:
            a, b = per[t["model"]][1], per[t["reference"]][1]
            low, high, p, n_valid = _reference_paired_bootstrap(labels, a, b, list(ids),
                                                                resamples, 0, _auroc)
            m = t["macro_auroc"]
            assert m["difference"] == pytest.approx(macro[t["model"]] - macro[t["reference"]],
                                                    abs=1e-12)
            if p == 0:  # no resample reached 0: the bound 2/(B+1) (paired.py)
                p, bound = 2 / (n_valid + 1), "<"
            else:
                bound = None
            assert (m["ci"]["low"], m["ci"]["high"], m["p"]) == pytest.approx((low, high, p),
                                                                               abs=1e-12)
            assert m["p_bound"] == bound
            # Every class with 2 of each is tested; below 100 of each (all of them here) by
            # exchanging the two models' ranks, class c's exchanges drawn from seed [0, c].
            assert set(t["per_class"]) == {classes[c] for c in delong_testable(labels)}
            for c in delong_testable(labels):
                assert min(labels[:, c].sum(), len(labels) - labels[:, c].sum()) < 100
                _, p_exchange = reference_exchange_p(labels[:, c], a[:, c], b[:, c],
                                                     groups=list(ids), seed=[0, c],
                                                     n_permutations=permutations)
                assert t["per_class"][classes[c]]["p"] == pytest.approx(p_exchange, abs=1e-12)
    # Holm across the whole table, by hand, from the p-values checked above (bounds as given).
    macro_p = [t["macro_auroc"]["p"] for t in board["comparisons"]]
    assert [t["macro_auroc"]["p_holm"] for t in board["comparisons"]] == pytest.approx(
        holm_by_hand(macro_p), abs=1e-12)
    assert [t["macro_auroc"]["significant"] for t in board["comparisons"]] == \
        [p < ALPHA for p in holm_by_hand(macro_p)]
    for panel in board["panels"]:  # bold: the top model, and those not below it after Holm
        against_top = {t["model"]: p < ALPHA for t, p in zip(board["comparisons"],
                                                             holm_by_hand(macro_p))
                       if (t["column"], t["protocol"]) == (panel["column"], panel["protocol"])
                       and t["reference"] == panel["top"]}
        assert set(panel["best"]) == {panel["top"]} | {m for m, below in against_top.items()
                                                       if not below}
    per_class = [e for t in board["comparisons"] for e in t["per_class"].values()]
    assert [e["p_holm"] for e in per_class] == pytest.approx(
        holm_by_hand([e["p"] for e in per_class]), abs=1e-12)
    assert f"Holm's correction over the {len(macro_p)} comparisons" in \
        board["tests"]["macro_auroc"]
    md = (workdir / "leaderboard.md").read_text()
    assert board["tests"]["per_class"] in md
    assert sum(md.count(f"\n| {p['column']} | {p['protocol']} |") for p in board["panels"]) \
        == len(board["comparisons"]) + len(board["panels"])   # the tests, the columns table
    image = matplotlib.image.imread(workdir / "leaderboard.png")
    assert image.shape[0] > 200 and image[..., :3].std() > 0.05


@pytest.mark.slow
def test_a_second_benchmark_on_a_workdir_in_use_is_refused(model_flags, tmp_path, capsys):
    lock = tmp_path / workdir_lib.WorkdirLock.NAME
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": "now"}
    lock.write_text(json.dumps(holder))  # a live process holds it
    with pytest.raises(SystemExit) as exited:
        _run(model_flags, tmp_path)
    assert exited.value.code == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        f"crema-jax benchmark: error: {tmp_path} is in use: a run by pid {os.getpid()} on "
        f"{holder['host']} since now holds {lock}; wait for it to finish, or delete that file "
        "if the run is gone"]
    assert json.loads(lock.read_text()) == holder and sorted(os.listdir(tmp_path)) == [lock.name]


def test_a_killed_benchmark_resumes_without_recomputing_finished_cells(
        model_flags, uninterrupted, tmp_path):
    env = {**os.environ, benchmark.ENV_DRILL_KILL: "5", "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": xla_flags.cpu_devices(8)}
    killed = subprocess.run([sys.executable, "-m", "crema_jax.main", "benchmark",
                             f"--models={','.join(model_flags)}", f"--tasks={TASKS}",
                             f"--workdir={tmp_path}"], env=env, cwd=str(REPO),
                            capture_output=True, text=True, timeout=900, check=False)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert len(list((tmp_path / "cells").rglob("*.npz"))) == 5
    assert not (tmp_path / "leaderboard.json").exists()
    lock = tmp_path / workdir_lib.WorkdirLock.NAME
    dead = json.loads(lock.read_text())["pid"]  # left by the killed run
    with pytest.raises(ProcessLookupError):
        os.kill(dead, 0)
    board = _run(model_flags, tmp_path)
    assert not lock.exists()  # taken over (its process gone), then released
    # The 5 finished cells are reused; the features the killed run cached are too.
    assert board["counts"] == {"cells_computed": 11, "cells_reused": 5,
                               "cells_not_applicable": 0, "feature_extractions": 0,
                               "features_reused": 11, "statistics_computed": 32,
                               "statistics_reused": 0}
    clean = dict(uninterrupted[1])
    for key in ("counts", "seconds"):
        board.pop(key), clean.pop(key)
    assert board == clean


def test_a_rerun_reuses_the_leaderboards_statistics_and_prints_a_summary(
        model_flags, uninterrupted, tmp_path, capsys):
    """Over the same cells a rerun reuses every statistic (the same leaderboard), says how far
    the leaderboard is per panel, and prints the ranking table and each panel's verdict, not
    the whole leaderboard.md, whose per-class section holds each model's AUROC of each class
    (scikit-learn's). A task file with another alpha reuses the cells, not the statistics."""
    source, first = uninterrupted
    workdir = tmp_path / "bench"
    shutil.copytree(source, workdir)
    capsys.readouterr()
    again = _run(model_flags, workdir)
    out = capsys.readouterr().out.splitlines()
    assert again["counts"] == {"cells_computed": 0, "cells_reused": 16,
                               "cells_not_applicable": 0, "feature_extractions": 0,
                               "features_reused": 0, "statistics_computed": 0,
                               "statistics_reused": 32}
    same = {k: v for k, v in again.items() if k not in ("counts", "seconds")}
    assert same == {k: v for k, v in first.items() if k not in ("counts", "seconds")}
    progress = [line for line in out if line.startswith("leaderboard: ")]
    assert progress[4] == "leaderboard: 16 paired tests in 4 panels (1279 resamples, 9999 " \
        "exchanges)"   # 4 x 16 / 0.05 - 1 resamples for Holm over 16 comparisons
    assert [re.sub(r"\d+\.\d s", "T s", line) for line in progress[5:]] == [
        f"leaderboard: {p['column']} / {p['protocol']}: 4 tests (4 reused) in T s; {4 * k} of "
        "16 done, T s" for k, p in enumerate(again["panels"], 1)]
    md = (workdir / "leaderboard.md").read_text()
    start = out.index("macro AUROC [95% CI over patients]")   # the ranking table, plain text
    assert [line.split()[0] for line in out[start + 2:start + 7]] == ["model"] + [
        m["name"] for m in again["models"]]
    assert not any("\\" in line or "**" in line for line in out)   # no Markdown on the terminal
    cells = _cells(workdir, again)
    for panel in again["panels"]:
        ids, probs, labels = _per_record(cells[(panel["top"], panel["column"],
                                                panel["protocol"])])
        ok = [c for c in range(labels.shape[1]) if 0 < labels[:, c].sum() < len(labels)]
        macro = roc_auc_score(labels[:, ok], probs[:, ok], average="macro")
        assert any(line.startswith(f"{panel['column']} / {panel['protocol']}: top "
                                   f"{panel['top']} ({macro:.3f}); not distinguishable from it: ")
                   for line in out)
        section = md[md.index(f"### {panel['column']} / {panel['protocol']}\n"):].splitlines()
        classes = [str(c) for c in cells[(panel["top"], panel["column"], panel["protocol"])][
            "classes"]]
        for c, name in enumerate(classes):
            row = next(line for line in section if line.startswith(f"| {name} | "))
            n_pos = int(labels[:, c].sum())
            assert row.startswith(f"| {name} | {n_pos} / {len(labels) - n_pos} | ")
            figures = row.split(" | ")[3:]
            for model, text in zip(["tiny", "random", "net1d", "random:net1d"], figures):
                model_probs = _per_record(cells[(model, panel["column"], panel["protocol"])])[1]
                expected = (f"{roc_auc_score(labels[:, c], model_probs[:, c]):.3f}"
                            if c in ok else "\u2014")
                assert text.startswith(expected)
    assert out[-1] == (f"the whole leaderboard (per-class results, every paired test): "
                       f"{workdir / 'leaderboard.md'}; figures: {workdir / 'leaderboard.json'}, "
                       f"{workdir / 'leaderboard.png'}")
    assert "## Paired tests" in md and not any(line.startswith("## ") for line in out)
    # alpha 0.1 (not part of a cell's digest): every cell reused, every statistic computed.
    tasks = tmp_path / "alpha.py"
    tasks.write_text(TASKS.read_text().replace("config.alpha = 0.05", "config.alpha = 0.1"))
    assert benchmark_cli.COMMAND.run([f"--models={','.join(model_flags)}", f"--tasks={tasks}",
                                      f"--workdir={workdir}"]) is None
    counts = json.loads((workdir / "leaderboard.json").read_text())["counts"]
    assert (counts["cells_reused"], counts["statistics_computed"],
            counts["statistics_reused"]) == (16, 32, 0)


def test_a_damaged_saved_cell_is_computed_again(tmp_path, capsys):
    """A cell file cut short (or its metadata unreadable) had been a BadZipFile (or a JSON)
    traceback on the resume; it is a cell to compute again, as a missing one."""
    path = tmp_path / "probe.npz"
    probs = np.arange(6, dtype=np.float32).reshape(3, 2)
    benchmark.save_cell(path, ("m", "c", "probe"), "SPEC", {"n_train": 3}, {"probs": probs})
    loaded = benchmark.load_cell(path, "SPEC")
    np.testing.assert_array_equal(loaded["probs"], probs)
    assert loaded["fields"] == {"n_train": 3} and benchmark.load_cell(path, "OTHER") is None
    whole = path.read_bytes()
    path.write_bytes(whole[:len(whole) // 2])
    assert benchmark.load_cell(path, "SPEC") is None
    assert f"{path}: does not read (BadZipFile" in capsys.readouterr().out
    with open(path, "wb") as f:
        np.savez(f, meta=np.asarray("{not json"), probs=probs)
    assert benchmark.load_cell(path, "SPEC") is None
    assert benchmark.load_cell(tmp_path / "none.npz", "SPEC") is None


@pytest.mark.parametrize("protocol, field, value, said", [
    ("probe", "optimizer", "'sgd'", "expected one of ['lbfgs', 'adam']"),
    ("finetune", "augment", "'none'", "not a list of names; expected 'config', 'none', or "
     "names among amplitude_scale, "),
    ("finetune", "augment", "['jitter']", "unknown augmentation 'jitter'; expected 'config', "),
    # The finetune flag's rule: these had passed the task file and failed at the first
    # fine-tuning cell, after every probe cell ran ('config' read as an augmentation's name).
    ("finetune", "augment", "['config', 'lead_drop']", "'config' and 'none' stand alone; "
     "expected 'config', 'none', or names among "),
    ("finetune", "augment", "['none', 'config']", "'config' and 'none' stand alone; "),
])
def test_a_recipe_field_is_refused_when_the_task_file_loads(tmp_path, protocol, field, value,
                                                            said):
    """A probe optimizer 'sgd' had surfaced after the feature extraction, as a flag the
    benchmark has not got; an augment string had been read letter by letter. The error names
    the task file, as every other of its errors does (it had said "task file: ...")."""
    path = tmp_path / "tasks.py"
    path.write_text("import ml_collections\ndef get_config():\n    c = ml_collections."
                    "ConfigDict()\n    c.datasets = {'d': {'root': '/x'}}\n"
                    "    c.tasks = [{'name': 't', 'dataset': 'd'}]\n    c.protocols = "
                    f"{{{protocol!r}: {{{field!r}: {value}}}}}\n    return c\n")
    with pytest.raises(ValueError) as raised:
        benchmark_tasks.load_suite(path)
    assert str(raised.value).startswith(
        f"task file {path}: protocols[{protocol!r}].{field}={eval(value)!r}: {said}")


def test_two_tasks_of_one_column_are_refused_naming_the_task_file(tmp_path):
    path = tmp_path / "tasks.py"
    path.write_text("import ml_collections\ndef get_config():\n    c = ml_collections."
                    "ConfigDict()\n    c.datasets = {'d': {'root': '/x'}}\n"
                    "    c.tasks = [{'name': 't', 'dataset': 'd'}, {'name': 't', 'dataset': 'd'}]"
                    "\n    c.protocols = {'probe': {}}\n    return c\n")
    with pytest.raises(ValueError) as raised:
        benchmark_tasks.load_suite(path)
    assert str(raised.value) == (f"task file {path}: two tasks (or a task's lead sets and label "
                                 "fractions) give the same column 't'; rename one")


def test_a_benchmark_refused_at_its_models_makes_no_workdir(tmp_path):
    """A bad --models entry had been refused after the workdir was made."""
    tasks = pathlib.Path(__file__).resolve().parents[2] / "configs/benchmarks/bundled_sample.py"
    with pytest.raises(ValueError, match="random:FAMILY, FAMILY='foo'"):
        benchmark.run_benchmark(["a=random:foo"], str(tasks), str(tmp_path / "bench"))
    assert not (tmp_path / "bench").exists()
