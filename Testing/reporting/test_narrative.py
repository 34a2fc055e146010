"""The narrative: measures first, every prediction with its evidence level, an impression that names only what the
evidence and the confidence support."""
import copy

import pytest

from GliomaAnalysisLib.models.evidence import task_evidence
from GliomaAnalysisLib.reporting.narrative import build_narrative, named_finding

NOT_ASSESSED = {"source": "none", "reason": "never validated on a real label"}
SUPPORTED_FIGURE = {"value": 0.88, "n": 120, "ci95": {"lower": 0.80, "upper": 0.94}, "ci_method": "bootstrap",
                    "source": "test card"}
WEAK_FIGURE = {"value": 0.68, "n": 60, "positives": 30, "negatives": 30, "source": "test card"}


def _prediction(card, task, label, probability, uncertainty=0.05):
    return {"label": label, "probability": probability, "uncertainty": uncertainty,
            **task_evidence(card, task)}


def _report(grade=NOT_ASSESSED, idh=NOT_ASSESSED, codeletion=NOT_ASSESSED, mgmt=NOT_ASSESSED,
            probabilities=(0.9, 0.59, 0.83, 0.58), missing=()):
    card = {"name": "test_multitask", "evidence": {"grade": grade, "idh": idh, "codeletion_1p19q": codeletion,
                                                   "mgmt": mgmt}}
    return {
        "inputs": {"missing": list(missing)},
        "volumes_ml": {"ncr": 10.04, "ed": 30.0, "et": 5.2, "tc": 15.24, "wt": 45.24},
        "ratios": {"ncr": 0.2219, "ed": 0.6631, "et": 0.1149},
        "location": {"hemisphere": "left", "region": "frontal lobe", "left_fraction": 0.97,
                     "position": {"left_right": 0.74, "anterior_posterior": 0.21, "inferior_superior": 0.6},
                     "method": "approximate"},
        "predictions": {"grade": _prediction(card, "grade", "HGG", probabilities[0]),
                        "idh": _prediction(card, "idh", "mutant", probabilities[1]),
                        "codeletion_1p19q": _prediction(card, "codeletion_1p19q", "intact", probabilities[2]),
                        "mgmt": _prediction(card, "mgmt", "methylated", probabilities[3])},
        "mgmt_late_fusion": None, "slice_grade": None,
    }


def _texts(report):
    return [s.text for s in build_narrative(report)]


def test_narrative_leads_with_the_measures_then_location():
    statements = build_narrative(_report())
    assert [s.layer for s in statements[:3]] == ["imaging"] * 3
    assert statements[0].text == ("Whole tumor volume 45.2 mL: enhancing tumor 5.2 mL (11 %), necrotic / "
                                  "non-enhancing core 10.0 mL (22 %), peritumoral edema 30.0 mL (66 %); tumor "
                                  "core 15.2 mL.")
    assert statements[1].text == ("Enhancement present (5.2 mL) around a necrotic / non-enhancing core (10.0 mL, "
                                  "22 %), a pattern common in high-grade glioma.")
    assert statements[2].text == ("Location (approximate, from the tumor's position within the brain's extent; no "
                                  "atlas): left hemisphere, frontal lobe.")
    assert statements[2].values["location.position.anterior_posterior"] == 0.21


def test_enhancement_is_not_assessable_without_t1ce():
    texts = _texts(_report(missing=("t1ce",)))
    assert texts[1] == ("Enhancement is not assessable without T1CE; the enhancing and necrotic volumes above are "
                        "estimated from the other sequences.")


def test_issue_case_nothing_named_when_no_task_is_supported():
    """The issue's LGG: IDH 0.59 'mutant' from a head at chance must not become a finding."""
    texts = _texts(_report())
    assert texts[-1] == ("Integrated impression (automatic): tumor of 45.2 mL, left hemisphere, frontal lobe "
                         "(approximate); grade indeterminate; IDH status indeterminate; 1p/19q status indeterminate; "
                         "MGMT promoter status not assessable from this MRI. Probabilities and their evidence levels "
                         "are given above.")
    idh = next(t for t in texts if t.startswith("IDH status"))
    assert idh == ("IDH status: IDH-mutant, probability 0.59, uncertainty 0.05 (low confidence); evidence on real "
                   "cases: not assessable (never validated on a real label).")


def test_supported_and_confident_findings_are_named_others_not():
    report = _report(grade=SUPPORTED_FIGURE, idh=SUPPORTED_FIGURE, codeletion=WEAK_FIGURE, mgmt=SUPPORTED_FIGURE,
                     probabilities=(0.9, 0.59, 0.95, 0.8))
    texts = _texts(report)
    # grade supported, 0.90: named; IDH supported but 0.59 (low confidence): indeterminate; 1p/19q weak: not named
    # (Hanley-McNeil, 30 / 30: SE 0.0691, 0.68 +- 0.1355)
    assert texts[-1] == ("Integrated impression (automatic): tumor of 45.2 mL, left hemisphere, frontal lobe "
                         "(approximate); high grade; IDH status indeterminate; 1p/19q status indeterminate; MGMT "
                         "promoter methylated. Probabilities and their evidence levels are given above.")
    grade = next(t for t in texts if t.startswith("Histological grade"))
    assert grade.endswith("evidence on real cases: supported (AUC 0.88, interval 0.80-0.94, n 120).")
    codeletion = next(t for t in texts if t.startswith("1p/19q"))
    assert codeletion.endswith("evidence on real cases: weak (AUC 0.68, interval 0.54-0.82, n 60).")


def test_two_supported_grade_models_that_disagree_leave_grade_indeterminate():
    report = _report(grade=SUPPORTED_FIGURE)
    slice_card = {"name": "test_slice", "evidence": {"grade": SUPPORTED_FIGURE}}
    report["slice_grade"] = {"attention": 0.1, "n_slices": 12, "uncertainty": 0.02,
                             **task_evidence(slice_card, "grade")}
    texts = _texts(report)
    assert "; grade indeterminate;" in texts[-1]
    assert "The slice-based classifier disagrees: probability of high grade 0.10 over 12 tumor slices; evidence " \
           "on real cases: supported (AUC 0.88, interval 0.80-0.94, n 120); treat the grade estimate as " \
           "uncertain." in texts
    agreeing = copy.deepcopy(report)
    agreeing["slice_grade"]["attention"] = 0.93
    assert "; high grade;" in _texts(agreeing)[-1]


def test_mgmt_late_fusion_carries_its_evidence():
    report = _report()
    fusion_card = {"name": "mgmt_fusion", "evidence": {"mgmt": {
        "reason": "never validated on a real MGMT label", "literature": "RSNA 2021 winner AUC 0.56"}}}
    report["mgmt_late_fusion"] = {"fused": 0.6512390971183777, "uncertainty": 0.01,
                                  **task_evidence(fusion_card, "mgmt")}
    texts = _texts(report)
    assert ("MGMT late fusion of the per-modality models: probability of methylation 0.65; evidence on real cases: "
            "not assessable (never validated on a real MGMT label; MRI-based prediction of this marker is at chance "
            "in the literature).") in texts
    assert "MGMT promoter status not assessable from this MRI" in texts[-1]


@pytest.mark.parametrize("level,probability,uncertainty,named", [
    ("supported", 0.70, 0.05, True), ("supported", 0.64, 0.05, False), ("supported", 0.95, 0.2, False),
    ("weak", 0.99, 0.01, False), ("not assessable", 0.99, 0.01, False), (None, 0.99, 0.0, False)])
def test_named_finding_needs_support_and_confidence(level, probability, uncertainty, named):
    assert named_finding(level, probability, uncertainty) is named


def test_no_tumor_integrates_nothing():
    report = _report()
    report["volumes_ml"] = {k: 0.0 for k in report["volumes_ml"]}
    report["ratios"] = {k: 0.0 for k in report["ratios"]}
    report["location"] = None
    texts = _texts(report)
    assert texts[0] == "No tumor was segmented (whole tumor volume 0.0 mL)."
    assert texts[-1] == ("Integrated impression (automatic): no tumor was segmented; no grade or molecular "
                         "estimate is integrated.")
