"""Cross-validation of the slice-grade classifier: every graded real case predicted once by a fold model that never
saw it, the out-of-fold report, and the shipped card's evidence taken from it."""
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import small_phantom_samples  # noqa: E402


def test_every_graded_case_is_predicted_once_by_a_fold_model_that_never_saw_it(tmp_path):
    from training.slice_grade import cross_validate as cv

    samples = small_phantom_samples(8, seed=5)
    validation = small_phantom_samples(4, seed=9)  # phantoms: early stopping and the temperature
    for s in samples:
        s.source = "real"
    samples[-1].targets["grade"] = None  # an ungraded case: trains nowhere, predicted nowhere
    ids = [s.case_id for s in samples]
    folds = {case_id: k % 2 for k, case_id in enumerate(ids)}
    args = cv.build_parser().parse_args(["--run-dir", str(tmp_path / "sg"), "--epochs", "1", "--batch", "8",
                                         "--slices-per-case", "2", "--widths", "4", "8", "8", "8"])
    for fold in (0, 1):
        cv.run_fold(args, fold, samples, folds, ([], validation, []))
    result = cv.report(tmp_path / "sg", 2, 0)
    graded = [s for s in samples if s.targets["grade"] is not None]
    assert sorted(result["cases"]) == sorted(s.case_id for s in graded)
    for fold in (0, 1):
        oof = json.loads((tmp_path / "sg" / "oof" / f"fold{fold}.json").read_text())
        assert sorted(oof["cases"]) == sorted(s.case_id for s in graded if folds[s.case_id] == fold)
        assert oof["train_real"] == sorted(s.case_id for s in graded if folds[s.case_id] != fold)
        assert oof["temperature"] > 0 and (tmp_path / "sg" / f"fold{fold}" / "best.safetensors").is_file()
        for case_id, row in oof["cases"].items():
            assert row["grade"] == next(s.targets["grade"] for s in samples if s.case_id == case_id)
    attention = result["aggregations"]["attention"]
    assert attention["n"] == len(graded) and attention["positives"] == sum(s.targets["grade"] for s in graded)
    p = np.array([c["attention"] for c in result["cases"].values()])
    assert ((p > 0) & (p < 1)).all()
    assert "| attention | 7 |" in cv.markdown(result)
    stamp = (tmp_path / "sg" / "oof" / "fold0.json").stat().st_mtime_ns  # a second call resumes: nothing retrained
    cv.run_fold(args, 0, samples, folds, ([], validation, []))
    assert (tmp_path / "sg" / "oof" / "fold0.json").stat().st_mtime_ns == stamp


def test_only_a_complete_cross_validation_becomes_the_cards_evidence(tmp_path):
    from training.slice_grade.export_slice_grade import cv_evidence

    metrics = {"n": 28, "positives": 23, "auc": 0.8, "auc_95": [0.6, 0.95], "accuracy": 0.8, "brier": 0.15}
    report = {"folds": [0, 1, 2, 3, 4], "n_folds": 5, "aggregations": {"attention": metrics}}
    entry = cv_evidence(report, tmp_path / "cv_report.json")["grade"]
    assert entry["value"] == 0.8 and entry["negatives"] == 5 and entry["ci95"] == {"lower": 0.6, "upper": 0.95}
    assert entry["kind"].startswith("5-fold cross-validation")
    with pytest.raises(ValueError, match="finish the cross-validation"):
        cv_evidence({**report, "folds": [0, 1]}, tmp_path / "cv_report.json")
