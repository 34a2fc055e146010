"""Cross-validation of the multi-task heads: each fold's heads on that fold's segmentation network, every case
predicted once by heads that never saw it, and the out-of-fold report."""
import argparse
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import small_phantom_samples  # noqa: E402


def fake_segmentation_cv(root, folds):
    """A segmentation CV folder whose fold networks are the shipped weights: fold{k}/config.json + final weights."""
    from safetensors.torch import save_file

    from GliomaAnalysisLib.models.model_store import load_model

    shipped, _ = load_model()
    for fold, (train, validation) in folds.items():
        folder = root / f"fold{fold}"
        folder.mkdir(parents=True)
        save_file({k: v.contiguous() for k, v in shipped.state_dict().items()}, str(folder / "final.safetensors"))
        (folder / "config.json").write_text(json.dumps({
            "network": shipped.config.to_dict(), "args": {"spacing": 2.0},
            "validation_cases": validation, "train_cases": train}))


def test_every_case_is_predicted_once_by_heads_that_never_saw_it(tmp_path, monkeypatch):
    from training.multitask import cross_validate as cv

    samples = small_phantom_samples(10, seed=5)
    for s in samples:
        s.source = "real"
    ids = [s.case_id for s in samples]
    folds = {0: (ids[5:], ids[:5]), 1: (ids[:5], ids[5:])}
    fake_segmentation_cv(tmp_path / "seg", folds)
    args = cv.build_parser().parse_args(["--seg-cv", str(tmp_path / "seg"), "--run-dir", str(tmp_path / "mt"),
                                         "--local-crop", "32", "--views", "1",
                                         "--steps", "4", "--eval-every", "2", "--batch", "4"])
    for fold in cv.fold_numbers(tmp_path / "seg", None):
        cv.run_fold(args, fold, samples, ([], [], []))
    result = cv.report(tmp_path / "mt")
    assert sorted(result["cases"]) == sorted(ids)
    for fold, (train, validation) in folds.items():
        oof = json.loads((tmp_path / "mt" / "oof" / f"fold{fold}.json").read_text())
        assert sorted(oof["cases"]) == sorted(validation)
        assert oof["train_real"] == sorted(train)  # the held-out cases never trained this fold's heads
        assert oof["temperatures"]["grade"] == 1.0  # no validation phantoms: uncalibrated
    p = np.array([c["probability"]["grade"] for c in result["cases"].values()])
    assert ((p > 0) & (p < 1)).all()
    grade = result["tasks"]["grade"]
    assert grade["n"] == 10 and grade["positives"] == sum(s.targets["grade"] for s in samples)
    # a second call resumes: nothing is retrained, the stored predictions are kept
    stamp = (tmp_path / "mt" / "oof" / "fold0.json").stat().st_mtime_ns
    cv.run_fold(args, 0, samples, ([], [], []))
    assert (tmp_path / "mt" / "oof" / "fold0.json").stat().st_mtime_ns == stamp


def test_one_stored_backbone_for_every_fold_with_the_folds_of_a_segmentation_report(tmp_path):
    """--backbone glioma_seg --folds-from REPORT: the folds are the report's per-case folds, every fold's heads
    read the stored network, and each oof file names it."""
    from training.multitask import cross_validate as cv

    samples = small_phantom_samples(8, seed=6)
    for s in samples:
        s.source = "real"
    ids = [s.case_id for s in samples]
    assigned = {case: index % 2 for index, case in enumerate(ids)}
    seg_report = tmp_path / "seg_cv_report.json"
    seg_report.write_text(json.dumps({"per_case": {case: {"fold": k} for case, k in assigned.items()}}))
    args = cv.build_parser().parse_args(["--backbone", "glioma_seg", "--folds-from", str(seg_report),
                                         "--run-dir", str(tmp_path / "mt"), "--local-crop", "32", "--views", "1",
                                         "--steps", "2", "--eval-every", "1", "--batch", "4"])
    folds = cv.fold_numbers(None, None, cv.report_folds(seg_report))
    assert folds == [0, 1]
    for fold in folds:
        cv.run_fold(args, fold, samples, ([], [], []), cv.report_folds(seg_report))
        oof = json.loads((tmp_path / "mt" / "oof" / f"fold{fold}.json").read_text())
        assert sorted(oof["cases"]) == sorted(c for c, k in assigned.items() if k == fold)
        assert oof["train_real"] == sorted(c for c, k in assigned.items() if k != fold)
        assert oof["backbone"] == "glioma_seg"
    assert cv.report(tmp_path / "mt")["backbones"] == ["glioma_seg"]


def test_held_out_cases_read_the_composition_of_their_out_of_fold_segmentation(tmp_path):
    """--composition: the training cases' composition comes from their labels, the held-out cases' from the
    segmentation report's out-of-fold volumes (what analyze would have read), not from the expert labels."""
    from training.multitask import cross_validate as cv
    from training.multitask.train_multitask import WORKING_VOXEL_ML

    samples = small_phantom_samples(6, seed=7)
    for s in samples:
        s.source = "real"
    ids = [s.case_id for s in samples]
    volumes = {case: {"et_ml_pred": 2.0 * k, "wt_ml_pred": 40.0} for k, case in enumerate(ids)}
    seg_report = tmp_path / "seg_cv_report.json"
    seg_report.write_text(json.dumps({"chosen": "final", "per_case": {
        case: {"fold": k % 2, "final": volumes[case]} for k, case in enumerate(ids)}}))
    args = cv.build_parser().parse_args(["--backbone", "glioma_seg", "--folds-from", str(seg_report),
                                         "--run-dir", str(tmp_path / "mt"), "--local-crop", "32", "--views", "1",
                                         "--steps", "2", "--eval-every", "1", "--batch", "4", "--composition"])
    assigned = cv.report_folds(seg_report)
    model = cv.build_multitask(cv.fold_backbone(args, 0, assigned)[0], args)
    assert model.config.composition
    held_out = [s for s in samples if assigned[s.case_id] == 0]
    pooled = cv.held_out_features(model, held_out, seg_report)
    expected = [[np.log1p(volumes[s.case_id]["et_ml_pred"]), volumes[s.case_id]["et_ml_pred"] / 40.0, 1.0]
                for s in held_out]
    np.testing.assert_allclose(pooled[:, -3:].numpy(), expected, rtol=1e-6)
    from_labels = cv.pooled_features(model, held_out)
    truth = [(s.labels == 3).sum() * WORKING_VOXEL_ML for s in held_out]
    np.testing.assert_allclose(from_labels[:, -3].numpy(), np.log1p(truth), rtol=1e-5)
    np.testing.assert_array_equal(pooled[:, :-3].numpy(), from_labels[:, :-3].numpy())
    cv.run_fold(args, 0, samples, ([], [], []), assigned)
    assert sorted(json.loads((tmp_path / "mt" / "oof" / "fold0.json").read_text())["cases"]) == sorted(
        s.case_id for s in held_out)
    missing = tmp_path / "missing.json"
    missing.write_text(json.dumps({"chosen": "final", "per_case": {}}))
    with pytest.raises(SystemExit, match="no out-of-fold volumes"):
        cv.held_out_features(model, held_out, missing)


@pytest.mark.parametrize("flags", [[], ["--backbone", "glioma_seg"], ["--seg-cv", "x", "--backbone", "glioma_seg",
                                                                       "--folds-from", "r.json"]])
def test_the_backbone_options_are_checked(tmp_path, flags, capsys):
    from training.multitask import cross_validate as cv

    with pytest.raises(SystemExit) as exit_info:
        cv.main([*flags, "--run-dir", str(tmp_path / "mt")])
    assert exit_info.value.code == 2
    assert "give --seg-cv, or --backbone with --folds-from" in capsys.readouterr().err


def test_report_auc_and_its_bootstrap_interval(tmp_path):
    from training.common.metrics import roc_auc
    from training.multitask import cross_validate as cv

    rng = np.random.default_rng(0)
    labels = np.array([1] * 20 + [0] * 5)
    probabilities = np.clip(0.5 + 0.3 * (labels - 0.5) + rng.normal(0, 0.2, len(labels)), 0.01, 0.99)
    (tmp_path / "oof").mkdir()
    cases = {f"c{i}": {"targets": {"grade": int(y), "idh": None}, "logit": {},
                       "probability": {"grade": float(p), "idh": 0.5}}
             for i, (p, y) in enumerate(zip(probabilities, labels))}
    (tmp_path / "oof" / "fold0.json").write_text(json.dumps({"fold": 0, "cases": cases}))
    result = cv.report(tmp_path)
    grade = result["tasks"]["grade"]
    assert grade["auc"] == pytest.approx(roc_auc(probabilities, labels))
    low, high = grade["auc_95"]
    assert low < grade["auc"] < high and high - low > 0.05  # 5 negatives: a wide interval
    assert "idh" not in result["tasks"]  # no case knows it
    assert grade["accuracy"] == pytest.approx(((probabilities >= 0.5) == (labels == 1)).mean())
    text = cv.markdown(result)
    assert f"| grade (heads) | 25 | 20 | {grade['auc']:.3f} |" in text
    from training.common.metrics import class_kept_resamples

    picks = list(class_kept_resamples(labels, n=50))
    assert all(labels[p].sum() == 20 and len(p) == 25 for p in picks)  # each class resampled to its own count
    with pytest.raises(ValueError, match="needs both classes"):
        next(class_kept_resamples(np.ones(4)))


def test_cross_validation_leads_the_exported_card_and_sets_its_evidence():
    from GliomaAnalysisLib.models.evidence import evidence_table, task_evidence
    from training.multitask.export_multitask import cv_evidence, cv_summary, model_card_markdown

    metric = {"n": 28, "positives": 23, "accuracy": 0.86, "brier": 0.1}
    report = {"folds": [0, 1, 2, 3, 4], "n_cases": 31, "backbones": ["glioma_seg"],
              "tasks": {"grade": {**metric, "auc": 0.45, "auc_95": [0.2, 0.7]},
                        "idh": {**metric, "n": 7, "positives": 4, "auc": 0.5, "auc_95": [0.0, 1.0]}},
              "volume_grade": {**metric, "auc": 0.9, "auc_95": [0.76, 0.99]},
              "cases": {"a": {"targets": {"grade": 0}, "probability": {"grade": 0.9}, "volume_grade": 0.3},
                        "b": {"targets": {"grade": 1}, "probability": {"grade": 0.8}, "volume_grade": 0.95},
                        "c": {"targets": {"grade": 1}, "probability": {"grade": 0.4}},
                        "d": {"targets": {"grade": None}, "probability": {"grade": 0.0}}}}
    evidence = cv_evidence(report, "runs/mtcv/cv_report.json")
    assert evidence["grade"]["value"] == 0.9 and evidence["grade"]["negatives"] == 5  # the reported grade's model
    assert "volumes" in evidence["grade"]["kind"]
    assert evidence["idh"]["value"] == 0.5 and evidence["idh"]["ci95"] == {"lower": 0.0, "upper": 1.0}
    assert evidence["mgmt"]["value"] is None and evidence["codeletion_1p19q"]["n"] == 0
    card = {"name": "glioma_multitask", "evidence": evidence, "real_cross_validation": cv_summary(report, "cv.json"),
            "backbone": {"model": "glioma_seg", "sha256": "0" * 64}, "network": {"composition": True},
            "training_data": {"real_label_source": "labels.csv", "phantoms": {"label_source": "simulated"}},
            "grade_from_volumes": {"n": 28, "hgg": 23, "lgg": 5, "l2": 1.0, "weights": [1.5, 0.8], "intercept": 2.0,
                                   "bootstrap": [[1, 1, 1]] * 4},
            "metrics": {}, "calibration": {}, "training": {"steps": 10}, "exported": "2026-12-02",
            "git_commit_at_export": "abc", "sha256": "1" * 64}
    assert task_evidence(card, "grade")["evidence"] == "supported"  # lower bound 0.76 > 0.70
    assert task_evidence(card, "idh")["evidence"] == "not assessable"
    text = model_card_markdown(card)
    assert evidence_table(card) in text
    assert text.index("Evidence on real cases") < text.index("Heads for grade")
    assert "| grade from volumes (reported) | 28 | 23 | 0.900 | 0.76-0.99 |" in text
    assert "every fold's heads on the stored network glioma_seg" in text  # how the heads met their backbone
    assert [w["case"] for w in card["real_cross_validation"]["worst_grade"]] == ["a", "c", "b"]  # ungraded left out
    assert "| a | LGG | 0.90 | 0.300 |" in text and "| c | HGG | 0.40 | n/a |" in text
    assert "composition from its out-of-fold segmentation" in text and "whether T1CE was there" in text
    assert "training draws" not in text  # every case drawn alike
    card["training_data"]["real_share_of_draws"] = 0.5
    assert "the real cases made 50% of the training draws" in model_card_markdown(card)


def test_compare_cv_pairs_the_cases_both_reports_predicted(tmp_path, capsys):
    """The difference is that of the AUCs on the shared graded cases; resampling the same cases for both reports
    gives identical reports a difference of exactly 0 with SE 0, and a case moved across the threshold is listed."""
    from training.common.metrics import roc_auc
    from training.multitask import compare_cv

    labels = [1, 1, 1, 1, 0, 0, 0]
    base_p = [0.9, 0.8, 0.4, 0.7, 0.6, 0.3, 0.2]
    new_p = [0.9, 0.8, 0.75, 0.7, 0.6, 0.3, 0.2]

    def report(path, probabilities, extra=None):
        cases = {f"c{i}": {"targets": {"grade": y}, "probability": {t: p for t in ("grade", "idh",
                                                                                  "codeletion_1p19q", "mgmt")}}
                 for i, (p, y) in enumerate(zip(probabilities, labels))}
        cases.update(extra or {})
        path.write_text(json.dumps({"cases": cases}))
        return path

    unshared = {"only_new": {"targets": {"grade": 0}, "probability": {"grade": 0.99, "idh": 0.5,
                                                                        "codeletion_1p19q": 0.5, "mgmt": 0.5}}}
    new, base = report(tmp_path / "new.json", new_p, unshared), report(tmp_path / "base.json", base_p)
    row = compare_cv.compare(compare_cv.load_cases(new), compare_cv.load_cases(base))["grade"]
    assert row["cases"] == 7 and row["positives"] == 4  # the case only one report predicted is left out
    assert row["new"] == roc_auc(np.array(new_p), np.array(labels)) == 1.0
    assert row["base"] == pytest.approx(11 / 12)  # 0.4 ranks below the negative 0.6
    assert row["difference"] == pytest.approx(1 / 12)
    assert row["low"] <= row["difference"] <= row["high"] and row["se"] > 0
    same = compare_cv.compare(compare_cv.load_cases(base), compare_cv.load_cases(base))["grade"]
    assert same["difference"] == same["se"] == same["low"] == same["high"] == 0.0
    assert compare_cv.main([str(new), str(base)]) == 0
    assert "c2 (truth 1): 0.40 -> 0.75" in capsys.readouterr().out
    moved_fold = json.loads(new.read_text())
    moved_fold["cases"]["c0"]["fold"] = 3
    (tmp_path / "moved.json").write_text(json.dumps(moved_fold))
    assert compare_cv.main([str(tmp_path / "moved.json"), str(base)]) == 0
    assert "another fold in the two reports: c0" in capsys.readouterr().err
    relabelled = json.loads(new.read_text())
    relabelled["cases"]["c1"]["targets"]["grade"] = 0
    (tmp_path / "relabelled.json").write_text(json.dumps(relabelled))
    with pytest.raises(SystemExit, match="c1: the reports disagree on its grade label"):
        compare_cv.main([str(tmp_path / "relabelled.json"), str(base)])
    (tmp_path / "broken.json").write_text("{}")
    with pytest.raises(SystemExit, match="broken.json: not a multi-task cross-validation report"):
        compare_cv.load_cases(tmp_path / "broken.json")


def test_refit_volume_grade_rescores_and_refits_on_a_new_segmentation_cv(tmp_path):
    import shutil

    from training.multitask.refit_volume_grade import main as refit

    models, mt_cv = tmp_path / "models", tmp_path / "mt_cv"
    models.mkdir()
    for suffix in (".json", ".md", ".safetensors"):
        shutil.copy(f"Resources/models/glioma_multitask{suffix}", models)
    shutil.copytree("training/results/multitask_cv", mt_cv)
    before = json.loads((mt_cv / "cv_report.json").read_text())
    card_before = json.loads((models / "glioma_multitask.json").read_text())
    # a segmentation CV whose enhancing volume tells the grade perfectly: every HGG 20 mL of ET, every LGG none
    per_case = {}
    for i, (case_id, row) in enumerate(sorted(before["cases"].items())):
        hgg = row["targets"].get("grade") == 1
        per_case[case_id] = {"fold": i % 5, "v": {"et_ml_pred": 20.0 + i if hgg else 0.0, "wt_ml_pred": 80.0 + i}}
    (tmp_path / "seg.json").write_text(json.dumps({"chosen": "v", "per_case": per_case}))
    assert refit(["--seg-cv", str(tmp_path / "seg.json"), "--mt-cv", str(mt_cv), "--models", str(models)]) == 0

    after = json.loads((mt_cv / "cv_report.json").read_text())
    assert after["volume_grade"]["auc"] == 1.0 and after["volume_grade"]["n"] == before["volume_grade"]["n"]
    assert after["volume_grade_source"] == str(tmp_path / "seg.json")
    assert after["tasks"] == before["tasks"]  # the heads' out-of-fold predictions are kept as they were
    for case_id, row in after["cases"].items():
        assert row["probability"] == before["cases"][case_id]["probability"]
        if row["targets"].get("grade") is not None:
            assert (row["volume_grade"] > 0.5) == (row["targets"]["grade"] == 1)
    card = json.loads((models / "glioma_multitask.json").read_text())
    assert card["sha256"] == card_before["sha256"] and card["calibration"] == card_before["calibration"]
    assert card["evidence"]["grade"]["value"] == 1.0
    assert {**card["evidence"]["idh"], "source": None} == {**card_before["evidence"]["idh"], "source": None}
    assert card["grade_from_volumes"]["fitted_on"].endswith("seg.json")
    assert card["grade_from_volumes"]["weights"] != card_before["grade_from_volumes"]["weights"]
    assert "| grade | 1.00 |" in (models / "glioma_multitask.md").read_text()
    assert "seg.json" in (mt_cv / "multitask_cv.md").read_text()


def test_refit_volume_grade_names_a_missing_report(tmp_path, capsys):
    from training.multitask.refit_volume_grade import main as refit

    assert refit(["--seg-cv", str(tmp_path / "nothing.json")]) == 2
    error = capsys.readouterr().err.strip()
    assert error == f"error: {tmp_path / 'nothing.json'}: no segmentation cross-validation report there"
