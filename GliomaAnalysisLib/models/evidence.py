"""Evidence levels: how far a classifier's prediction can be trusted on real cases, from its model card.

Each classifier card holds an ``evidence`` block, one entry per task it predicts::

    "evidence": {"grade": {"metric": "auc", "value": 0.55, "n": 42, "positives": 33, "negatives": 9,
                           "ci95": null, "ci_method": null, "kind": "held-out real cases", "source": "..."}}

``value`` is the AUC measured on real, labelled cases (null when no real label was available, with ``reason``
saying why); ``positives`` / ``negatives`` count the two classes. ``ci95`` is ``{"lower", "upper"}`` as measured
(e.g. a bootstrap over cross-validation folds, ``ci_method`` naming it); when it is null but both class counts are
known, the interval is computed here (Hanley & McNeil 1982 standard error, normal approximation, clipped to
[0, 1]); otherwise it stays unknown. A retraining replaces these entries and the level follows, no code change.

The level follows one rule (:data:`RULE`), applied by :func:`evidence_level`.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Tuple

SUPPORTED, WEAK, NOT_ASSESSABLE = "supported", "weak", "not assessable"
LEVELS = (SUPPORTED, WEAK, NOT_ASSESSABLE)
RULE = ("supported: lower 95% bound of the real-data AUC above 0.70; weak: AUC above 0.60 with the lower bound "
        "above 0.50, or AUC above 0.60 with no interval known; not assessable: no real labels, or an interval "
        "reaching 0.50, or AUC 0.60 or below")
HANLEY_MCNEIL = "Hanley-McNeil 1982 standard error, normal approximation"


def auc_interval(auc: float, positives: int, negatives: int, z: float = 1.959964) -> Tuple[float, float]:
    """Approximate 95% interval of an AUC from the class counts (Hanley & McNeil 1982), clipped to [0, 1]."""
    if positives < 1 or negatives < 1:
        raise ValueError("an AUC interval needs at least one case of each class")
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    variance = (auc * (1 - auc) + (positives - 1) * (q1 - auc * auc)
                + (negatives - 1) * (q2 - auc * auc)) / (positives * negatives)
    half = z * math.sqrt(max(variance, 0.0))
    return max(0.0, auc - half), min(1.0, auc + half)


def figure_interval(figure: Dict[str, Any]) -> Tuple[Optional[Dict[str, float]], Optional[str]]:
    """(``{"lower", "upper"}``, method) of a card figure: as stated, else computed from the class counts, else
    (None, None)."""
    if figure.get("ci95"):
        return {"lower": float(figure["ci95"]["lower"]), "upper": float(figure["ci95"]["upper"])}, \
            figure.get("ci_method") or "as stated in the model card"
    positives, negatives = figure.get("positives"), figure.get("negatives")
    if figure.get("value") is not None and positives and negatives:
        lower, upper = auc_interval(float(figure["value"]), int(positives), int(negatives))
        return {"lower": round(lower, 4), "upper": round(upper, 4)}, HANLEY_MCNEIL
    return None, None


def evidence_level(value: Optional[float], interval: Optional[Dict[str, float]]) -> str:
    """The level of a real-data AUC ``value`` with its 95% ``interval`` (None when unknown), by :data:`RULE`."""
    if value is None:
        return NOT_ASSESSABLE
    if interval is not None:
        if interval["lower"] > 0.70:
            return SUPPORTED
        return WEAK if value > 0.60 and interval["lower"] > 0.50 else NOT_ASSESSABLE
    return WEAK if value > 0.60 else NOT_ASSESSABLE


def task_evidence(card: Dict[str, Any], task: str) -> Dict[str, Any]:
    """``{"evidence": level, "evidence_detail": {...}}`` of ``task`` from ``card`` (the report's fields)."""
    figure = dict((card.get("evidence") or {}).get(task) or {})
    interval, method = figure_interval(figure)
    value = figure.get("value")
    detail = {"model": card.get("name"), "metric": figure.get("metric", "auc"),
              "value": None if value is None else float(value), "n": figure.get("n"),
              "positives": figure.get("positives"), "negatives": figure.get("negatives"),
              "ci95": interval, "ci_method": method, "kind": figure.get("kind"),
              "source": figure.get("source") or "the model card states no real-data figure for this task",
              "rule": RULE}
    for key in ("reason", "literature"):
        if figure.get(key):
            detail[key] = figure[key]
    return {"evidence": evidence_level(detail["value"], interval), "evidence_detail": detail}


def evidence_table(card: Dict[str, Any]) -> str:
    """The card's evidence as a Markdown table (for the model card's .md)."""
    rows = ["| task | real-data AUC | n (positives / negatives) | 95% interval | evidence | source |",
            "| --- | --- | --- | --- | --- | --- |"]
    for task in (card.get("evidence") or {}):
        entry = task_evidence(card, task)
        d = entry["evidence_detail"]
        value = "none" if d["value"] is None else f"{d['value']:.2f}"
        counts = "unknown" if d["n"] is None else str(d["n"])
        if d["positives"] is not None and d["negatives"] is not None:
            counts += f" ({d['positives']} / {d['negatives']})"
        interval = (f"{d['ci95']['lower']:.2f}-{d['ci95']['upper']:.2f} ({d['ci_method']})" if d["ci95"]
                    else "unknown")
        source = "; ".join(d[k] for k in ("source", "reason", "literature") if d.get(k))
        rows.append(f"| {task} | {value} | {counts} | {interval} | **{entry['evidence']}** | {source} |")
    return "\n".join(rows)


def evidence_section(card: Dict[str, Any], summary: str) -> str:
    """The model card's Markdown section "Evidence on real cases": ``summary`` (one plain sentence or two), the
    table of :func:`evidence_table` and the rule. Exporters put it right under the card's disclaimer."""
    return (f"## Evidence on real cases (read this first)\n\n{summary}\n\n{evidence_table(card)}\n\n"
            f"Level rule (`GliomaAnalysisLib/models/evidence.py`): {RULE}. The figures live in the card's "
            f"`evidence` block; a retraining replaces them (e.g. by cross-validated AUCs with their interval) and "
            f"the level follows without code changes.\n")
