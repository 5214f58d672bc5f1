"""`crema-jax probe` / `finetune` end to end on the 50 CinC records, from a `crema-jax pretrain`
checkpoint; figures are recomputed from predictions.npz with scikit-learn and the labels are read
back from the WFDB headers by hand."""
import json
import os
import pathlib
import re
import subprocess
import sys

import matplotlib.image
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from crema_jax.cli import finetune, probe
from tests.evaluate.conftest import evaluated_ids, header_labels

COMMON = dict(split_fractions=["0.6", "0.2", "0.2"], min_positives=3, bootstrap=50,
              batch_size=16)
# report.json's one schema (README, "Report schema"): every command, every protocol.
SCHEMA = {"title", "command", "settings", "models", "label_type", "classes", "class_display",
          "records", "headline", "runs", "cross_domain", "comparisons",
          "cross_domain_comparisons", "seconds"}
RUN_KEYS = {"name", "model", "protocol", "n_train", "n_val", "test"}


def _run(command, **flags):
    """command.COMMAND.run with --name=value flags (lists comma-joined, booleans --[no]name)."""
    argv = []
    for name, value in flags.items():
        if isinstance(value, bool):
            argv.append(f"--{name}" if value else f"--no{name}")
        elif isinstance(value, (list, tuple)):
            argv.append(f"--{name}={','.join(value)}")
        elif value is not None:
            argv.append(f"--{name}={value}")
    assert command.COMMAND.run(argv) is None


def _header_labels(root: pathlib.Path, record_id: str) -> set:
    return header_labels(root / f"{record_id}.hea")


def _check_outputs(workdir: pathlib.Path, root: pathlib.Path) -> dict:
    report = json.loads((workdir / "report.json").read_text())
    assert "NaN" not in (workdir / "report.json").read_text()
    assert set(report) == SCHEMA and all(RUN_KEYS <= set(run) for run in report["runs"])
    pred = np.load(workdir / "predictions.npz")
    classes = list(pred["classes"])
    assert classes == report["classes"]
    # Labels agree with the headers; 20% of each source is test: 4 + 4 + 2 records (the sample's
    # two byte-identical records are one before the split: 19 georgia records still give 4),
    # less those whose classes all have too few training positives (each has a class left).
    n = len(pred["record_id"])
    assert n == report["runs"][0]["test"]["n"] == report["records"]["test"]
    assert 10 - report["records"]["no_class_left"] <= n <= 10
    for rid, row in zip(pred["record_id"], pred["labels"]):
        codes = _header_labels(root, str(rid))
        assert [c for c, y in zip(classes, row) if y] == [c for c in classes if c in codes]
        assert row.sum() >= 1
    ok = [c for c in range(len(classes)) if 0 < pred["labels"][:, c].sum() < len(pred["labels"])]
    test = report["runs"][0]["test"]
    assert test["macro_auroc"] == pytest.approx(
        roc_auc_score(pred["labels"][:, ok], pred["probs"][:, ok], average="macro"), abs=1e-6)
    assert {s["class"] for s in test["skipped"]} == {classes[c] for c in range(len(classes))
                                                      if c not in ok}
    assert test["ci"]["low"] <= test["ci"]["high"]
    assert "| run | model | leads |" in (workdir / "report.md").read_text()
    for png in ("roc.png", "embeddings_pca.png"):
        assert matplotlib.image.imread(workdir / png).shape[0] > 300
    return report


@pytest.mark.slow
def test_probe_protocols_end_to_end(pretrained_workdir, cinc_sample_dir, tmp_path):
    _run(probe, checkpoint=str(pretrained_workdir), root=str(cinc_sample_dir),
         workdir=str(tmp_path), label_fractions=["0.01", "0.1", "1.0"], lead_sets=["12", "I"],
         cross_domain=True, probe_steps=50, **COMMON)
    report = _check_outputs(tmp_path, cinc_sample_dir)
    runs = {(r["protocol"]["leads"], r["protocol"]["label_fraction"]): r for r in report["runs"]}
    assert set(runs) == {(l, f) for l in ("12", "I") for f in (0.01, 0.1, 1.0)}
    # 29 training records (60% of 20 + 19 + 10: 12 + 11 + 6), less records left with no class;
    # 1% keeps >= 1 positive per class instead of 1.
    assert runs[("12", 1.0)]["n_train"] == report["records"]["train"]
    assert 29 - report["records"]["no_class_left"] <= runs[("12", 1.0)]["n_train"] <= 29
    assert 1 <= runs[("12", 0.01)]["n_train"] <= len(report["classes"])
    assert runs[("12", 0.1)]["n_train"] >= 3
    cross = {c["train_source"]: c for c in report["cross_domain"]}
    assert set(cross) == {"georgia", "ningbo", "ptbxl"}
    assert {k: v["n"] for k, v in cross["georgia"]["out_of_domain"].items()} == {
        "ningbo": 20, "ptbxl": 10}
    for entry in cross.values():
        for drop in entry["drop"].values():
            if drop["drop"] is not None:
                assert drop["drop"] == pytest.approx(drop["in_domain"] - drop["out_of_domain"])


@pytest.mark.slow
def test_probe_from_a_prepared_cache_matches_the_wfdb_probe(pretrained_workdir, cinc_sample_dir,
                                                           tmp_path):
    """--cache_dir reads `crema-jax prepare`'s preprocessed records instead of the WFDB files:
    the same records, labels (checked against the headers) and splits, and test probabilities
    equal to the WFDB run's up to the cache's int16 rounding of the signals."""
    cache_dir = tmp_path / "cache"
    cli = os.path.join(os.path.dirname(sys.executable), "crema-jax")
    done = subprocess.run([cli, "prepare", f"--root={cinc_sample_dir}", f"--out={cache_dir}",
                           "--records_per_shard=16", "--workers=1"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    preds = {}
    for name, where in (("wfdb", dict(root=str(cinc_sample_dir))),
                        ("from_cache", dict(root=None, cache_dir=str(cache_dir)))):
        # One l2 value: a grid could pick a different l2 for a near-tie and hide the comparison.
        _run(probe, checkpoint=str(pretrained_workdir), workdir=str(tmp_path / name),
             lead_sets=["12"], label_fractions=["1.0"], cross_domain=False, probe_steps=50,
             l2_grid=["1.0"], **COMMON, **where)
        _check_outputs(tmp_path / name, cinc_sample_dir)
        preds[name] = np.load(tmp_path / name / "predictions.npz")
    for key in ("record_id", "classes", "labels"):
        np.testing.assert_array_equal(preds["from_cache"][key], preds["wfdb"][key])
    np.testing.assert_allclose(preds["from_cache"]["probs"], preds["wfdb"]["probs"], atol=1e-3)
    report = json.loads((tmp_path / "from_cache" / "report.json").read_text())
    assert report["settings"]["cache_dir"] == str(cache_dir)
    # The records really come from the cache, in the dataset's row order and classes.
    from crema_jax.config import default_config
    from crema_jax.data.cache.source import CacheSource
    from crema_jax.evaluate import datasets
    from crema_jax.inference import backbones
    data = datasets.load_dataset(dict(root="", cache_dir=str(cache_dir), seed=0,
                                      split_fractions=[], min_positives=3, label_type="auto"))
    cfg = backbones.eval_data_config(default_config(), ["I"], batch_size=4)
    source = datasets.make_source(data, cfg, rows=[5, 2])
    assert isinstance(source, CacheSource) and len(source) == 2
    assert [source[i]["path"] for i in range(2)] == [data.infos[5].path, data.infos[2].path]
    np.testing.assert_array_equal(np.stack([source[i]["labels"] for i in range(2)]),
                                  data.labels[[5, 2]])


@pytest.mark.slow
def test_finetune_lead_i_end_to_end(pretrained_workdir, cinc_sample_dir, tmp_path):
    _run(finetune, checkpoint=str(pretrained_workdir), root=str(cinc_sample_dir),
         workdir=str(tmp_path), lead_sets=["I"], label_fractions=["1.0"], cross_domain=False,
         epochs=2, patience=0, **COMMON)
    report = _check_outputs(tmp_path, cinc_sample_dir)
    run = report["runs"][0]
    assert [h["epoch"] for h in run["history"]] == [1, 2]
    # The kept epoch: the higher validation macro AUROC, the lower validation loss on a tie.
    rank = [(h["val_macro_auroc"], -h["val_loss"]) for h in run["history"]]
    assert all(auroc is not None for auroc, _ in rank)
    assert run["best_epoch"] == 1 + max(range(2), key=lambda i: (round(rank[i][0], 9),
                                                                 rank[i][1], -i))
    assert run["chosen_by"] == "validation macro AUROC"
    assert report["models"]["A"]["crop_averaging"] == "mean of the crops' logits"
    # Its data line names what it averages (it had said "embedding averaging").
    assert report["models"]["A"]["data"].endswith(", logit averaging")
    # Unset recipe flags follow the data path: ours decays the lr by layer and drops paths.
    assert report["models"]["A"]["recipe"] == {"layer_decay": 0.75, "drop_path": 0.1}
    assert report["settings"]["layer_decay"] == 0.75


def test_random_init_baseline_probe(cinc_sample_dir, tmp_path):
    _run(probe, checkpoint="random", model_size="tiny", root=str(cinc_sample_dir),
         workdir=str(tmp_path), lead_sets=["12"], label_fractions=["1.0"], cross_domain=False,
         probe_steps=50, **COMMON)
    report = _check_outputs(tmp_path, cinc_sample_dir)
    assert report["settings"]["checkpoint"] == "random"


def test_records_that_cannot_be_read_are_counted_not_reported_as_tested(cinc_sample_dir,
                                                                        tmp_path):
    """Two records whose signal files are damaged (read: skipped) had been counted in the
    report's records as evaluated and tested, and named nowhere in it."""
    import shutil
    root = tmp_path / "records"
    shutil.copytree(cinc_sample_dir, root)
    data = (root / "E07501.mat").read_bytes()
    (root / "E07501.mat").write_bytes(data[:len(data) // 3])    # truncated
    (root / "E07502.mat").write_bytes(b"")                        # empty
    _run(probe, checkpoint="random", model_size="tiny", root=str(root),
         workdir=str(tmp_path / "out"), lead_sets=["12"], label_fractions=["1.0"],
         cross_domain=False, probe_steps=50, folds=3, min_positives=3, bootstrap=20,
         batch_size=16)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    pred = np.load(tmp_path / "out" / "predictions.npz")
    ids = {str(r) for r in pred["record_id"]}
    assert not ids & {"E07501", "E07502"}
    records = report["records"]
    assert records["unreadable"] == 2
    assert records["test"] == len(ids) == report["runs"][0]["test"]["n"] == records["total"] - 2
    assert records["folds"] == np.bincount(pred["fold"])[1:].tolist()
    assert sum(records["folds"]) == records["total"] - 2   # every readable record tested once
    line = next(x for x in (tmp_path / "out" / "report.md").read_text().splitlines()
                if x.startswith("**Records**"))
    assert f"{records['test']} tested; 2 test records could not be read (skipped" in line


def test_net1d_backbone_probe(cinc_sample_dir, tmp_path):
    """A Net1D checkpoint in the layout import-torch writes (default config, model = net1d)."""
    from flax import nnx

    from crema_jax.runtime.checkpoint import save_model_checkpoint
    from crema_jax.config import default_config
    from crema_jax.models.net1d import Net1D
    config = default_config("net1d")
    config.model.filters, config.model.blocks = [16, 32], [1, 1]  # small: the path is under test
    model = Net1D(config.model, rngs=nnx.Rngs(0))
    save_model_checkpoint(tmp_path / "net1d", nnx.to_pure_dict(nnx.state(model)), config)
    _run(probe, checkpoint=str(tmp_path / "net1d"), root=str(cinc_sample_dir),
         workdir=str(tmp_path / "out"), lead_sets=["12"], label_fractions=["1.0"],
         cross_domain=False, probe_optimizer="adam", probe_steps=100, **COMMON)
    report = _check_outputs(tmp_path / "out", cinc_sample_dir)
    assert report["title"].startswith("Linear probe: net1d")


def _scorable(labels):
    return [c for c in range(labels.shape[1]) if 0 < labels[:, c].sum() < len(labels)]


def _macro(labels, probs):
    ok = _scorable(labels)
    return roc_auc_score(labels[:, ok], probs[:, ok], average="macro")


@pytest.mark.slow
def test_probe_folds_test_every_record_once_and_keep_patients_together(
        pretrained_workdir, cinc_sample_dir, manifest, tmp_path):
    csv_path, patients = manifest
    _run(probe, checkpoint=str(pretrained_workdir), layout="manifest", root=str(csv_path),
         workdir=str(tmp_path), folds=5, min_positives=5, probe_steps=50, bootstrap=50,
         batch_size=16)
    report = json.loads((tmp_path / "report.json").read_text())
    assert set(report) == SCHEMA and RUN_KEYS | {"folds", "fold_summary"} <= set(report["runs"][0])
    pred = np.load(tmp_path / "predictions.npz")
    ids = [str(r) for r in pred["record_id"]]
    expected = evaluated_ids(cinc_sample_dir, 5)
    assert sorted(ids) == expected and len(set(ids)) == len(ids)  # every record kept, once
    assert report["records"]["total"] == len(expected)
    classes = list(pred["classes"])
    for rid, row in zip(ids, pred["labels"]):
        assert {c for c, y in zip(classes, row) if y} == _header_labels(cinc_sample_dir, rid) \
            & set(classes)
    fold = pred["fold"]
    for patient in {patients[r] for r in ids}:
        assert len({int(f) for r, f in zip(ids, fold) if patients[r] == patient}) == 1
    # Stratified by counting: each class's positives per fold are within one patient's records
    # (2) of its fifth.
    for c in range(len(classes)):
        per_fold = np.bincount(fold[pred["labels"][:, c] > 0], minlength=6)[1:]
        assert np.abs(per_fold - pred["labels"][:, c].sum() / 5).max() <= 2, (c, per_fold)
    run = report["runs"][0]
    assert run["protocol"]["folds"] == 5 and report["records"]["folds"] == \
        np.bincount(fold)[1:].tolist()
    assert run["test"]["macro_auroc"] == pytest.approx(_macro(pred["labels"], pred["probs"]),
                                                       abs=1e-9)
    per_fold = [_macro(pred["labels"][fold == f], pred["probs"][fold == f]) for f in range(1, 6)]
    assert [f["test"]["macro_auroc"] for f in run["folds"]] == pytest.approx(per_fold, abs=1e-9)
    summary = run["fold_summary"]["macro_auroc"]
    assert summary["mean"] == pytest.approx(np.mean(per_fold), abs=1e-12)
    assert summary["std"] == pytest.approx(np.std(per_fold, ddof=1), abs=1e-12)
    assert run["test"]["ci"]["low"] < run["test"]["macro_auroc"] < run["test"]["ci"]["high"]
    assert report["headline"]["macro_auroc"] == run["test"]["macro_auroc"]
    assert "### Folds of probe leads=12 labels=1 folds=5" in (tmp_path / "report.md").read_text()
    # What the label fraction (all labels) used, counted from the saved folds: fold f trains on
    # the records of the folds other than f and f + 1.
    pools = [int(np.sum((fold != f) & (fold != f % 5 + 1))) for f in range(1, 6)]
    assert [(f["n_labelled"], f["n_train_pool"]) for f in run["folds"]] == list(zip(pools, pools))
    assert (run["n_train_pool"], run["label_fraction_used"]) == (round(np.mean(pools), 1), 1.0)


@pytest.mark.slow
def test_finetune_folds_test_every_record_once(pretrained_workdir, cinc_sample_dir, tmp_path):
    _run(finetune, checkpoint=str(pretrained_workdir), root=str(cinc_sample_dir),
         workdir=str(tmp_path), folds=3, min_positives=5, lead_sets=["I"], epochs=1,
         steps_per_epoch=1, patience=0, bootstrap=20, batch_size=8, preset="stmem",
         drop_path=0.05)
    report = json.loads((tmp_path / "report.json").read_text())
    assert set(report) == SCHEMA and report["command"] == "finetune"
    # ST-MEM's path brings its recipe (no layer-wise decay, docs/reference/stmem.md, its data
    # path step 6); a given flag wins over it.
    assert report["models"]["A"]["recipe"] == {"layer_decay": 1.0, "drop_path": 0.05}
    assert report["models"]["A"]["data_path"] == "stmem"
    pred = np.load(tmp_path / "predictions.npz")
    assert sorted(set(pred["record_id"].tolist())) == evaluated_ids(cinc_sample_dir, 5)
    assert len(pred["record_id"]) == len(evaluated_ids(cinc_sample_dir, 5))
    run = report["runs"][0]
    assert [f["history"][0]["epoch"] for f in run["folds"]] == [1, 1, 1]
    # One step of 8 ECGs a fold: the head trained on 8 of the fold's 15 training records, and
    # the table says 8 (it had said the 15 assigned).
    assert [(f["n_train"], f["n_val"], f["test"]["n"]) for f in run["folds"]] == [(8, 15, 15)] * 3
    assert run["test"]["macro_auroc"] == pytest.approx(_macro(pred["labels"], pred["probs"]),
                                                       abs=1e-9)


def test_a_diverging_finetune_stops_in_one_line_and_writes_no_report(cinc_sample_dir, tmp_path,
                                                                     capsys):
    """--base_lr=1e30 had written a report of NaNs, then ended in a PCA traceback."""
    with pytest.raises(SystemExit) as exited:
        _run(finetune, checkpoint="random", model_size="tiny", root=str(cinc_sample_dir),
             workdir=str(tmp_path / "ft"), lead_sets=["I"], label_fractions=["1.0"],
             cross_domain=False, epochs=2, steps_per_epoch=2, patience=0, base_lr="1e30",
             **{**COMMON, "batch_size": 8})
    err = capsys.readouterr().err.strip().splitlines()
    assert exited.value.code == 1 and len(err) == 1, err
    # Peak learning rate by hand: 1e30 x batch 8 / 256.
    assert re.fullmatch(r"crema-jax finetune: error: fine-tuning diverged: the training loss "
                        r"was (nan|inf) in epoch [12] \(peak learning rate 3\.125e\+28\); "
                        r"no report written: lower --base_lr", err[0]), err[0]
    assert not list((tmp_path / "ft").glob("report*")) and \
        not list((tmp_path / "ft").glob("*.png"))


def test_a_workdir_inside_the_checkpoint_read_is_refused(pretrained_workdir, cinc_sample_dir,
                                                         capsys):
    """probe --workdir=CKPT/checkpoints/9 had written its report among the checkpoint's steps,
    where the next pretraining in CKPT set it aside as an incomplete step."""
    inside = pretrained_workdir / "checkpoints" / "9"
    with pytest.raises(SystemExit) as exited:
        _run(probe, checkpoint=str(pretrained_workdir), root=str(cinc_sample_dir),
             workdir=str(inside), **COMMON)
    err = capsys.readouterr().err.strip()
    assert exited.value.code == 1 and err == (
        f"crema-jax probe: error: --workdir={inside}: inside the input {pretrained_workdir}, "
        "which this command reads and never writes into; choose a folder outside it")
    assert not inside.exists()


def test_an_evaluation_holds_its_workdir(cinc_sample_dir, tmp_path, capsys):
    """Two probes into one workdir had both ended "wrote ...": one report lost, their files
    mixed. A run that fails before writing leaves no folder it made."""
    from crema_jax.runtime import workdir as workdir_lib

    held = workdir_lib.WorkdirLock(tmp_path / "busy")
    held.acquire()
    try:
        with pytest.raises(SystemExit) as exited:
            _run(probe, checkpoint="random", model_size="tiny", root=str(cinc_sample_dir),
                 workdir=str(tmp_path / "busy"), **COMMON)
        err = capsys.readouterr().err.strip()
        assert exited.value.code == 1 and err.startswith(
            f"crema-jax probe: error: {tmp_path / 'busy'} is in use: a run by pid {os.getpid()}")
    finally:
        held.release()
    assert list((tmp_path / "busy").iterdir()) == []
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit):
        _run(probe, checkpoint="random", model_size="tiny", root=str(tmp_path / "empty"),
             workdir=str(tmp_path / "new"), **COMMON)
    assert "finds no record" in capsys.readouterr().err and not (tmp_path / "new").exists()
