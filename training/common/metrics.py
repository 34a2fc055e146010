"""Binary classification metrics: ROC AUC, accuracy, F1 and a combined report with calibration measures.

``probabilities`` are P(positive) float (N,), ``labels`` 0/1 (N,).
"""
from __future__ import annotations

from typing import Dict, Iterator, List, Optional

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


BOOTSTRAP = 2000


def class_kept_resamples(labels: np.ndarray, n: int = BOOTSTRAP, seed: int = 0) -> Iterator[np.ndarray]:
    """``n`` bootstrap resamples of the cases (index arrays), the positives and the negatives of ``labels`` (0/1,
    (N,)) each resampled with replacement to their own count, so both classes are in every resample; a
    ``ValueError`` when one class is absent."""
    rng = np.random.default_rng(seed)
    positive, negative = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    if len(positive) == 0 or len(negative) == 0:
        raise ValueError(f"a class-kept bootstrap needs both classes, got {len(positive)} positive and "
                         f"{len(negative)} negative cases")
    for _ in range(n):
        yield np.concatenate([rng.choice(positive, len(positive)), rng.choice(negative, len(negative))])


def bootstrap_auc(probabilities: np.ndarray, labels: np.ndarray, n: int = BOOTSTRAP, seed: int = 0,
                  ) -> Optional[List[float]]:
    """95 % percentile interval of the AUC over ``n`` case resamples (both classes kept in every resample)."""
    if roc_auc(probabilities, labels) is None:
        return None
    values = [roc_auc(probabilities[pick], labels[pick]) for pick in class_kept_resamples(labels, n, seed)]
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]


def binary_metrics(p: np.ndarray, y: np.ndarray) -> Dict:
    """n, positives, AUC with its bootstrap 95 % interval, accuracy at 0.5 and Brier score of P(positive) p."""
    auc = roc_auc(p, y)
    return {"n": len(y), "positives": int(y.sum()), "auc": auc,
            "auc_95": bootstrap_auc(p, y) if auc is not None else None,
            "accuracy": float(((p >= 0.5) == (y == 1)).mean()), "brier": brier_score(p, y)}


def auc_evidence(metrics: Dict, kind: str, source: str) -> Dict:
    """A model card's ``evidence`` entry (``GliomaAnalysisLib/models/evidence.py``) from ``binary_metrics`` of
    out-of-fold predictions: the AUC with its bootstrap interval, or no value when a class is missing."""
    if metrics is None or metrics["auc"] is None:
        return {"metric": "auc", "value": None, "n": 0 if metrics is None else metrics["n"], "positives": None,
                "negatives": None, "ci95": None, "ci_method": None, "kind": None,
                "source": f"{source}: no real case with both classes of this label",
                "reason": "never validated on real labels of both classes"}
    return {"metric": "auc", "value": round(metrics["auc"], 4), "n": metrics["n"], "positives": metrics["positives"],
            "negatives": metrics["n"] - metrics["positives"],
            "ci95": {"lower": round(metrics["auc_95"][0], 4), "upper": round(metrics["auc_95"][1], 4)},
            "ci_method": f"bootstrap over cases ({BOOTSTRAP:,} resamples, classes kept)", "kind": kind,
            "source": source}


AUC_TABLE_HEADER = ["| {label} | cases | {positives} | AUC | AUC 95 % (bootstrap) | accuracy at 0.5 | Brier |",
                    "| --- | --- | --- | --- | --- | --- | --- |"]
"""Markdown header of ``auc_table_row`` rows (format ``label`` and ``positives``, the columns' names)."""


def auc_table_row(label: str, metrics: Dict) -> str:
    """One Markdown row of ``binary_metrics``: cases, positives, AUC, its bootstrap interval, accuracy, Brier."""
    def number(value: Optional[float]) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    interval = "n/a" if not metrics["auc_95"] else f"{metrics['auc_95'][0]:.2f}-{metrics['auc_95'][1]:.2f}"
    return (f"| {label} | {metrics['n']} | {metrics['positives']} | {number(metrics['auc'])} | {interval} | "
            f"{number(metrics['accuracy'])} | {number(metrics['brier'])} |")


def auc_table(label: str, positives: str, rows: Dict[str, Dict]) -> List[str]:
    """A Markdown table of ``binary_metrics`` keyed by row label (first column named ``label``)."""
    return [line.format(label=label, positives=positives) for line in AUC_TABLE_HEADER] + \
        [auc_table_row(name, metrics) for name, metrics in rows.items()]
