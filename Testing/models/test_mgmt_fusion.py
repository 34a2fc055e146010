"""MGMT late-fusion ensemble (seed 000): model shapes, slice selection, fusion with missing modalities, model store
round trip, determinism, the ONNX parts against torch, and learning in a short training run."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from GliomaAnalysisLib.models.calibration import sigmoid
from GliomaAnalysisLib.models.mgmt_fusion import (MGMT_PARTS, MGMTFusionConfig, MGMTFusionError, build_from_card,
                                                  dropout_masks, fuse_probabilities, load_mgmt_fusion, mgmt_parts,
                                                  mgmt_parts_of, predict_mgmt_fusion, select_slices)
from GliomaAnalysisLib.models.mgmt_fusion_net import MGMTFusionEnsemble
from GliomaAnalysisLib.models.model_store import ModelError, model_paths, save_model
from GliomaAnalysisLib.io.modalities import MODALITIES

TINY = MGMTFusionConfig(crop_size=32, max_slices=6, width_coefficient=0.25, depth_coefficient=0.25, feature_dim=8,
                        lstm_hidden=8, dropout=0.2, drop_connect=0.0)
ALL = np.ones(4, dtype=np.float32)


def _case(shape=(24, 48, 48), tumor=((8, 16), (14, 30), (20, 36)), seed=0):
    """image (4, Z, Y, X) of noise inside a box 'brain', labels with a box tumor (z, y, x ranges) of ED/ET."""
    rng = np.random.default_rng(seed)
    image = np.zeros((4,) + shape, dtype=np.float32)
    image[:, 2:-2, 4:-4, 4:-4] = rng.standard_normal((4, shape[0] - 4, shape[1] - 8, shape[2] - 8))
    labels = np.zeros(shape, dtype=np.uint8)
    if tumor is not None:
        (z0, z1), (y0, y1), (x0, x1) = tumor
        labels[z0:z1, y0:y1, x0:x1] = 2
        labels[z0 + 1:z1 - 1, y0 + 2:y1 - 2, x0 + 2:x1 - 2] = 3
    return image, labels


@pytest.fixture(scope="module")
def ensemble() -> MGMTFusionEnsemble:
    torch.manual_seed(0)
    return MGMTFusionEnsemble(TINY).eval()


def test_config_round_trip_and_validation():
    data = TINY.to_dict()
    assert MGMTFusionConfig.from_dict(json.loads(json.dumps(data))) == TINY
    assert data["modalities"] == list(MODALITIES)
    with pytest.raises(ValueError, match="modalities"):
        MGMTFusionConfig(modalities=("t1", "dwi"))
    with pytest.raises(ValueError, match="backbone_norm"):
        MGMTFusionConfig(backbone_norm="weird")


def test_default_model_is_small_enough_to_ship():
    n = sum(p.numel() for p in MGMTFusionEnsemble().parameters())
    assert 1_000_000 < n * 2 < 8_000_000  # bytes as float16


def test_shapes_and_any_number_of_slices(ensemble):
    model = ensemble.models["flair"]
    with torch.no_grad():
        for s in (1, 3, 9):
            assert model(torch.randn(2, s, 32, 32)).shape == (2,)
        assert model.features(torch.randn(2, 4, 32, 32)).shape == (2, 4, TINY.feature_dim)


def test_padded_batch_equals_each_case_alone(ensemble):
    """Right-padded sequences with ``lengths`` give each case's own logit: the padding is never read."""
    model = ensemble.models["t2"]
    torch.manual_seed(1)
    a, b = torch.randn(5, 32, 32), torch.randn(2, 32, 32)
    batch = torch.zeros(2, 5, 32, 32)
    batch[0], batch[1, :2] = a, b
    batch[1, 2:] = 7.0  # garbage in the padding
    with torch.no_grad():
        together = model(batch, torch.tensor([5, 2]))
        alone = torch.stack([model(a[None])[0], model(b[None])[0]])
    assert torch.allclose(together, alone, atol=1e-5)


def test_fusion_hand_computed_with_missing_modalities():
    probs = {"t1": 0.2, "t1ce": 0.8, "t2": None, "flair": 0.5}
    fused, weights = fuse_probabilities(probs, {"t1": 1.0, "t1ce": 2.0, "t2": 3.0, "flair": 1.0})
    assert weights == pytest.approx({"t1": 0.25, "t1ce": 0.5, "t2": 0.0, "flair": 0.25})
    assert fused == pytest.approx((0.2 * 1 + 0.8 * 2 + 0.5 * 1) / 4)
    fused, weights = fuse_probabilities({"t1": None, "t1ce": None, "t2": 0.37, "flair": None}, {"t2": 0.1})
    assert fused == pytest.approx(0.37) and weights["t2"] == pytest.approx(1.0)
    fused, weights = fuse_probabilities({"t1": 0.2, "t2": 0.6}, {"t1": 0.0, "t2": 0.0})  # no usable weight
    assert fused == pytest.approx(0.4) and weights == pytest.approx({"t1": 0.5, "t2": 0.5})
    with pytest.raises(MGMTFusionError, match="no modality present"):
        fuse_probabilities({m: None for m in MODALITIES}, {m: 1.0 for m in MODALITIES})


def test_prediction_with_missing_modalities(ensemble):
    image, labels = _case()
    card = {"fusion": {"weights": {"t1": 0.1, "t1ce": 0.2, "t2": 0.3, "flair": 0.4}}}
    full = predict_mgmt_fusion(ensemble, card, image, ALL, labels, mc_samples=0)
    assert set(full["per_modality"]) == set(MODALITIES) and sum(full["weights"].values()) == pytest.approx(1.0)
    assert full["weights"] == pytest.approx(card["fusion"]["weights"])

    presence = np.array([0, 1, 0, 1], dtype=np.float32)
    part = predict_mgmt_fusion(ensemble, card, image * presence[:, None, None, None], presence, labels, mc_samples=0)
    assert part["per_modality"]["t1"] is None and part["per_modality"]["t2"] is None
    assert part["weights"] == pytest.approx({"t1": 0.0, "t1ce": 1 / 3, "t2": 0.0, "flair": 2 / 3})
    assert part["fused"] == pytest.approx((part["per_modality"]["t1ce"] + 2 * part["per_modality"]["flair"]) / 3)
    assert part["per_modality"]["t1ce"] == pytest.approx(full["per_modality"]["t1ce"])  # each model sees its own

    one = predict_mgmt_fusion(ensemble, card, image, np.array([0, 0, 1, 0], np.float32), labels, mc_samples=3)
    assert one["fused"] == pytest.approx(one["per_modality"]["t2"]) and one["weights"]["t2"] == pytest.approx(1.0)
    assert one["uncertainty"] == pytest.approx(0.0, abs=0.5) and 0.0 <= one["fused"] <= 1.0
    with pytest.raises(MGMTFusionError, match="no modality present"):
        predict_mgmt_fusion(ensemble, card, image, np.zeros(4, np.float32), labels)


def test_temperature_from_the_card_is_applied(ensemble):
    image, labels = _case()
    plain = predict_mgmt_fusion(ensemble, {}, image, ALL, labels, mc_samples=0)
    scaled = predict_mgmt_fusion(ensemble, {"fusion": {"temperatures": {"t1ce": 2.0}}}, image, ALL, labels,
                                 mc_samples=0)
    logit = np.log(plain["per_modality"]["t1ce"] / (1 - plain["per_modality"]["t1ce"]))
    assert scaled["per_modality"]["t1ce"] == pytest.approx(float(sigmoid(logit / 2.0)), abs=1e-6)
    assert scaled["per_modality"]["t1"] == pytest.approx(plain["per_modality"]["t1"])


def test_slice_selection_spans_the_tumor_and_is_centred():
    image, labels = _case(tumor=((4, 20), (10, 21), (30, 41)))
    sel = select_slices(image, labels, TINY)
    assert sel.source == "tumor" and sel.crops.shape == (4, TINY.max_slices, 32, 32)
    assert sel.z[0] == 4 and sel.z[-1] == 19 and np.all(np.diff(sel.z) > 0)
    assert sel.centre == (15, 35)  # centre of mass of the tumor box y 10..20, x 30..40
    # the 32x32 crop covers y -1..30, x 19..50: it leaves the 48x48 volume at the top and right, zero-padded there
    for k, z in enumerate(sel.z):
        np.testing.assert_array_equal(sel.crops[:, k, 1:, :29], image[:, z, 0:31, 19:48])
    assert np.all(sel.crops[:, :, 0, :] == 0) and np.all(sel.crops[:, :, :, 29:] == 0)
    assert len(select_slices(image, labels, TINY, max_slices=None).z) == 16  # all slices of the span


def test_one_slice_tumor(ensemble):
    image, labels = _case(tumor=((10, 11), (14, 30), (20, 36)))
    result = predict_mgmt_fusion(ensemble, {}, image, ALL, labels, mc_samples=2)
    assert result["n_slices"] == 1 and result["slices_from"] == "tumor" and 0 < result["fused"] < 1


def test_no_tumor_falls_back_to_the_central_brain_slices(ensemble):
    image, labels = _case(tumor=None)
    sel = select_slices(image, labels, TINY)
    assert sel.source == "brain_centre" and len(sel.z) == TINY.max_slices
    assert abs(sel.z.mean() - 11.5) <= 1.0  # brain occupies z 2..21
    result = predict_mgmt_fusion(ensemble, {}, image, ALL, labels, mc_samples=0)
    assert result["slices_from"] == "brain_centre" and result["n_slices"] == TINY.max_slices
    with pytest.raises(MGMTFusionError, match="do not match"):
        select_slices(image, labels[:-1], TINY)


def test_deterministic_for_a_seed_and_leaves_the_global_rng_alone(ensemble):
    image, labels = _case()
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = predict_mgmt_fusion(ensemble, {}, image, ALL, labels, mc_samples=5, seed=3)
    assert torch.equal(torch.rand(1), expected_next)
    b = predict_mgmt_fusion(ensemble, {}, image, ALL, labels, mc_samples=5, seed=3)
    c = predict_mgmt_fusion(ensemble, {}, image, ALL, labels, mc_samples=5, seed=4)
    assert a == b and a["uncertainty"] > 0 and c["uncertainty"] != a["uncertainty"]
    assert c["fused"] == a["fused"]  # the reported probability is the dropout-free pass
    assert not ensemble.training


def test_model_store_round_trip_with_sha256(ensemble, tmp_path):
    image, labels = _case()
    card = {"version": "test", "fusion": {"weights": {"t1": 1, "t1ce": 3, "t2": 1, "flair": 2},
                                          "temperatures": {"flair": 1.5}}}
    save_model(ensemble, card, tmp_path, "mgmt_fusion")
    loaded, stored = load_mgmt_fusion(tmp_path)
    assert stored["network"] == TINY.to_dict() and len(stored["sha256"]) == 64 and not loaded.training
    before = predict_mgmt_fusion(ensemble, card, image, ALL, labels, mc_samples=0)
    after = predict_mgmt_fusion(loaded, stored, image, ALL, labels, mc_samples=0)
    assert after["fused"] == pytest.approx(before["fused"], abs=2e-3)  # float16 on disk
    assert after["weights"] == pytest.approx(before["weights"])
    weights, _ = model_paths("mgmt_fusion", tmp_path)
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="does not match the model card of 'mgmt_fusion'"):
        load_mgmt_fusion(tmp_path)



# ---------------------------------------------------------------------------------------------------------------
# Parts (models/onnx_engine.py): what runs without torch


@pytest.fixture(scope="module")
def onnx_parts(ensemble):
    pytest.importorskip("onnxruntime")
    from GliomaAnalysisLib.models.onnx_engine import OnnxPart, export_part

    return {name: OnnxPart(export_part(spec), 1) for name, spec in mgmt_parts_of(ensemble).items()}


def test_part_names_come_from_the_card():
    assert MGMT_PARTS == ("features_t1", "head_t1", "features_t1ce", "head_t1ce", "features_t2", "head_t2",
                          "features_flair", "head_flair")
    card = {"network": MGMTFusionConfig(modalities=("t1", "flair"), crop_size=32, width_coefficient=0.25,
                                        depth_coefficient=0.25, feature_dim=8, lstm_hidden=8).to_dict()}
    assert mgmt_parts(card) == ("features_t1", "head_t1", "features_flair", "head_flair")
    assert tuple(mgmt_parts_of(build_from_card(card))) == mgmt_parts(card)


def test_dropout_masks_are_inverted_dropout():
    mask_in, mask_out = dropout_masks(TINY, 400, 5, np.random.default_rng(0))
    assert mask_in.shape == (400, 5, TINY.feature_dim) and mask_out.shape == (400, TINY.lstm_hidden)
    for mask in (mask_in, mask_out):
        assert mask.dtype == np.float32 and set(np.unique(mask)) == {0.0, np.float32(1 / 0.8)}
        assert np.mean(mask == 0) == pytest.approx(TINY.dropout, abs=0.02)
    ones = dropout_masks(TINY, 1, 5, None)
    assert [m.shape for m in ones] == [(1, 5, TINY.feature_dim), (1, TINY.lstm_hidden)]
    assert all(np.all(m == 1) for m in ones)


def test_masks_replace_the_dropout_layers(ensemble):
    """All-ones masks give the eval-mode head, a mask gives torch's dropout of the same units."""
    model = ensemble.models["t1ce"]
    torch.manual_seed(2)
    features = torch.randn(3, 4, TINY.feature_dim)
    mask_in, mask_out = (torch.from_numpy(m) for m in dropout_masks(TINY, 3, 4, np.random.default_rng(1)))
    with torch.no_grad():
        plain = model.head(features)
        np.testing.assert_allclose(model.head(features, masks=(torch.ones(3, 4, 8), torch.ones(3, 8))), plain,
                                   atol=1e-6)
        _, (hidden, _) = model.lstm(features * mask_in)
        expected = model.classifier(hidden[-1] * mask_out).squeeze(-1)
        np.testing.assert_allclose(model.head(features, masks=(mask_in, mask_out)), expected, atol=1e-6)
    assert not torch.allclose(expected, plain, atol=1e-3)


def test_onnx_parts_equal_the_torch_parts(ensemble, onnx_parts):
    from GliomaAnalysisLib.models.onnx_engine import torch_parts

    reference = torch_parts(mgmt_parts_of(ensemble))
    assert set(onnx_parts) == set(reference) == set(MGMT_PARTS)
    rng = np.random.default_rng(0)
    for m in ("t1", "flair"):
        for s in (1, 5):  # neither is the exported sequence length
            slices = rng.standard_normal((1, s, 32, 32)).astype(np.float32)
            features = onnx_parts[f"features_{m}"](slices=slices)[0]
            assert features.shape == (1, s, TINY.feature_dim)
            np.testing.assert_allclose(features, reference[f"features_{m}"](slices=slices)[0], atol=1e-4)
            for samples, draw in ((1, None), (6, rng)):  # the deterministic pass, then a masked MC pass
                mask_in, mask_out = dropout_masks(TINY, samples, s, draw)
                feed = {"features": np.repeat(features, samples, axis=0), "mask_in": mask_in, "mask_out": mask_out}
                logits = onnx_parts[f"head_{m}"](**feed)[0]
                assert logits.shape == (samples,)
                np.testing.assert_allclose(logits, reference[f"head_{m}"](**feed)[0], atol=1e-4)
            assert np.ptp(logits) > 1e-4  # the masks differ per row


def test_prediction_through_onnx_parts_equals_the_torch_model(ensemble, onnx_parts):
    image, labels = _case()
    card = {"network": TINY.to_dict(), "fusion": {"weights": {"t1": 1, "t1ce": 3, "t2": 1, "flair": 2},
                                                  "temperatures": {"t2": 1.5}}}
    for presence in (ALL, np.array([0, 1, 0, 1], np.float32)):
        through_torch = predict_mgmt_fusion(ensemble, card, image, presence, labels, mc_samples=8, seed=5)
        through_onnx = predict_mgmt_fusion(onnx_parts, card, image, presence, labels, mc_samples=8, seed=5)
        assert {k: v for k, v in through_onnx.items() if k not in ("per_modality", "fused", "uncertainty")} == \
            {k: v for k, v in through_torch.items() if k not in ("per_modality", "fused", "uncertainty")}
        for m in MODALITIES:
            if presence[MODALITIES.index(m)]:
                assert through_onnx["per_modality"][m] == pytest.approx(through_torch["per_modality"][m], abs=1e-5)
            else:
                assert through_onnx["per_modality"][m] is None is through_torch["per_modality"][m]
        assert through_onnx["fused"] == pytest.approx(through_torch["fused"], abs=1e-5)
        assert through_onnx["uncertainty"] == pytest.approx(through_torch["uncertainty"], abs=1e-4)
        assert through_onnx["uncertainty"] > 1e-4
        again = predict_mgmt_fusion(onnx_parts, card, image, presence, labels, mc_samples=8, seed=5)
        assert again == through_onnx  # bit-identical reruns


def test_stored_model_runs_from_cached_graphs(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    from GliomaAnalysisLib.models.onnx_engine import OnnxPart, load_parts

    monkeypatch.setenv("GLIOMA_ANALYSIS_CACHE", str(tmp_path / "cache"))
    config = MGMTFusionConfig.from_dict(dict(TINY.to_dict(), modalities=["t1", "flair"]))
    torch.manual_seed(3)
    save_model(build_from_card({"network": config.to_dict()}), {"version": "test"}, tmp_path / "models",
               "mgmt_fusion")
    loaded, card = load_mgmt_fusion(tmp_path / "models")
    image, labels = _case()
    expected = predict_mgmt_fusion(loaded, card, image, ALL, labels, mc_samples=4)
    load_parts.cache_clear()
    for _ in range(2):  # exported, then read back from the cache
        parts, _, warnings = load_parts("mgmt_fusion", str(tmp_path / "models"), mgmt_parts(card), mgmt_parts_of,
                                        build_from_card)
        load_parts.cache_clear()
        assert warnings == () and all(isinstance(part, OnnxPart) for part in parts.values())
        result = predict_mgmt_fusion(parts, card, image, ALL, labels, mc_samples=4)
        assert result["per_modality"]["t1ce"] is None and result["weights"]["t1ce"] == 0.0
        assert result["fused"] == pytest.approx(expected["fused"], abs=1e-5)
        assert result["uncertainty"] == pytest.approx(expected["uncertainty"], abs=1e-4)
    assert len(list((tmp_path / "cache" / "onnx").glob("mgmt_fusion-*.onnx"))) == 4


def test_the_prediction_module_imports_without_torch():
    import subprocess
    import sys

    code = "import sys, GliomaAnalysisLib.models.mgmt_fusion; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"

# ---------------------------------------------------------------------------------------------------------------
# Training. MGMT on the phantoms is a weak signal: the shipped run (about 20 min on the CPU, full-size models) reaches
# a test AUC of only 0.64 (0.37 with slices from glioma_seg 0.2.0's segmentation), and a one-minute run of a tiny model
# learns nothing measurable from it. So the short run here learns a deliberately easy signal instead: methylated
# cases have a brighter tumor on FLAIR only, T1 is noise. The FLAIR model must find it and the fusion weights must
# favour FLAIR (measured over data/initialisation seeds 0-4: FLAIR and fused test AUC 1.0, FLAIR weight 0.89-0.90,
# about 20 s each).


def _easy_split(n_train=40, n_val=16, n_test=16, seed=0, signal=2.0):
    from training.common.classification_data import ClassificationSample, ClassificationSplit

    rng = np.random.default_rng(seed)
    parts = []
    for n, offset in ((n_train, 0), (n_val, 1000), (n_test, 2000)):
        part = []
        for i in range(n):
            target = i % 2
            z0, y0, x0 = (int(v) for v in rng.integers([4, 10, 10], [8, 20, 20]))
            image, labels = _case(shape=(20, 44, 44), tumor=((z0, z0 + 8), (y0, y0 + 12), (x0, x0 + 12)),
                                  seed=offset + i)
            image[3][labels > 0] += signal if target else 0.0
            part.append(ClassificationSample(f"easy_{offset + i}", "phantom", image, labels,
                                             {"grade": None, "idh": None, "codeletion_1p19q": None, "mgmt": target}))
        parts.append(part)
    return ClassificationSplit(*parts)


def test_training_batch_shapes_and_area_targets():
    from training.mgmt.train_mgmt import prepare, training_batch

    cases = prepare(_easy_split(4, 0, 0).train, TINY, jitter=0)
    assert cases[0].crops.shape[:2] == (4, 8) and cases[0].eval_crops.shape == (4, TINY.max_slices, 32, 32)
    slices, lengths, targets, areas = training_batch(cases, 3, TINY, 0, np.random.default_rng(0))
    assert slices.shape == (4, int(lengths.max()), 32, 32) and areas.shape == (4, int(lengths.max()), 3)
    assert torch.all((lengths >= TINY.max_slices // 2) & (lengths <= TINY.max_slices))
    assert targets.tolist() == [0.0, 1.0, 0.0, 1.0]
    for i, n in enumerate(lengths.tolist()):
        assert torch.all(slices[i, n:] == 0) and torch.all(areas[i, n:] == 0)
        # every slice of the span holds the 12x12 tumor box: ED ring of 12*12 - 8*8 pixels and ET core of 8*8
        # (first and last slices are all ED), in a 32x32 crop; targets are square roots of the area fractions
        ed = areas[i, :n, 1] ** 2 * 32 * 32
        et = areas[i, :n, 2] ** 2 * 32 * 32
        assert torch.allclose(ed + et, torch.full((n,), 144.0), atol=1e-3) and torch.all(areas[i, :n, 0] == 0)


def test_short_training_learns_an_easy_signal_and_exports(tmp_path):
    from training.mgmt.refresh_predicted_segmentation import refresh

    from GliomaAnalysisLib.models.evidence import task_evidence
    from GliomaAnalysisLib.models.model_store import RESOURCES, ModelError
    from training.mgmt.train_mgmt import parse_args, run

    config = json.dumps({k: v for k, v in TINY.to_dict().items() if k != "modalities"})
    argv = ["--out", str(tmp_path / "run"), "--epochs", "16", "--patience", "4", "--batch", "4", "--lr", "1e-3",
            "--aux-weight", "0", "--jitter", "2", "--config", config, "--modalities", "t1,flair", "--command", "pytest"]
    card = run(parse_args(argv), split=_easy_split())
    test = card["metrics"]["test_phantoms"]
    assert test["flair"]["auc"] >= 0.95 and test["fused"]["auc"] >= 0.95
    assert card["fusion"]["weights"]["flair"] > 0.7 > card["fusion"]["weights"]["t1"]
    assert sum(card["fusion"]["weights"].values()) == pytest.approx(1.0)
    predicted = card["metrics"]["test_phantoms_predicted_segmentation"]  # slices from the shipped seg network
    assert predicted["fused"]["n"] == 16 and 0.0 <= predicted["fused"]["brier"] <= 1.0
    for name in ("mgmt_calibration.png", "mgmt_decision_curve.png", "log.jsonl", "metrics.json"):
        assert (tmp_path / "run" / name).stat().st_size > 0
    lines = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert any(line.get("modality") == "flair" for line in lines) and lines[-1]["final"]
    export = tmp_path / "run" / "export"
    assert "simulated" in (export / "mgmt_fusion.md").read_text()
    assert task_evidence(card, "mgmt")["evidence"] == "not assessable"  # the exporter's block, as the library reads it
    assert "## Evidence on real cases (read this first)" in (export / "mgmt_fusion.md").read_text()
    ensemble, stored = load_mgmt_fusion(export)
    sample = _easy_split(0, 0, 2, seed=5).test[1]  # a methylated case never seen in training
    result = predict_mgmt_fusion(ensemble, stored, sample.image, ALL, sample.labels)
    assert result["per_modality"]["t2"] is None and {k for k, w in result["weights"].items() if w} == {"t1", "flair"}
    assert result["per_modality"]["flair"] > 0.5
    # resume: every modality is done, so only the evaluation runs again and gives the same card
    again = run(parse_args(argv + ["--resume", "--no-predicted-seg-eval"]), split=_easy_split())
    assert again["fusion"]["weights"] == pytest.approx(card["fusion"]["weights"])
    assert again["sha256"] == card["sha256"]
    # the stale-slices refresh: same model (float16 on disk), same segmentation network, same cases -> the same rows,
    # weights untouched
    assert again["metrics"].get("test_phantoms_predicted_segmentation") is None
    refreshed = refresh(export, cache=None, test=_easy_split().test)
    seg_card = json.loads((RESOURCES / "glioma_seg.json").read_text())
    assert refreshed["metrics"]["predicted_segmentation_model"] == f"glioma_seg {seg_card['version']}"
    for model in ("t1", "flair", "fused"):
        for key in ("auc", "brier", "n"):
            assert refreshed["metrics"]["test_phantoms_predicted_segmentation"][model][key] == pytest.approx(
                predicted[model][key], abs=1e-4)
    assert refreshed["sha256"] == card["sha256"] and load_mgmt_fusion(export)[1]["sha256"] == card["sha256"]
    text = (export / "mgmt_fusion.md").read_text()
    assert f"slices chosen by the shipped segmentation network (glioma_seg {seg_card['version']})" in text
    with pytest.raises(ModelError, match="carries an MGMT label"):
        refresh(export, cache=None, test=[])
