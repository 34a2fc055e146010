"""Slice-grade classifier (seed 002): aggregation, slice preparation, missing modalities, storage, determinism,
ONNX Runtime parts against torch, a torch-free prediction, and a short training run on small phantoms."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from GliomaAnalysisLib.models.calibration import apply_temperature
from GliomaAnalysisLib.models.model_store import RESOURCES, save_model
from GliomaAnalysisLib.models.slice_grade import (AGGREGATIONS, SLICE_GRADE_MODEL, SLICE_GRADE_PARTS, SliceGradeConfig, _mc_masks,
                                           aggregate, attention_fusion, attention_weights, build_slice_grade,
                                           centred_crop, label_of, load_slice_grade, majority_vote,
                                           minmax_normalise, predict_slice_grade, prepare_slices, select_slices,
                                           slice_grade_parts_of, slice_probabilities, soft_vote)
from GliomaAnalysisLib.models.slice_grade_net import SliceGradeNet

from conftest import small_phantom_samples

TINY = SliceGradeConfig(widths=(4, 8), hidden=16, crop=24, max_slices=6, min_tumor_voxels=4)


def _case(shape=(20, 40, 40), z=range(5, 12), seed=0):
    """Random z-scored 4-channel image (brain = a centred box), tumor = a 5x5 square centred at (17, 20) on
    slices ``z``."""
    rng = np.random.default_rng(seed)
    image = np.zeros((4,) + shape, dtype=np.float32)
    image[:, :, 4:36, 4:36] = rng.normal(size=(4, shape[0], 32, 32))
    labels = np.zeros(shape, dtype=np.uint8)
    labels[list(z), 15:20, 18:23] = 2
    return image, np.ones(4, dtype=np.float32), labels


def _model(config=TINY, seed=0) -> SliceGradeNet:
    torch.manual_seed(seed)
    return SliceGradeNet(config).eval()


# ------------------------------------------------------------------------------------------------------ aggregation

def test_majority_tie_goes_to_hgg():
    p = [0.9, 0.2, 0.6, 0.4]  # two HGG votes, two LGG votes
    assert majority_vote(p) == 0.5
    assert label_of(majority_vote(p)) == "HGG"
    assert label_of(majority_vote([0.9, 0.2, 0.4])) == "LGG"  # 1 of 3


def test_soft_and_attention_hand_computed():
    p = [0.1, 0.5, 0.9]
    e = [math.exp(0.1), math.exp(0.5), math.exp(0.9)]  # 1.10517, 1.64872, 2.45960
    weights = [v / sum(e) for v in e]  # 0.21198, 0.31624, 0.47177
    assert np.allclose(attention_weights(p), weights) and np.isclose(attention_weights(p).sum(), 1)
    assert np.allclose(weights, [0.21198, 0.31624, 0.47177], atol=1e-5)
    assert attention_fusion(p) == pytest.approx(0.1 * weights[0] + 0.5 * weights[1] + 0.9 * weights[2])
    assert attention_fusion(p) == pytest.approx(0.60392, abs=1e-5)
    assert soft_vote(p) == pytest.approx(0.5)
    assert majority_vote(p) == pytest.approx(2 / 3)  # 0.5 and 0.9 vote HGG
    # attention leans toward the confident-HGG slices: above the mean whenever probabilities differ
    assert attention_fusion(p) > soft_vote(p)


def test_one_slice_and_no_slice():
    assert aggregate([0.3]) == {"majority": 0.0, "soft": pytest.approx(0.3), "attention": pytest.approx(0.3)}
    assert aggregate([]) == {"majority": None, "soft": None, "attention": None}
    with pytest.raises(ValueError):
        soft_vote([])
    assert label_of(None) is None and label_of(0.5) == "HGG" and label_of(0.4999) == "LGG"


# ------------------------------------------------------------------------------------------------ slice preparation

def test_minmax_per_slice_and_channel_over_the_brain():
    x = np.zeros((2, 2, 3, 3), dtype=np.float32)
    x[0, 0] = [[-1, 0, 1], [2, 3, 9], [5, 5, 5]]
    x[0, 1] = 7.0  # no contrast -> 0
    x[1, 0] = np.arange(9).reshape(3, 3)
    x[1, 1] = -np.arange(9).reshape(3, 3)
    brain = np.ones((2, 3, 3), dtype=bool)
    brain[0, 1, 2] = False  # the 9 is outside the brain: the max is 5
    out = minmax_normalise(x, brain)
    assert out.dtype == np.float32 and out.shape == x.shape
    assert np.allclose(out[0, 0], [[0, 1 / 6, 2 / 6], [3 / 6, 4 / 6, 0], [1, 1, 1]])
    assert np.all(out[0, 1] == 0)
    assert np.allclose(out[1, 0], np.arange(9).reshape(3, 3) / 8)
    assert np.allclose(out[1, 1], 1 - np.arange(9).reshape(3, 3) / 8)
    assert np.allclose(minmax_normalise(x[1:])[0, 0], np.arange(9).reshape(3, 3) / 8)  # no mask: every pixel


def test_select_slices_ranges_area_and_subsampling():
    labels = np.zeros((30, 10, 10), dtype=np.uint8)
    labels[4, 0, 0] = 1  # a 1-voxel tip
    labels[5:20, 2:6, 2:6] = 3  # 16 voxels per slice
    labels[20, 2:4, 2:4] = 2  # 4 voxels
    assert select_slices(labels, 100, 1).tolist() == list(range(4, 21))
    assert select_slices(labels, 100, 5).tolist() == list(range(5, 20))
    assert select_slices(labels, 3, 5).tolist() == [5, 12, 19]  # evenly spaced, first and last kept
    # positions 0, 3.5, 7, 10.5, 14 of the 15 candidates, rounded half to even
    assert select_slices(labels, 5, 5).tolist() == [5, 9, 12, 15, 19]
    tip_only = np.zeros_like(labels)
    tip_only[7, 0, 0] = 1
    assert select_slices(tip_only, 10, 10).tolist() == [7]  # nothing reaches the area: every tumor slice
    assert select_slices(np.zeros_like(labels), 10, 1).size == 0


def test_centred_crop_pads_outside_the_volume():
    a = np.arange(25, dtype=np.float32).reshape(5, 5)
    assert np.array_equal(centred_crop(a, (2, 2), 3), a[1:4, 1:4])
    edge = centred_crop(a, (0, 4), 4)  # rows -2..1, columns 2..5
    assert edge.shape == (4, 4) and np.all(edge[:2] == 0) and np.all(edge[:, 3] == 0)
    assert np.array_equal(edge[2:, :3], a[0:2, 2:5])
    assert np.all(centred_crop(a, (50, 50), 3) == 0)


def test_prepare_slices_shapes_values_and_centring():
    image, presence, labels = _case(z=range(5, 12))
    slices, z = prepare_slices(image, presence, labels, TINY)
    assert z.tolist() == [5, 6, 7, 9, 10, 11]  # 7 tumor slices subsampled to 6 (positions 0, 1.2, 2.4, ...)
    assert slices.shape == (6, 3, 24, 24) and slices.dtype == np.float32
    assert slices.min() >= 0 and slices.max() <= 1 and np.allclose(slices.max(axis=(2, 3)), 1)
    # tumor centre (Y 17, X 20) -> crop rows 5..28, columns 8..31, inside the brain box 4..35
    expected = minmax_normalise(image[1:, z][:, :, 5:29, 8:32].transpose(1, 0, 2, 3))
    assert np.allclose(slices, expected)


# --------------------------------------------------------------------------------------------------------- inference

def test_result_fields_and_json():
    image, presence, labels = _case()
    result = predict_slice_grade(_model(), {"calibration": {"temperature": 1.0}}, image, presence, labels)
    json.dumps(result)
    assert result["n_slices"] == 6 and result["slices"] == [5, 6, 7, 9, 10, 11]
    for name in ("majority", "soft", "attention"):
        assert 0 <= result[name] <= 1 and result["labels"][name] == label_of(result[name])
    assert result["default"] == "attention" and result["probability"] == result["attention"]
    assert result["label"] == result["labels"]["attention"] and result["uncertainty"] >= 0
    p = np.array(result["slice_probabilities"])
    assert result["soft"] == pytest.approx(p.mean(), abs=1e-4)
    assert result["majority"] == pytest.approx(np.mean(p >= 0.5))
    assert result["reason"] is None and result["warnings"] == []


def test_no_tumor_slice_is_a_result_not_a_crash():
    image, presence, labels = _case()
    result = predict_slice_grade(_model(), {}, image, presence, np.zeros_like(labels))
    assert result["n_slices"] == 0 and result["reason"] == "no tumor slice in the segmentation"
    assert all(result[k] is None for k in ("majority", "soft", "attention", "probability", "label"))


def test_missing_modalities():
    image, presence, labels = _case()
    model = _model()
    t2_missing = presence.copy()
    t2_missing[2] = 0
    image_without_t2 = image.copy()
    image_without_t2[2] = 0
    slices, _ = prepare_slices(image, t2_missing, labels, TINY)  # zeroed even if the array still holds values
    assert np.all(slices[:, 1] == 0) and slices[:, 0].max() == 1 and slices[:, 2].max() == 1
    result = predict_slice_grade(model, {}, image_without_t2, t2_missing, labels)
    assert result["n_slices"] == 6 and 0 <= result["attention"] <= 1
    assert len(result["warnings"]) == 1 and "t2 missing" in result["warnings"][0]
    t1_missing = presence.copy()
    t1_missing[0] = 0
    assert predict_slice_grade(model, {}, image, t1_missing, labels)["warnings"] == []  # T1 is not an input
    none = np.array([1, 0, 0, 0], dtype=np.float32)
    result = predict_slice_grade(model, {}, image, none, labels)
    assert result["n_slices"] == 0 and result["attention"] is None and "all missing" in result["reason"]


def test_temperature_from_the_card_softens_slice_probabilities():
    image, presence, labels = _case()
    model = _model(seed=3)
    with torch.no_grad():
        model.fc2.bias.fill_(2.0)  # confident HGG slices
    plain = predict_slice_grade(model, {"calibration": {"temperature": 1.0}}, image, presence, labels)
    soft = predict_slice_grade(model, {"calibration": {"temperature": 4.0}}, image, presence, labels)
    logits = np.log(np.array(plain["slice_probabilities"]) / (1 - np.array(plain["slice_probabilities"])))
    assert np.allclose(soft["slice_probabilities"], 1 / (1 + np.exp(-logits / 4)), atol=2e-4)
    assert abs(soft["soft"] - 0.5) < abs(plain["soft"] - 0.5)


def test_deterministic_including_mc_dropout():
    image, presence, labels = _case()
    model = _model()
    first = predict_slice_grade(model, {}, image, presence, labels)
    second = predict_slice_grade(model, {}, image, presence, labels)
    assert first == second and first["uncertainty"] > 0
    assert predict_slice_grade(model, {}, image, presence, labels, mc_samples=0)["uncertainty"] is None


def test_mc_masks_are_seeded_inverted_dropout():
    masks = _mc_masks(20, 6, 16, 0.5)
    assert masks.shape == (20, 6, 16) and masks.dtype == np.float32
    assert set(np.unique(masks)) == {0.0, 2.0} and 0.45 < np.mean(masks == 0) < 0.55
    assert np.array_equal(masks, _mc_masks(20, 6, 16, 0.5))
    assert np.allclose(np.unique(_mc_masks(4, 6, 16, 0.2)), [0, 1.25])


# ---------------------------------------------------------------------------------------------- ONNX Runtime parts

def _onnx_parts(model):
    from GliomaAnalysisLib.models.onnx_engine import OnnxPart, export_part

    return {name: OnnxPart(export_part(spec), 1) for name, spec in slice_grade_parts_of(model).items()}


def test_onnx_parts_equal_the_torch_parts_plain_and_masked():
    pytest.importorskip("onnxruntime")
    from GliomaAnalysisLib.models.onnx_engine import torch_parts

    model = _model(seed=1)
    reference, onnx = torch_parts(slice_grade_parts_of(model)), _onnx_parts(model)
    assert tuple(onnx) == SLICE_GRADE_PARTS
    x = np.random.default_rng(4).random((5, 3, TINY.crop, TINY.crop), dtype=np.float32)  # 5: not the exported 2
    features = onnx["features"](x=x)[0]
    assert features.shape == (5, 8)  # the last width
    np.testing.assert_allclose(features, reference["features"](x=x)[0], atol=1e-4)
    ones = np.ones((5, TINY.hidden), np.float32)
    plain = onnx["head"](features=features, mask=ones)[0]
    np.testing.assert_allclose(plain, reference["head"](features=features, mask=ones)[0], atol=1e-4)
    with torch.no_grad():
        np.testing.assert_allclose(plain, model(torch.from_numpy(x)).numpy(), atol=1e-4)  # all ones: eval mode
    masks = _mc_masks(3, 5, TINY.hidden, TINY.dropout).reshape(15, TINY.hidden)
    tiled = np.tile(features, (3, 1))
    sampled = onnx["head"](features=tiled, mask=masks)[0]
    assert sampled.shape == (15,) and np.abs(sampled - np.tile(plain, 3)).max() > 1e-3  # the masks drop units
    np.testing.assert_allclose(sampled, reference["head"](features=tiled, mask=masks)[0], atol=1e-4)


def test_slice_probabilities_batch_the_mc_samples_in_sample_order():
    pytest.importorskip("onnxruntime")
    model = _model(seed=2)
    x = np.random.default_rng(5).random((4, 3, TINY.crop, TINY.crop), dtype=np.float32)
    plain, mc = slice_probabilities(model, x, 1.5, mc_samples=3)
    masks = torch.from_numpy(_mc_masks(3, 4, TINY.hidden, TINY.dropout))
    with torch.no_grad():
        features = model.features(torch.from_numpy(x))
        expected = np.stack([model.head(features, masks[s]).numpy() for s in range(3)])
        np.testing.assert_allclose(plain, apply_temperature(model(torch.from_numpy(x)).numpy(), 1.5), atol=1e-6)
    assert mc.shape == (3, 4) and plain.dtype == mc.dtype == np.float64
    np.testing.assert_allclose(mc, apply_temperature(expected, 1.5), atol=1e-6)
    onnx_plain, onnx_mc = slice_probabilities(_onnx_parts(model), x, 1.5, 3, TINY)
    np.testing.assert_allclose(onnx_plain, plain, atol=1e-5)
    np.testing.assert_allclose(onnx_mc, mc, atol=1e-5)
    assert slice_probabilities(model, x, 1.5)[1] is None
    with pytest.raises(ValueError):
        slice_probabilities(_onnx_parts(model), x)  # parts without their config


def _stored_parts(folder):
    from GliomaAnalysisLib.models.onnx_engine import load_parts

    return load_parts(SLICE_GRADE_MODEL, str(folder), SLICE_GRADE_PARTS, slice_grade_parts_of, build_slice_grade)


@pytest.fixture()
def onnx_cache(tmp_path, monkeypatch):
    """An empty graph cache for this test (and the processes it starts)."""
    pytest.importorskip("onnxruntime")
    from GliomaAnalysisLib.models.onnx_engine import load_parts

    monkeypatch.setenv("GLIOMA_ANALYSIS_CACHE", str(tmp_path / "cache"))
    load_parts.cache_clear()
    yield tmp_path / "cache" / "onnx"
    load_parts.cache_clear()


def test_prediction_through_stored_onnx_parts_equals_the_torch_model(tmp_path, onnx_cache):
    from GliomaAnalysisLib.models.onnx_engine import OnnxPart

    image, presence, labels = _case()
    presence[2] = 0  # T2 missing: the warning comes through as well
    save_model(_model(seed=7), {"version": "test", "calibration": {"temperature": 1.3}}, tmp_path, "slice_grade")
    model, card = load_slice_grade(str(tmp_path))
    parts, parts_card, warnings = _stored_parts(tmp_path)
    assert warnings == () and all(isinstance(parts[name], OnnxPart) for name in SLICE_GRADE_PARTS)
    assert len(list(onnx_cache.glob("slice_grade-*.onnx"))) == 2 and parts_card == card
    through_torch = predict_slice_grade(model, card, image, presence, labels)
    through_onnx = predict_slice_grade(parts, card, image, presence, labels)
    assert set(through_onnx) == set(through_torch)
    for key, value in through_torch.items():
        if key in ("majority", "soft", "attention", "probability", "uncertainty"):
            assert through_onnx[key] == pytest.approx(value, abs=1e-5 if key != "uncertainty" else 1e-4), key
        elif key == "slice_probabilities":
            np.testing.assert_allclose(through_onnx[key], value, atol=1e-4)
        else:
            assert through_onnx[key] == value, key
    assert through_torch["uncertainty"] > 0 and len(through_torch["warnings"]) == 1
    assert predict_slice_grade(parts, card, image, presence, labels) == through_onnx  # bit-identical rerun
    plain = predict_slice_grade(parts, card, image, presence, labels, mc_samples=0)
    assert plain["uncertainty"] is None and plain["slice_probabilities"] == through_onnx["slice_probabilities"]


def test_a_prediction_from_cached_graphs_runs_without_torch_and_reruns_identically(tmp_path, onnx_cache):
    image, presence, labels = _case(seed=3)
    np.savez(tmp_path / "case.npz", image=image, presence=presence, labels=labels)
    save_model(_model(seed=8), {"version": "test", "calibration": {"temperature": 0.8}}, tmp_path, "slice_grade")
    parts, card, _ = _stored_parts(tmp_path)  # exports the graphs to the cache
    here = predict_slice_grade(parts, card, image, presence, labels)
    code = ("import json, sys\n"
            "import numpy as np\n"
            "from GliomaAnalysisLib.models.onnx_engine import load_parts\n"
            "from GliomaAnalysisLib.models.slice_grade import (SLICE_GRADE_MODEL, SLICE_GRADE_PARTS, "
            "build_slice_grade, predict_slice_grade, slice_grade_parts_of)\n"
            f"folder = {str(tmp_path)!r}\n"
            "case = np.load(folder + '/case.npz')\n"
            "parts, card, _ = load_parts(SLICE_GRADE_MODEL, folder, SLICE_GRADE_PARTS, slice_grade_parts_of, "
            "build_slice_grade)\n"
            "result = predict_slice_grade(parts, card, case['image'], case['presence'], case['labels'])\n"
            "print(json.dumps({'torch': 'torch' in sys.modules, 'result': result}))\n")
    out = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                    check=True).stdout)
    assert out["torch"] is False
    assert out["result"] == here and here["uncertainty"] > 0 and here["n_slices"] == 6


def test_the_prediction_module_imports_without_torch():
    code = "import sys, GliomaAnalysisLib.models.slice_grade; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("config", [SliceGradeConfig(), SliceGradeConfig(backbone="efficientnet", crop=32)])
def test_network_shapes_and_config_round_trip(config):
    model = _model(config)
    assert model(torch.rand(5, 3, config.crop, config.crop)).shape == (5,)
    assert SliceGradeConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError):
        SliceGradeConfig(backbone="resnet")


def test_save_load_round_trip_through_the_model_store(tmp_path):
    image, presence, labels = _case()
    model = _model(seed=5)
    card = {"version": "test", "calibration": {"temperature": 1.3}}
    save_model(model, card, tmp_path, "slice_grade")
    loaded, stored = load_slice_grade(str(tmp_path))
    assert stored["network"] == TINY.to_dict() and stored["calibration"]["temperature"] == 1.3
    assert len(stored["sha256"]) == 64 and (tmp_path / "slice_grade.safetensors").stat().st_size < 5e6
    a = predict_slice_grade(model, card, image, presence, labels)
    b = predict_slice_grade(loaded, stored, image, presence, labels)
    assert np.allclose(a["slice_probabilities"], b["slice_probabilities"], atol=2e-3)  # float16 on disk


@pytest.mark.skipif(not (RESOURCES / "slice_grade.json").is_file(), reason="no shipped slice_grade model")
def test_shipped_model_loads_and_predicts(small_phantom):
    from GliomaAnalysisLib.io.labels import to_contiguous
    from GliomaAnalysisLib.io.modalities import MODALITIES

    model, card = load_slice_grade()
    assert (RESOURCES / "slice_grade.safetensors").stat().st_size < 5e6
    assert 0.05 <= card["calibration"]["temperature"] <= 20
    image = np.stack([small_phantom.images[m].astype(np.float32) for m in MODALITIES])
    brain = image.any(axis=0)
    for channel in image:
        channel[brain] = (channel[brain] - channel[brain].mean()) / channel[brain].std()
    result = predict_slice_grade(model, card, image, np.ones(4), to_contiguous(small_phantom.labels))
    assert result["n_slices"] > 0 and 0 <= result["attention"] <= 1 and result["label"] in ("HGG", "LGG")


# ----------------------------------------------------------------------------------------------- training pipeline

def test_training_batch_without_augmentation_equals_inference_input():
    from training.common.classification_data import ClassificationSample
    from training.slice_grade.slice_grade_data import augmented_batch, cut_case

    image, presence, labels = _case(z=range(5, 9))
    case = cut_case(ClassificationSample("c", "phantom", image, labels, {"grade": 1}), TINY)
    assert case.train.shape == (4, 4, 48, 48) and case.eval.shape == (4, 3, 24, 24)
    batch = augmented_batch(case.train, TINY.crop, np.random.default_rng(0), augment=False).numpy()
    assert np.abs(batch - case.eval).max() < 2e-3  # float16 storage of the training cut
    augmented = augmented_batch(case.train, TINY.crop, np.random.default_rng(0)).numpy()
    assert augmented.shape == batch.shape and augmented.min() >= 0 and augmented.max() <= 1
    assert not np.allclose(augmented, batch)


def test_short_training_on_phantoms_learns_grade(tmp_path, monkeypatch):
    """Tiny network (32-pixel crops = 80 mm at 2.5 mm), 6 epochs on 50 small phantoms, scored on 35 held out."""
    import training.slice_grade.train_slice_grade as train
    from training.common.classification_data import ClassificationSplit

    samples = small_phantom_samples(100, seed=11)
    split = ClassificationSplit(samples[:50], samples[50:65], samples[65:])
    monkeypatch.setattr(train, "load_classification_split", lambda *args, **kwargs: split)
    cv_auc = {"n": 28, "positives": 23, "auc": 0.61, "auc_95": [0.35, 0.85], "accuracy": 0.8, "brier": 0.2}
    (tmp_path / "cv_report.json").write_text(json.dumps(  # a slice-grade cross-validation report
        {"folds": [0, 1, 2, 3, 4], "n_folds": 5, "n_cases": 28, "aggregations": {a: cv_auc for a in AGGREGATIONS},
         "cases": {"lgg_a": {"grade": 0, "fold": 1, "slices": 9, **{a: 0.9 for a in AGGREGATIONS}},
                   "hgg_b": {"grade": 1, "fold": 0, "slices": 12, **{a: 0.8 for a in AGGREGATIONS}}}}))
    out = train.main(["--out", str(tmp_path), "--no-real", "--export-dir", str(tmp_path / "models"),
                      "--cv-report", str(tmp_path / "cv_report.json"),
                      "--crop", "32", "--widths", "8", "16", "32", "--max-slices", "12", "--epochs", "6",
                      "--slices-per-case", "4", "--threads", "2"])
    test = out["metrics"]["phantom_test"]
    assert test["attention"]["n"] == 35
    # measured 0.94, 0.94, 0.91, 0.88 (attention) and 0.94, 0.94, 0.90, 0.87 (soft) over training seeds 0-3
    assert test["attention"]["auc"] > 0.80, test
    assert test["soft"]["auc"] > 0.80, test
    assert (tmp_path / "calibration_phantom_test.png").is_file()
    assert (tmp_path / "decision_curve_phantom_test.png").is_file()
    assert (tmp_path / "models" / "slice_grade.md").is_file()
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert 1 <= len(log) <= 6 and all("val_bce" in r for r in log)
    model, card = load_slice_grade(str(tmp_path / "models"))
    assert card["calibration"]["temperature"] == pytest.approx(out["temperature"])
    # the cross-validation sets the real-case evidence: AUC 0.61 with an interval reaching 0.35 is not assessable
    from GliomaAnalysisLib.models.evidence import task_evidence
    assert card["evidence"]["grade"]["value"] == 0.61 and card["evidence"]["grade"]["negatives"] == 5
    assert task_evidence(card, "grade")["evidence"] == "not assessable"
    text = (tmp_path / "models" / "slice_grade.md").read_text()
    assert text.index("Evidence on real cases") < text.index("## Cross-validation: 28 graded real cases") \
        < text.index("## What it does")  # the cross-validation leads, with its cases, the worst first
    assert "Worst cases (furthest from their true grade, attention): lgg_a (LGG, P(HGG) 0.90), hgg_b" in text
    assert "| lgg_a | 1 | LGG | 9 | 0.90 | 0.90 | 0.90 |" in text
    assert "| attention | 28 | 23 | 0.610 | 0.35-0.85 |" in text
    assert "Real validation cases" not in text  # no real case validated in this run
