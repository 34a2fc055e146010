"""Automatic narrative summary: what the segmentation measures first, then each estimate at its real strength.

Layers: ``imaging`` (volumes, enhancement, necrosis, approximate location), ``grade``, ``molecular`` (each
prediction with its probability, confidence and the evidence level of its model card) and the integrated
``impression``, which names a finding only when its evidence is "supported" and its confidence at least moderate
(:func:`named_finding`); otherwise it says "indeterminate", or "not assessable from this MRI" for MGMT. Each
statement carries the report numbers it rests on (JSON path -> value), so the text can be checked against
``report.json``. The text is marked as automatic and is not a diagnosis.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from ..models.evidence import NOT_ASSESSABLE, SUPPORTED

AUTOMATIC_NOTICE = ("Automatically generated text from image analysis, for research use only. It is not a "
                    "diagnosis and does not replace review by a radiologist or neuropathologist.")

_TASK_WORDS = {
    "grade": ("histological grade estimate", {"HGG": "high-grade glioma (WHO CNS grade 3-4)",
                                              "LGG": "lower-grade glioma (WHO CNS grade 2-3)"}),
    "idh": ("IDH status", {"mutant": "IDH-mutant", "wildtype": "IDH-wildtype"}),
    "codeletion_1p19q": ("1p/19q status", {"codeleted": "1p/19q-codeleted", "intact": "1p/19q-intact"}),
    "mgmt": ("MGMT promoter", {"methylated": "MGMT promoter methylated", "unmethylated": "MGMT promoter unmethylated"}),
}
_SHORT_WORDS = {"grade": {"HGG": "high grade", "LGG": "lower grade"},
                "idh": {"mutant": "IDH-mutant", "wildtype": "IDH-wildtype"},
                "codeletion_1p19q": {"codeleted": "1p/19q-codeleted", "intact": "1p/19q-intact"},
                "mgmt": {"methylated": "MGMT promoter methylated", "unmethylated": "MGMT promoter unmethylated"}}
_UNNAMED = {"grade": "grade indeterminate", "idh": "IDH status indeterminate",
            "codeletion_1p19q": "1p/19q status indeterminate", "mgmt": "MGMT promoter status not assessable from this MRI"}
_MIN_ENHANCING_FRACTION = 0.05


@dataclass
class Statement:
    """One sentence and the report values (JSON paths -> numbers) it states."""

    layer: str
    text: str
    values: Dict[str, float]


def confidence(probability: float, uncertainty: Optional[float]) -> str:
    """low / moderate / high from the distance of the probability to 0.5 and the MC-dropout spread."""
    margin = abs(probability - 0.5)
    if (uncertainty or 0.0) > 0.15 or margin < 0.15:
        return "low confidence"
    return "moderate confidence" if margin < 0.35 else "high confidence"


def named_finding(level: Optional[str], probability: float, uncertainty: Optional[float]) -> bool:
    """Whether the impression may name a finding: evidence "supported" and confidence moderate or high."""
    return level == SUPPORTED and confidence(probability, uncertainty) != "low confidence"


def build_narrative(report: Dict) -> List[Statement]:
    """Statements in four layers: imaging, histological grade estimate, molecular markers, integrated impression."""
    statements = _imaging(report)
    predictions = report["predictions"]
    grade, slice_grade = predictions.get("grade"), report.get("slice_grade")
    if grade:
        statements.append(_prediction_statement("grade", grade, "predictions.grade"))
    if slice_grade and slice_grade.get("attention") is not None:
        statements.append(_slice_grade_statement(slice_grade, grade))
    elif not grade:
        statements.append(Statement("grade", "No grade prediction is available from this version.", {}))
    markers = [_prediction_statement(task, predictions[task], f"predictions.{task}")
               for task in ("idh", "codeletion_1p19q", "mgmt") if predictions.get(task)]
    fusion = report.get("mgmt_late_fusion")
    if fusion and fusion.get("fused") is not None:
        markers.append(Statement(
            "molecular", f"MGMT late fusion of the per-modality models: probability of methylation "
                         f"{fusion['fused']:.2f}{_evidence_words(fusion, 'mgmt_late_fusion')[0]}.",
            {"mgmt_late_fusion.fused": fusion["fused"], **_evidence_words(fusion, "mgmt_late_fusion")[1]}))
    statements += markers or [Statement("molecular", "No molecular marker prediction is available from this "
                                        "version.", {})]
    statements.append(_impression(report))
    return statements


def _imaging(report: Dict) -> List[Statement]:
    v, r, missing = report["volumes_ml"], report["ratios"], report["inputs"]["missing"]
    if v["wt"] <= 0:
        statements = [Statement("imaging", "No tumor was segmented (whole tumor volume 0.0 mL).",
                                {"volumes_ml.wt": v["wt"]})]
    else:
        statements = [Statement(
            "imaging",
            f"Whole tumor volume {v['wt']:.1f} mL: enhancing tumor {v['et']:.1f} mL ({100 * r['et']:.0f} %), "
            f"necrotic / non-enhancing core {v['ncr']:.1f} mL ({100 * r['ncr']:.0f} %), "
            f"peritumoral edema {v['ed']:.1f} mL ({100 * r['ed']:.0f} %); tumor core {v['tc']:.1f} mL.",
            {"volumes_ml.wt": v["wt"], "volumes_ml.et": v["et"], "ratios.et": r["et"], "volumes_ml.ncr": v["ncr"],
             "ratios.ncr": r["ncr"], "volumes_ml.ed": v["ed"], "ratios.ed": r["ed"], "volumes_ml.tc": v["tc"]})]
        statements.append(_enhancement(v, r, "t1ce" in missing))
        location = report.get("location")
        if location:
            statements.append(Statement(
                "imaging", f"Location (approximate, from the tumor's position within the brain's extent; no "
                           f"atlas): {where(location)}.",
                {"location.position.left_right": location["position"]["left_right"],
                 "location.position.anterior_posterior": location["position"]["anterior_posterior"],
                 "location.position.inferior_superior": location["position"]["inferior_superior"]}))
    if missing:
        statements.append(Statement("imaging", f"Missing sequences: {', '.join(missing)}; the analysis ran on the "
                                    f"{4 - len(missing)} available ones.", {"inputs.n_missing": len(missing)}))
    return statements


def where(location: Dict) -> str:
    """'left hemisphere, frontal lobe' from a report's ``location``."""
    side = location["hemisphere"]
    side = f"{side} hemisphere" if side in ("left", "right") else side
    return f"{side}, {location['region']}"


def _enhancement(v: Dict, r: Dict, no_t1ce: bool) -> Statement:
    values = {"volumes_ml.et": v["et"], "ratios.et": r["et"], "volumes_ml.ncr": v["ncr"], "ratios.ncr": r["ncr"]}
    if no_t1ce:
        return Statement("imaging", "Enhancement is not assessable without T1CE; the enhancing and necrotic "
                         "volumes above are estimated from the other sequences.", {})
    if r["et"] < _MIN_ENHANCING_FRACTION:
        text = (f"Little or no enhancement ({v['et']:.1f} mL, {100 * r['et']:.0f} % of the whole tumor), a pattern "
                f"more common in lower-grade glioma.")
    elif r["ncr"] >= _MIN_ENHANCING_FRACTION:
        text = (f"Enhancement present ({v['et']:.1f} mL) around a necrotic / non-enhancing core ({v['ncr']:.1f} mL, "
                f"{100 * r['ncr']:.0f} %), a pattern common in high-grade glioma.")
    else:
        text = f"Enhancement present ({v['et']:.1f} mL, {100 * r['et']:.0f} %) without a sizeable necrotic core."
    return Statement("imaging", text, values)


def _evidence_words(prediction: Dict, path: str) -> Tuple[str, Dict[str, float]]:
    """'; evidence on real cases: LEVEL (AUC ..., interval ..., n ...)' and the values it prints."""
    level = prediction.get("evidence") or NOT_ASSESSABLE
    detail = prediction.get("evidence_detail") or {}
    values: Dict[str, float] = {}
    if detail.get("value") is None:
        reason = detail.get("reason") or "no real-data figure in the model card"
        if detail.get("literature"):
            reason += "; MRI-based prediction of this marker is at chance in the literature"
        return f"; evidence on real cases: {level} ({reason})", values
    parts = [f"AUC {detail['value']:.2f}"]
    values[f"{path}.evidence_detail.value"] = detail["value"]
    if detail.get("ci95"):
        parts.append(f"interval {detail['ci95']['lower']:.2f}-{detail['ci95']['upper']:.2f}")
        values[f"{path}.evidence_detail.ci95.lower"] = detail["ci95"]["lower"]
        values[f"{path}.evidence_detail.ci95.upper"] = detail["ci95"]["upper"]
    else:
        parts.append("interval unknown")
    if detail.get("n"):
        parts.append(f"n {detail['n']}")
        values[f"{path}.evidence_detail.n"] = detail["n"]
    return f"; evidence on real cases: {level} ({', '.join(parts)})", values


def _prediction_statement(task: str, prediction: Dict, path: str) -> Statement:
    name, words = _TASK_WORDS[task]
    label = words.get(prediction["label"], prediction["label"])
    layer = "grade" if task == "grade" else "molecular"
    evidence, evidence_values = _evidence_words(prediction, path)
    return Statement(layer, f"{name[0].upper() + name[1:]}: {label}, probability {prediction['probability']:.2f}, "
                            f"uncertainty {prediction['uncertainty']:.2f} "
                            f"({confidence(prediction['probability'], prediction['uncertainty'])}){evidence}.",
                     {f"{path}.probability": prediction["probability"],
                      f"{path}.uncertainty": prediction["uncertainty"], **evidence_values})


def _slice_grade_statement(slice_grade: Dict, grade: Optional[Dict]) -> Statement:
    evidence, evidence_values = _evidence_words(slice_grade, "slice_grade")
    values = {"slice_grade.attention": slice_grade["attention"], "slice_grade.n_slices": slice_grade["n_slices"],
              **evidence_values}
    if grade:
        agrees = (slice_grade["attention"] >= 0.5) == (grade["label"] == "HGG")
        text = (f"The slice-based classifier {'agrees' if agrees else 'disagrees'}: probability of high grade "
                f"{slice_grade['attention']:.2f} over {slice_grade['n_slices']} tumor slices{evidence}"
                f"{'' if agrees else '; treat the grade estimate as uncertain'}.")
    else:
        text = (f"Slice-based grade estimate: probability of high grade {slice_grade['attention']:.2f} "
                f"(attention aggregation over {slice_grade['n_slices']} slices){evidence}.")
    return Statement("grade", text, values)


def _sources(report: Dict, task: str) -> List[Tuple[str, float, Optional[float], Optional[str], str, float]]:
    """(label, probability of that label, uncertainty, evidence, JSON path of the probability, its value) of every
    model that predicted ``task``."""
    out = []
    prediction = report["predictions"].get(task)
    if prediction:
        out.append((prediction["label"], prediction["probability"], prediction.get("uncertainty"),
                    prediction.get("evidence"), f"predictions.{task}.probability", prediction["probability"]))
    if task == "grade" and (report.get("slice_grade") or {}).get("attention") is not None:
        sg = report["slice_grade"]
        p = sg["attention"]
        out.append(("HGG" if p >= 0.5 else "LGG", max(p, 1 - p), sg.get("uncertainty"), sg.get("evidence"),
                    "slice_grade.attention", p))
    if task == "mgmt" and (report.get("mgmt_late_fusion") or {}).get("fused") is not None:
        fusion = report["mgmt_late_fusion"]
        p = fusion["fused"]
        out.append(("methylated" if p >= 0.5 else "unmethylated", max(p, 1 - p), fusion.get("uncertainty"),
                    fusion.get("evidence"), "mgmt_late_fusion.fused", p))
    return out


def _impression(report: Dict) -> Statement:
    v = report["volumes_ml"]
    values: Dict[str, float] = {"volumes_ml.wt": v["wt"]}
    if v["wt"] <= 0:
        return Statement("impression", "Integrated impression (automatic): no tumor was segmented; no grade or "
                                       "molecular estimate is integrated.", values)
    parts: List[str] = []
    for task in ("grade", "idh", "codeletion_1p19q", "mgmt"):
        sources = _sources(report, task)
        if not sources:
            continue
        named = [s for s in sources if named_finding(s[3], s[1], s[2])]
        if len({s[0] for s in named}) == 1:  # named by at least one model and contradicted by none it may name
            parts.append(_SHORT_WORDS[task].get(named[0][0], named[0][0]))
            values.update({s[4]: s[5] for s in named})
        else:
            parts.append(_UNNAMED[task])
    location = report.get("location")
    where_ = f", {where(location)} (approximate)" if location else ""
    text = f"Integrated impression (automatic): tumor of {v['wt']:.1f} mL{where_}"
    if parts:
        text += f"; {'; '.join(parts)}. Probabilities and their evidence levels are given above."
    else:
        text += "; no grade or molecular estimate is available to integrate."
    return Statement("impression", text, values)


def narrative_text(report: Dict) -> str:
    """The statements as plain text, preceded by the automatic-text notice."""
    return "\n".join([AUTOMATIC_NOTICE] + [s.text for s in build_narrative(report)])
