import numpy as np
import pytest
import SimpleITK as sitk

import GliomaAnalysisLib.models.onnx_engine as onnx_engine
import GliomaAnalysisLib.pipeline.analysis as analysis
import GliomaAnalysisLib.pipeline.memory as memory
from GliomaAnalysisLib import load_case
from GliomaAnalysisLib.pipeline.analysis import analyze, argmax_uint8
from GliomaAnalysisLib.cli import main
from GliomaAnalysisLib.pipeline.memory import MemoryGuardError, check_memory, estimate_bytes, side_by_side_fits


def test_estimate_grows_with_the_input_grid_not_the_network():
    small = estimate_bytes(240 * 240 * 155, 80 * 96 * 88, 16)
    large = estimate_bytes(512 * 512 * 400, 128 * 128 * 104, 16)
    assert 0.9e9 < small < 2.5e9 and 4e9 < large < 8e9  # measured peaks: ~1.5 GB and ~6 GB
    assert estimate_bytes(10 ** 6, 10 ** 9, 16) == estimate_bytes(10 ** 6, 160 ** 3, 16)  # sliding window caps it


def test_guard_refuses_with_a_clear_message():
    with pytest.raises(MemoryGuardError, match=r"case7: needs about .* GiB of memory but 0.5 GiB are available"):
        check_memory("case7", 240 * 240 * 155, 80 * 96 * 88, 16, available=2 ** 29)
    assert check_memory("case7", 100, 100, 16, available=2 ** 34) > 0


def test_analysis_and_cli_stop_before_running_out_of_memory(phantom_dir, tiny_model_dir, tmp_path, monkeypatch,
                                                           capsys):
    monkeypatch.setattr(memory, "available_bytes", lambda: 300 * 2 ** 20)
    with pytest.raises(MemoryGuardError):
        analyze(load_case(phantom_dir), model_dir=tiny_model_dir, fast=True)
    out = tmp_path / "out"
    assert main(["analyze", str(phantom_dir), "--out", str(out), "--model-dir", str(tiny_model_dir)]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("glioma-analysis: error: ") and "GiB are available" in error
    assert not out.exists() or list(out.iterdir()) == []


def test_side_by_side_passes_need_each_pass_s_activations():
    grids = (240 * 240 * 155, 80 * 96 * 88, 16)
    one, two = estimate_bytes(*grids), estimate_bytes(*grids, side_by_side=2)
    assert two - one == 80 * 96 * 88 * 16 * memory.BYTES_PER_WORKING_VOXEL_PER_CHANNEL
    assert side_by_side_fits(*grids, 2, available=int(two / 0.9) + 1)
    assert not side_by_side_fits(*grids, 2, available=int(two / 0.9) - 1)
    check_memory("case7", *grids, available=int(two / 0.9) - 1)  # in turn, the same run still fits


def test_passes_run_in_turn_where_side_by_side_would_not_fit_with_the_same_result(phantom_dir, tiny_model_dir,
                                                                                  monkeypatch, onnxruntime_engine):
    case = load_case(phantom_dir)
    monkeypatch.setattr(onnx_engine, "_threads", 2)
    side = analyze(case, model_dir=tiny_model_dir, classify=False)
    monkeypatch.setattr(analysis, "side_by_side_fits", lambda *grids: False)
    in_turn = analyze(case, model_dir=tiny_model_dir, classify=False)
    assert any("side by side" in line for line in side.log)
    assert not any("side by side" in line for line in in_turn.log)
    assert any("(passes in turn)" in line for line in in_turn.log)
    voxels = sitk.GetArrayViewFromImage
    assert np.array_equal(voxels(side.labels), voxels(in_turn.labels))
    for name, probability in side.probabilities.items():
        assert np.array_equal(voxels(probability), voxels(in_turn.probabilities[name])), name
    assert np.array_equal(voxels(side.uncertainty), voxels(in_turn.uncertainty))


def test_an_analysis_opens_only_the_sessions_its_passes_run_on(phantom_dir, tiny_model_dir, monkeypatch,
                                                               onnxruntime_engine):
    opened = []
    open_session = onnx_engine.OnnxPart.__init__

    def counting(self, graph, intra_threads=None):
        opened.append(intra_threads)
        open_session(self, graph, intra_threads)

    monkeypatch.setattr(onnx_engine.OnnxPart, "__init__", counting)
    monkeypatch.setattr(onnx_engine, "_threads", 2)
    case = load_case(phantom_dir)
    onnx_engine.load_parts.cache_clear()
    try:
        analyze(case, model_dir=tiny_model_dir, classify=False)
        assert opened == [1, 1]  # two passes side by side, one thread each
        analyze(case, model_dir=tiny_model_dir, classify=False)
        assert opened == [1, 1]  # cached for the process
        monkeypatch.setattr(analysis, "side_by_side_fits", lambda *grids: False)
        analyze(case, model_dir=tiny_model_dir, classify=False)
        assert opened == [1, 1]  # in turn on the first of the same sessions
        analyze(case, model_dir=tiny_model_dir, classify=False, fast=True)
        assert opened == [1, 1, 2]  # one pass: one session with every thread
    finally:
        onnx_engine.load_parts.cache_clear()


def test_argmax_without_stacking_matches_numpy():
    rng = np.random.default_rng(0)
    maps = [rng.random((7, 8, 9)).astype(np.float32) for _ in range(4)]
    maps[2][0, 0, 0] = maps[1][0, 0, 0] = 2.0  # a tie goes to the first, as in numpy
    assert np.array_equal(argmax_uint8(maps), np.argmax(np.stack(maps), axis=0))
