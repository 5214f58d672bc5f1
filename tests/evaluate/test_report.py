"""Report rendering: JSON without NaN, Markdown figures, PNGs, PCA against scikit-learn."""
import json

import matplotlib.image
import numpy as np
from sklearn.decomposition import PCA
from sklearn.metrics import roc_auc_score

from crema_jax.evaluate import plots, report, scoring


def _report(rng):
    labels = (rng.random((40, 3)) < 0.4).astype(np.float32)
    labels[:, 2] = 0
    scores = rng.random((40, 3))
    test = scoring.classification_report(labels, scores, ["AF", "PAC", "RBBB"],
                                         thresholds=np.full(3, 0.5))
    test["ci"] = scoring.bootstrap_ci(labels, scores, n_resamples=50)
    run = {"name": "probe", "model": "A", "protocol": {"leads": "12", "label_fraction": 1.0},
           "n_train": 30, "test": test}
    cross = {"model": "A", "train_source": "georgia", "out_of_domain": {"ningbo": test},
             "drop": {"ningbo": {"classes": ["AF"], "in_domain": 0.9, "out_of_domain": 0.7,
                                 "drop": 0.2}}}
    return labels, scores, {"title": "t", "settings": {"seed": 0}, "runs": [run],
                            "cross_domain": [cross]}


def test_write_all_outputs(tmp_path):
    rng = np.random.default_rng(0)
    labels, scores, rep = _report(rng)
    feats = rng.normal(size=(40, 8))
    paths = report.write_all(rep, tmp_path, roc=(labels, scores, ["AF", "PAC", "RBBB"], "ROC"),
                             embeddings=(feats, {"label": ["a"] * 20 + ["b"] * 20,
                                                 "source": ["g", "n"] * 20}, "PCA"))
    text = (tmp_path / "report.json").read_text()
    assert "NaN" not in text
    loaded = json.loads(text)
    assert loaded["runs"][0]["test"]["per_class"]["RBBB"]["auroc"] is None
    md = (tmp_path / "report.md").read_text()
    macro = roc_auc_score(labels[:, :2], scores[:, :2], average="macro")
    assert f"| {macro:.3f} |" in md
    assert "RBBB: no positives" in md
    assert "| A | georgia | ningbo | 0.900 | 0.700 | 0.200 | 1 |" in md
    rep["class_display"] = {"AF": "atrial fibrillation"}
    assert "| atrial fibrillation (AF) |" in report.markdown(rep)
    for key in ("roc", "embeddings"):
        image = matplotlib.image.imread(paths[key])
        assert image.shape[0] > 300 and image.shape[1] > 300
        assert image[..., :3].std() > 0.05  # something was drawn


def test_pca_matches_sklearn_up_to_sign():
    x = np.random.default_rng(1).normal(size=(50, 6)) * np.arange(1, 7)
    xy, ratio = plots.pca_2d(x)
    ref = PCA(n_components=2).fit(x)
    proj = ref.transform(x)
    for k in range(2):
        sign = np.sign(np.dot(xy[:, k], proj[:, k]))
        np.testing.assert_allclose(sign * xy[:, k], proj[:, k], atol=1e-8)
    np.testing.assert_allclose(ratio, ref.explained_variance_ratio_, rtol=1e-8)


def test_primary_label_is_rarest_positive():
    labels = np.array([[1, 1, 0], [1, 0, 0], [0, 0, 0], [1, 0, 1]], np.float32)
    assert plots.primary_label(labels, ["a", "b", "c"]) == ["b", "a", "none", "c"]
