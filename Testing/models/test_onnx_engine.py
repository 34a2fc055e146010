"""The segmentation network on ONNX Runtime gives torch's probabilities, MC-dropout included, and is cached."""
import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")

import GliomaAnalysisLib.models.onnx_engine as onnx_engine
from GliomaAnalysisLib.models.inference import dropout_masks, predict
from GliomaAnalysisLib.models.network import GliomaSegNet, NetworkConfig


@pytest.fixture()
def net():
    torch.manual_seed(0)
    return GliomaSegNet(NetworkConfig(widths=(4, 8, 16), encoder_blocks=(1, 1, 1), transformer_layers=1,
                                      transformer_heads=2, dropout=0.3)).eval()


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GLIOMA_ANALYSIS_CACHE", str(tmp_path))
    onnx_engine.segmentation_engine.cache_clear()
    yield tmp_path / "onnx"
    onnx_engine.segmentation_engine.cache_clear()


def _image(shape=(4, 24, 32, 16)):
    rng = np.random.default_rng(3)
    return rng.normal(size=shape).astype(np.float32)


def test_onnx_equals_torch_with_and_without_dropout_masks_at_a_size_not_exported(net):
    engine, why = onnx_engine.segmentation_engine(net, "a" * 64, 1)
    assert engine is not None, why
    x = _image()[None]
    presence = np.array([[1, 0, 1, 1]], np.float32)
    for rng in (None, np.random.default_rng(5)):
        masks = dropout_masks(net, x.shape[2:], rng)
        with torch.no_grad():
            expected = torch.softmax(net(torch.from_numpy(x), torch.from_numpy(presence),
                                         [torch.from_numpy(m) for m in masks]), dim=1).numpy()
        got = engine(x, presence, masks)
        assert got.shape == (1, 4, 24, 32, 16)
        np.testing.assert_allclose(got, expected, atol=2e-4)
    tokens = (24 // 4) * (32 // 4) * (16 // 4)
    assert len(masks) == 1 + 4 + 2 and masks[1].shape == (1, 2, tokens, tokens)  # 1 layer, 2 heads
    for mask in masks:
        assert np.any(mask == 0) and np.allclose(mask[mask > 0], 1 / 0.7)


def test_predict_through_onnx_matches_torch_mc_dropout_and_is_reproducible(net):
    image, presence = _image(), np.ones(4, np.float32)
    torch_probs, torch_unc, _ = predict(net, image, presence, torch.device("cpu"), passes=4, mc_dropout=True)
    onnx_probs, onnx_unc, warnings = predict(net, image, presence, torch.device("cpu"), passes=4, mc_dropout=True,
                                             weights_sha256="b" * 64)
    assert warnings == []
    np.testing.assert_allclose(onnx_probs, torch_probs, atol=2e-4)
    np.testing.assert_allclose(onnx_unc, torch_unc, atol=2e-3)
    again, _, _ = predict(net, image, presence, torch.device("cpu"), passes=4, mc_dropout=True,
                          weights_sha256="b" * 64)
    assert np.array_equal(again, onnx_probs)  # bit-identical rerun
    plain, _, _ = predict(net, image, presence, torch.device("cpu"), passes=4, weights_sha256="b" * 64)
    assert np.abs(plain - onnx_probs).max() > 1e-3  # the masks did drop channels


def test_the_graph_is_exported_once_per_weights_and_reused_from_the_cache(net, cache, monkeypatch):
    engine, _ = onnx_engine.segmentation_engine(net, "c" * 64, 1)
    files = list(cache.glob("glioma_seg-cccc*.onnx"))
    assert engine is not None and len(files) == 1 and files[0].stat().st_size > 10_000
    onnx_engine.segmentation_engine.cache_clear()

    def no_export(model):
        raise AssertionError("exported again")

    monkeypatch.setattr(onnx_engine, "export_onnx", no_export)
    engine, why = onnx_engine.segmentation_engine(net, "c" * 64, 1)
    assert engine is not None, why


def test_without_onnxruntime_torch_runs_with_a_warning(net, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_onnxruntime(name, *args, **kwargs):
        if name == "onnxruntime":
            raise ImportError("no onnxruntime")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnxruntime)
    image, presence = _image(), np.ones(4, np.float32)
    probs, _, warnings = predict(net, image, presence, torch.device("cpu"), weights_sha256="d" * 64)
    reference, _, _ = predict(net, image, presence, torch.device("cpu"))
    assert np.array_equal(probs, reference)
    assert len(warnings) == 1 and "onnxruntime package is not installed" in warnings[0]


def test_masked_passes_sample_every_dropout_layer_as_torch_training_mode_does(net):
    """MC-dropout with masks drawn outside the network spreads the output as much as torch's own dropout does."""
    x, presence = torch.from_numpy(_image()[None]), torch.ones(1, 4)
    rng = np.random.default_rng(0)
    with torch.no_grad():
        masked = torch.stack([net(x, presence, [torch.from_numpy(m) for m in dropout_masks(net, x.shape[2:], rng)])
                              for _ in range(12)])
        net.enable_mc_dropout()
        torch.manual_seed(0)
        native = torch.stack([net(x, presence) for _ in range(12)])
        net.eval()
    ratio = float(masked.std(0).mean() / native.std(0).mean())
    assert 0.8 < ratio < 1.25, ratio
    assert abs(float(masked.mean() - native.mean())) < 0.05 * float(native.abs().mean())
