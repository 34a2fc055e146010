"""The NumPy sliding window (models/sliding_window.py) against MONAI's sliding_window_inference, the one the
coarse-to-fine screen measured: the same windows, weights, padding and order of dropout draws."""
import numpy as np
import pytest
import torch
from monai.inferers import sliding_window_inference

from GliomaAnalysisLib.models.sliding_window import gaussian_weights, window_shape, window_starts, windowed


def _window_function(x: np.ndarray, rng) -> np.ndarray:
    """A stand-in network (1, 4, z, y, x) -> (1, 4, z, y, x) that depends on where the window lies (its mean) and
    on a draw from ``rng`` (like a dropout mask), so a misplaced window or a draw out of order changes the result."""
    shift = float(x.mean()) + (float(rng.random()) if rng is not None else 0.0)
    logits = x * np.arange(1, 5, dtype=np.float32)[None, :, None, None, None] + shift
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("shape, roi", [((70, 90, 64), 32), ((64, 64, 64), 32), ((40, 100, 75), 32),
                                        ((20, 50, 33), 32),  # padded
                                        ((40, 100, 75), (40, 32, 24)), ((20, 50, 33), (24, 32, 40))])  # not cubes
def test_matches_monai(shape, roi):
    x = np.random.default_rng(1).normal(size=(1, 4) + shape).astype(np.float32)
    x[:, :, : shape[0] // 2] += 1.5  # windows differ in their mean
    ours = windowed(lambda window, presence, rng, last: _window_function(window, rng), roi)(
        x, np.ones((1, 4), np.float32), np.random.default_rng(7), True)
    theirs_rng = np.random.default_rng(7)

    def predictor(patch: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(_window_function(patch.numpy(), theirs_rng))

    theirs = sliding_window_inference(torch.from_numpy(x), (roi,) * 3 if isinstance(roi, int) else roi, 1,
                                      predictor, overlap=0.25,
                                      mode="gaussian").numpy()
    assert ours.shape == x.shape
    np.testing.assert_allclose(ours, theirs, atol=2e-6)
    np.testing.assert_allclose(ours.sum(axis=1), 1.0, atol=1e-5)


def test_window_starts_cover_the_axis_and_end_at_its_edge():
    assert window_starts(64, 64) == [0]
    assert window_starts(50, 64) == [0]
    assert window_starts(65, 64) == [0, 1]
    assert window_starts(130, 64) == [0, 48, 66]
    for size in range(64, 300, 7):
        starts = window_starts(size, 64)
        assert starts[-1] + 64 == size and all(b - a <= 48 for a, b in zip(starts, starts[1:]))


def test_an_axis_a_little_longer_than_the_crop_runs_in_one_window():
    assert window_shape((64, 65, 80), crop=64, longest=80, divisor=8) == (64, 72, 80)
    assert window_shape((50, 81, 200), crop=64, longest=80, divisor=8) == (64, 64, 64)  # padded; two or more crops
    assert window_shape((70, 70, 70), crop=64, longest=64, divisor=8) == (64, 64, 64)  # longest = crop: crops only


def test_gaussian_weights_peak_in_the_centre():
    w = gaussian_weights(16)
    assert w.shape == (16, 16, 16) and w.dtype == np.float32
    assert w[7, 7, 7] == w.max() and w[0, 0, 0] == w.min() >= 1e-3
    np.testing.assert_allclose(w, w[::-1, ::-1, ::-1])


def test_the_stored_model_by_windows_matches_torch_and_monai(tiny_model_dir, monkeypatch):
    """segment(window=...) on the CPU engine (the cached graph) on an input that is no multiple of the network's
    divisor: a plain pass equal to the torch network through MONAI's sliding window, what the coarse-to-fine
    screen measured first; flip and MC-dropout passes equal to the torch path of segment (CUDA's) by the same
    windows and draws."""
    from GliomaAnalysisLib.models import inference
    from GliomaAnalysisLib.models.model_store import load_model_cached, load_verified_card
    from GliomaAnalysisLib.models.network_config import NetworkConfig
    from GliomaAnalysisLib.models.segment import segment

    monkeypatch.setenv("GLIOMA_ANALYSIS_PRECISION", "f32")
    image = np.random.default_rng(3).normal(size=(4, 37, 45, 33)).astype(np.float32)
    presence = np.ones(4, np.float32)
    config = NetworkConfig.from_dict(load_verified_card("glioma_seg", tiny_model_dir)["network"])
    net, _ = load_model_cached("glioma_seg", str(tiny_model_dir))
    net.eval()
    plain = segment("glioma_seg", str(tiny_model_dir), config, image, presence, window=24)
    with torch.inference_mode():
        monai_probs = sliding_window_inference(
            torch.from_numpy(image[None]), (24, 24, 24), 1,
            lambda patch: torch.softmax(net(patch, torch.from_numpy(presence[None])), dim=1),
            overlap=0.25, mode="gaussian")[0].numpy()
    assert plain.probabilities.shape == (4, 37, 45, 33) and plain.encoder_maps is None
    assert plain.precision == "f32"
    np.testing.assert_allclose(plain.probabilities, monai_probs, atol=1e-4)

    sampled = segment("glioma_seg", str(tiny_model_dir), config, image, presence, passes=2, mc_dropout=True,
                      window=24)
    torch_probs, torch_uncertainty, _ = inference.predict(net, image, presence, torch.device("cpu"), passes=2,
                                                          mc_dropout=True, window=24)
    np.testing.assert_allclose(sampled.probabilities, torch_probs, atol=1e-4)
    np.testing.assert_allclose(sampled.uncertainty, torch_uncertainty, atol=1e-4)
    assert np.abs(sampled.probabilities - plain.probabilities).max() > 1e-3  # the flips and draws did act


def test_a_window_the_network_cannot_run_is_refused_and_numpy_integers_are_windows(tiny_model_dir):
    from GliomaAnalysisLib.models.model_store import load_verified_card
    from GliomaAnalysisLib.models.network_config import NetworkConfig
    from GliomaAnalysisLib.models.segment import segment

    config = NetworkConfig.from_dict(load_verified_card("glioma_seg", tiny_model_dir)["network"])
    image = np.zeros((4, 30, 30, 30), np.float32)
    with pytest.raises(ValueError, match=f"multiples of {config.divisor}"):
        segment("glioma_seg", str(tiny_model_dir), config, image, np.ones(4, np.float32), window=(24, 20, 24))
    assert gaussian_weights(np.int64(8)).shape == (8, 8, 8)


def test_a_grid_above_the_whole_volume_limit_runs_on_the_cpu_engine_by_windows(tiny_model_dir, monkeypatch):
    from GliomaAnalysisLib.models import segment as segment_module
    from GliomaAnalysisLib.models.model_store import load_verified_card
    from GliomaAnalysisLib.models.network_config import NetworkConfig

    config = NetworkConfig.from_dict(load_verified_card("glioma_seg", tiny_model_dir)["network"])
    image = np.random.default_rng(4).normal(size=(4, 40, 32, 24)).astype(np.float32)
    presence = np.ones(4, np.float32)
    by_windows = segment_module.segment("glioma_seg", str(tiny_model_dir), config, image, presence, window=24)
    monkeypatch.setattr(segment_module, "MAX_WHOLE_VOLUME_VOXELS", 1000)
    monkeypatch.setattr(segment_module, "LARGE_GRID_WINDOW", (24, 24, 24))
    large = segment_module.segment("glioma_seg", str(tiny_model_dir), config, image, presence)
    assert large.engine == by_windows.engine and not large.engine.startswith("torch")
    np.testing.assert_array_equal(large.probabilities, by_windows.probabilities)
    assert large.encoder_maps is None
