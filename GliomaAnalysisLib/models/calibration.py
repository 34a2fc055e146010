"""Calibration of binary classifiers: temperature scaling, expected calibration error, Brier score, reliability bins.

All functions take NumPy arrays: ``logits``/``probabilities`` float (N,), ``labels`` in {0, 1} (N,).
"""
from __future__ import annotations

from typing import Dict, List

import numpy as np

ECE_BINS = 15
TEMPERATURE_BOUNDS = (0.05, 20.0)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function."""
    x = np.asarray(x, dtype=np.float64)
    return np.where(x >= 0, 1.0 / (1.0 + np.exp(-np.abs(x))), np.exp(-np.abs(x)) / (1.0 + np.exp(-np.abs(x))))


def logit(p: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Inverse of :func:`sigmoid`, with probabilities clipped to [eps, 1 - eps]."""
    p = np.clip(np.asarray(p, dtype=np.float64), eps, 1 - eps)
    return np.log(p) - np.log1p(-p)


def binary_nll(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean binary cross-entropy of logits against 0/1 labels."""
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """Temperature T > 0 minimising the NLL of ``sigmoid(logits / T)`` (Guo et al. 2017).

    Returns 1.0 when the labels are all one class (nothing to fit). T > 1 softens over-confident predictions.
    """
    y = np.asarray(labels, dtype=np.float64)
    z = np.asarray(logits, dtype=np.float64)
    if z.size == 0 or y.min() == y.max():
        return 1.0
    from scipy.optimize import minimize_scalar  # fitting only (training): importing it costs ~0.3 s

    result = minimize_scalar(lambda log_t: binary_nll(z / np.exp(log_t), y),
                             bounds=tuple(np.log(TEMPERATURE_BOUNDS)), method="bounded")
    return float(np.exp(result.x))


def apply_temperature(logits: np.ndarray, temperature: float) -> np.ndarray:
    """Calibrated probabilities ``sigmoid(logits / temperature)``."""
    return sigmoid(np.asarray(logits, dtype=np.float64) / float(temperature))


def reliability_bins(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> List[Dict[str, float]]:
    """Equal-width bins over [0, 1]: count, mean predicted probability and observed frequency of each non-empty bin."""
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    index = np.minimum((p * bins).astype(int), bins - 1)
    rows = []
    for b in range(bins):
        member = index == b
        if member.any():
            rows.append({"lower": b / bins, "upper": (b + 1) / bins, "count": int(member.sum()),
                         "confidence": float(p[member].mean()), "frequency": float(y[member].mean())})
    return rows


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE: sum over equal-width probability bins of (bin share) x |observed frequency - mean probability|."""
    n = len(np.asarray(probabilities))
    if n == 0:
        return float("nan")
    return float(sum(r["count"] / n * abs(r["frequency"] - r["confidence"])
                     for r in reliability_bins(probabilities, labels, bins)))


def brier_score(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Mean squared difference between predicted probability and the 0/1 outcome."""
    p = np.asarray(probabilities, dtype=np.float64)
    return float(np.mean((p - np.asarray(labels, dtype=np.float64)) ** 2))
