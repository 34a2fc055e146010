"""The segmentation model card leads with the recipe's cross-validation; a model trained on every case has no
validation split, and the card says where its figures come from."""
import json

import pytest

from training.segmentation.export_segmentation import card_markdown, cross_validation_section

from GliomaAnalysisLib.models.model_store import RESOURCES


def _row(fold, wt, tc, et, et_true):
    variant = {"wt": wt, "tc": tc, "et": et, "wt_ml_pred": 40.0, "tc_ml_pred": 10.0, "et_ml_pred": 0.0 if et_true == 0
               else 3.0, "wt_ml_true": 38.0, "tc_ml_true": 9.0, "et_ml_true": et_true}
    return {"none": variant, "lesion_filter": variant, "uncertainty_in_tumor": 0.1, "fold": fold, "passes": 2}


REPORT = {
    "cases": 3, "folds_done": [0, 1], "passes": [2], "chosen": "lesion_filter",
    "variants": {"lesion_filter": {r: {"mean": 0.7, "sd": 0.2, "se": 0.1, "min": 0.4} for r in ("wt", "tc", "et")}},
    "worst_cases": ["LGG_1", "B", "A"], "et_free_cases": {"LGG_1": 0.0},
    "missing_modality": {"flair": {"cases": 3, "wt": 0.55, "tc": 0.6, "et": 0.5}},
    "per_case": {"A": _row(0, 0.91, 0.8, 0.75, 5.0), "B": _row(1, 0.8, 0.7, 0.6, 2.0),
                 "LGG_1": _row(1, 0.4, 0.3, 1.0, 0.0)},
}


def test_the_cross_validation_leads_the_card_with_every_case():
    cv = cross_validation_section(REPORT)
    assert cv["cases"] == 3 and cv["folds"] == [0, 1] and cv["network_passes"] == [2]
    assert [r["case"] for r in cv["per_case"]] == ["A", "B", "LGG_1"]
    assert cv["per_case"][0]["wt"] == 0.91 and cv["per_case"][2]["et_ml"] == 0.0
    card = {"name": "glioma_seg", "version": "0.2.0", "task": "glioma subregion segmentation",
            "disclaimer": "Research use only.", "network": {}, "inputs": {"modalities": ["t1"], "expects": "x"},
            "preprocessing": {}, "training_data": {"real_cases": ["A", "B", "LGG_1"], "synthetic_phantoms": 0,
                                                   "source": "brats"},
            "training": {}, "weights_file": "w", "weights_dtype": "float16", "sha256": "0" * 64,
            "validation_split": [], "cross_validation": cv}
    text = card_markdown(card)
    assert text.index("## Cross-validation: 3 real cases") < text.index("- Network:")
    assert "| WT | 0.700 | 0.200 | 0.100 | 0.400 |" in text
    assert "| LGG_1 | 1 | 0.400 | 0.300 | 1.000 | 40.0 (38.0) | 0.0 (0.0) |" in text
    assert "| flair | 0.550 | 0.600 | 0.500 |" in text and "LGG_1 0.00 mL" in text
    assert "Validation split" not in text  # trained on every case: no split to report
    assert "Caveat" not in text
    cv["caveat"] = "a second draw scored WT 0.04 lower"
    text = card_markdown(card)
    assert text.index("| WT | 0.700") < text.index("**Caveat:** a second draw scored WT 0.04 lower") < text.index(
        "Worst cases")


def test_the_shipped_card_leads_with_its_cross_validation():
    card = json.loads((RESOURCES / "glioma_seg.json").read_text())
    text = card_markdown(card)
    assert text.startswith(f"# Model card: glioma_seg {card['version']}") and "Validation split" not in text
    assert text.index("## Cross-validation: 31 real cases") < text.index("- Network:")
    assert f"| WT | {card['cross_validation']['dice']['wt']['mean']:.3f} |" in text
    assert (RESOURCES / "glioma_seg.md").read_text() == text  # the shipped Markdown is the card's


def test_the_chosen_post_processing_becomes_the_cards_setting():
    from training.segmentation.export_segmentation import postprocessing_of

    assert postprocessing_of("lesion_filter+min_et_0.5ml")["min_et_ml"] == 0.5
    assert postprocessing_of("lesion_filter+min_et_2ml")["min_et_ml"] == 2.0
    assert postprocessing_of("lesion_filter") == {"min_et_ml": 0.0, "chosen_in_cross_validation": "lesion_filter"}
    regions = postprocessing_of("regions_0.5_0.4_0.15+lesion_filter+min_et_0.5ml")
    assert regions["region_thresholds"] == [0.5, 0.4, 0.15] and regions["min_et_ml"] == 0.5
    assert "region_thresholds" not in postprocessing_of("lesion_filter+min_et_0.5ml")


def test_a_model_for_cases_without_flair_is_named_in_the_primary_card(tmp_path):
    from training.segmentation.export_segmentation import register_in_primary

    card = json.loads((RESOURCES / "glioma_seg.json").read_text())
    card.pop("missing_modality_models", None)
    (tmp_path / "glioma_seg.json").write_text(json.dumps(card))
    path = register_in_primary(tmp_path, "glioma_seg", "glioma_seg_without_flair", "flair")
    stored = json.loads(path.read_text())
    assert stored["missing_modality_models"] == {"flair": "glioma_seg_without_flair"}
    assert stored["sha256"] == card["sha256"] and stored["cross_validation"] == card["cross_validation"]
    text = (tmp_path / "glioma_seg.md").read_text()
    assert "- Cases without FLAIR are segmented by `glioma_seg_without_flair`" in text
    substitute = dict(card, name="glioma_seg_without_flair", for_cases_without="flair", primary_model="glioma_seg")
    assert "- Meant for cases without FLAIR: `glioma_seg` hands them to this model" in card_markdown(substitute)
    with pytest.raises(SystemExit, match="absent_model"):
        register_in_primary(tmp_path, "absent_model", "x", "flair")


def test_a_model_for_cases_without_a_modality_is_checked_before_the_export(tmp_path):
    import argparse

    from training.segmentation.export_segmentation import kept_model_links, substitute_problem

    card = json.loads((RESOURCES / "glioma_seg.json").read_text())
    card.pop("missing_modality_models", None)
    (tmp_path / "glioma_seg.json").write_text(json.dumps(card))
    run = {"args": {"spacing": 2.0}, "network": card["network"]}

    def problem(**options):
        values = dict(name="glioma_seg_without_flair", out=str(tmp_path), for_cases_without="flair",
                      primary="glioma_seg", cv_report="cv_report.json", fast_model_of=None)
        return substitute_problem(argparse.Namespace(**dict(values, **options)), run)

    assert problem() is None
    assert substitute_problem(argparse.Namespace(for_cases_without=None, primary=None), run) is None  # a plain export
    assert "go together" in problem(primary=None) and "go together" in problem(for_cases_without=None)
    assert "another model" in problem(name="glioma_seg")
    assert "needs --cv-report" in problem(cv_report=None)
    assert "no usable card" in problem(primary="absent")
    assert "divisor" in substitute_problem(argparse.Namespace(
        name="x", out=str(tmp_path), for_cases_without="flair", primary="glioma_seg", cv_report="r"),
        {"args": {"spacing": 1.5}, "network": card["network"]})

    # the same checks for a model for --fast
    def fast_problem(**options):
        return problem(**dict(dict(name="glioma_seg_fast", for_cases_without=None, primary=None,
                                   fast_model_of="glioma_seg"), **options))

    assert fast_problem() is None
    assert "one role per model" in fast_problem(primary="glioma_seg", for_cases_without="flair")
    assert "--fast-model-of must name another model" in fast_problem(name="glioma_seg")
    assert "--fast-model-of needs --cv-report" in fast_problem(cv_report=None)
    assert "--fast-model-of absent: no usable card" in fast_problem(fast_model_of="absent")

    # a new export of the primary keeps the models it names for cases without FLAIR and for --fast
    assert kept_model_links(tmp_path, "glioma_seg") == {}
    card["missing_modality_models"] = {"flair": "glioma_seg_without_flair"}
    card["fast_model"] = "glioma_seg_fast"
    (tmp_path / "glioma_seg.json").write_text(json.dumps(card))
    assert kept_model_links(tmp_path, "glioma_seg") == {}  # neither named model is in the folder: both links go
    for name in ("glioma_seg_without_flair", "glioma_seg_fast"):
        (tmp_path / f"{name}.json").write_text(json.dumps(dict(card, name=name)))
    without_flair = {"missing_modality_models": {"flair": "glioma_seg_without_flair"}}
    assert kept_model_links(tmp_path, "glioma_seg") == {**without_flair, "fast_model": "glioma_seg_fast"}
    (tmp_path / "glioma_seg_fast.json").unlink()
    assert kept_model_links(tmp_path, "glioma_seg") == without_flair
    assert kept_model_links(tmp_path, "absent") == {}


def test_a_model_for_fast_runs_is_named_in_the_primary_card(tmp_path):
    from training.segmentation.export_segmentation import register_in_primary

    card = json.loads((RESOURCES / "glioma_seg.json").read_text())
    card.pop("fast_model", None)
    card["missing_modality_models"] = {"flair": "glioma_seg_without_flair"}
    (tmp_path / "glioma_seg.json").write_text(json.dumps(card))
    stored = json.loads(register_in_primary(tmp_path, "glioma_seg", "glioma_seg_fast").read_text())
    assert stored["fast_model"] == "glioma_seg_fast"
    assert stored["missing_modality_models"] == card["missing_modality_models"] and stored["sha256"] == card["sha256"]
    assert "- `analyze --fast` segments with `glioma_seg_fast`" in (tmp_path / "glioma_seg.md").read_text()
    fast = dict(card, name="glioma_seg_fast", fast_model_of="glioma_seg")
    assert "- Meant for `analyze --fast`: `glioma_seg` hands its fast runs to this lighter model" in card_markdown(fast)


def test_a_caveat_without_a_cross_validation_is_refused_before_anything_is_read(tmp_path, capsys):
    from training.segmentation.export_segmentation import main

    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "absent_run"), "--out", str(tmp_path), "--cv-caveat", "a second draw scored lower"])
    assert exit_info.value.code == 2
    assert "--cv-caveat goes with --cv-report" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
