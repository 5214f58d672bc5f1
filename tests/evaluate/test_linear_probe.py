"""The linear probe reaches scikit-learn's regularised logistic-regression optimum."""
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from crema_jax.evaluate import linear_probe


def _data(rng, n, d, classes):
    x = rng.normal(size=(n, d)).astype(np.float32) * rng.uniform(0.5, 3, size=d) + 2.0
    w = rng.normal(size=(d, classes))
    return x, x @ w


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_binary_probe_matches_sklearn_logistic_regression(optimizer):
    rng = np.random.default_rng(0)
    x, z = _data(rng, 120, 6, 1)
    y = (z[:, :1] + rng.normal(size=(120, 1)) > np.median(z)).astype(np.float32)
    l2 = 1e-2
    probe = linear_probe.fit_linear_probe(
        x, y, x, y, l2_grid=(l2,), optimizer=optimizer, steps=100 if optimizer == "lbfgs" else 3000,
        learning_rate=0.05)
    xs = (x - x.mean(0)) / x.std(0)
    ref = LogisticRegression(C=1.0 / (l2 * len(x)), tol=1e-10, max_iter=10000).fit(xs, y[:, 0])
    np.testing.assert_allclose(probe.kernel[:, 0], ref.coef_[0], atol=2e-3, rtol=2e-3)
    np.testing.assert_allclose(probe.bias[0], ref.intercept_[0], atol=2e-3)
    np.testing.assert_allclose(linear_probe.predict_proba(probe, x)[:, 0],
                               ref.predict_proba(xs)[:, 1], atol=1e-3)


def test_multiclass_probe_matches_sklearn_softmax_regression():
    rng = np.random.default_rng(1)
    x, z = _data(rng, 150, 5, 3)
    cls = np.argmax(z + rng.normal(size=z.shape), axis=1)
    y = np.eye(3, dtype=np.float32)[cls]
    l2 = 3e-2
    probe = linear_probe.fit_linear_probe(x, y, x, y, label_type="multiclass", l2_grid=(l2,),
                                          steps=100)
    xs = (x - x.mean(0)) / x.std(0)
    ref = LogisticRegression(C=1.0 / (l2 * len(x)), tol=1e-10, max_iter=10000).fit(xs, cls)
    np.testing.assert_allclose(linear_probe.predict_proba(probe, x), ref.predict_proba(xs),
                               atol=1e-3)


def test_l2_grid_selection_uses_validation_auroc():
    rng = np.random.default_rng(2)
    # Few noisy training records and many dimensions: heavy L2 generalises better.
    w = rng.normal(size=(40, 2))
    x_train = rng.normal(size=(30, 40)).astype(np.float32)
    x_val = rng.normal(size=(300, 40)).astype(np.float32)
    noisy = lambda x: (x @ w + 3 * rng.normal(size=(len(x), 2)) > 0).astype(np.float32)  # noqa
    y_train, y_val = noisy(x_train), noisy(x_val)
    grid = (1e-6, 1.0)
    probe = linear_probe.fit_linear_probe(x_train, y_train, x_val, y_val, l2_grid=grid,
                                          optimizer="adam", steps=300, learning_rate=0.05)
    assert set(probe.val_auroc_by_l2) == set(grid)
    best = max(grid, key=lambda g: probe.val_auroc_by_l2[g])
    assert probe.l2 == best
    # The recorded validation AUROC is the one of the returned head (independent recompute).
    from sklearn.metrics import roc_auc_score
    probs = linear_probe.predict_proba(probe, x_val)
    assert roc_auc_score(y_val, probs, average="macro") == pytest.approx(
        probe.val_auroc_by_l2[probe.l2], abs=1e-5)


def test_constant_features_do_not_produce_nan():
    x = np.ones((20, 3), np.float32)
    x[:, 0] = np.arange(20)
    y = (np.arange(20) > 9).astype(np.float32)[:, None]
    probe = linear_probe.fit_linear_probe(x, y, x, y, l2_grid=(1e-3,), optimizer="adam", steps=30)
    assert np.all(np.isfinite(linear_probe.predict_proba(probe, x)))


def test_the_optimizer_names_are_written_once(monkeypatch):
    """--probe_optimizer's values, the head's check and the task file's all read
    ranges.PROBE_OPTIMIZERS (the flag had its own list; the task file a copy bound at import):
    narrowed there, the flag, the head and the task file refuse alike."""
    from absl import flags

    from crema_jax.cli import evaluation_flags
    from crema_jax.evaluate import benchmark_tasks, ranges

    monkeypatch.setattr(ranges, "PROBE_OPTIMIZERS", ("lbfgs",))
    cmd = evaluation_flags.evaluation_command("probe", "", evaluation_flags.add_probe_head)
    required = ["--checkpoint=random", "--workdir=w", "--root=r"]
    assert cmd.parse(required + ["--probe_optimizer=lbfgs"]).probe_optimizer == "lbfgs"
    with pytest.raises(flags.Error, match="probe_optimizer"):
        cmd.parse(required + ["--probe_optimizer=adam"])
    x = np.zeros((4, 2), np.float32)
    y = np.array([[0], [1], [0], [1]], np.float32)
    with pytest.raises(ValueError, match=r"^--probe_optimizer='adam': expected one of "
                                         r"\('lbfgs',\)$"):
        linear_probe.fit_linear_probe(x, y, x, y, optimizer="adam")
    with pytest.raises(ValueError, match=r"^task file t.py: protocols\['probe'\]\.optimizer="
                                         r"'adam': expected one of \['lbfgs'\]$"):
        benchmark_tasks.recipe({"optimizer": "adam"}, "probe", "t.py")
