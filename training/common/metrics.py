"""Binary classification metrics: ROC AUC, accuracy, F1 and a combined report with calibration measures.

``probabilities`` are P(positive) float (N,), ``labels`` 0/1 (N,).
"""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np
from scipy.stats import rankdata

from GliomaAnalysisLib.models.calibration import brier_score, expected_calibration_error


def roc_auc(probabilities: np.ndarray, labels: np.ndarray) -> Optional[float]:
    """Area under the ROC curve (Mann-Whitney U with mid-ranks for ties); None when only one class is present."""
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(p)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def accuracy(probabilities: np.ndarray, labels: np.ndarray, threshold: float = 0.5) -> float:
    return float(np.mean((np.asarray(probabilities) >= threshold) == np.asarray(labels).astype(bool)))


def f1_score(probabilities: np.ndarray, labels: np.ndarray, threshold: float = 0.5) -> float:
    """F1 of the positive class; 0 when there is no true positive."""
    predicted = np.asarray(probabilities) >= threshold
    y = np.asarray(labels).astype(bool)
    tp = int((predicted & y).sum())
    if tp == 0:
        return 0.0
    precision, recall = tp / predicted.sum(), tp / y.sum()
    return float(2 * precision * recall / (precision + recall))


def binary_report(probabilities: np.ndarray, labels: np.ndarray) -> Dict[str, Optional[float]]:
    """n, positives, AUC, accuracy, F1, ECE (15 bins) and Brier score of one set of predictions."""
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if len(p) == 0:
        return {"n": 0, "positives": 0, "auc": None, "accuracy": None, "f1": None, "ece": None, "brier": None}
    return {"n": int(len(p)), "positives": int(y.sum()), "auc": roc_auc(p, y), "accuracy": accuracy(p, y),
            "f1": f1_score(p, y), "ece": expected_calibration_error(p, y), "brier": brier_score(p, y)}
