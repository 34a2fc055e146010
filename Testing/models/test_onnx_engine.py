"""Stored networks on ONNX Runtime give torch's results, MC-dropout included, and their graphs are cached."""
import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")

import GliomaAnalysisLib.models.onnx_engine as onnx_engine
from GliomaAnalysisLib.models.inference import predict
from GliomaAnalysisLib.models.model_store import save_model
from GliomaAnalysisLib.models.network import GliomaSegNet, NetworkConfig, segmentation_parts
from GliomaAnalysisLib.models.segment import (SEGMENTATION_PARTS, dropout_masks, load_segmentation_networks,
                                              mean_over_passes, part_pass, part_passes, segmentation_parts_of)


@pytest.fixture(params=["average", "concat", "t1ce_difference"])
def net(request):
    torch.manual_seed(0)
    difference = request.param == "t1ce_difference"
    net = GliomaSegNet(NetworkConfig(widths=(4, 8, 16), encoder_blocks=(1, 1, 1), transformer_layers=1,
                                     transformer_heads=2, dropout=0.3, fusion="average" if difference else request.param,
                                     t1ce_difference=difference)).eval()
    if request.param == "concat":
        with torch.no_grad():  # trained presence modulation is non-zero (zero-initialised it would not be exported)
            net.stem.presence_film.weight.normal_()
    return net


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GLIOMA_ANALYSIS_CACHE", str(tmp_path / "cache"))
    onnx_engine.load_parts.cache_clear()
    yield tmp_path / "cache" / "onnx"
    onnx_engine.load_parts.cache_clear()


def _image(shape=(4, 24, 32, 16)):
    rng = np.random.default_rng(3)
    return rng.normal(size=shape).astype(np.float32)


def _onnx_network(net):
    return onnx_engine.OnnxPart(onnx_engine.export_part(segmentation_parts(net)["network"]), 1)


def test_exporting_leaves_every_module_in_the_mode_it_was_in(net):
    """The exported part wraps the network in a module of its own (created in training mode): the network a
    process holds must stay in eval mode after it is exported (else its dropout acts in every later torch pass)."""
    net.transformer.train()  # one submodule in training mode: kept so
    onnx_engine.export_part(segmentation_parts(net)["network"])
    assert not net.training and not net.stem.training and net.transformer.training
    net.eval()
    onnx_engine.export_part(segmentation_parts(net)["network"])
    assert not any(m.training for m in net.modules())


@pytest.mark.parametrize("present", [(1, 0, 1, 1), (0, 1, 1, 1), (1, 1, 1, 1)])
def test_onnx_equals_torch_with_and_without_dropout_masks_at_a_size_not_exported(net, present):
    network = _onnx_network(net)
    x = _image()[None]
    presence = np.array([present], np.float32)
    for rng in (None, np.random.default_rng(5)):
        masks = dropout_masks(net.config, x.shape[2:], rng)
        with torch.no_grad():
            expected = net(torch.from_numpy(x), torch.from_numpy(presence), [torch.from_numpy(m) for m in masks])
        got = network(x=x, presence=presence, **{f"mask{k}": m for k, m in enumerate(masks)})[0]
        kept = network(keep_memory=True, x=x, presence=presence, **{f"mask{k}": m for k, m in enumerate(masks)})[0]
        assert np.array_equal(kept, got)  # keeping the working memory for the next pass changes nothing
        assert got.shape == (1, 4, 24, 32, 16)
        np.testing.assert_allclose(got, expected.numpy(), atol=2e-4)
    tokens = (24 // 4) * (32 // 4) * (16 // 4)
    assert len(masks) == 1 + 4 + 2 and masks[1].shape == (1, 2, tokens, tokens)  # 1 layer, 2 heads
    assert [m.shape[1:] for m in masks] == net.dropout_mask_shapes((24, 32, 16))
    for mask in masks:
        assert np.any(mask == 0) and np.allclose(mask[mask > 0], 1 / 0.7)


def test_passes_through_onnx_match_torch_mc_dropout_and_are_reproducible(net):
    image, presence = _image(), np.ones(4, np.float32)
    torch_probs, torch_unc, _ = predict(net, image, presence, torch.device("cpu"), passes=4, mc_dropout=True)
    run_pass = part_pass(_onnx_network(net), net.config)
    onnx_probs, onnx_unc = mean_over_passes(run_pass, image, presence, passes=4, mc_dropout=True)
    np.testing.assert_allclose(onnx_probs, torch_probs, atol=2e-4)
    np.testing.assert_allclose(onnx_unc, torch_unc, atol=2e-3)
    again, _ = mean_over_passes(run_pass, image, presence, passes=4, mc_dropout=True)
    assert np.array_equal(again, onnx_probs)  # bit-identical rerun
    plain, _ = mean_over_passes(run_pass, image, presence, passes=4)
    assert np.abs(plain - onnx_probs).max() > 1e-3  # the masks did drop channels
    np.testing.assert_allclose(onnx_probs.sum(axis=0), 1.0, atol=1e-5)


@pytest.mark.parametrize("passes", [2, 3, 4])
def test_passes_side_by_side_equal_the_same_passes_one_after_another(net, passes):
    image, presence = _image(), np.array([1, 1, 0, 1], np.float32)
    one = _onnx_network(net)
    for mc_dropout in (False, True):
        maps_in_turn, maps_side_by_side = [], []
        in_turn = part_passes([one], net.config, image, presence, passes, mc_dropout, encoder_maps=maps_in_turn)
        side_by_side = part_passes([one, _onnx_network(net)], net.config, image, presence, passes, mc_dropout,
                                   encoder_maps=maps_side_by_side)
        for got, expected in zip(side_by_side, in_turn):  # probabilities, uncertainty
            assert np.array_equal(got, expected)
        assert len(maps_in_turn) == len(maps_side_by_side) == 1  # the first, unflipped pass's
        for got, expected in zip(maps_side_by_side[0], maps_in_turn[0]):
            assert np.array_equal(got, expected)
    one_pass, _ = part_passes([one], net.config, image, presence, 1, True)
    assert np.abs(one_pass - side_by_side[0]).max() > 1e-3  # the other passes counted


@pytest.mark.parametrize("passes, sessions, expected", [
    (2, 2, {0: [False], 1: [False]}),
    (4, 2, {0: [True, False], 1: [True, False]}),
    (3, 2, {0: [True, False], 1: [False]}),
    (2, 1, {0: [True, False]}),
])
def test_each_session_gives_its_working_memory_back_after_its_last_pass(net, passes, sessions, expected):
    calls = []

    class Recording:
        def __init__(self, k):
            self.k = k

        def __call__(self, keep_memory=False, **feed):
            calls.append((self.k, keep_memory))
            return [np.zeros((1, 4, *feed["x"].shape[2:]), np.float32)]

    part_passes([Recording(k) for k in range(sessions)], net.config, _image(), np.ones(4, np.float32), passes)
    assert {k: [keep for j, keep in calls if j == k] for k in range(sessions)} == expected


def test_several_passes_get_one_session_each_with_a_share_of_the_threads(net, tmp_path, monkeypatch,
                                                                         onnxruntime_engine):
    folder = tmp_path / "models"
    save_model(net, {"version": "t"}, folder, "tiny_seg")

    def threads_of(networks):
        return [n.session.get_session_options().intra_op_num_threads for n in networks]

    monkeypatch.setattr(onnx_engine, "_threads", 2)
    two, _, _ = load_segmentation_networks("tiny_seg", str(folder), passes=2)
    assert threads_of(two) == [1, 1] and two[0] is not two[1]
    assert load_segmentation_networks("tiny_seg", str(folder), passes=2)[0] == two  # cached per process
    assert threads_of(load_segmentation_networks("tiny_seg", str(folder), passes=1)[0]) == [2]
    monkeypatch.setattr(onnx_engine, "_threads", 4)
    assert threads_of(load_segmentation_networks("tiny_seg", str(folder), passes=2)[0]) == [2, 2]
    assert threads_of(load_segmentation_networks("tiny_seg", str(folder), passes=8)[0]) == [1, 1, 1, 1]
    monkeypatch.setattr(onnx_engine, "_threads", 3)  # no even share: in turn, every thread on one session
    assert threads_of(load_segmentation_networks("tiny_seg", str(folder), passes=2)[0]) == [3]
    monkeypatch.setattr(onnx_engine, "_threads", 1)  # a batch worker of --jobs 2 on 2 cores
    assert threads_of(load_segmentation_networks("tiny_seg", str(folder), passes=2)[0]) == [1]


def test_a_graph_that_could_not_be_cached_is_not_exported_again_for_a_second_session(net, tmp_path, monkeypatch,
                                                                                     onnxruntime_engine):
    folder = tmp_path / "models"
    save_model(net, {"version": "t"}, folder, "tiny_seg")
    exports = []
    export = onnx_engine.export_part
    monkeypatch.setattr(onnx_engine, "export_part", lambda spec: exports.append(1) or export(spec))
    monkeypatch.setattr(onnx_engine, "_store", lambda path, graph: None)  # a read-only cache
    monkeypatch.setattr(onnx_engine, "_threads", 2)
    networks, _, warnings = load_segmentation_networks("tiny_seg", str(folder), passes=2)
    assert len(exports) == 1 and len(networks) == 1 and warnings == ()
    assert networks[0].session.get_session_options().intra_op_num_threads == 1


def test_a_stored_model_is_exported_once_and_then_loaded_from_the_cache(net, cache, tmp_path, monkeypatch):
    folder = tmp_path / "models"
    save_model(net, {"version": "t"}, folder, "tiny_seg")
    parts, card, warnings = onnx_engine.load_parts("tiny_seg", str(folder), SEGMENTATION_PARTS,
                                                   segmentation_parts_of)
    files = list(cache.glob(f"tiny_seg-{card['sha256'][:32]}-network-*.onnx"))
    assert warnings == () and isinstance(parts["network"], onnx_engine.OnnxPart)
    assert len(files) == 1 and files[0].stat().st_size > 10_000
    onnx_engine.load_parts.cache_clear()
    # a graph of an older engine version is deleted when the current one is stored
    stale = cache / f"tiny_seg-{card['sha256'][:32]}-network-v{onnx_engine.ENGINE_VERSION - 1}-opset17.onnx"
    other_part = cache / f"tiny_seg-{card['sha256'][:32]}-head-v{onnx_engine.ENGINE_VERSION - 1}-opset17.onnx"
    version_3 = cache / f"tiny_seg-{card['sha256'][:32]}-v3-opset17.onnx"  # whole networks had no part name
    for path in (stale, other_part, version_3):
        path.write_bytes(b"old")
    onnx_engine._store(files[0], files[0].read_bytes())
    assert not stale.exists() and not version_3.exists() and other_part.exists() and files[0].exists()

    def no_export(spec):
        raise AssertionError("exported again")

    monkeypatch.setattr(onnx_engine, "export_part", no_export)
    again, _, warnings = onnx_engine.load_parts("tiny_seg", str(folder), SEGMENTATION_PARTS, segmentation_parts_of)
    x = _image()[None]
    feed = {"x": x, "presence": np.ones((1, 4), np.float32),
            **{f"mask{k}": m for k, m in enumerate(dropout_masks(net.config, x.shape[2:], None))}}
    assert warnings == ()
    np.testing.assert_array_equal(again["network"](**feed)[0], parts["network"](**feed)[0])


def test_intra_threads_reach_the_sessions_exported_and_cached_with_the_same_outputs(net, tmp_path):
    folder = tmp_path / "models"
    save_model(net, {"version": "t"}, folder, "tiny_seg")
    x = _image()[None]
    feed = {"x": x, "presence": np.ones((1, 4), np.float32),
            **{f"mask{k}": m for k, m in enumerate(dropout_masks(net.config, x.shape[2:], None))}}
    outputs = []
    for threads in (1, 2, 1):  # the first call exports the graph, the others load it from the cache
        onnx_engine.load_parts.cache_clear()
        parts, _, _ = onnx_engine.load_parts("tiny_seg", str(folder), SEGMENTATION_PARTS, segmentation_parts_of,
                                             intra_threads=threads)
        assert parts["network"].session.get_session_options().intra_op_num_threads == threads
        outputs.append(parts["network"](**feed)[0])
    np.testing.assert_array_equal(outputs[0], outputs[2])
    np.testing.assert_allclose(outputs[0], outputs[1], atol=1e-5)


def test_a_damaged_cached_graph_is_exported_again(net, cache, tmp_path):
    folder = tmp_path / "models"
    save_model(net, {"version": "t"}, folder, "tiny_seg")
    _, card, _ = onnx_engine.load_parts("tiny_seg", str(folder), SEGMENTATION_PARTS, segmentation_parts_of)
    path = onnx_engine.graph_path("tiny_seg", card["sha256"], "network")
    path.write_bytes(b"not a graph")
    onnx_engine.load_parts.cache_clear()
    parts, _, warnings = onnx_engine.load_parts("tiny_seg", str(folder), SEGMENTATION_PARTS, segmentation_parts_of)
    assert warnings == () and isinstance(parts["network"], onnx_engine.OnnxPart)
    assert path.stat().st_size > 10_000


def test_without_onnxruntime_torch_runs_the_part_with_a_warning(net, tmp_path, monkeypatch):
    folder = tmp_path / "models"
    save_model(net, {"version": "t"}, folder, "tiny_seg")
    monkeypatch.setattr(onnx_engine, "onnxruntime_available", lambda: False)
    parts, _, warnings = onnx_engine.load_parts("tiny_seg", str(folder), SEGMENTATION_PARTS, segmentation_parts_of)
    assert isinstance(parts["network"], onnx_engine.TorchPart)
    assert warnings == ("ONNX Runtime not used for tiny_seg (the onnxruntime package is not installed); torch ran it",)
