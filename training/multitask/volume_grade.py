"""Fit and cross-validate the grade-from-volumes model (``GliomaAnalysisLib/models/volume_grade.py``).

The features of each real case come from its out-of-fold segmentation in the segmentation cross-validation
(``SEG_CV/cv_report.json``: the chosen post-processing's predicted volumes, what ``analyze`` would have reported for a
case its network never saw), so the model learns from segmentations as flawed as the ones it will read. Fold k's model
is fitted on the other folds' cases and predicts fold k's; the shipped block is fitted on every graded case.
Logistic regression on standardised features with an L2 penalty (Newton's method), no library needed.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple

import numpy as np

from GliomaAnalysisLib.models.volume_grade import FEATURES, hgg_probability, volume_features

from ..common.metrics import class_kept_resamples

L2 = 1.0
"""Penalty on the standardised weights (not the intercept): with 5 LGG among 28 cases the unpenalised fit separates."""
BOOTSTRAP = 200


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = L2, iterations: int = 50) -> np.ndarray:
    """[w1, ..., intercept] of an L2-penalised logistic regression of labels y (N,) 0/1 on features x (N, F)."""
    design = np.hstack([x, np.ones((len(x), 1))])
    penalty = np.diag([l2] * x.shape[1] + [0.0])
    beta = np.zeros(design.shape[1])
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-design @ beta))
        gradient = design.T @ (p - y) + penalty @ beta
        hessian = design.T @ (design * (p * (1 - p))[:, None]) + penalty + 1e-9 * np.eye(len(beta))
        step = np.linalg.solve(hessian, gradient)
        beta -= step
        if np.abs(step).max() < 1e-10:
            break
    return beta


def fit_block(x: np.ndarray, y: np.ndarray, bootstrap: int = BOOTSTRAP, seed: int = 0) -> Dict:
    """The card block ``grade_from_volumes`` fitted on features x (N, 2) and grades y (N,) (1 = HGG)."""
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale[scale == 0] = 1.0
    z = (x - mean) / scale
    beta = fit_logistic(z, y)
    refits = [fit_logistic(z[pick], y[pick]) for pick in class_kept_resamples(y, bootstrap, seed)]
    return {"features": list(FEATURES), "mean": mean.round(6).tolist(), "scale": scale.round(6).tolist(),
            "weights": beta[:2].round(6).tolist(), "intercept": round(float(beta[2]), 6),
            "bootstrap": np.round(refits, 5).tolist(), "l2": L2, "n": int(len(y)), "hgg": int(y.sum()),
            "lgg": int(len(y) - y.sum())}


def fit_on_report(seg_cv_report: Path, grades: Mapping[str, Optional[int]]) -> Dict:
    """The card block fitted on the out-of-fold volumes of ``seg_cv_report`` of every case of ``grades`` (case id ->
    1 HGG, 0 LGG, None unknown; their order is the fit's, which the bootstrap draws depend on)."""
    features = case_features(seg_cv_report)
    graded = [c for c, grade in grades.items() if grade is not None and c in features]
    block = fit_block(np.array([features[c][0] for c in graded]), np.array([grades[c] for c in graded], dtype=float))
    block["fitted_on"] = f"out-of-fold volumes of {seg_cv_report}"
    return block


def case_volumes(seg_cv_report: Path) -> Dict[str, Tuple[Dict[str, float], int]]:
    """case id -> (out-of-fold volumes {"et", "wt"} in mL of the chosen post-processing, fold)."""
    report = json.loads(Path(seg_cv_report).read_text())
    chosen = report["chosen"]
    return {case_id: ({"et": row[chosen]["et_ml_pred"], "wt": row[chosen]["wt_ml_pred"]}, int(row["fold"]))
            for case_id, row in report["per_case"].items()}


def case_features(seg_cv_report: Path) -> Dict[str, Tuple[np.ndarray, int]]:
    """case id -> (features (2,), fold) from the out-of-fold volumes of the chosen post-processing."""
    return {case_id: (volume_features(volumes), fold)
            for case_id, (volumes, fold) in case_volumes(seg_cv_report).items()}


def cross_validated_probabilities(features: Mapping[str, Tuple[np.ndarray, int]],
                                  grades: Mapping[str, Optional[int]]) -> Dict[str, float]:
    """case id -> out-of-fold P(HGG) for every case with features (graded or not): fold k's model is fitted on the
    graded cases of the other folds."""
    out = {}
    for fold in sorted({f for _, f in features.values()}):
        train = [c for c, (_, f) in features.items() if f != fold and grades.get(c) is not None]
        x = np.array([features[c][0] for c in train])
        y = np.array([grades[c] for c in train], dtype=float)
        block = fit_block(x, y, bootstrap=0)
        for case_id, (feature, f) in features.items():
            if f == fold:
                out[case_id] = float(hgg_probability(block, feature)[0, 0])
    return out
