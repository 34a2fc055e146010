"""Evidence levels from model cards: the interval, the one rule, the shipped cards and their .md tables."""
import json
from pathlib import Path

import pytest

from GliomaAnalysisLib.models.evidence import (HANLEY_MCNEIL, NOT_ASSESSABLE, SUPPORTED, WEAK, auc_interval,
                                               evidence_level, evidence_section, evidence_table, task_evidence)

MODELS = Path(__file__).resolve().parents[2] / "Resources" / "models"


def _card(**figures):
    return {"name": "test_model", "evidence": figures}


def test_hanley_mcneil_interval_of_the_held_out_grade_auc():
    # A = 0.55, 33 HGG, 9 LGG: Q1 = 0.37931, Q2 = 0.39032, SE = 0.10713 -> 0.55 +- 0.20997
    lower, upper = auc_interval(0.55, 33, 9)
    assert lower == pytest.approx(0.34003, abs=1e-4) and upper == pytest.approx(0.75997, abs=1e-4)
    assert auc_interval(0.99, 5, 5)[1] == 1.0  # clipped
    with pytest.raises(ValueError):
        auc_interval(0.7, 10, 0)


@pytest.mark.parametrize("value,interval,level", [
    (0.85, {"lower": 0.71, "upper": 0.95}, SUPPORTED),
    (0.85, {"lower": 0.70, "upper": 0.95}, WEAK),          # the bound must exceed 0.70
    (0.65, {"lower": 0.55, "upper": 0.75}, WEAK),
    (0.65, {"lower": 0.50, "upper": 0.80}, NOT_ASSESSABLE),  # interval reaches chance
    (0.58, {"lower": 0.52, "upper": 0.64}, NOT_ASSESSABLE),  # above chance, too weak
    (0.73, None, WEAK),                                    # no interval: never more than weak
    (0.56, None, NOT_ASSESSABLE),
    (None, None, NOT_ASSESSABLE),                          # no real labels
])
def test_one_rule_gives_the_level(value, interval, level):
    assert evidence_level(value, interval) == level


def test_interval_stated_in_the_card_wins_over_the_computed_one():
    card = _card(grade={"value": 0.82, "n": 31, "positives": 26, "negatives": 5,
                        "ci95": {"lower": 0.72, "upper": 0.93}, "ci_method": "bootstrap over 5-fold CV",
                        "kind": "5-fold CV", "source": "run.json"})
    entry = task_evidence(card, "grade")
    assert entry["evidence"] == SUPPORTED
    assert entry["evidence_detail"]["ci95"] == {"lower": 0.72, "upper": 0.93}
    assert entry["evidence_detail"]["ci_method"] == "bootstrap over 5-fold CV"
    computed = task_evidence(_card(grade={"value": 0.82, "positives": 26, "negatives": 5}), "grade")
    assert computed["evidence_detail"]["ci_method"] == HANLEY_MCNEIL and computed["evidence"] == WEAK


def test_a_card_without_evidence_is_not_assessable():
    entry = task_evidence({"name": "old_card"}, "idh")
    assert entry["evidence"] == NOT_ASSESSABLE
    assert entry["evidence_detail"]["source"] == "the model card states no real-data figure for this task"


def test_shipped_cards_state_the_held_out_figures_and_their_levels():
    multitask = json.loads((MODELS / "glioma_multitask.json").read_text())
    cv = multitask["real_cross_validation"]  # 5-fold CV over the real cases (training/results/multitask_cv)
    grade = task_evidence(multitask, "grade")  # the reported grade: from the segmentation's volumes
    assert grade["evidence_detail"]["n"] == cv["grade_from_volumes"]["n"] == 28
    assert grade["evidence_detail"]["value"] == round(cv["grade_from_volumes"]["auc"], 4)
    assert grade["evidence_detail"]["ci95"]["lower"] == round(cv["grade_from_volumes"]["auc_95"][0], 4)
    idh = task_evidence(multitask, "idh")
    assert idh["evidence_detail"]["n"] == cv["tasks"]["idh"]["n"] == 7 and idh["evidence"] == NOT_ASSESSABLE
    for task in ("codeletion_1p19q", "mgmt"):
        assert task_evidence(multitask, task)["evidence_detail"]["value"] is None
    fusion = json.loads((MODELS / "mgmt_fusion.json").read_text())
    assert task_evidence(fusion, "mgmt")["evidence"] == NOT_ASSESSABLE
    assert "0.56" in task_evidence(fusion, "mgmt")["evidence_detail"]["literature"]
    slice_grade = json.loads((MODELS / "slice_grade.json").read_text())
    assert task_evidence(slice_grade, "grade")["evidence"] == WEAK


@pytest.mark.parametrize("name", ["glioma_multitask", "mgmt_fusion", "slice_grade"])
def test_model_card_markdown_carries_the_evidence_table_of_its_json(name):
    card = json.loads((MODELS / f"{name}.json").read_text())
    markdown = (MODELS / f"{name}.md").read_text()
    section = evidence_section(card, "SUMMARY")
    before, after = section.split("SUMMARY")
    assert before in markdown and after in markdown  # the section as exporters write it, with the card's table
