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
    cv = card["cross_validation"]  # the pair's: every real case, or its folds so far with a caveat saying so
    assert text.index(f"## Cross-validation: {cv['cases']} real cases") < text.index("- Network:")
    assert cv["cases"] == 31 or text.index("**Caveat:** Folds") < text.index("- Network:")
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


def _tiny_run(folder, spacing: float, crop: int):
    """A finished training run folder of a tiny network (config.json, log.jsonl, final.safetensors)."""
    import torch
    from safetensors.torch import save_file

    from GliomaAnalysisLib.models.network import GliomaSegNet, NetworkConfig

    torch.manual_seed(0)
    config = NetworkConfig(widths=(4, 8), encoder_blocks=(1, 1), transformer_layers=1, transformer_heads=2)
    folder.mkdir()
    save_file(GliomaSegNet(config).state_dict(), str(folder / "final.safetensors"))
    (folder / "config.json").write_text(json.dumps({
        "args": {"spacing": spacing, "crop": crop, "steps": 10, "batch": 2, "lr": 0.002, "data": ["brats"],
                 "fold": "all"},
        "network": config.to_dict(), "train_cases": ["A", "B", "LGG_1"], "validation_cases": [],
        "git_commit": "abc"}))
    (folder / "log.jsonl").write_text(json.dumps({"step": 10, "loss": 0.5, "seconds": 60.0}) + "\n")
    return folder


def test_a_fine_stage_is_exported_with_its_window_and_named_in_the_first_stage_card(tmp_path):
    """--fine-stage-of: the fine card holds its window; the coarse card names it as its fine stage and takes the two
    stages' post-processing and cross-validation (its own kept beside); analyze then runs the pair."""
    from training.segmentation.export_segmentation import kept_model_links, main

    from GliomaAnalysisLib.pipeline.fine_stage import fine_model

    out = tmp_path / "models"
    assert main([str(_tiny_run(tmp_path / "coarse", 2.0, 32)), "--out", str(out), "--name", "glioma_seg",
                 "--cv-report", str(_report(tmp_path, "lesion_filter"))]) == 0
    two_stage = dict(REPORT, chosen="lesion_filter+min_et_0.25ml",
                     variants={"lesion_filter+min_et_0.25ml": {r: {"mean": 0.8, "sd": 0.1, "se": 0.05, "min": 0.5}
                                                               for r in ("wt", "tc", "et")}})
    for row in two_stage["per_case"].values():
        row["lesion_filter+min_et_0.25ml"] = row["lesion_filter"]
    report = tmp_path / "two_stage.json"
    report.write_text(json.dumps(two_stage))
    weights = (out / "glioma_seg.safetensors").read_bytes()
    assert main([str(_tiny_run(tmp_path / "fine", 1.25, 16)), "--out", str(out), "--name", "glioma_seg_fine",
                 "--fine-stage-of", "glioma_seg", "--cv-report", str(report), "--window-max", "24",
                 "--fine-passes", "1", "--version", "0.4.0", "--cv-caveat", "folds 1-2 of 5"]) == 0
    coarse = json.loads((out / "glioma_seg.json").read_text())
    assert coarse["version"] == "0.4.0"  # the pair's version
    assert coarse["cross_validation"]["caveat"] == "folds 1-2 of 5"  # on the card users read, too
    assert (out / "glioma_seg.safetensors").read_bytes() == weights  # its weights untouched
    fine = json.loads((out / "glioma_seg_fine.json").read_text())
    assert fine["window_voxels"] == 16 and fine["window_max_voxels"] == 24 and fine["fine_stage_of"] == "glioma_seg"
    assert "postprocessing" not in fine and fine["cross_validation"]["dice"]["wt"]["mean"] == 0.8
    assert coarse["fine_stage"] == {"model": "glioma_seg_fine", "margin_mm": 10.0, "passes": 1}
    assert coarse["postprocessing"]["min_et_ml"] == 0.25
    assert coarse["cross_validation"]["dice"]["wt"]["mean"] == 0.8
    assert coarse["cross_validation_without_fine_stage"]["dice"]["wt"]["mean"] == 0.7
    stage = fine_model(coarse["fine_stage"], str(out))  # what analyze reads
    assert (stage.crop, stage.longest) == (16, 24)
    text = (out / "glioma_seg.md").read_text()
    assert "- Second stage: `glioma_seg_fine` re-segments the tumor's box + 10 mm" in text
    assert "(1 pass); `analyze --fast` runs this network alone;" in text  # --fast skips the fine stage
    assert "this network alone: WT 0.700, TC 0.700, ET 0.700" in text
    assert "**Caveat:** folds 1-2 of 5" in text
    assert "- Second stage of `glioma_seg`: runs over the region around the tumor it found, by windows of 16 voxels " \
           "(an axis up to 24 in one)" in (out / "glioma_seg_fine.md").read_text()
    assert kept_model_links(out, "glioma_seg") == {}


def test_a_new_export_of_either_stage_cannot_leave_a_broken_pair(tmp_path, capsys):
    """The fine model exported again needs --fine-stage-of (else its window would go, and analyze by the first stage
    with it); the first stage exported again drops its fine stage, saying so (the new pair is not
    cross-validated)."""
    from training.segmentation.export_segmentation import main

    out, report = tmp_path / "models", str(_report(tmp_path, "lesion_filter"))
    coarse, fine = _tiny_run(tmp_path / "coarse", 2.0, 32), _tiny_run(tmp_path / "fine", 1.25, 16)
    assert main([str(coarse), "--out", str(out), "--name", "glioma_seg", "--cv-report", report,
                 "--version", "0.3.2"]) == 0
    assert main([str(fine), "--out", str(out), "--name", "glioma_seg_fine", "--fine-stage-of", "glioma_seg",
                 "--cv-report", report]) == 0
    assert json.loads((out / "glioma_seg.json").read_text())["version"] == "0.3.2"  # no --version: not the default's
    capsys.readouterr()
    fine_card = (out / "glioma_seg_fine.json").read_text()
    with pytest.raises(SystemExit) as exit_info:
        main([str(fine), "--out", str(out), "--name", "glioma_seg_fine", "--cv-report", report])
    assert exit_info.value.code == 2
    assert "glioma_seg_fine is the fine stage of glioma_seg: export it with --fine-stage-of" in capsys.readouterr().err
    assert (out / "glioma_seg_fine.json").read_text() == fine_card
    assert main([str(coarse), "--out", str(out), "--name", "glioma_seg", "--cv-report", report]) == 0
    assert "its fine stage glioma_seg_fine is not kept" in capsys.readouterr().err
    assert "fine_stage" not in json.loads((out / "glioma_seg.json").read_text())


def _report(tmp_path, chosen):
    path = tmp_path / f"{chosen}.json"
    path.write_text(json.dumps(dict(REPORT, chosen=chosen)))
    return path


def test_a_fine_stage_export_is_checked_before_anything_is_written(tmp_path, capsys):
    from training.segmentation.export_segmentation import main

    out = tmp_path / "models"
    coarse = _tiny_run(tmp_path / "coarse", 2.0, 32)
    fine = _tiny_run(tmp_path / "fine", 1.25, 16)
    report = str(_report(tmp_path, "lesion_filter"))
    cases = [([str(fine), "--fine-stage-of", "glioma_seg", "--cv-report", report], "no usable card"),
             ([str(fine), "--fine-stage-of", "glioma_seg"], "needs --cv-report"),
             ([str(fine), "--fine-stage-of", "glioma_seg", "--name", "glioma_seg", "--cv-report", report],
              "another model"),
             ([str(fine), "--fine-stage-of", "glioma_seg", "--fast-model-of", "glioma_seg", "--cv-report", report],
              "one role per model")]
    for argv, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            main(argv + ["--out", str(out)] + (["--name", "glioma_seg_fine"] if "--name" not in argv else []))
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not out.exists()
    assert main([str(coarse), "--out", str(out), "--name", "glioma_seg", "--cv-report", report]) == 0
    before = sorted(p.name for p in out.iterdir())
    for argv, message in [(["--window-max", "8"], "--window-max must be a multiple of 2 no smaller than"),
                          (["--window-max", "17"], "--window-max must be a multiple of 2"),
                          (["--fine-passes", "0"], "--fine-passes must be a positive integer"),
                          (["--margin-mm", "-1"], "--margin-mm must be 0 or more")]:
        with pytest.raises(SystemExit) as exit_info:
            main([str(fine), "--out", str(out), "--name", "glioma_seg_fine", "--fine-stage-of", "glioma_seg",
                  "--cv-report", report] + argv)
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # a "fine" stage no finer than the first
        main([str(coarse), "--out", str(out), "--name", "glioma_seg_fine", "--fine-stage-of", "glioma_seg",
              "--cv-report", report])
    assert "no finer than glioma_seg's 2.0 mm" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # a fine stage's option without --fine-stage-of
        main([str(fine), "--out", str(out), "--name", "glioma_seg_fine", "--window-max", "24"])
    assert "--window-max goes with --fine-stage-of" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == before


def _exported_pair(tmp_path):
    """A coarse + fine pair exported into tmp_path/models from tiny runs, with REPORT as the two stages' (lesion_filter,
    folds 0-1)."""
    from training.segmentation.export_segmentation import main

    out, report = tmp_path / "models", str(_report(tmp_path, "lesion_filter"))
    assert main([str(_tiny_run(tmp_path / "coarse", 2.0, 32)), "--out", str(out), "--name", "glioma_seg",
                 "--cv-report", report, "--version", "0.4.2"]) == 0
    assert main([str(_tiny_run(tmp_path / "fine", 1.25, 16)), "--out", str(out), "--name", "glioma_seg_fine",
                 "--fine-stage-of", "glioma_seg", "--cv-report", report, "--fine-passes", "1", "--margin-mm", "8",
                 "--cv-caveat", "folds 0-1 of 5"]) == 0
    return out


def _five_fold_report(tmp_path, chosen):
    """REPORT over folds 0-4, its chosen variant scoring 0.85 / 0.8 / 0.75."""
    scores = {r: {"mean": m, "sd": 0.1, "se": 0.02, "min": 0.6} for r, m in (("wt", 0.85), ("tc", 0.8), ("et", 0.75))}
    report = dict(REPORT, folds_done=[0, 1, 2, 3, 4], chosen=chosen, variants={chosen: scores},
                  missing_modality={"t1ce": {"cases": 3, "wt": 0.8, "tc": 0.6, "et": 0.1, "wt_threshold": {
                      "dice": {"argmax": {"wt": 0.8, "tc": 0.6, "et": 0.1}, "0.5": {"wt": 0.84, "tc": 0.6, "et": 0.1}},
                      "best": 0.5, "nested": {"wt": 0.84, "tc": 0.6, "et": 0.1}}}},
                  per_case={case: dict(row, **{chosen: row["lesion_filter"]})
                            for case, row in REPORT["per_case"].items()})
    path = tmp_path / f"five_{chosen}.json"
    path.write_text(json.dumps(report))
    return path


def test_a_new_cross_validation_of_the_pair_goes_into_both_cards_with_the_weights_untouched(tmp_path, capsys):
    """recard_pair: both cards take the five-fold report (the caveat of the old one gone), the first stage its chosen
    post-processing and its thresholds without T1CE, both the new version; the fine stage's margin and passes and every
    weight byte stay, and the Markdown is each card's."""
    from training.segmentation.recard_pair import main

    out = _exported_pair(tmp_path)
    weights = {name: (out / f"{name}.safetensors").read_bytes() for name in ("glioma_seg", "glioma_seg_fine")}
    without_fine = json.loads((out / "glioma_seg.json").read_text())["cross_validation_without_fine_stage"]
    report = _five_fold_report(tmp_path, "lesion_filter+min_et_0.5ml")
    assert main(["--cv-report", str(report), "--models", str(out), "--version", "0.5.0"]) == 0
    assert "glioma_seg + glioma_seg_fine 0.5.0: 3 cases, folds [0, 1, 2, 3, 4], lesion_filter+min_et_0.5ml: " \
           "WT 0.850 / TC 0.800 / ET 0.750" in capsys.readouterr().out
    coarse, fine = (json.loads((out / f"{n}.json").read_text()) for n in ("glioma_seg", "glioma_seg_fine"))
    assert coarse["version"] == fine["version"] == "0.5.0"
    for card in (coarse, fine):
        assert card["cross_validation"]["folds"] == [0, 1, 2, 3, 4] and "caveat" not in card["cross_validation"]
        assert card["cross_validation"]["dice"]["et"]["mean"] == 0.75
        assert (out / f"{card['name']}.md").read_text() == card_markdown(card)
    assert coarse["postprocessing"]["min_et_ml"] == 0.5 and coarse["postprocessing"]["missing_wt_thresholds"] == {
        "t1ce": 0.5}
    assert coarse["fine_stage"] == {"model": "glioma_seg_fine", "margin_mm": 8.0, "passes": 1}
    assert coarse["cross_validation_without_fine_stage"] == without_fine
    assert "postprocessing" not in fine and fine["window_voxels"] == 16
    assert all((out / f"{n}.safetensors").read_bytes() == w for n, w in weights.items())
    from GliomaAnalysisLib.models.model_store import load_verified_card
    assert load_verified_card("glioma_seg_fine", out)["sha256"] == fine["sha256"]

    same = _five_fold_report(tmp_path, "lesion_filter+min_et_0.5ml")  # same choice: the version may stay
    assert main(["--cv-report", str(same), "--models", str(out), "--cv-caveat", "one draw"]) == 0
    assert json.loads((out / "glioma_seg.json").read_text())["cross_validation"]["caveat"] == "one draw"


def test_a_pair_card_update_is_checked_before_anything_is_written(tmp_path, capsys):
    """A report that is not one, new post-processing (chosen variant or thresholds) without a new version, a folder
    without a pair or with weights that do not match their card: one line naming the file, exit 2, both cards as they
    were."""
    from training.segmentation.recard_pair import main

    out = _exported_pair(tmp_path)
    capsys.readouterr()
    cards = {p.name: p.read_bytes() for p in out.iterdir()}
    not_json = tmp_path / "broken.json"
    not_json.write_text("{")
    no_scores = tmp_path / "no_scores.json"
    no_scores.write_text(json.dumps(dict(REPORT, chosen="absent_variant")))
    changed = _five_fold_report(tmp_path, "lesion_filter+min_et_0.5ml")
    same_choice = _five_fold_report(tmp_path, "lesion_filter")  # with a threshold of its own without T1CE
    for argv, message in [(["--cv-report", str(tmp_path / "absent.json")], "absent.json: cannot read"),
                          (["--cv-report", str(not_json)], "broken.json: not JSON"),
                          (["--cv-report", str(tmp_path / "coarse" / "config.json")],
                           "config.json: not a cross_validate report (no cases, folds_done"),
                          (["--cv-report", str(no_scores)], "'absent_variant' has no scores"),
                          (["--cv-report", str(changed)], "changes (chosen_in_cross_validation lesion_filter -> "
                           "lesion_filter+min_et_0.5ml, min_et_ml 0.0 -> 0.5, missing_wt_thresholds None -> "),
                          (["--cv-report", str(same_choice)], "changes (missing_wt_thresholds None -> {'t1ce': 0.5})"),
                          (["--cv-report", str(changed), "--version", "0.4.2"], "give a new --version"),
                          (["--cv-report", str(changed), "--primary", "glioma_seg_fine"], "names no fine stage")]:
        assert main(argv + ["--models", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    (out / "glioma_seg_fine.safetensors").write_bytes(b"replaced")
    assert main(["--cv-report", str(changed), "--models", str(out), "--version", "0.5.0"]) == 2
    assert "glioma_seg_fine.safetensors: sha256" in capsys.readouterr().err
    cards["glioma_seg_fine.safetensors"] = b"replaced"
    assert {p.name: p.read_bytes() for p in out.iterdir()} == cards
