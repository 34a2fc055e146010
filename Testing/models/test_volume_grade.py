"""Grade from the segmentation's volumes: the library's prediction and the training side's fit and cross-validation."""
import numpy as np
import pytest

from GliomaAnalysisLib.models.volume_grade import hgg_probability, predict_grade, volume_features


def synthetic_cohort(seed: int = 0, n_hgg: int = 23, n_lgg: int = 5):
    """Enhancing and whole-tumor volumes (mL): HGGs enhance (5-50 mL), LGGs barely (0-2 mL)."""
    rng = np.random.default_rng(seed)
    volumes = [{"et": rng.uniform(5, 50), "wt": rng.uniform(40, 200)} for _ in range(n_hgg)]
    volumes += [{"et": rng.uniform(0, 2), "wt": rng.uniform(20, 150)} for _ in range(n_lgg)]
    return np.array([volume_features(v) for v in volumes]), np.array([1] * n_hgg + [0] * n_lgg, dtype=float)


def test_features_of_a_report():
    assert volume_features({"et": np.e - 1, "wt": 10.0, "ncr": 1.0}) == pytest.approx([1.0, (np.e - 1) / 10])
    assert volume_features({"et": 0.0, "wt": 0.0}).tolist() == [0.0, 0.0]  # no tumor: no division by zero


def test_fit_matches_the_penalised_likelihood_optimum():
    from training.multitask.volume_grade import fit_logistic

    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 2))
    y = (rng.random(200) < 1 / (1 + np.exp(-(2 * x[:, 0] - x[:, 1] + 0.5)))).astype(float)
    beta = fit_logistic(x, y, l2=1.0)
    design = np.hstack([x, np.ones((200, 1))])
    p = 1 / (1 + np.exp(-design @ beta))
    gradient = design.T @ (p - y) + np.array([beta[0], beta[1], 0.0])
    assert np.abs(gradient).max() < 1e-8  # stationary point of the penalised negative log-likelihood
    assert beta[0] > 1.2 and beta[1] < -0.5  # the generating signs and sizes


def test_shipped_style_block_calls_enhancing_tumors_high_grade_with_bootstrap_uncertainty():
    from training.multitask.volume_grade import fit_block

    x, y = synthetic_cohort()
    block = fit_block(x, y, bootstrap=50)
    assert len(block["bootstrap"]) == 50 and (block["n"], block["hgg"], block["lgg"]) == (28, 23, 5)
    enhancing = predict_grade(block, {"et": 30.0, "wt": 90.0})
    silent = predict_grade(block, {"et": 0.0, "wt": 60.0})
    assert enhancing["label"] == "HGG" and enhancing["probability_positive"] > 0.9
    assert silent["label"] == "LGG" and silent["probability_positive"] < 0.3
    assert silent["probability"] == pytest.approx(1 - silent["probability_positive"], abs=1e-4)
    assert 0 < silent["uncertainty"] < 0.5  # 5 LGG: the refits disagree somewhat
    probabilities = hgg_probability(block, x, block["bootstrap"])
    assert probabilities.shape == (50, 28) and ((probabilities > 0) & (probabilities < 1)).all()


def test_cross_validation_never_reads_a_held_out_label():
    from training.multitask.volume_grade import cross_validated_probabilities

    x, y = synthetic_cohort(seed=2)
    ids = [f"c{i}" for i in range(len(y))]
    features = {c: (x[i], i % 4) for i, c in enumerate(ids)}
    grades = {c: int(y[i]) for i, c in enumerate(ids)}
    base = cross_validated_probabilities(features, grades)
    flipped = cross_validated_probabilities(features, {**grades, "c0": 1 - grades["c0"]})
    for case_id in ids:
        same_fold = features[case_id][1] == features["c0"][1]
        assert (base[case_id] == flipped[case_id]) == same_fold, case_id  # c0's label reaches only other folds
    ungraded = cross_validated_probabilities(features, {**grades, "c1": None})
    assert "c1" in ungraded  # a case without a grade is still predicted
