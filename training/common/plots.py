"""Evaluation figures of the classifiers: reliability (calibration) plots and decision curves (matplotlib PNGs)."""
from __future__ import annotations

import os
from typing import Dict, Sequence, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from GliomaAnalysisLib.models.calibration import ECE_BINS, expected_calibration_error, reliability_bins  # noqa: E402

Curves = Dict[str, Tuple[np.ndarray, np.ndarray]]
"""name -> (probabilities P(positive) (N,), labels 0/1 (N,))."""


def calibration_plot(curves: Curves, path: "str | os.PathLike[str]", title: str, bins: int = ECE_BINS) -> None:
    """Observed frequency against mean predicted probability per equal-width bin, one line per curve, ECE in
    the legend, the diagonal for reference."""
    figure, axis = plt.subplots(figsize=(4.5, 4.5), dpi=110)
    axis.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    for name, (p, y) in curves.items():
        rows = reliability_bins(p, y, bins)
        axis.plot([r["confidence"] for r in rows], [r["frequency"] for r in rows], "o-", ms=4,
                  label=f"{name} (ECE {expected_calibration_error(p, y, bins):.3f}, n={len(p)})")
    axis.set(xlim=(0, 1), ylim=(0, 1), xlabel="mean predicted probability", ylabel="observed frequency", title=title)
    axis.legend(fontsize=7, loc="upper left")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def net_benefit(probabilities: np.ndarray, labels: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """Net benefit TP/N - FP/N * t/(1-t) of treating cases with P >= t, per threshold t (Vickers & Elkin 2006)."""
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    n = len(p)
    out = []
    for t in thresholds:
        treat = p >= t
        out.append((treat & y).sum() / n - (treat & ~y).sum() / n * t / (1 - t))
    return np.array(out)


def decision_curve_plot(curves: Curves, path: "str | os.PathLike[str]", title: str) -> None:
    """Net benefit of each model against the threshold probability, with treat-all and treat-none references."""
    thresholds = np.linspace(0.01, 0.95, 60)
    figure, axis = plt.subplots(figsize=(5, 4), dpi=110)
    first_labels = next(iter(curves.values()))[1]
    prevalence = float(np.mean(first_labels))
    axis.plot(thresholds, prevalence - (1 - prevalence) * thresholds / (1 - thresholds), color="grey", lw=1,
              label="treat all")
    axis.axhline(0, color="k", lw=1, label="treat none")
    for name, (p, y) in curves.items():
        axis.plot(thresholds, net_benefit(p, y, thresholds), lw=1.5, label=name)
    axis.set(xlabel="threshold probability", ylabel="net benefit", title=title,
             ylim=(min(-0.05, -prevalence * 0.2), max(0.05, prevalence * 1.1)))
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
