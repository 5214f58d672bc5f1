"""compare's texts: report.md with every name escaped and the same-model note, and the plain
text compare prints (it had printed report.md whole, `**` and tables included)."""
import re
from types import SimpleNamespace

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from crema_jax.cli import compare as compare_cli
from crema_jax.evaluate import compare, folds, paired, report, report_markdown, scoring

CKPT = "/ckpt/st_mem|v2"
CLASSES = ["ISC_", "a*b"]
RUN = "probe leads=12 labels=1 folds=5"


def _compare_report(same_as_a=True, init_seed=None, settings=None):
    """A compare report of two models on 45 records: A's scores follow the labels, B's are
    noise; model B's checkpoint, the classes and a drop's sources hold Markdown's characters."""
    rng = np.random.default_rng(3)
    labels = np.zeros((45, 2), np.float32)
    labels[np.arange(45), rng.integers(0, 2, 45)] = 1
    a, b = labels + 0.8 * rng.random((45, 2)), rng.random((45, 2))
    data = SimpleNamespace(
        infos=[None] * 45, splits=np.full(45, "train"), label_type="multiclass",
        classes=CLASSES, display={},
        counts={"indexed": 45, "duplicates_merged": 0, "no_class_left": 0, "not_one_class": 0,
                "unlabelled": 0})
    runs = []
    for model, probs in (("A", a), ("B", b)):
        test = scoring.classification_report(labels, probs, CLASSES, thresholds=np.full(2, 0.5))
        test["ci"] = None
        runs.append({"name": RUN, "model": model, "n_train": 27.0, "n_val": 9.0, "test": test,
                     "protocol": {"leads": "12", "label_fraction": 1.0, "folds": 5}})
    comparison = {"run": RUN, "protocol": runs[0]["protocol"], "unpaired": {"A": 0, "B": 0},
                  **paired.compare_predictions(labels, a, b, CLASSES, n_resamples=200)}
    drop = {"train_source": "geo_rgia", "test_source": "ning|bo", "drop_a": 0.1, "drop_b": 0.25,
            "difference": -0.15, "ci": {"low": -0.3, "high": -0.02}, "p": 0.01, "alpha": 0.05,
            "verdict": "A better at alpha=0.05", "classes_below_floor": []}
    model = {"checkpoint": CKPT, "backbone": "sit", "data": "crema: 250 Hz, 3 crops",
             "crop_averaging": "embedding", "init_seed": init_seed}
    rep = report.new_report(
        title=f"Compare (probe): A = {CKPT} vs B = {CKPT}", command="compare",
        settings=settings or {"seed": 0}, data=data,
        models={"A": dict(model), "B": {**model, "same_as_A": same_as_a}}, runs=runs,
        cross_domain=[], record_folds=folds.fold_plan(np.repeat(np.arange(5), 9), 5),
        comparisons=[comparison], cross_domain_comparisons=[drop], seconds=1.0)
    return rep, labels, a, b


def _cell_counts_agree(md: str) -> None:
    """Every row of every table has its header's cells (a bar not escaped splits a cell)."""
    lines = md.splitlines()
    cells = [len(re.split(r"(?<!\\)\|", line)) for line in lines]
    for start in (i for i, line in enumerate(lines) if line.startswith("|---")):
        end = next((i for i in range(start, len(cells)) if cells[i] == 1), len(cells))
        assert set(cells[start - 1:end]) == {cells[start - 1]}, lines[start - 1:end]


def test_report_md_escapes_every_name_and_says_when_a_and_b_are_one_model():
    rep, _, _, _ = _compare_report()
    md = report_markdown.markdown(rep)
    _cell_counts_agree(md)
    lines = md.splitlines()
    assert lines[0] == "# Compare (probe): A = /ckpt/st\\_mem\\|v2 vs B = /ckpt/st\\_mem\\|v2"
    assert "| B | /ckpt/st\\_mem\\|v2 | sit | crema: 250 Hz, 3 crops | embedding |" in lines
    assert ("**Note**: A and B are the same model (equal weights, architecture and data path): "
            "every difference is 0.") in lines
    per_class = [line.split(" | ")[0] for line in lines if re.match(r"\| \S+ \| \d+/45 \|", line)]
    assert per_class == ["| ISC\\_", "| a\\*b"] * 2   # the runs' table, then the comparison's
    assert any(line.startswith("| geo\\_rgia | ning\\|bo | 0.100 | 0.250 | -0.150 |")
               for line in lines)


def test_report_md_notes_one_random_init_and_no_note_for_two_models():
    md = report_markdown.markdown(_compare_report(init_seed=4)[0])
    assert ("**Note**: A and B are the same random init (seed 4, one architecture and data "
            "path): every difference is 0; --init\\_seed\\_b=N draws B from another seed, the "
            "folds, label subsets and bootstrap kept.") in md.splitlines()
    assert "Note" not in report_markdown.markdown(_compare_report(same_as_a=False)[0])


def test_a_setting_holding_a_backtick_stays_one_code_span():
    md = report_markdown.markdown(_compare_report(settings={"root": "/d/a`b", "seed": 0})[0])
    assert "root: ``/d/a`b``, seed: `0`" in md.splitlines()


def test_compare_prints_plain_text_and_names_as_given(tmp_path, capsys, monkeypatch):
    rep, labels, a, b = _compare_report()
    monkeypatch.setattr(compare, "run_compare", lambda settings, kwargs: rep)
    compare_cli.COMMAND.run([f"--checkpoint={CKPT}", f"--checkpoint_b={CKPT}",
                             f"--root={tmp_path}", f"--workdir={tmp_path / 'w'}"])
    lines = capsys.readouterr().out.splitlines()
    auroc_a = roc_auc_score(labels, a, average="macro")
    auroc_b = roc_auc_score(labels, b, average="macro")
    m = rep["comparisons"][0]["macro_auroc"]
    assert m["difference"] == pytest.approx(auroc_a - auroc_b, abs=1e-12)
    assert (m["p"], m["p_bound"]) == (2 / 201, "<")   # no resample reached 0: "< 0.01"
    assert lines == [
        f"Compare (probe): A = {CKPT} vs B = {CKPT}",
        f"{RUN}: {m['verdict']} (macro AUROC A {auroc_a:.3f}, B {auroc_b:.3f}, A − B "
        f"{auroc_a - auroc_b:.3f}, 95% CI [{m['ci']['low']:.3f}, {m['ci']['high']:.3f}], "
        f"p < 0.01; 45 records)",
        "drop geo_rgia -> ning|bo: A better at alpha=0.05 (drop A 0.100, B 0.250, A − B "
        "-0.150, 95% CI [-0.300, -0.020], p 0.010)",
        f"wrote {tmp_path / 'w'}/report.json, report.md (the whole report: models, runs, "
        "per-class tests), paired_differences.png, predictions.npz"]
