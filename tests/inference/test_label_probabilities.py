"""backbones.probabilities, the one logits -> probabilities of probe, MLP head, finetune and
predict, against SciPy's softmax and logistic sigmoid, also at logits where exp overflows."""
import warnings

import numpy as np
import pytest
import scipy.special

from crema_jax.inference import backbones

LOGITS = np.array([[-1000.0, 0.0, 1000.0],
                   [800.0, 799.0, -5.0],
                   [-745.0, -710.0, -3.5],
                   [0.25, -0.5, 2.0],
                   [30.0, 30.0, 30.0]])


def test_multiclass_is_the_softmax_over_classes():
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # no overflow, no invalid value
        got = backbones.probabilities(LOGITS.astype(np.float32), "multiclass")
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, scipy.special.softmax(LOGITS, axis=-1), rtol=1e-12,
                               atol=1e-300)
    np.testing.assert_allclose(got.sum(-1), 1.0, rtol=1e-15)
    assert got[1, 0] == pytest.approx(1 / (1 + np.exp(-1.0)))   # 800 against 799


def test_multilabel_is_a_sigmoid_per_label():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = backbones.probabilities(LOGITS[None], "multilabel")[0]
    assert got.dtype == np.float64
    # Relative down to 1e-300 (SciPy gives 0 at -710, where the sigmoid is 4.5e-309).
    np.testing.assert_allclose(got, scipy.special.expit(LOGITS), rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(got[2, 1], np.exp(-710.0), rtol=1e-9, atol=0)
    assert got[0, 0] == 0.0 and got[0, 2] == 1.0 and got[0, 1] == 0.5


def test_far_negative_logits_keep_distinct_probabilities():
    """Through tanh every logit below about -37 had given 0: ties where float32's sigmoid told
    the logits apart. -800 is below float64's smallest number (SciPy gives 0 too)."""
    x = np.array([-50.0, -100.0, -700.0, -800.0, 800.0])
    got = backbones.probabilities(x, "multilabel")
    np.testing.assert_allclose(got, scipy.special.expit(x), rtol=1e-12, atol=0)
    assert got[0] > got[1] > got[2] > 0 and got[3] == 0.0 and got[4] == 1.0
