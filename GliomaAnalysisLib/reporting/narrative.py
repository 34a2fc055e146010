"""Automatic narrative summary, layered like the WHO CNS 2021 integrated diagnosis.

Each statement is generated from a template and carries the report numbers it rests on, so the text can be
checked against ``report.json``. The text is marked as automatic and is not a diagnosis.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

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
                "codeletion_1p19q": {"codeleted": "1p/19q-codeleted", "intact": "1p/19q-intact"}}


@dataclass
class Statement:
    """One sentence and the report values (JSON paths -> numbers) it states."""

    layer: str
    text: str
    values: Dict[str, float]


def _confidence(probability: float, uncertainty: float) -> str:
    margin = abs(probability - 0.5)
    if uncertainty > 0.15 or margin < 0.15:
        return "low confidence"
    return "moderate confidence" if margin < 0.35 else "high confidence"


def build_narrative(report: Dict) -> List[Statement]:
    """Statements in four layers: imaging, histological grade estimate, molecular markers, integrated impression."""
    v, r = report["volumes_ml"], report["ratios"]
    statements = []
    if v["wt"] <= 0:
        statements.append(Statement("imaging", "No tumor was segmented (whole tumor volume 0.0 mL).",
                                    {"volumes_ml.wt": v["wt"]}))
    else:
        statements.append(Statement(
            "imaging",
            f"Whole tumor volume {v['wt']:.1f} mL: enhancing tumor {v['et']:.1f} mL ({100 * r['et']:.0f} %), "
            f"necrotic / non-enhancing core {v['ncr']:.1f} mL ({100 * r['ncr']:.0f} %), "
            f"peritumoral edema {v['ed']:.1f} mL ({100 * r['ed']:.0f} %).",
            {"volumes_ml.wt": v["wt"], "volumes_ml.et": v["et"], "ratios.et": r["et"], "volumes_ml.ncr": v["ncr"],
             "ratios.ncr": r["ncr"], "volumes_ml.ed": v["ed"], "ratios.ed": r["ed"]}))
        pattern = ("an enhancing component with a necrotic / non-enhancing core, a pattern common in high-grade "
                   "glioma" if r["et"] >= 0.05 and r["ncr"] >= 0.05 else
                   "little or no enhancement, a pattern more common in lower-grade glioma" if r["et"] < 0.05 else
                   "enhancement without a sizeable necrotic core")
        statements.append(Statement("imaging", f"The segmentation shows {pattern} (tumor core {v['tc']:.1f} mL).",
                                    {"volumes_ml.tc": v["tc"], "ratios.et": r["et"], "ratios.ncr": r["ncr"]}))
    missing = report["inputs"]["missing"]
    if missing:
        statements.append(Statement("imaging", f"Missing sequences: {', '.join(missing)}; the analysis ran on the "
                                    f"{4 - len(missing)} available ones.", {"inputs.n_missing": len(missing)}))

    predictions = report["predictions"]
    grade = predictions.get("grade")
    slice_grade = report.get("slice_grade")
    if grade:
        statements.append(_prediction_statement("grade", grade, "predictions.grade"))
    if grade and slice_grade and slice_grade.get("attention") is not None:
        agrees = (slice_grade["attention"] >= 0.5) == (grade["label"] == "HGG")
        statements.append(Statement(
            "grade", f"The slice-based classifier {'agrees' if agrees else 'disagrees'}: probability of high grade "
                     f"{slice_grade['attention']:.2f} over {slice_grade['n_slices']} tumor slices"
                     f"{'' if agrees else '; treat the grade estimate as uncertain'}.",
            {"slice_grade.attention": slice_grade["attention"], "slice_grade.n_slices": slice_grade["n_slices"]}))
    elif slice_grade and slice_grade.get("attention") is not None:
        statements.append(Statement(
            "grade", f"Slice-based grade estimate: probability of high grade {slice_grade['attention']:.2f} "
                     f"(attention aggregation over {slice_grade['n_slices']} slices).",
            {"slice_grade.attention": slice_grade["attention"], "slice_grade.n_slices": slice_grade["n_slices"]}))
    elif not grade:
        statements.append(Statement("grade", "No grade prediction is available from this version.", {}))
    markers = [_prediction_statement(task, predictions[task], f"predictions.{task}")
               for task in ("idh", "codeletion_1p19q", "mgmt") if predictions.get(task)]
    fusion = report.get("mgmt_late_fusion")
    if fusion and fusion.get("fused") is not None:
        markers.append(Statement(
            "molecular", f"MGMT late fusion of the per-modality models: probability of methylation "
                         f"{fusion['fused']:.2f}.", {"mgmt_late_fusion.fused": fusion["fused"]}))
    statements += markers or [Statement("molecular", "No molecular marker prediction is available from this "
                                        "version.", {})]
    statements.append(_impression(report))
    return statements


def _prediction_statement(task: str, prediction: Dict, path: str) -> Statement:
    name, words = _TASK_WORDS[task]
    label = words.get(prediction["label"], prediction["label"])
    layer = "grade" if task == "grade" else "molecular"
    return Statement(layer, f"{name[0].upper() + name[1:]}: {label}, probability {prediction['probability']:.2f}, "
                            f"uncertainty {prediction['uncertainty']:.2f} "
                            f"({_confidence(prediction['probability'], prediction['uncertainty'])}).",
                     {f"{path}.probability": prediction["probability"],
                      f"{path}.uncertainty": prediction["uncertainty"]})


def _impression(report: Dict) -> Statement:
    v = report["volumes_ml"]
    parts: List[str] = []
    values: Dict[str, float] = {"volumes_ml.wt": v["wt"]}
    predictions = report["predictions"]
    for task in ("grade", "idh", "codeletion_1p19q"):
        prediction: Optional[Dict] = predictions.get(task)
        if prediction:
            parts.append(_SHORT_WORDS[task].get(prediction["label"], prediction["label"]))
            values[f"predictions.{task}.probability"] = prediction["probability"]
    if parts:
        text = (f"Integrated impression (automatic): imaging features compatible with a glioma, "
                f"{', '.join(parts)}; whole tumor {v['wt']:.1f} mL.")
    else:
        text = (f"Integrated impression (automatic): tumor segmented, whole tumor {v['wt']:.1f} mL; no grade or "
                f"molecular estimate is available to integrate.")
    return Statement("impression", text, values)


def narrative_text(report: Dict) -> str:
    """The statements as plain text, preceded by the automatic-text notice."""
    return "\n".join([AUTOMATIC_NOTICE] + [s.text for s in build_narrative(report)])
