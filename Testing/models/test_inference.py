import numpy as np
import pytest
import torch

import GliomaAnalysisLib.models.inference as inference
from GliomaAnalysisLib.models.inference import predict, select_device
from GliomaAnalysisLib.models.network import GliomaSegNet, NetworkConfig


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return GliomaSegNet(NetworkConfig(widths=(4, 8, 16), encoder_blocks=(1, 1, 1), transformer_layers=1,
                                      transformer_heads=2, dropout=0.2))


def _image():
    rng = np.random.default_rng(0)
    return rng.normal(size=(4, 24, 32, 16)).astype(np.float32), np.ones(4, dtype=np.float32)


def test_probabilities_sum_to_one_and_uncertainty_is_bounded(net):
    image, presence = _image()
    probs, uncertainty, warnings = predict(net, image, presence, torch.device("cpu"), passes=4, mc_dropout=True)
    assert probs.shape == (4, 24, 32, 16) and uncertainty.shape == (24, 32, 16)
    assert np.allclose(probs.sum(axis=0), 1, atol=1e-5)
    assert uncertainty.min() >= 0 and uncertainty.max() <= 1 and warnings == []


def test_mc_dropout_passes_raise_the_uncertainty_of_a_single_pass(net):
    image, presence = _image()
    _, single, _ = predict(net, image, presence, torch.device("cpu"), passes=1)
    _, many, _ = predict(net, image, presence, torch.device("cpu"), passes=8, mc_dropout=True)
    assert many.mean() > single.mean()
    assert not any(m.training for m in net.modules())  # left in eval mode


def test_the_torch_path_hands_over_the_first_pass_encoder_maps(net):
    """What the multi-task heads read when torch segments (CUDA): the unflipped first pass's encoder maps, equal to
    the encoder's own maps although the pass samples MC-dropout."""
    image, presence = _image()
    maps = []
    predict(net, image, presence, torch.device("cpu"), passes=2, mc_dropout=True, encoder_maps=maps)
    with torch.no_grad():
        expected = net.encoder_levels(torch.from_numpy(image[None]), torch.from_numpy(presence[None]))
    assert len(maps) == 1 and [m.shape for m in maps[0]] == [(1, 4, 24, 32, 16), (1, 8, 12, 16, 8), (1, 16, 6, 8, 4)]
    for got, want in zip(maps[0], expected[-3:]):
        np.testing.assert_allclose(got, want.numpy(), atol=1e-6)


def test_large_volumes_go_through_the_sliding_window(net, monkeypatch):
    image, presence = _image()
    shapes = []
    real = inference._forward

    def spy(model, x, *args, **kwargs):
        shapes.append(tuple(x.shape[2:]))
        return real(model, x, *args, **kwargs)

    monkeypatch.setattr(inference, "_forward", spy)
    monkeypatch.setattr(inference, "MAX_WHOLE_VOLUME_VOXELS", 1000)
    monkeypatch.setattr(inference, "SLIDING_WINDOW_ROI", (16, 16, 16))
    maps = []
    probs, _, _ = predict(net, image, presence, torch.device("cpu"), encoder_maps=maps)
    assert len(shapes) == 6 and set(shapes) == {(16, 16, 16)}  # 24x32x16: 2 x 3 x 1 windows
    assert np.allclose(probs.sum(axis=0), 1, atol=1e-5)
    assert maps == []  # no whole-volume pass: the multi-task heads compute their maps themselves


def test_a_cuda_failure_falls_back_to_the_cpu_with_a_warning(net, monkeypatch):
    image, presence = _image()
    real = inference._run_on

    def flaky(model, x, presence, rng, device, encoder_maps=None):
        if device.type == "cuda":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(model, x, presence, rng, device, encoder_maps)

    monkeypatch.setattr(inference, "_run_on", flaky)
    probs, _, warnings = predict(net, image, presence, torch.device("cuda"), passes=2)
    assert len(warnings) == 1 and "out of memory" in warnings[0] and "CPU" in warnings[0]
    reference, _, _ = predict(net, image, presence, torch.device("cpu"), passes=2)
    assert np.allclose(probs, reference)


def test_device_choice():
    assert select_device("cpu") == (torch.device("cpu"), [])
    device, warnings = select_device("cuda")
    if not torch.cuda.is_available():
        assert device.type == "cpu" and "not available" in warnings[0]
    with pytest.raises(ValueError):
        select_device("tpu")


def test_the_sliding_window_of_a_large_grid_needs_no_monai():
    """MONAI is a test dependency only: a grid above the whole-volume limit runs by the library's own window."""
    import subprocess
    import sys

    code = ("import sys, numpy as np, torch\n"
            "from GliomaAnalysisLib.models import inference\n"
            "from GliomaAnalysisLib.models.network import GliomaSegNet, NetworkConfig\n"
            "inference.MAX_WHOLE_VOLUME_VOXELS, inference.SLIDING_WINDOW_ROI = 1000, (16, 16, 16)\n"
            "net = GliomaSegNet(NetworkConfig(widths=(4, 8), encoder_blocks=(1, 1), transformer_layers=1, "
            "transformer_heads=2))\n"
            "p = inference.predict(net, np.zeros((4, 24, 24, 24), np.float32), np.ones(4, np.float32), "
            "torch.device('cpu'))[0]\n"
            "print(p.shape, sorted(m for m in sys.modules if m.split('.')[0] == 'monai'))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "(4, 24, 24, 24) []"
