"""Cross-validation runner: every case predicted out of fold once, variants scored, report written."""
import json

import numpy as np
import pytest

from GliomaAnalysisLib.synthetic.phantom import write_cohort
from training.segmentation.cross_validate import decode, main, score_variants


def test_cross_validation_predicts_every_case_out_of_fold(tmp_path):
    data = tmp_path / "data"
    write_cohort(data, 4, seed=5, size=(48, 48, 40), spacing=(3.0, 3.0, 3.0))
    run = tmp_path / "cv"
    network = json.dumps({"widths": [4, 8], "encoder_blocks": [1, 1], "transformer_layers": 1, "transformer_heads": 2})
    args = ["--data", str(data), "--run-dir", str(run), "--cache", str(tmp_path / "cache"), "--crop", "16",
            "--batch", "1", "--steps", "2", "--n-folds", "2", "--spacing", "4", "--val-every", "100",
            "--network", network, "--table", str(tmp_path / "cv.md")]
    assert main(args + ["--no-report"]) == 0  # trained and predicted, not reported
    assert len(list((run / "oof").glob("*.npz"))) == 4
    assert not (run / "cv_report.json").exists() and not (tmp_path / "cv.md").exists()
    assert main(args) == 0
    report = json.loads((run / "cv_report.json").read_text())
    assert report["cases"] == 4 and report["folds_done"] == [0, 1]
    folds = {}
    for fold in (0, 1):
        config = json.loads((run / f"fold{fold}" / "config.json").read_text())
        assert not set(config["validation_cases"]) & set(config["train_cases"])
        folds.update({c: fold for c in config["validation_cases"]})
    assert sorted(folds) == sorted(report["per_case"])  # each case validated exactly once, by the other fold's model
    assert all(report["per_case"][c]["fold"] == f for c, f in folds.items())
    chosen = report["chosen"]
    for row in report["per_case"].values():
        assert all(0.0 <= row[chosen][r] <= 1.0 for r in ("wt", "tc", "et"))
    table = (tmp_path / "cv.md").read_text()
    assert "(chosen)" in table and all(c in table for c in folds)
    assert main(args) == 0  # resumable: nothing is trained or predicted again
    assert json.loads((run / "cv_report.json").read_text())["per_case"] == report["per_case"]

    # the field-of-view screen: the same fold models by a sliding window at the crop size, paired case by case
    from GliomaAnalysisLib.models import segment
    from training.segmentation.screen_sliding_window import main as screen, sliding_window
    with sliding_window(16):
        assert segment.MAX_WHOLE_VOLUME_VOXELS == 0 and segment.LARGE_GRID_WINDOW == (16, 16, 16)
    assert segment.MAX_WHOLE_VOLUME_VOXELS > 0 and segment.LARGE_GRID_WINDOW == (128, 128, 128)
    assert screen(["--cv", str(run), "--out", str(tmp_path / "sw"), "--data", str(data)]) == 0
    for case in folds:
        windowed, whole = (np.load(r / "oof" / f"{case}.npz")["probabilities"] for r in (tmp_path / "sw", run))
        assert windowed.shape == whole.shape and not np.array_equal(windowed, whole)
    from training.segmentation.screen_flair_from_t2 import main as flair_screen
    assert flair_screen(["--cv", str(run), "--out", str(tmp_path / "t2"), "--data", str(data)]) == 0
    assert sorted(p.name for p in (tmp_path / "t2" / "oof").iterdir()) == sorted(f"{c}-without_flair.npz" for c in folds)
    assert screen(["--cv", str(tmp_path / "none"), "--out", str(tmp_path / "sw")]) == 2

    from GliomaAnalysisLib.pipeline import quality
    from training.segmentation.qc_eval import evaluate_flags
    qc = evaluate_flags(run, [data], low_wt=0.7)
    assert sorted(r["case"] for r in qc["rows"]) == sorted(folds) and qc["cases"] == 4
    assert qc["low_wt_cases"] == sum(r["wt_dice"] < 0.7 for r in qc["rows"])
    assert qc["low_and_flagged"] == sum(bool(r["flags"]) and r["wt_dice"] < 0.7 for r in qc["rows"])
    import inspect
    import re
    known = set(re.findall(r'_flag\(\s*"(\w+)"', inspect.getsource(quality)))
    assert "uncertain" in known and all(f in known for r in qc["rows"] for f in r["flags"])


def test_a_run_for_cases_without_flair_is_trained_and_predicted_without_it_only(tmp_path, capsys):
    """--absent-modalities flair: the fold models (warm-started from another run's) never see FLAIR, and each held-out
    case is predicted without FLAIR only (``<case>-without_flair.npz``), ready for compare_runs."""
    data = tmp_path / "data"
    write_cohort(data, 4, seed=5, size=(48, 48, 40), spacing=(3.0, 3.0, 3.0))
    network = json.dumps({"widths": [4, 8], "encoder_blocks": [1, 1], "transformer_layers": 1, "transformer_heads": 2})
    common = ["--data", str(data), "--cache", str(tmp_path / "cache"), "--crop", "16", "--batch", "1", "--steps", "2",
              "--n-folds", "2", "--spacing", "4", "--val-every", "100", "--network", network]
    base = tmp_path / "base"
    assert main(common + ["--run-dir", str(base), "--missing"]) == 0
    run = tmp_path / "without_flair"
    assert main(common + ["--run-dir", str(run), "--absent-modalities", "flair", "--missing",
                          "--init-weights", str(base / "fold{fold}" / "final.safetensors")]) == 0
    cases = [c for f in (0, 1) for c in json.loads((run / f"fold{f}" / "config.json").read_text())["validation_cases"]]
    assert sorted(p.name for p in (run / "oof").iterdir()) == sorted(f"{c}-without_flair.npz" for c in cases)
    assert "compare_runs" in capsys.readouterr().err
    report = json.loads((run / "cv_report.json").read_text())  # scored on the predictions without FLAIR
    assert report["without"] == "flair" and sorted(report["per_case"]) == sorted(cases) and report["passes"] == [1]
    from GliomaAnalysisLib.models.openvino_engine import inference_precision, requested_precision, use_openvino

    expected = inference_precision(requested_precision()) if use_openvino() else "f32"
    assert report["precisions"] == [expected]  # stored with each prediction
    assert report["missing_modality"] == {}
    from training.segmentation.export_segmentation import card_markdown, cross_validation_section
    section = cross_validation_section(report)
    assert section["without"] == "flair" and section["cases"] == 4
    for fold in (0, 1):
        args = json.loads((run / f"fold{fold}" / "config.json").read_text())["args"]
        assert args["absent_modalities"] == "flair" and args["init_weights"].endswith("fold{fold}/final.safetensors")
    from training.segmentation.compare_runs import main as compare
    assert compare([str(run), str(base), "--variant", "lesion_filter"]) == 0
    out = capsys.readouterr().out
    assert "without_flair    4 cases" in out and "all four" not in out
    assert all(f"  {c}-without_flair new " in out for c in cases)  # per case, for the predictions both runs hold
    with pytest.raises(SystemExit, match="one absent modality"):
        main(common + ["--run-dir", str(tmp_path / "x"), "--absent-modalities", "t2,flair"])
    assert not (tmp_path / "x").exists()  # refused before any training


def test_a_perfect_prediction_scores_one(tmp_path):
    truth = np.zeros((20, 20, 20), dtype=np.uint8)
    truth[5:15, 5:15, 5:15] = 2
    truth[8:12, 8:12, 8:12] = 3
    probabilities = np.stack([(truth == k).astype(np.float16) for k in (1, 2, 3)])
    assert np.array_equal(decode(probabilities.astype(np.float32)), truth)
    path = tmp_path / "c.npz"
    np.savez(path, probabilities=probabilities, truth=truth, uncertainty=np.zeros_like(probabilities[0]),
             box=np.array([[0, 20]] * 3), fold=0, spacing_zyx=np.array([1.0, 1.0, 1.0]), seconds=0.0)
    scores = score_variants(path)
    assert scores["none"]["wt"] == scores["none"]["tc"] == scores["none"]["et"] == 1.0
    assert scores["lesion_filter+min_et_0.25ml"]["et"] == 0.0  # 64 voxels = 0.064 mL of ET: relabelled NCR
    assert scores["lesion_filter+min_et_0.25ml"]["tc"] == 1.0


def test_a_higher_whole_tumor_threshold_is_scored_and_trims_an_uncertain_halo(tmp_path):
    """The over-called edema ring of the real out-of-fold predictions (P(WT) 0.5-0.7 outside the truth) is what the
    WT-threshold variants exist for: scored beside the default 0.5."""
    truth = np.zeros((24, 24, 24), dtype=np.uint8)
    truth[6:18, 6:18, 6:18] = 2
    truth[10:14, 10:14, 10:14] = 1
    probabilities = np.stack([(truth == k).astype(np.float32) for k in (1, 2, 3)])
    halo = np.zeros(truth.shape, dtype=bool)
    halo[4:20, 4:20, 4:20] = True
    probabilities[1][halo & (truth == 0)] = 0.65
    path = tmp_path / "c.npz"
    np.savez(path, probabilities=probabilities.astype(np.float16), truth=truth,
             uncertainty=np.zeros(truth.shape, np.float16), box=np.array([[0, 24]] * 3), fold=0,
             spacing_zyx=np.array([1.0, 1.0, 1.0]), seconds=0.0)
    scores = score_variants(path)
    default, strict = (scores[f"regions_{t}_0.5_0.2+lesion_filter+min_et_0.5ml"] for t in ("0.5", "0.7"))
    assert strict["wt"] == 1.0 and abs(default["wt"] - 2 * 12 ** 3 / (12 ** 3 + 16 ** 3)) < 1e-6
    assert strict["tc"] == default["tc"] == 1.0


def test_nested_choice_scores_each_fold_with_the_variant_chosen_on_the_others():
    from training.segmentation.cross_validate import nested_choice

    def row(fold, a, b):
        return {"fold": fold, "a": {"wt": a, "tc": a, "et": a}, "b": {"wt": b, "tc": b, "et": b}}

    rows = {"c0": row(0, 0.2, 0.9), "c1": row(1, 0.8, 0.5), "c2": row(2, 0.8, 0.6)}
    result = nested_choice(rows, ["a", "b"])
    # fold 0 sees c1, c2 (a better), fold 1 sees c0, c2 (b: 1.5 vs a: 1.0), fold 2 sees c0, c1 (b: 1.4 vs 1.0)
    assert result["choices"] == {0: "a", 1: "b", 2: "b"}
    assert result["dice"]["wt"]["mean"] == round((0.2 + 0.5 + 0.6) / 3, 4)  # below either variant's best pick


def test_compare_runs_pairs_the_cases_both_runs_predicted(tmp_path, capsys):
    from training.segmentation.compare_runs import main as compare, paired

    truth = np.zeros((24, 24, 24), dtype=np.uint8)
    truth[4:20, 4:20, 4:20] = 2
    truth[8:16, 8:16, 8:16] = 3  # 0.512 mL of ET at 1 mm: kept by the 0.5 mL floor
    perfect = np.stack([(truth == k).astype(np.float16) for k in (1, 2, 3)])
    half = perfect.copy()
    half[:, :12] = 0  # the lower half of the tumor missed

    def store(run, name, probabilities):
        (run / "oof").mkdir(parents=True, exist_ok=True)
        np.savez(run / "oof" / f"{name}.npz", probabilities=probabilities, truth=truth,
                 uncertainty=np.zeros_like(probabilities[0]), box=np.array([[0, 24]] * 3), fold=0,
                 spacing_zyx=np.array([1.0, 1.0, 1.0]), seconds=0.0)

    new, base = tmp_path / "new", tmp_path / "base"
    for case in ("a", "b"):
        store(new, case, perfect)
        store(base, case, perfect if case == "a" else half)
    store(new, "c", perfect)  # only in one run: left out
    store(new, "a-without_flair", half)
    store(base, "a-without_flair", perfect)
    result = paired(new, base, "", "regions_0.5_0.5_0.2+lesion_filter+min_et_0.5ml")
    half_wt = 2 * (16 * 16 * 8) / (16 ** 3 + 16 * 16 * 8)
    assert result["cases"] == 2 and result["new"]["wt"] == 1.0
    assert abs(result["base"]["wt"] - (1 + half_wt) / 2) < 1e-3
    assert abs(result["difference"]["wt"] - (1 - half_wt) / 2) < 1e-3 and result["se"]["wt"] > 0
    without = paired(new, base, "-without_flair", "regions_0.5_0.5_0.2+lesion_filter+min_et_0.5ml")
    assert without["cases"] == 1 and abs(without["difference"]["wt"] - (half_wt - 1)) < 1e-3
    assert compare([str(new), str(base)]) == 0
    assert "all four         2 cases" in capsys.readouterr().out
    assert compare([str(new), str(tmp_path / "none")]) == 2
    # a published report as the base: its per-case Dice, all four modalities only
    variant = "regions_0.5_0.5_0.2+lesion_filter+min_et_0.5ml"
    report = tmp_path / "cv_report.json"
    report.write_text(json.dumps({"per_case": {"a": {variant: {"wt": 0.5, "tc": 0.5, "et": 0.5}},
                                               "b": {variant: {"wt": 1.0, "tc": 1.0, "et": 1.0}}}}))
    from_report = paired(new, report, "", variant)
    assert from_report["cases"] == 2 and from_report["base"]["wt"] == 0.75 and from_report["difference"]["wt"] == 0.25
    assert paired(new, report, "-without_flair", variant) is None
    assert compare([str(new), str(report)]) == 0
    (tmp_path / "other.json").write_text('{"cases": 2}')
    assert compare([str(new), str(tmp_path / "other.json")]) == 2
    assert "not a cv_report.json" in capsys.readouterr().err


def test_ensemble_oof_averages_two_runs_over_the_union_of_their_boxes(tmp_path):
    from training.segmentation.ensemble_oof import main as ensemble

    truth = np.zeros((20, 20, 20), dtype=np.uint8)
    truth[5:15, 5:15, 5:15] = 2
    for run, value, (a, b) in (("r1", 1.0, (2, 18)), ("r2", 0.5, (4, 20))):
        probabilities = np.zeros((3, 20, 20, 20), np.float32)
        probabilities[1][truth == 2] = value
        box = (slice(a, b),) * 3
        (tmp_path / run / "oof").mkdir(parents=True)
        names = ("c.npz", "c-without_flair.npz") if run == "r1" else ("c.npz", "c-without_flair.npz", "d.npz")
        for name in names:
            np.savez(tmp_path / run / "oof" / name,
                     probabilities=probabilities[(slice(None),) + box].astype(np.float16),
                     truth=truth[box], uncertainty=np.zeros((b - a,) * 3, np.float16), box=np.array([[a, b]] * 3),
                     fold=0, spacing_zyx=np.array([1.0, 1.0, 1.0]), seconds=0.0, passes=2,
                     **({"precision": "bf16"} if run == "r1" else {}))  # r2: made before the field
    assert ensemble([str(tmp_path / "mean"), str(tmp_path / "r1"), str(tmp_path / "r2")]) == 0
    assert sorted(p.name for p in (tmp_path / "mean" / "oof").iterdir()) == ["c-without_flair.npz", "c.npz"]
    for name in ("c.npz", "c-without_flair.npz"):  # the missing-modality predictions are averaged the same way
        mean = np.load(tmp_path / "mean" / "oof" / name)
        assert mean["box"].tolist() == [[2, 20]] * 3 and int(mean["passes"]) == 4
        assert str(mean["precision"]) == "bf16+unrecorded"
        assert np.allclose(mean["probabilities"][1][3:13, 3:13, 3:13], 0.75)
        assert np.array_equal(mean["truth"], truth[2:20, 2:20, 2:20])
    assert ensemble([str(tmp_path / "mean2"), str(tmp_path / "r1"), str(tmp_path / "none")]) == 2


def test_the_whole_tumor_floor_keeps_the_first_runs_core_and_the_others_edema(tmp_path):
    """A fine stage that lost half the edema (r1: NCR core, edema on one side only) floored by the coarse network's
    whole tumor (r2: P(WT) 0.8 everywhere in the tumor): the lost side comes back as edema at 0.8, the core and the
    kept edema stay the first run's, and no voxel's probabilities sum above 1."""
    from training.segmentation.ensemble_oof import main as ensemble

    truth = np.zeros((20, 20, 20), dtype=np.uint8)
    truth[5:15, 5:15, 5:15] = 2
    truth[8:12, 8:12, 8:12] = 1
    fine = np.zeros((3, 20, 20, 20), np.float32)
    fine[0][truth == 1] = 1.0
    fine[1][:, :, :10][truth[:, :, :10] == 2] = 1.0  # the edema of the half x < 10 only
    coarse = np.zeros((3, 20, 20, 20), np.float32)
    coarse[1][truth > 0] = 0.8
    for run, probabilities, passes in (("r1", fine, 1), ("r2", coarse, 2)):
        (tmp_path / run / "oof").mkdir(parents=True)
        np.savez(tmp_path / run / "oof" / "c.npz", probabilities=probabilities.astype(np.float16), truth=truth,
                 uncertainty=np.zeros(truth.shape, np.float16), box=np.array([[0, 20]] * 3), fold=0,
                 spacing_zyx=np.array([1.0, 1.0, 1.0]), seconds=0.0, passes=passes)
    assert ensemble([str(tmp_path / "floor"), str(tmp_path / "r1"), str(tmp_path / "r2"), "--whole-tumor-floor"]) == 0
    floored = np.load(tmp_path / "floor" / "oof" / "c.npz")
    result = floored["probabilities"].astype(np.float32)
    assert int(floored["passes"]) == 1  # the coarse network ran inside the pair already
    assert np.allclose(result[1][5:15, 5:15, 10:15][truth[5:15, 5:15, 10:15] == 2], 0.8, atol=1e-3)  # lost half back
    assert np.allclose(result[1][:, :, :10][truth[:, :, :10] == 2], 1.0) and np.allclose(result[0][truth == 1], 1.0)
    assert result[1][truth == 1].max() == 0.0 and result.sum(axis=0).max() <= 1.0 + 1e-3
    assert result[:, truth == 0].max() == 0.0  # nothing outside the tumor: neither run called it


def _faint_edema_predictions(tmp_path) -> list:
    """Two folds' out-of-fold predictions without FLAIR (one case each): a 12^3 tumor with a sure 4^3 core and its
    edema at P = 0.3 only."""
    truth = np.zeros((24, 24, 24), dtype=np.uint8)
    truth[6:18, 6:18, 6:18] = 2
    truth[10:14, 10:14, 10:14] = 1
    faint = np.stack([(truth == k).astype(np.float32) for k in (1, 2, 3)])
    faint[1] *= 0.3  # edema at P = 0.3 (the core stays sure)
    paths = []
    for fold, name in enumerate(("a", "b")):
        paths.append(tmp_path / f"{name}-without_flair.npz")
        np.savez(paths[-1], probabilities=faint.astype(np.float16), truth=truth, fold=fold,
                 uncertainty=np.zeros(truth.shape, np.float16), box=np.array([[0, 24]] * 3),
                 spacing_zyx=np.array([1.0, 1.0, 1.0]), seconds=0.0)
    return paths


def _study(paths, chosen: str) -> dict:
    """The whole-tumor threshold study of predictions without a modality (``paths``), one group per case, as
    ``cross_validate``'s report makes it for the ``chosen`` decoding."""
    from training.segmentation.cross_validate import case_group, missing_threshold_rows, own_reading, threshold_study

    return threshold_study([case_group(row) for row in missing_threshold_rows(paths, chosen).values()],
                           own_reading(chosen))


def test_the_whole_tumor_threshold_without_a_modality_is_chosen_nested_and_shipped_when_it_pays(tmp_path):
    """Without FLAIR the edema probability stays low (0.3): the study scores each t_WT, a lower one recovers the
    edema, on every fold chosen on the other fold; the card then reads WT at that threshold without FLAIR only."""
    from training.segmentation.cross_validate import region_variant
    from training.segmentation.export_segmentation import postprocessing_of

    paths = _faint_edema_predictions(tmp_path)
    study = _study(paths, region_variant((0.5, 0.5, 0.2)))
    assert abs(study["dice"]["0.5"]["wt"] - 2 * 4 ** 3 / (4 ** 3 + 12 ** 3)) < 1e-4  # only the core is left (4 d.p.)
    assert study["dice"]["0.3"]["wt"] == study["dice"]["0.2"]["wt"] == study["dice"]["0.1"]["wt"] == 1.0
    assert study["best"] == 0.3  # float16 0.3 is 0.30005; of equals, the higher threshold (calls less)
    assert study["nested"]["wt"] == 1.0 and set(study["nested_choices"]) == {0, 1}
    missing = {"flair": {"wt_threshold": study}, "t2": {"wt_threshold": {**study, "nested": study["dice"]["0.5"]}}}
    settings = postprocessing_of("regions_0.5_0.5_0.2+lesion_filter+min_et_0.5ml", missing)
    assert settings["missing_region_thresholds"] == {"flair": [study["best"], 0.5, 0.2]}  # t2: no gain, not kept
    assert "missing_wt_thresholds" not in settings
    high = _study(paths, region_variant((0.7, 0.5, 0.2)))  # a t_WT outside the candidates: scored
    assert "0.7" in high["dice"] and high["best"] == 0.3
    assert postprocessing_of("regions_0.7_0.5_0.2+lesion_filter+min_et_0.5ml", {"flair": {"wt_threshold": high}}
                             )["missing_region_thresholds"] == {"flair": [0.3, 0.5, 0.2]}


def test_an_argmax_reading_without_a_modality_is_widened_where_the_study_pays(tmp_path):
    """The same faint edema under an argmax card: the argmax calls it background (P(bg) 0.7), so the study's own
    reading keeps only the core; widening (edema) at t_WT <= 0.3 recovers the whole tumor, chosen nested, and the card's
    ``missing_wt_thresholds`` ship it; a modality where the argmax does as well is not kept."""
    from training.segmentation.export_segmentation import postprocessing_of, postprocessing_text

    paths = _faint_edema_predictions(tmp_path)
    study = _study(paths, "lesion_filter")
    assert study["own"] == "argmax" and list(study["dice"])[0] == "argmax"
    assert abs(study["dice"]["argmax"]["wt"] - 2 * 4 ** 3 / (4 ** 3 + 12 ** 3)) < 1e-4
    assert study["dice"]["0.3"]["wt"] == study["dice"]["0.1"]["wt"] == 1.0 and study["dice"]["0.4"]["wt"] < 0.3
    assert study["dice"]["0.3"]["tc"] == 1.0  # the widened voxels are edema: the core stays
    assert study["best"] == 0.3 and study["nested"]["wt"] == 1.0 and set(study["nested_choices"].values()) == {0.3}
    missing = {"flair": {"wt_threshold": study}, "t2": {"wt_threshold": {**study, "nested": study["dice"]["argmax"]}}}
    settings = postprocessing_of("lesion_filter", missing)
    assert settings["missing_wt_thresholds"] == {"flair": 0.3} and "region_thresholds" not in settings
    assert "lesion filter; without FLAIR edema where P(WT) >= 0.3 (filtered again)" in postprocessing_text(settings)
    assert "missing_wt_thresholds" not in postprocessing_of(
        "lesion_filter", {"flair": {"wt_threshold": {**study, "best": None}}})  # the argmax won: nothing to ship
    argmax = study["dice"]["argmax"]
    for gain, kept in ((0.001, False), (0.003, True)):  # a nested gain within CHOICE_TOLERANCE (0.002) is a near tie
        near = {**study, "nested": {**argmax, "wt": argmax["wt"] + gain}}
        settings = postprocessing_of("lesion_filter", {"flair": {"wt_threshold": near}})
        assert ("missing_wt_thresholds" in settings) == kept, gain


def test_signal_gate_variants_are_named_parsed_and_exported_to_the_card():
    from training.segmentation.cross_validate import gate_thresholds_of, gate_variant
    from training.segmentation.export_segmentation import postprocessing_of, postprocessing_text

    both = gate_variant(0.5, 0.25)
    assert both == "lesion_filter+et_gate_0.5sd+ed_gate_0.25sd" and gate_thresholds_of(both) == (0.5, 0.25)
    assert gate_thresholds_of(gate_variant(0.75)) == (0.75, None)
    assert gate_thresholds_of("regions_0.5_0.5_0.2+lesion_filter+min_et_0.5ml") == (None, None)
    settings = postprocessing_of(both)
    assert settings["min_enhancement_sd"] == 0.5 and settings["min_flair_sd"] == 0.25 and settings["min_et_ml"] == 0.0
    assert "min_flair_sd" not in postprocessing_of(gate_variant(0.5))
    assert "min_enhancement_sd" not in postprocessing_of("lesion_filter")
    text = postprocessing_text(settings)
    assert "0.5 SD brighter on T1CE than on T1" in text and "below 0.25 SD on FLAIR" in text
    floored = postprocessing_of(both + "+min_et_0.25ml")
    assert floored == {**settings, "min_et_ml": 0.25, "chosen_in_cross_validation": both + "+min_et_0.25ml"}
    text = postprocessing_text(floored)
    assert text.index("below 0.25 SD on FLAIR") < text.index("under 0.25 mL relabelled NCR")  # the order analyze runs


def test_the_gate_variants_are_scored_from_the_cases_images(tmp_path):
    """``score_variants`` with the case folders: each gate variant is the lesion-filtered argmax with exactly the ET
    voxels below the threshold moved to NCR and the edema below the FLAIR threshold dropped."""
    import SimpleITK as sitk

    from GliomaAnalysisLib import load_case
    from GliomaAnalysisLib.io.labels import regions
    from GliomaAnalysisLib.pipeline.measures import dice
    from GliomaAnalysisLib.pipeline.postprocess import (lesion_filter, remove_small_components,
                                                        suppress_small_enhancement)
    from GliomaAnalysisLib.pipeline.signal_gates import apply_gates, signal_maps
    from training.common.datasets import case_folders
    from training.segmentation.cross_validate import gate_variant

    write_cohort(tmp_path / "data", 1, seed=3, size=(48, 48, 40), spacing=(3.0, 3.0, 3.0))
    folders = case_folders([tmp_path / "data"])
    (case_id, found), = folders.items()
    case = load_case(found.files, segmentation=found.segmentation, case_id=case_id)
    truth = sitk.GetArrayFromImage(case.segmentation).astype(np.uint8)
    truth[truth == 4] = 3  # BraTS 2021 labels -> contiguous
    from scipy import ndimage
    prediction = truth.copy()  # the network's two over-calls: its necrosis read as ET, a ring of edema around it
    prediction[truth == 1] = 3
    prediction[ndimage.binary_dilation(truth > 0, iterations=2) & (truth == 0)] = 2
    probabilities = np.stack([(prediction == k).astype(np.float16) for k in (1, 2, 3)])
    path = tmp_path / f"{case_id}.npz"
    np.savez(path, probabilities=probabilities, truth=truth, uncertainty=np.zeros(truth.shape, np.float16),
             box=np.array([[0, n] for n in truth.shape]), fold=0, spacing_zyx=np.array([3.0, 3.0, 3.0]), seconds=0.0)
    scores = score_variants(path, folders)
    maps = signal_maps({m: sitk.GetArrayFromImage(case.images[m]) for m in case.present})
    filtered = remove_small_components(lesion_filter(prediction, (3.0, 3.0, 3.0)), 0.027)
    expected = apply_gates(filtered, maps, 1.0, 0.5)
    assert ((filtered == 3) & (expected == 1)).any() and ((filtered == 2) & (expected == 0)).any()  # both gates work
    predicted, true = regions(expected), regions(truth)
    for r in ("wt", "tc", "et"):
        assert scores[gate_variant(1.0, 0.5)][r] == dice(predicted[r], true[r])
    assert scores[gate_variant(1.0, 0.5)]["tc"] == scores["lesion_filter"]["tc"]  # the gates never move TC
    for floor in (0.25, 0.5):  # the small-ET floor after the gates, as analyze applies them
        floored = regions(suppress_small_enhancement(expected, 0.027, floor))
        combined = scores[f"{gate_variant(1.0, 0.5)}+min_et_{floor:g}ml"]
        assert all(combined[r] == dice(floored[r], true[r]) for r in ("wt", "tc", "et"))
    small = np.where(prediction == 3, 1, prediction).astype(np.uint8)  # all but 8 voxels (0.22 mL) of true ET gone
    et_voxels = np.argwhere(truth == 3)[:8]
    small[tuple(et_voxels.T)] = 3
    np.savez(path, probabilities=np.stack([(small == k).astype(np.float16) for k in (1, 2, 3)]), truth=truth,
             uncertainty=np.zeros(truth.shape, np.float16), box=np.array([[0, n] for n in truth.shape]), fold=0,
             spacing_zyx=np.array([3.0, 3.0, 3.0]), seconds=0.0)
    floored = score_variants(path, folders)
    assert floored[gate_variant(0.25)]["et_ml_pred"] > 0  # the gate keeps the enhancing voxels
    assert floored[f"{gate_variant(0.25)}+min_et_0.25ml"]["et_ml_pred"] == 0  # under 0.25 mL: the floor drops them
    names = [k for k, v in scores.items() if isinstance(v, dict)]
    assert names.index(gate_variant(0.25)) < names.index(gate_variant(1.0, 0.5)) < names.index(
        f"{gate_variant(0.25)}+min_et_0.25ml")  # every gate alone before any floor: ties go to the simpler


def test_the_edema_added_without_a_modality_never_brings_back_a_filtered_enhancing_speck():
    """``argmax_variant_labels`` with ``t_wt`` adds edema after the lesion filter and filters again (as ``analyze``):
    a 0.027 mL ET speck 10 mm from the lesion, which the filter drops, stays dropped although P(WT) 0.45 around it
    would grow its component past the filter if the edema were added first (the premise, checked)."""
    from GliomaAnalysisLib.pipeline.postprocess import lesion_filter, remove_small_components, widen_whole_tumor
    from training.segmentation.cross_validate import argmax_variant_labels, decode

    probabilities = np.zeros((3, 40, 40, 60), np.float32)
    probabilities[0, 10:30, 10:30, 5:25] = 0.9  # the lesion: NCR
    probabilities[2, 19:22, 19:22, 35:38] = 0.9  # a 27-voxel ET speck, 10 mm beyond it
    probabilities[1, 15:26, 15:26, 31:42] += 0.45  # a faint halo around the speck
    probabilities[1, 19:22, 19:22, 35:38] = 0.0
    argmax = decode(probabilities)
    spacing = (1.0, 1.0, 1.0)
    assert (argmax == 3).sum() == 27 and not (lesion_filter(argmax, spacing) == 3).any()  # the filter drops it
    first = remove_small_components(lesion_filter(widen_whole_tumor(argmax, *probabilities, 0.4), spacing), 0.001)
    assert (first == 3).sum() == 27  # the premise: added first, the edema carries the speck past the filter
    labels = argmax_variant_labels(argmax, "lesion_filter", spacing, probabilities=probabilities, t_wt=0.4)
    assert not (labels == 3).any() and (labels[15:26, 15:26, 31:42] == 2).sum() > 1000  # the edema only
    assert np.array_equal(labels[:, :, :28] > 0, argmax[:, :, :28] > 0)


def test_a_whole_tumor_threshold_for_every_case_is_a_scored_variant_parsed_and_exported(tmp_path):
    """With all four modalities the faint edema is scored under ``lesion_filter+wt_T`` too (edema where P(WT) >= T,
    T in ``WT_THRESHOLD_CHOICES``): 0.3 recovers it, 0.4 does not. The name parses (gates and floors after it) and
    exports as the card's ``wt_threshold``; a study without a modality then reads that threshold as its own."""
    from training.segmentation.cross_validate import (WT_THRESHOLD_CHOICES, gate_thresholds_of,
                                                      score_variants, widened_variant, wt_threshold_of)
    from training.segmentation.export_segmentation import postprocessing_of, postprocessing_text

    paths = _faint_edema_predictions(tmp_path)
    scores = score_variants(paths[0])
    assert {widened_variant(t) for t in WT_THRESHOLD_CHOICES} <= set(scores) and 0.3 in WT_THRESHOLD_CHOICES
    assert scores["lesion_filter+wt_0.3"]["wt"] == 1.0 and scores["lesion_filter+wt_0.4"]["wt"] < 0.3
    assert scores["lesion_filter+wt_0.3"]["tc"] == scores["lesion_filter"]["tc"] == 1.0
    name = "lesion_filter+wt_0.4+et_gate_0.5sd+min_et_0.25ml"
    assert wt_threshold_of(name) == 0.4 and gate_thresholds_of(name) == (0.5, None)
    assert wt_threshold_of("lesion_filter+min_et_0.25ml") is None and wt_threshold_of("lesion_filter") is None
    settings = postprocessing_of(name)
    assert (settings["wt_threshold"], settings["min_enhancement_sd"], settings["min_et_ml"]) == (0.4, 0.5, 0.25)
    assert "lesion filter; edema where P(WT) >= 0.4 (filtered again)" in postprocessing_text(settings)
    study = _study(paths, "lesion_filter+wt_0.4")
    assert study["own"] == "0.4" and "argmax" not in study["dice"] and study["best"] == 0.3
    assert postprocessing_of("lesion_filter+wt_0.4", {"flair": {"wt_threshold": study}}) == {
        "min_et_ml": 0.0, "chosen_in_cross_validation": "lesion_filter+wt_0.4", "wt_threshold": 0.4,
        "missing_wt_thresholds": {"flair": 0.3}}


def test_a_variant_must_beat_the_simpler_ones_by_the_tolerance_to_be_chosen():
    """``first_of_near_best``: the first (simplest) name within ``CHOICE_TOLERANCE`` of the best score wins, so a
    variant that adds a gate for +0.0001 is not chosen, one that adds +0.01 is; the nested choice follows the rule."""
    from training.segmentation.cross_validate import CHOICE_TOLERANCE, first_of_near_best, nested_choice

    scores = {"simple": 2.3601, "with_gate": 2.3602, "other": 2.0}
    assert first_of_near_best(list(scores), scores.__getitem__) == "simple"
    scores["with_gate"] = 2.3601 + CHOICE_TOLERANCE + 0.008
    assert first_of_near_best(list(scores), scores.__getitem__) == "with_gate"
    rows = {f"{fold}{k}": {"fold": fold, "simple": {"wt": 0.9, "tc": 0.8, "et": 0.7},
                           "with_gate": {"wt": 0.9001, "tc": 0.8, "et": 0.7}} for fold in (0, 1) for k in "ab"}
    assert set(nested_choice(rows, ["simple", "with_gate"])["choices"].values()) == {"simple"}


def _fold_predictions(oof, fold: int, cases: str, seed: int) -> None:
    """Out-of-fold predictions of ``cases`` (one letter each) in ``fold``: with all modalities the truth (a 12^3 tumor
    with a 4^3 core) and a far speck of edema that the lesion filter removes; without FLAIR its edema at a random P
    (0.2-0.9) and a random halo of false edema, so that the whole-tumor readings differ by case."""
    rng = np.random.default_rng(seed)
    oof.mkdir(parents=True, exist_ok=True)
    truth = np.zeros((24, 24, 24), dtype=np.uint8)
    truth[6:18, 6:18, 6:18] = 2
    truth[10:14, 10:14, 10:14] = 1
    for name in cases:
        for suffix in ("", "-without_flair"):
            probabilities = np.stack([(truth == k).astype(np.float32) for k in (1, 2, 3)])
            if suffix:
                probabilities[1] *= rng.uniform(0.2, 0.9)
                halo = np.zeros(truth.shape, dtype=bool)
                halo[tuple(slice(6 - rng.integers(0, 3), 18 + rng.integers(0, 3)) for _ in range(3))] = True
                probabilities[1][halo & (truth == 0)] = rng.uniform(0.3, 0.7)
            else:
                probabilities[1][20:22, 20:22, 20:22] = 1.0
            np.savez(oof / f"{name}{suffix}.npz", probabilities=probabilities.astype(np.float16), truth=truth,
                     fold=fold, uncertainty=np.full(truth.shape, rng.uniform(), np.float16),
                     box=np.array([[0, 24]] * 3), spacing_zyx=np.array([1.0, 1.0, 1.0]), seconds=0.0)


def test_a_published_report_stands_in_for_the_folds_whose_predictions_are_gone(tmp_path):
    """Folds 0-1 reported and published, then their predictions lost: a run of fold 2 reported with ``--published``
    gives the report of all three folds (per-case rows, choice, means, the study without FLAIR), as one run holding
    every prediction does; from an older report with the study's means only, its means join weighted by its cases."""
    from training.segmentation.cross_validate import report

    for fold, cases, seed in ((0, "ab", 1), (1, "cd", 2), (2, "ef", 3)):
        _fold_predictions(tmp_path / "all" / "oof", fold, cases, seed)
        _fold_predictions(tmp_path / ("early" if fold < 2 else "late") / "oof", fold, cases, seed)
    whole = report(tmp_path / "all")
    published = tmp_path / "published" / "cv_report.json"
    published.parent.mkdir()
    published.write_text(json.dumps(report(tmp_path / "early")))
    merged = report(tmp_path / "late", published=published)
    assert merged["cases"] == whole["cases"] == 6 and merged["published_folds"] == [0, 1]
    assert merged["folds_done"] == [0, 1, 2] and merged["per_case"] == whole["per_case"]
    assert merged["chosen"] == whole["chosen"] and merged["variants"] == whole["variants"]
    assert merged["nested_choice"] == whole["nested_choice"] and merged["worst_cases"] == whole["worst_cases"]
    assert merged["missing_modality"] == whole["missing_modality"]
    assert merged["missing_per_case"] == whole["missing_per_case"]
    assert whole["missing_modality"]["flair"]["wt_threshold"]["dice"]["0.2"]["wt"] > 0  # the study was made

    older = json.loads(published.read_text())
    del older["missing_per_case"]  # a report written before the per-case rows of the study
    published.write_text(json.dumps(older))
    legacy = report(tmp_path / "late", published=published)
    flair, full = legacy["missing_modality"]["flair"], whole["missing_modality"]["flair"]
    assert flair["cases"] == 6 and legacy["per_case"] == whole["per_case"]
    for region in ("wt", "tc", "et", "wt_with_all"):
        assert abs(flair[region] - full[region]) < 2e-4  # means of means, weighted by cases (4 d.p. each)
    for reading, scores in full["wt_threshold"]["dice"].items():
        assert abs(flair["wt_threshold"]["dice"][reading]["wt"] - scores["wt"]) < 2e-4
    early = older["missing_modality"]["flair"]["wt_threshold"]["nested_choices"]
    assert {str(f): t for f, t in flair["wt_threshold"]["nested_choices"].items() if f in (0, 1)} == early
    assert flair["wt_threshold"]["nested_choices"][2] == full["wt_threshold"]["nested_choices"][2]

    _fold_predictions(tmp_path / "late" / "oof", 2, "a", 4)  # another fold assignment: not one cross-validation
    with pytest.raises(SystemExit, match="a is in fold 0 there, in fold 2 here"):
        report(tmp_path / "late", published=published)
    (tmp_path / "late" / "oof" / "a.npz").unlink()
    (tmp_path / "late" / "oof" / "a-without_flair.npz").unlink()
    other = json.loads(published.read_text())
    del other["per_case"]["a"]["none"]  # scored with other variants
    published.write_text(json.dumps(other))
    with pytest.raises(SystemExit, match="scoring changed"):
        report(tmp_path / "late", published=published)
    published.write_text("{}")
    with pytest.raises(SystemExit, match="not a segmentation cross-validation report"):
        report(tmp_path / "late", published=published)


def test_a_report_made_with_a_published_one_stands_in_for_both_in_turn(tmp_path):
    """Folds 0-1 published by an older report (the study without FLAIR as its means only); fold 2 reported with it
    and published in turn, then fold 2's predictions lost too: fold 3 reported with that second report gives what
    folds 2-3 reported with the first give, the older means carried on (``missing_published_means``), not lost."""
    from training.segmentation.cross_validate import report

    for fold, cases, seed in ((0, "ab", 1), (1, "cd", 2), (2, "ef", 3), (3, "gh", 5)):
        _fold_predictions(tmp_path / ("early" if fold < 2 else "late") / "oof", fold, cases, seed)
        if fold >= 2:
            _fold_predictions(tmp_path / ("mid" if fold == 2 else "last") / "oof", fold, cases, seed)
    older = report(tmp_path / "early")
    del older["missing_per_case"], older["missing_published_means"]  # as reports were written before either
    first = tmp_path / "first" / "cv_report.json"
    first.parent.mkdir()
    first.write_text(json.dumps(older))
    direct = report(tmp_path / "late", published=first)
    second = tmp_path / "second" / "cv_report.json"
    second.parent.mkdir()
    second.write_text(json.dumps(report(tmp_path / "mid", published=first)))
    chained = report(tmp_path / "last", published=second)
    assert chained["cases"] == 8 and chained["published_folds"] == [0, 1, 2] and direct["published_folds"] == [0, 1]
    for key in ("per_case", "chosen", "variants", "nested_choice", "worst_cases", "missing_per_case"):
        assert chained[key] == direct[key], key
    flair, expected = chained["missing_modality"]["flair"], direct["missing_modality"]["flair"]
    assert flair["cases"] == expected["cases"] == 8
    assert json.loads(json.dumps(chained["missing_published_means"])) == json.loads(
        json.dumps(direct["missing_published_means"]))
    assert chained["missing_published_means"]["flair"]["folds"] == [0, 1]
    for region in ("wt", "tc", "et", "wt_with_all", "tc_with_all", "et_with_all"):
        assert abs(flair[region] - expected[region]) < 1e-4
    for reading, scores in expected["wt_threshold"]["dice"].items():
        assert abs(flair["wt_threshold"]["dice"][reading]["wt"] - scores["wt"]) < 1e-4
    assert flair["wt_threshold"]["nested_choices"] == expected["wt_threshold"]["nested_choices"]
    assert flair["wt_threshold"]["nested"] == pytest.approx(expected["wt_threshold"]["nested"], abs=1e-4)
