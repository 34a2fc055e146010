"""The segmentation network on OpenVINO: chosen by default where installed, in float32 the same probabilities as ONNX
Runtime within 1e-4 on a small network, in bfloat16 (the default where the CPU has it) within bfloat16's rounding,
bit-identical reruns, its memory given back after the last pass, and ONNX Runtime in its place (with a warning) where
OpenVINO cannot compile the graph."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

pytest.importorskip("openvino")

import GliomaAnalysisLib.models.onnx_engine as onnx_engine
import GliomaAnalysisLib.models.openvino_engine as openvino_engine
import GliomaAnalysisLib.models.segment as segment
from GliomaAnalysisLib.models.model_store import save_model
from GliomaAnalysisLib.models.network import GliomaSegNet, NetworkConfig


@pytest.fixture
def stored(tmp_path, monkeypatch):
    """A small stored segmentation model (folder, config), its graphs cached in a fresh folder."""
    monkeypatch.setenv("GLIOMA_ANALYSIS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(onnx_engine, "_threads", 2)
    onnx_engine.load_parts.cache_clear()
    segment._compiled_network.cache_clear()
    torch.manual_seed(0)
    net = GliomaSegNet(NetworkConfig(widths=(4, 8, 16), encoder_blocks=(1, 1, 1), transformer_layers=1,
                                     transformer_heads=2, dropout=0.3)).eval()
    save_model(net, {"version": "t"}, tmp_path / "models", "tiny_seg")
    yield str(tmp_path / "models"), net.config
    onnx_engine.load_parts.cache_clear()
    segment._compiled_network.cache_clear()


def _passes(folder, config, passes=2):
    image = np.random.default_rng(3).normal(size=(4, 24, 32, 16)).astype(np.float32)
    networks, _, warnings = segment.load_segmentation_networks("tiny_seg", folder, passes)
    mean, uncertainty = segment.part_passes(networks, config, image, np.ones(4, np.float32), passes,
                                            mc_dropout=True)
    return networks, warnings, mean, uncertainty


def test_openvino_runs_the_passes_by_default_as_onnx_runtime_does(stored, monkeypatch):
    folder, config = stored
    monkeypatch.delenv("GLIOMA_ANALYSIS_ENGINE", raising=False)
    monkeypatch.setenv("GLIOMA_ANALYSIS_PRECISION", "f32")
    networks, warnings, mean, uncertainty = _passes(folder, config)
    assert [type(n).__name__ for n in networks] == ["OpenVinoPart"] and warnings == ()
    assert segment.side_by_side_lanes(2) == 1  # in turn, every thread on the one network
    assert segment.engine_of(networks[0]).startswith("openvino 20")
    compiled = networks[0].compiled
    assert compiled.get_property("INFERENCE_NUM_THREADS") == 2 and not compiled.get_property("ENABLE_CPU_PINNING")
    assert "float32" in str(compiled.get_property("INFERENCE_PRECISION_HINT")) and networks[0].precision == "f32"
    assert np.array_equal(_passes(folder, config)[2], mean)  # a rerun: the same bits
    monkeypatch.setenv("GLIOMA_ANALYSIS_ENGINE", "onnxruntime")
    networks_ort, _, mean_ort, uncertainty_ort = _passes(folder, config)
    assert [type(n).__name__ for n in networks_ort] == ["OnnxPart", "OnnxPart"]
    assert mean.shape == (4, 24, 32, 16) and np.abs(mean.sum(axis=0) - 1).max() < 1e-5
    np.testing.assert_allclose(mean, mean_ort, atol=1e-4)  # the same network, other kernels
    np.testing.assert_allclose(uncertainty, uncertainty_ort, atol=1e-4)


def test_the_last_pass_gives_openvino_s_working_memory_back(stored, monkeypatch):
    folder, config = stored
    monkeypatch.setenv("GLIOMA_ANALYSIS_ENGINE", "openvino")
    networks, _, _ = segment.load_segmentation_networks("tiny_seg", folder, 3)
    events = []

    class Recording:  # the compiled network, noting each release
        def __init__(self, compiled):
            self.compiled = compiled

        def release_memory(self):
            events.append("release")
            self.compiled.release_memory()

        def __getattr__(self, name):
            return getattr(self.compiled, name)

    network = networks[0]
    network.compiled = Recording(network.compiled)
    infer = network.request.infer
    monkeypatch.setattr(network, "request", type("Request", (), {
        "infer": staticmethod(lambda *a, **k: events.append("pass") or infer(*a, **k))})())
    image = np.random.default_rng(1).normal(size=(4, 24, 32, 16)).astype(np.float32)
    segment.part_passes(networks, config, image, np.ones(4, np.float32), passes=3, mc_dropout=True)
    assert events == ["pass", "pass", "pass", "release"]  # kept between the passes over one volume


def test_two_threads_calling_one_network_get_their_own_outputs(stored, monkeypatch):
    """One infer request per network: calls take turns, so no thread reads outputs another call overwrote."""
    from concurrent.futures import ThreadPoolExecutor

    folder, config = stored
    monkeypatch.setenv("GLIOMA_ANALYSIS_ENGINE", "openvino")
    network = segment.load_segmentation_networks("tiny_seg", folder, 1)[0][0]
    rng = np.random.default_rng(2)
    feeds = [segment._network_feed(config, rng.normal(size=(1, 4, 24, 32, 16)).astype(np.float32),
                                   np.ones((1, 4), np.float32), None) for _ in range(2)]
    expected = [network(**feed)[0] for feed in feeds]
    with ThreadPoolExecutor(max_workers=2) as pool:
        got = list(pool.map(lambda k: network(keep_memory=True, **feeds[k % 2])[0], range(40)))
    assert all(np.array_equal(out, expected[k % 2]) for k, out in enumerate(got))


def test_onnx_runtime_runs_the_network_where_openvino_cannot_compile_it(stored, monkeypatch):
    folder, config = stored
    monkeypatch.setenv("GLIOMA_ANALYSIS_ENGINE", "auto")
    monkeypatch.setattr(openvino_engine, "OpenVinoPart",
                        lambda *args: (_ for _ in ()).throw(RuntimeError("unsupported operator")))
    networks, warnings, mean, _ = _passes(folder, config)
    assert [type(n).__name__ for n in networks] == ["OnnxPart"]  # one session of both threads: lanes said 1
    assert warnings == ("OpenVINO did not run tiny_seg (RuntimeError: unsupported operator); ONNX Runtime ran it",)
    assert np.abs(mean.sum(axis=0) - 1).max() < 1e-5


def test_openvino_asked_for_but_missing_or_without_a_graph_says_so(stored, monkeypatch):
    folder, config = stored
    monkeypatch.setenv("GLIOMA_ANALYSIS_ENGINE", "openvino")
    monkeypatch.setattr(openvino_engine, "openvino_available", lambda: False)
    assert _passes(folder, config)[1] == (
        "OpenVINO did not run tiny_seg (the openvino package is not installed); ONNX Runtime ran it",)
    monkeypatch.setenv("GLIOMA_ANALYSIS_ENGINE", "auto")  # auto without the package: ONNX Runtime, no warning
    assert _passes(folder, config)[1] == ()
    monkeypatch.setattr(openvino_engine, "openvino_available", lambda: True)
    monkeypatch.setenv("GLIOMA_ANALYSIS_CACHE", str(Path(folder).parent / "read-only cache"))
    monkeypatch.setattr(onnx_engine, "_store", lambda path, graph: None)  # nothing stored: no graph file
    onnx_engine.load_parts.cache_clear()
    assert _passes(folder, config)[1] == ("OpenVINO did not run tiny_seg (no cached ONNX graph to compile: the "
                                          "model cache is read-only); ONNX Runtime ran it",)


def test_an_unknown_engine_is_refused_by_name_before_any_work(phantom_dir, tmp_path, monkeypatch, capsys):
    from GliomaAnalysisLib.cli import main

    monkeypatch.setenv("GLIOMA_ANALYSIS_ENGINE", "tensorrt")
    with pytest.raises(openvino_engine.EngineChoiceError, match=r"GLIOMA_ANALYSIS_ENGINE must be one of auto, "
                                                                 r"openvino, onnxruntime, not 'tensorrt'"):
        openvino_engine.use_openvino()
    for command in (["analyze", str(phantom_dir), "--out", str(tmp_path / "one"), "--device", "cuda"],
                    ["batch", str(phantom_dir.parent), "--out", str(tmp_path / "many")]):
        assert main(command) == 2
        assert capsys.readouterr().err.strip().splitlines() == [
            "glioma-analysis: error: $GLIOMA_ANALYSIS_ENGINE must be one of auto, openvino, onnxruntime, "
            "not 'tensorrt'"]
        assert not (tmp_path / "one").exists() and not (tmp_path / "many").exists()
    monkeypatch.setenv("GLIOMA_ANALYSIS_ENGINE", " OpenVINO ")
    assert openvino_engine.use_openvino()
    monkeypatch.setattr(openvino_engine, "openvino_available", lambda: False)
    assert not openvino_engine.use_openvino()  # asked for but not installed: ONNX Runtime


def test_the_report_names_the_engine_and_both_engines_segment_alike(phantom_dir, tiny_model_dir, monkeypatch):
    from GliomaAnalysisLib import analyze, load_case

    case = load_case(phantom_dir)
    results = {}
    monkeypatch.setenv("GLIOMA_ANALYSIS_PRECISION", "f32")
    for engine in ("openvino", "onnxruntime"):
        monkeypatch.setenv("GLIOMA_ANALYSIS_ENGINE", engine)
        results[engine] = analyze(case, model_dir=tiny_model_dir, classify=False)
    assert results["openvino"].settings["engine"].startswith("openvino ")
    assert results["onnxruntime"].settings["engine"].startswith("onnxruntime ")
    assert results["openvino"].settings["precision"] == results["onnxruntime"].settings["precision"] == "f32"
    assert results["openvino"].settings["threads"] == onnx_engine.threads() >= 1
    for name, image in results["openvino"].probabilities.items():
        other = results["onnxruntime"].probabilities[name]
        assert np.abs(sitk.GetArrayViewFromImage(image) - sitk.GetArrayViewFromImage(other)).max() <= 2e-3, name


def _cpu_flags() -> set:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return set()
    return next((set(line.split(":", 1)[1].split()) for line in lines if line.startswith("flags")), set())


@pytest.mark.skipif(not _cpu_flags(), reason="no /proc/cpuinfo flags to check OpenVINO's answer against")
def test_bfloat16_is_found_exactly_on_cpus_that_compute_it():
    """OpenVINO's default precision is the test: its capability list says BF16 on any AVX-512 CPU (emulated)."""
    native = bool({"avx512_bf16", "amx_bf16"} & _cpu_flags())
    assert openvino_engine.cpu_has_bf16() == native
    assert openvino_engine.inference_precision("auto") == ("bf16" if native else "f32")


def test_bfloat16_is_told_by_openvino_s_default_precision_not_its_capability_list(monkeypatch):
    """On an AVX-512 CPU without AVX512-BF16 OpenVINO lists BF16 among its capabilities (emulated) but defaults to
    float32 (float16 on ARM): only a bfloat16 default counts."""
    import openvino

    class Core:  # what OpenVINO's CPU plugin answers on such a CPU
        def __init__(self, default):
            self.answers = {"OPTIMIZATION_CAPABILITIES": ["BF16", "FP32", "INT8"], "INFERENCE_PRECISION_HINT": default}

        def get_property(self, device, name):
            return self.answers[name]

    for default, native in ((openvino.Type.f32, False), (openvino.Type.f16, False), (openvino.Type.bf16, True)):
        monkeypatch.setattr(openvino_engine, "_core", lambda cache_dir, default=default: Core(default))
        assert openvino_engine.cpu_has_bf16() is native, default


def test_auto_precision_is_bfloat16_only_where_the_cpu_computes_it(monkeypatch):
    monkeypatch.setattr(openvino_engine, "cpu_has_bf16", lambda: True)
    assert openvino_engine.inference_precision("auto") == "bf16"
    assert openvino_engine.inference_precision("f32") == "f32"
    monkeypatch.setattr(openvino_engine, "cpu_has_bf16", lambda: False)
    assert openvino_engine.inference_precision("auto") == "f32"


@pytest.mark.skipif(not openvino_engine.cpu_has_bf16(), reason="this CPU computes no bfloat16: auto runs float32")
def test_bfloat16_by_default_within_its_rounding_of_float32(stored, monkeypatch, phantom_dir, tiny_model_dir):
    from GliomaAnalysisLib import analyze, load_case

    folder, config = stored
    monkeypatch.setenv("GLIOMA_ANALYSIS_ENGINE", "openvino")
    monkeypatch.delenv("GLIOMA_ANALYSIS_PRECISION", raising=False)
    networks, _, mean, uncertainty = _passes(folder, config)
    assert networks[0].precision == "bf16"
    assert "bfloat16" in str(networks[0].compiled.get_property("INFERENCE_PRECISION_HINT"))
    assert np.array_equal(_passes(folder, config)[2], mean)  # a rerun: the same bits
    monkeypatch.setenv("GLIOMA_ANALYSIS_PRECISION", "f32")
    networks_f32, _, mean_f32, _ = _passes(folder, config)
    assert networks_f32[0].precision == "f32" and networks_f32[0] is not networks[0]
    difference = np.abs(mean - mean_f32)
    assert 0 < difference.max() < 0.05 and difference.mean() < 5e-3  # bfloat16 keeps 8 bits of mantissa
    assert np.abs(mean.sum(axis=0) - 1).max() < 1e-5
    assert (mean.argmax(axis=0) == mean_f32.argmax(axis=0)).mean() > 0.98
    case = load_case(phantom_dir)
    monkeypatch.delenv("GLIOMA_ANALYSIS_PRECISION")
    assert analyze(case, model_dir=tiny_model_dir, classify=False).settings["precision"] == "bf16"
    monkeypatch.setenv("GLIOMA_ANALYSIS_ENGINE", "onnxruntime")  # auto asks for bfloat16, ONNX Runtime runs float32
    assert analyze(case, model_dir=tiny_model_dir, classify=False).settings["precision"] == "f32"
    monkeypatch.setenv("GLIOMA_ANALYSIS_ENGINE", "auto")
    monkeypatch.setattr(openvino_engine, "openvino_part", lambda *args: (None, "RuntimeError: unsupported operator"))
    segment._compiled_network.cache_clear()
    fallback = analyze(case, model_dir=tiny_model_dir, classify=False)
    assert fallback.settings["precision"] == "f32" and fallback.settings["engine"].startswith("onnxruntime ")
    segment._compiled_network.cache_clear()


def test_each_precision_compiles_into_a_cache_of_its_own(tmp_path, monkeypatch):
    """OpenVINO's cache key leaves the precision out: the shipped network in bfloat16, loaded from its float32 blob,
    gave NaN on a small input and crashed the process on a real case. Each precision now caches in its own folder.
    In a child process: a crash must not take the tests down."""
    from GliomaAnalysisLib.models.model_store import load_verified_card

    monkeypatch.setenv("GLIOMA_ANALYSIS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("GLIOMA_ANALYSIS_ENGINE", "onnxruntime")  # only the export here
    onnx_engine.load_parts.cache_clear()
    try:
        segment.load_segmentation_networks("glioma_seg", None, 1)
    finally:
        onnx_engine.load_parts.cache_clear()
    card = load_verified_card("glioma_seg", None)
    graph = onnx_engine.graph_path("glioma_seg", card["sha256"], "network")
    config = NetworkConfig.from_dict(card["network"])
    image = np.random.default_rng(4).normal(size=(1, 4, 32, 32, 32)).astype(np.float32)
    np.savez(tmp_path / "feed.npz", **segment._network_feed(config, image, np.ones((1, 4), np.float32), None))
    script = (
        "import sys, numpy as np\n"
        "from pathlib import Path\n"
        "from GliomaAnalysisLib.models.openvino_engine import OpenVinoPart, cpu_has_bf16\n"
        "feed, outputs = dict(np.load(sys.argv[2])), {}\n"
        "for precision in ('f32', 'auto'):\n"
        "    part = OpenVinoPart(Path(sys.argv[1]), 2, precision)\n"
        "    assert part.precision == ('bf16' if precision == 'auto' and cpu_has_bf16() else 'f32'), part.precision\n"
        "    outputs[precision] = part(**feed)[0]\n"
        "    assert np.isfinite(outputs[precision]).all(), precision\n"
        "difference = np.abs(outputs['f32'] - outputs['auto']).max()\n"
        "assert (difference > 0) == cpu_has_bf16() and difference < 0.5, difference\n")
    for attempt in ("compiles", "loads the cached networks"):
        run = subprocess.run([sys.executable, "-c", script, str(graph), str(tmp_path / "feed.npz")],
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, (attempt, run.returncode, run.stderr[-2000:])
    folders = sorted(p.name for p in (graph.parent / "openvino").iterdir())
    assert folders == sorted({"f32", openvino_engine.inference_precision("auto")})
    kept = sorted((graph.parent / "openvino").glob("*/*.blob"))
    assert len(kept) == len(folders)
    old_layout = graph.parent / "openvino" / "1234.blob"  # a float32 network cached before the folders
    old_layout.write_bytes(b"blob")
    openvino_engine.OpenVinoPart(graph, 2, "auto")
    assert not old_layout.exists() and sorted((graph.parent / "openvino").glob("*/*.blob")) == kept


def test_an_unknown_precision_is_refused_by_name_before_any_work(phantom_dir, tmp_path, monkeypatch, capsys):
    from GliomaAnalysisLib.cli import main

    monkeypatch.setenv("GLIOMA_ANALYSIS_PRECISION", "fp16")
    for command in (["analyze", str(phantom_dir), "--out", str(tmp_path / "one")],
                    ["batch", str(phantom_dir.parent), "--out", str(tmp_path / "many")],
                    ["demo", "--out", str(tmp_path / "demo")]):
        assert main(command) == 2
        assert capsys.readouterr().err.strip().splitlines() == [
            "glioma-analysis: error: $GLIOMA_ANALYSIS_PRECISION must be one of auto, f32, not 'fp16'"]
    assert not any(tmp_path.iterdir())
    monkeypatch.setenv("GLIOMA_ANALYSIS_PRECISION", " F32 ")
    assert openvino_engine.requested_precision() == "f32"


@pytest.mark.parametrize("presence", [(1, 1, 1, 1), (1, 0, 1, 1), (0, 1, 1, 1)])
def test_openvino_runs_the_t1ce_difference_stem_as_torch_does(tmp_path, monkeypatch, presence):
    monkeypatch.setenv("GLIOMA_ANALYSIS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("GLIOMA_ANALYSIS_PRECISION", "f32")
    onnx_engine.load_parts.cache_clear()
    segment._compiled_network.cache_clear()
    torch.manual_seed(0)
    net = GliomaSegNet(NetworkConfig(widths=(4, 8, 16), encoder_blocks=(1, 1, 1), transformer_layers=1,
                                     transformer_heads=2, dropout=0.3, t1ce_difference=True)).eval()
    save_model(net, {"version": "t"}, tmp_path / "models", "tiny_seg")
    image = np.random.default_rng(3).normal(size=(4, 24, 32, 16)).astype(np.float32)
    present = np.array(presence, np.float32)
    image[present == 0] = 0.0  # as preprocess leaves an absent modality
    means = {}
    for engine, part in (("openvino", "OpenVinoPart"), ("onnxruntime", "OnnxPart")):
        monkeypatch.setenv("GLIOMA_ANALYSIS_ENGINE", engine)
        networks, _, warnings = segment.load_segmentation_networks("tiny_seg", str(tmp_path / "models"), 1)
        assert [type(n).__name__ for n in networks] == [part] and warnings == ()  # no quiet fallback
        means[engine] = segment.part_passes(networks, net.config, image, present, 1, mc_dropout=False)[0]
    np.testing.assert_allclose(means["openvino"], means["onnxruntime"], atol=1e-4)  # one graph, two engines
    with torch.no_grad():  # the stored weights are float16: torch on the same rounded weights
        for weights in net.state_dict().values():
            if weights.is_floating_point():
                weights.copy_(weights.half().float())
        expected = torch.softmax(net(torch.from_numpy(image)[None], torch.from_numpy(present)[None]), dim=1)[0]
    np.testing.assert_allclose(means["onnxruntime"], expected.numpy(), atol=1e-4)  # 1e-3 with float32 weights
    onnx_engine.load_parts.cache_clear()
    segment._compiled_network.cache_clear()
