"""Calibration and classification metrics against hand-computed values."""
import numpy as np
import pytest

from GliomaAnalysisLib.models.calibration import (apply_temperature, brier_score, expected_calibration_error,
                                           fit_temperature, logit, reliability_bins, sigmoid)
from training.common.metrics import accuracy, binary_report, f1_score, roc_auc


def test_ece_by_hand():
    # bin [0.8, 0.867): 2 cases at 0.8, one positive -> |0.5 - 0.8| * 2/4; bin [0.2, 0.267): 2 at 0.2, none positive
    p = np.array([0.8, 0.8, 0.2, 0.2])
    y = np.array([1, 0, 0, 0])
    assert expected_calibration_error(p, y) == pytest.approx(0.5 * 0.3 + 0.5 * 0.2)
    assert brier_score(p, y) == pytest.approx((0.04 + 0.64 + 0.04 + 0.04) / 4)
    rows = reliability_bins(p, y)
    assert [r["count"] for r in rows] == [2, 2]


def test_probability_one_falls_in_last_bin():
    assert reliability_bins(np.array([1.0]), np.array([1]))[0]["upper"] == pytest.approx(1.0)


def test_sigmoid_logit_inverse_and_stable():
    x = np.array([-800.0, -3.0, 0.0, 2.5, 800.0])
    p = sigmoid(x)
    assert np.all(np.isfinite(p)) and p[0] == 0.0 and p[-1] == 1.0
    np.testing.assert_allclose(logit(sigmoid(x[1:4])), x[1:4], atol=1e-9)


def test_temperature_scaling_lowers_ece_of_overconfident_model():
    rng = np.random.default_rng(0)
    true_logit = rng.normal(0, 1.5, 4000)
    labels = (rng.random(4000) < sigmoid(true_logit)).astype(int)
    overconfident = 4.0 * true_logit  # the model's logits are 4x too large
    before = expected_calibration_error(sigmoid(overconfident), labels)
    temperature = fit_temperature(overconfident[:2000], labels[:2000])
    after = expected_calibration_error(apply_temperature(overconfident[2000:], temperature), labels[2000:])
    assert temperature == pytest.approx(4.0, rel=0.15)
    assert before > 0.08 and after < 0.03 and after < before / 3


def test_temperature_of_one_class_is_identity():
    assert fit_temperature(np.array([1.0, 2.0]), np.array([1, 1])) == 1.0


def test_auc_accuracy_f1_by_hand():
    p = np.array([0.1, 0.4, 0.35, 0.8, 0.8])
    y = np.array([0, 0, 1, 1, 0])
    # positive/negative pairs: 0.35 beats 0.1 only; 0.8 beats 0.1, 0.4 and ties 0.8 -> (1 + 2.5) / 6
    assert roc_auc(p, y) == pytest.approx(3.5 / 6)
    assert accuracy(p, y) == pytest.approx(3 / 5)
    assert f1_score(p, y) == pytest.approx(2 * 0.5 * 0.5 / 1.0)
    assert roc_auc(p, np.ones(5)) is None
    report = binary_report(p, y)
    assert report["n"] == 5 and report["positives"] == 2 and 0 <= report["ece"] <= 1
