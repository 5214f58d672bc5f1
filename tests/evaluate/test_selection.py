"""Choosing a head on validation (the probe's and MLP head's L2 strength, fine-tuning's epoch):
the validation loss against scikit-learn, the rule by hand, the loss alone choosing (and being
named) when no class is scorable on validation, and an evaluation that scores nothing at all
ending in one line, exit 1, with its report written."""
import json
import pathlib

import numpy as np
import pytest
from sklearn.metrics import log_loss

from crema_jax.cli import finetune, probe
from crema_jax.evaluate import finetune as finetune_lib
from crema_jax.evaluate import linear_probe, mlp_head, report, scoring


def test_validation_loss_is_sklearns_cross_entropy():
    rng = np.random.default_rng(0)
    probs = rng.uniform(0.02, 0.98, size=(40, 3))
    labels = (rng.uniform(size=(40, 3)) > 0.6).astype(np.float32)
    multilabel = sum(log_loss(labels[:, k], probs[:, k], labels=[0, 1]) for k in range(3))
    assert scoring.validation_loss(labels, probs, "multilabel") == pytest.approx(multilabel,
                                                                                 rel=1e-9)
    softmax = probs / probs.sum(1, keepdims=True)
    cls = rng.integers(0, 3, size=40)
    assert scoring.validation_loss(np.eye(3)[cls], softmax, "multiclass") == pytest.approx(
        log_loss(cls, softmax, labels=[0, 1, 2]), rel=1e-9)


def _candidate(auroc, loss):
    return {"macro_auroc": auroc, "loss": loss,
            "key": (-np.inf if auroc is None else round(auroc, 9), -loss)}


def test_the_rule_auroc_then_loss_then_first():
    pick = scoring.best_on_validation
    assert pick([_candidate(0.7, 0.1), _candidate(0.8, 0.9)]) == 1          # AUROC first
    assert pick([_candidate(0.8, 0.5), _candidate(0.8 + 1e-12, 0.4)]) == 1  # equal AUROC: loss
    assert pick([_candidate(None, 0.1), _candidate(0.51, 5.0)]) == 1        # an AUROC beats none
    assert pick([_candidate(None, 0.6), _candidate(None, 0.2), _candidate(None, 0.3)]) == 1
    assert pick([_candidate(0.6, 0.3), _candidate(0.6, 0.3)]) == 0          # exact tie: first
    labels = np.array([[0.0], [0.0], [0.0]])
    key = scoring.validation_key(labels, np.array([[0.2], [0.3], [0.1]]), "multilabel")
    assert key["macro_auroc"] is None and scoring.chosen_by(key) == scoring.BY_LOSS
    assert key["loss"] == pytest.approx(-np.mean(np.log([0.8, 0.7, 0.9])), rel=1e-9)


def _problem(rng, n, d=8):
    w = rng.normal(size=(d, 1))
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x, (x @ w + rng.normal(size=(n, 1)) > 0).astype(np.float32)


@pytest.mark.parametrize("fit, predict, grid", [
    (linear_probe.fit_linear_probe, linear_probe.predict_proba, (1e-6, 1.0, 100.0)),
    (mlp_head.fit_mlp_head, mlp_head.predict_proba, (1e-4, 1.0, 100.0))])
def test_with_no_class_scorable_on_validation_the_loss_chooses_and_says_so(fit, predict, grid):
    rng = np.random.default_rng(3)
    x_train, y_train = _problem(rng, 60)
    x_val, _ = _problem(rng, 30)
    y_val = np.zeros((30, 1), np.float32)  # no positive: no validation AUROC
    head = fit(x_train, y_train, x_val, y_val, l2_grid=grid)
    assert head.chosen_by == scoring.BY_LOSS
    assert all(v is None for v in head.val_auroc_by_l2.values())
    # Each strength's head alone, its validation log-loss by scikit-learn: the lowest wins.
    losses = {l2: log_loss(y_val[:, 0], predict(fit(x_train, y_train, x_val, y_val,
                                                   l2_grid=(l2,)), x_val)[:, 0], labels=[0, 1])
              for l2 in grid}
    assert sorted(losses.values())[0] < sorted(losses.values())[1] - 1e-3  # a clear winner
    assert head.l2 == min(losses, key=losses.get)
    scorable = fit(x_train, y_train, x_val, _problem(rng, 30)[1], l2_grid=grid)
    assert scorable.chosen_by == scoring.BY_AUROC


def _write_manifest(folder: pathlib.Path, sample: pathlib.Path, labelled_test: bool,
                    labelled_val: bool) -> pathlib.Path:
    """20 records: train 0-9 (4 of class A), val 10-13, test 14-19."""
    ids = sorted(p.stem for p in sample.glob("*.hea"))[:20]
    positives = {0, 1, 2, 3} | ({10, 11} if labelled_val else set()) \
        | ({15, 16} if labelled_test else set())
    rows = ["path,labels,split"] + [
        f"{sample / r},{'A' if i in positives else ''},"
        f"{'train' if i < 10 else 'val' if i < 14 else 'test'}" for i, r in enumerate(ids)]
    path = folder / "manifest.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def _probe(manifest, workdir):
    return probe.COMMAND.run([
        "--checkpoint=random", "--model_size=tiny", "--layout=manifest", f"--root={manifest}",
        f"--workdir={workdir}", "--bootstrap=20", "--probe_steps=20", "--batch_size=8"])


def test_a_probe_chosen_by_loss_is_named_in_the_report(tmp_path, cinc_sample_dir, capsys):
    manifest = _write_manifest(tmp_path, cinc_sample_dir, labelled_test=True,
                               labelled_val=False)
    assert _probe(manifest, tmp_path / "out") is None
    written = json.loads((tmp_path / "out" / "report.json").read_text())
    assert written["runs"][0]["selection"]["chosen_by"] == scoring.BY_LOSS
    assert written["runs"][0]["test"]["macro_auroc"] is not None
    line = "**Chosen by validation loss alone**: probe leads=12 labels=1 (model A):"
    assert line in (tmp_path / "out" / "report.md").read_text()
    assert line in capsys.readouterr().out


def test_a_finetune_chosen_by_loss_says_so_per_epoch_and_in_the_report(tmp_path,
                                                                       cinc_sample_dir, capsys,
                                                                       monkeypatch):
    logged = []
    monkeypatch.setattr(finetune_lib.logging, "info",
                        lambda msg, *args: logged.append(msg % args if args else msg))
    manifest = _write_manifest(tmp_path, cinc_sample_dir, labelled_test=True,
                               labelled_val=False)
    assert finetune.COMMAND.run([
        "--checkpoint=random", "--model_size=tiny", "--layout=manifest", f"--root={manifest}",
        f"--workdir={tmp_path / 'ft'}", "--bootstrap=20", "--epochs=2", "--steps_per_epoch=1",
        "--patience=0", "--batch_size=8", "--lead_sets=I"]) is None
    written = json.loads((tmp_path / "ft" / "report.json").read_text())
    run = written["runs"][0]
    assert run["chosen_by"] == scoring.BY_LOSS
    history = run["history"]
    losses = [h["val_loss"] for h in history]
    assert all(h["val_macro_auroc"] is None for h in history) and len(losses) == 2
    # The rule by hand: no AUROC anywhere, so the lower validation loss (the first of equals).
    assert run["best_epoch"] == 1 + losses.index(min(losses))
    for h in history:  # each epoch's line says why there is no AUROC (it had printed "None")
        assert (f"epoch {h['epoch']}/2: train loss {h['train_loss']:.4f}, val macro AUROC n/a "
                f"(no class scorable), val loss {h['val_loss']:.4f}") in logged
    assert "**Chosen by validation loss alone**: finetune" in capsys.readouterr().out


def test_a_probe_that_scores_nothing_exits_1_after_writing_its_report(tmp_path, cinc_sample_dir,
                                                                      capsys):
    manifest = _write_manifest(tmp_path, cinc_sample_dir, labelled_test=False,
                               labelled_val=True)
    with pytest.raises(SystemExit) as exited:
        _probe(manifest, tmp_path / "out")
    assert exited.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["crema-jax probe: error: no class could be scored on any test set (probe "
                   "leads=12 labels=1: A: no positives): no figure was measured; re-split "
                   "(--split_fractions) or use --folds so that each test set holds positives "
                   "and negatives of a class"]
    written = json.loads((tmp_path / "out" / "report.json").read_text())
    assert written["headline"]["macro_auroc"] is None
    assert report.nothing_scored(written) is not None
