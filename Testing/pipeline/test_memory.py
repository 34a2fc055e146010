import numpy as np
import pytest

import GliomaAnalysisLib.pipeline.memory as memory
from GliomaAnalysisLib import load_case
from GliomaAnalysisLib.pipeline.analysis import analyze, argmax_uint8
from GliomaAnalysisLib.cli import main
from GliomaAnalysisLib.pipeline.memory import MemoryGuardError, check_memory, estimate_bytes


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


def test_argmax_without_stacking_matches_numpy():
    rng = np.random.default_rng(0)
    maps = [rng.random((7, 8, 9)).astype(np.float32) for _ in range(4)]
    maps[2][0, 0, 0] = maps[1][0, 0, 0] = 2.0  # a tie goes to the first, as in numpy
    assert np.array_equal(argmax_uint8(maps), np.argmax(np.stack(maps), axis=0))
