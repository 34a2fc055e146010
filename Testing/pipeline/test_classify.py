"""The classifiers inside analyze(): report fields, ranges, missing modalities, --no-classify, missing models."""
import json

import numpy as np
import pytest

from GliomaAnalysisLib import analyze
from GliomaAnalysisLib.io.case import load_case
from GliomaAnalysisLib.models.evidence import evidence_level
from GliomaAnalysisLib.models.model_store import load_card
from GliomaAnalysisLib.models.multitask import TASK_LABELS
from GliomaAnalysisLib.models.onnx_engine import OnnxPart
from GliomaAnalysisLib.pipeline.classify import CLASSIFIERS, CLASSIFIER_THREADS, load_classifier
from GliomaAnalysisLib.pipeline.result import PREDICTION_TASKS
from GliomaAnalysisLib.reporting.writers import write_outputs


def _in_unit_interval(value) -> bool:
    return isinstance(value, float) and 0.0 <= value <= 1.0


@pytest.fixture(scope="module")
def classified(phantom_dir):
    return analyze(phantom_dir, fast=True)


def test_every_classifier_fills_its_report_fields(classified):
    report = json.loads(json.dumps(classified.report()))
    for task in PREDICTION_TASKS:
        p = report["predictions"][task]
        assert p["label"] in TASK_LABELS[task]
        assert _in_unit_interval(p["probability"]) and p["probability"] >= 0.5
        assert _in_unit_interval(p["probability_positive"]) and _in_unit_interval(p["uncertainty"])
    fusion = report["mgmt_late_fusion"]
    assert _in_unit_interval(fusion["fused"]) and fusion["n_slices"] > 0
    assert all(_in_unit_interval(v) for v in fusion["per_modality"].values())
    assert sum(fusion["weights"].values()) == pytest.approx(1.0)
    present = [w * p for w, p in zip(fusion["weights"].values(), fusion["per_modality"].values())]
    assert fusion["fused"] == pytest.approx(sum(present), abs=1e-6)
    grade = report["slice_grade"]
    assert grade["n_slices"] > 0 and grade["default"] == "attention"
    assert all(_in_unit_interval(grade[k]) for k in ("majority", "soft", "attention"))
    assert grade["probability"] == grade["attention"]
    names = {m["name"] for m in report["models"]}
    assert {"glioma_seg", "glioma_multitask", "mgmt_fusion", "slice_grade"} <= names
    assert report["timings_s"]["classify"] > 0


def test_the_classifiers_sessions_run_on_one_thread_beside_the_main_path(classified):
    for classifier in CLASSIFIERS:
        parts, _, _ = load_classifier(classifier, None)  # the sessions the analysis used (cached per process)
        sessions = [p.session for p in parts.values() if isinstance(p, OnnxPart)]
        assert len(sessions) == len(parts) > 0
        assert {s.get_session_options().intra_op_num_threads for s in sessions} == {CLASSIFIER_THREADS} == {1}


def test_a_result_returned_before_the_classifiers_gets_their_fields_when_written(phantom_dir, classified, tmp_path):
    result = analyze(phantom_dir, fast=True, wait=False)  # as the CLI and batch call it
    assert result.pending is not None and all(p is None for p in result.predictions.values())
    assert result.mgmt_late_fusion is None and [m["task"] for m in result.models] == ["segmentation"]
    write_outputs(result, tmp_path / "out")  # the maps first, then finish(), then the report
    written = json.loads((tmp_path / "out" / "report.json").read_text())
    expected = json.loads(json.dumps(classified.report()))
    assert result.pending is None and written["timings_s"]["classify"] > 0
    for key in ("predictions", "mgmt_late_fusion", "slice_grade", "models", "warnings", "volumes_ml"):
        assert written[key] == expected[key], key
    assert "done: WT" in (tmp_path / "out" / "analysis.log").read_text()


def test_the_multitask_heads_read_the_segmentation_pass_maps(phantom_dir, monkeypatch):
    """analyze hands the segmentation pass's encoder maps to the multi-task heads (the backbone's encoder part is
    not run); the heads' answers equal those on maps the encoder part computes itself, which is what a case
    segmented by a network other than the backbone gets."""
    import GliomaAnalysisLib.pipeline.classify as classify
    from GliomaAnalysisLib.pipeline.classify import EncoderMaps, classify_case

    calls = []

    def spy(*args, **kwargs):
        calls.append((args, kwargs))
        return marker_features(*args, **kwargs)

    marker_features = classify.marker_features
    monkeypatch.setattr(classify, "marker_features", spy)
    monkeypatch.setenv("GLIOMA_ANALYSIS_PRECISION", "f32")  # bfloat16 maps would differ by its rounding, ~0.4 %
    result = analyze(phantom_dir, device="cpu")  # quality mode: the maps come from an MC-dropout pass
    (parts, card, image, presence, labels), kwargs = calls[0]
    fine, level, deep = kwargs["maps"]
    assert (fine.shape[1], level.shape[1], deep.shape[1]) == (32, 64, 128)
    assert ([n * 2 for n in fine.shape[2:]] == [n * 4 for n in level.shape[2:]] == [n * 8 for n in deep.shape[2:]]
            == list(image.shape[1:]))
    for given, computed in zip(kwargs["maps"], kwargs["encoder"]()(x=image[None], presence=presence[None])):
        # the segmentation pass ran on OpenVINO, the encoder part on ONNX Runtime: other kernels, ~1e-3 apart
        np.testing.assert_allclose(given, computed, atol=1e-3 + 2e-3 * np.abs(computed).max())
    other = classify_case(image, presence, labels, encoder_maps=EncoderMaps("0" * 64, (fine * 0, level * 0, deep * 0)))
    other.apply_final_volumes(result.volumes_ml)  # heads reading the composition run on the same final volumes
    assert calls[-1][1]["maps"] is None  # not the backbone's weights: the encoder part ran
    for task, p in result.predictions.items():
        if task != "grade":  # the reported grade comes from the volumes
            assert other.predictions[task]["probability_positive"] == pytest.approx(p["probability_positive"],
                                                                                     abs=2e-3), task


def test_classifiers_run_on_two_modalities(phantom_dir):
    case = load_case({m: str(next(phantom_dir.glob(f"*_{m}.nii.gz"))) for m in ("t1ce", "flair")})
    result = analyze(case, fast=True)
    fusion = result.mgmt_late_fusion
    assert fusion["per_modality"]["t1"] is None and fusion["per_modality"]["t2"] is None
    assert fusion["weights"]["t1"] == 0 and sum(fusion["weights"].values()) == pytest.approx(1.0)
    assert all(result.predictions[t] is not None for t in PREDICTION_TASKS)
    assert any("slice grade" in w and "t2" in w.lower() for w in result.warnings)  # its T2 channel is zeroed


def test_no_classify_leaves_predictions_null(phantom_dir):
    result = analyze(phantom_dir, fast=True, classify=False)
    report = result.report()
    assert all(report["predictions"][t] is None for t in PREDICTION_TASKS)
    assert report["mgmt_late_fusion"] is None and report["slice_grade"] is None
    assert [m["name"] for m in report["models"]] == ["glioma_seg"] and "classify" not in report["timings_s"]


def test_missing_classifier_models_are_skipped_with_a_warning(phantom_dir, tiny_model_dir):
    result = analyze(phantom_dir, fast=True, model_dir=tiny_model_dir)
    assert all(result.predictions[t] is None for t in PREDICTION_TASKS)
    assert sum("skipped" in w for w in result.warnings) == 3
    assert np.isfinite(result.volumes_ml["wt"])


def test_shipped_cards_put_their_evidence_beside_every_prediction(classified):
    import importlib.resources as resources

    import jsonschema

    report = json.loads(json.dumps(classified.report()))
    schema = json.loads(resources.files("GliomaAnalysisLib").joinpath("schemas/report.schema.json").read_text())
    jsonschema.validate(report, schema)
    assert report["schema_version"] == "1.4"
    card = load_card("glioma_multitask")
    grade = report["predictions"]["grade"]
    assert grade["basis"].startswith("segmentation volumes")  # the shipped card holds grade_from_volumes
    assert grade["evidence_detail"]["model"] == "glioma_multitask" and grade["evidence_detail"]["n"] == 28
    assert grade["evidence_detail"]["ci95"] == card["evidence"]["grade"]["ci95"]
    assert grade["evidence"] == evidence_level(card["evidence"]["grade"]["value"], card["evidence"]["grade"]["ci95"])
    assert {report["predictions"][t]["evidence"] for t in PREDICTION_TASKS if t != "grade"} == {"not assessable"}
    assert report["slice_grade"]["evidence"] == "weak"
    assert report["mgmt_late_fusion"]["evidence"] == "not assessable"


def test_evidence_follows_the_card_in_the_model_folder(phantom_dir, tmp_path):
    """Cards with other levels (as a retraining would write them) change the report without code changes."""
    def edit(stem, card):
        if stem == "glioma_multitask":
            card["evidence"]["grade"] = {"metric": "auc", "value": 0.86, "n": 31, "positives": 26,
                                         "negatives": 5, "ci95": {"lower": 0.74, "upper": 0.95},
                                         "ci_method": "bootstrap over 5-fold CV", "kind": "5-fold CV",
                                         "source": "test"}
            card["evidence"]["idh"] = {"metric": "auc", "value": 0.7, "n": 31, "positives": 7,
                                       "negatives": 24, "source": "test"}
        if stem == "slice_grade":
            del card["evidence"]

    _shipped_cards(tmp_path, edit)
    report = analyze(phantom_dir, model_dir=tmp_path, fast=True).report()
    grade, idh = report["predictions"]["grade"], report["predictions"]["idh"]
    assert grade["evidence"] == "supported" and grade["evidence_detail"]["ci_method"] == "bootstrap over 5-fold CV"
    # IDH 0.70 with 7 / 24: Hanley-McNeil interval 0.46-0.94 reaches chance
    assert idh["evidence"] == "not assessable"
    assert idh["evidence_detail"]["ci95"] == {"lower": 0.4614, "upper": 0.9386}
    assert report["slice_grade"]["evidence"] == "not assessable"
    assert report["slice_grade"]["evidence_detail"]["source"] == \
        "the model card states no real-data figure for this task"


def test_a_multitask_card_of_the_old_layout_is_skipped_with_a_warning(phantom_dir, tmp_path):
    """A card whose heads read re-encoded image crops (before 0.4.0) cannot run on the encoder maps: the multi-task
    classifier is skipped with a one-line warning (also when its graphs are cached), the others run."""
    def edit(stem, card):
        if stem == "glioma_multitask":
            del card["network"]["features"]
            card["network"]["global_downsample"] = 2

    _shipped_cards(tmp_path, edit)
    result = analyze(phantom_dir, model_dir=tmp_path, fast=True)
    skipped = [w for w in result.warnings if w.startswith("multi-task classifier skipped")]
    assert len(skipped) == 1 and "before 0.4.0" in skipped[0]
    assert all(p is None for p in result.predictions.values())
    assert result.mgmt_late_fusion is not None and result.slice_grade is not None


def _shipped_cards(folder, edit):
    """The shipped models in ``folder`` (weights linked, cards copied), each card passed through
    ``edit(stem, card)`` first."""
    from GliomaAnalysisLib.models.model_store import RESOURCES

    folder.mkdir(exist_ok=True)
    for path in RESOURCES.iterdir():
        if path.suffix == ".safetensors":
            (folder / path.name).symlink_to(path)
        elif path.suffix == ".json":
            card = json.loads(path.read_text())
            edit(path.stem, card)
            (folder / path.name).write_text(json.dumps(card))
    return folder


def _cards_with(folder, grade_block):
    """The shipped models in ``folder``, the multi-task card's ``grade_from_volumes`` set to ``grade_block`` (None:
    removed)."""
    def edit(stem, card):
        if stem == "glioma_multitask":
            card.pop("grade_from_volumes", None)
            if grade_block is not None:
                card["grade_from_volumes"] = grade_block

    return _shipped_cards(folder, edit)


def test_grade_from_volumes_replaces_the_heads_grade_when_the_card_holds_it(phantom_dir, tmp_path):
    """A multi-task card with ``grade_from_volumes``: the report's grade is that model read on the report's own
    final volumes (the heads' IDH stays); without the block the heads' grade stands."""
    from GliomaAnalysisLib.models.volume_grade import predict_grade

    block = {"features": ["log1p_et_ml", "et_share_of_wt"], "mean": [1.0, 0.1], "scale": [1.0, 0.1],
             "weights": [2.0, 1.0], "intercept": 1.5, "bootstrap": [[2.0, 1.0, 1.5], [1.0, 0.5, 1.0], [3.0, 0.0, 2.0]]}
    with_block, without = _cards_with(tmp_path / "with", block), _cards_with(tmp_path / "without", None)
    report = analyze(phantom_dir, model_dir=with_block, fast=True).report()
    plain = analyze(phantom_dir, model_dir=without, fast=True).report()
    expected = predict_grade(block, report["volumes_ml"])
    grade = report["predictions"]["grade"]
    assert {k: grade[k] for k in expected} == expected
    assert grade["uncertainty"] > 0  # the three refits disagree
    assert grade["evidence"] == plain["predictions"]["grade"]["evidence"]  # the card's grade evidence
    assert "basis" not in plain["predictions"]["grade"]
    assert report["predictions"]["idh"] == plain["predictions"]["idh"]
    # without T1CE the enhancing volume is unknown: the heads' grade stays, marked not assessable, with a warning
    files = {m: str(next(phantom_dir.glob(f"*_{m}.nii.gz"))) for m in ("t1", "t2", "flair")}
    no_t1ce = analyze(load_case(files), model_dir=with_block, fast=True).report()
    heads = analyze(load_case(files), model_dir=without, fast=True).report()["predictions"]["grade"]
    grade = no_t1ce["predictions"]["grade"]
    assert grade["probability_positive"] == heads["probability_positive"] and "basis" not in grade
    assert grade["evidence"] == "not assessable" and "T1CE is missing" in grade["evidence_detail"]["reason"]
    assert any(w.startswith("grade: T1CE is missing") for w in no_t1ce["warnings"])
