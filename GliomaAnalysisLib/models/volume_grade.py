"""Grade (LGG / HGG) from the segmentation's volumes: a two-feature logistic model read from the multi-task card.

Contrast enhancement is the radiological hallmark of a high-grade glioma. The model reads the two numbers of the
final (post-processed) segmentation that carry it, exactly as the report states them:

    log1p_et_ml       log(1 + enhancing volume in mL)
    et_share_of_wt    enhancing volume / whole-tumor volume (0 without tumor)

The card block ``grade_from_volumes`` holds the standardisation (``mean``, ``scale``), the fitted ``weights`` and
``intercept``, and ``bootstrap``: the same model refitted on case resamples, rows ``[w1, w2, intercept]``. The
probability is the fitted model's; its uncertainty is the standard deviation over the bootstrap refits (how much
the 28 labelled training cases leave the answer open). Fitted by ``training/multitask/volume_grade.py``.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping

import numpy as np

FEATURES = ("log1p_et_ml", "et_share_of_wt")
GRADE_LABELS = ("LGG", "HGG")


def volume_features(volumes_ml: Mapping[str, float]) -> np.ndarray:
    """(2,) float64 features (``FEATURES``) of a report's ``volumes_ml`` (keys ``et`` and ``wt``, mL)."""
    et, wt = max(0.0, float(volumes_ml["et"])), max(0.0, float(volumes_ml["wt"]))
    return np.array([np.log1p(et), et / wt if wt > 0 else 0.0])


def hgg_probability(block: Mapping[str, Any], features: np.ndarray,
                    coefficients: "np.ndarray | None" = None) -> np.ndarray:
    """P(HGG), (B, N), of features (N, 2) under each row ``[w1, w2, intercept]`` of ``coefficients`` (B, 3);
    default: the fitted model alone (B = 1)."""
    if coefficients is None:
        coefficients = [[*block["weights"], block["intercept"]]]
    c = np.asarray(coefficients, dtype=np.float64)
    z = (np.atleast_2d(features) - np.asarray(block["mean"])) / np.asarray(block["scale"])
    return 1.0 / (1.0 + np.exp(-(c[:, :2] @ z.T + c[:, 2:3])))


def predict_grade(block: Mapping[str, Any], volumes_ml: Mapping[str, float]) -> Dict[str, Any]:
    """The report's grade prediction ``{label, probability (of that label), uncertainty, probability_positive,
    basis}`` from the final volumes."""
    x = volume_features(volumes_ml)
    positive = float(hgg_probability(block, x)[0, 0])
    spread = float(hgg_probability(block, x, block["bootstrap"])[:, 0].std()) if block.get("bootstrap") else 0.0
    return {"label": GRADE_LABELS[int(positive >= 0.5)],
            "probability": round(positive if positive >= 0.5 else 1 - positive, 4),
            "uncertainty": round(spread, 4), "probability_positive": round(positive, 4),
            "basis": "segmentation volumes (enhancing volume and its share of the whole tumor)"}
