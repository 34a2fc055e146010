"""Atomic outputs: ``analyze --out DIR`` is staged beside DIR and renamed into place as a whole. A real SIGINT or
SIGTERM sent to a child process at each stage leaves no new folder and no ``.partial-*``; a full disk gives one
error line and no partial output."""
import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from GliomaAnalysisLib.cli import main
from GliomaAnalysisLib.io.atomic import staged_folder
from GliomaAnalysisLib.reporting.writers import CONTRACT_FILES, LOG_FILE

CHILD = textwrap.dedent("""
    import signal, sys, time, pathlib
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as from a terminal: a job started with & ignores it
    import GliomaAnalysisLib.pipeline.analysis as analysis
    import GliomaAnalysisLib.reporting.writers as writers
    flag, moment = pathlib.Path(sys.argv[1]), sys.argv[2]

    def pause():
        flag.write_text(moment)
        time.sleep(120)

    def wrap(module, name, before):
        original = getattr(module, name)
        def wrapped(*args, **kwargs):
            if before:
                pause()
            value = original(*args, **kwargs)
            if not before:
                pause()
            return value
        setattr(module, name, wrapped)

    if moment == "analysis":
        wrap(analysis, "analyze", before=True)
    elif moment == "first-image":
        wrap(writers, "_write_image", before=False)
    elif moment == "report":
        wrap(writers, "render_report", before=False)
    from GliomaAnalysisLib.cli import main
    sys.exit(main(sys.argv[3:]))
""")


def _entries(folder: Path):
    return sorted(p.name for p in folder.iterdir())


def _run_and_signal(tmp_path, phantom_dir, tiny_model_dir, out, moment, signum):
    flag = tmp_path / "flag"
    command = [sys.executable, "-c", CHILD, str(flag), moment, "analyze", str(phantom_dir), "--out", str(out),
               "--model-dir", str(tiny_model_dir), "--fast", "--no-classify"]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not flag.exists() and child.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert flag.exists(), child.communicate()[1]
    child.send_signal(signum)
    _, err = child.communicate(timeout=60)
    return child.returncode, err


@pytest.mark.parametrize("moment,signum", [("analysis", signal.SIGTERM), ("first-image", signal.SIGTERM),
                                           ("report", signal.SIGTERM), ("first-image", signal.SIGINT)])
def test_a_signal_at_any_stage_leaves_no_new_folder(tmp_path, phantom_dir, tiny_model_dir, moment, signum):
    parent = tmp_path / "results"
    parent.mkdir()
    code, err = _run_and_signal(tmp_path, phantom_dir, tiny_model_dir, parent / "case", moment, signum)
    assert code == 130 and "interrupted" in err and "Traceback" not in err
    assert _entries(parent) == []  # no DIR, no .case.partial-*


def test_an_existing_folder_is_left_untouched_by_an_interruption(tmp_path, phantom_dir, tiny_model_dir):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine\n")
    code, err = _run_and_signal(tmp_path, phantom_dir, tiny_model_dir, out, "report", signal.SIGTERM)
    assert code == 130 and "Traceback" not in err
    assert _entries(tmp_path) == ["flag", "out"] and _entries(out) == ["notes.txt"]
    assert (out / "notes.txt").read_text() == "mine\n"


def test_a_finished_run_appears_as_a_whole(tmp_path, phantom_dir, tiny_model_dir):
    out = tmp_path / "out"
    assert main(["analyze", str(phantom_dir), "--out", str(out), "--model-dir", str(tiny_model_dir), "--fast",
                 "--no-classify"]) == 0
    assert _entries(out) == sorted(CONTRACT_FILES + (LOG_FILE,)) and _entries(tmp_path) == ["out"]


def _full_disk(monkeypatch, target: str):
    import pathlib

    real = pathlib.Path.write_text

    def write_text(self, data, *args, **kwargs):
        if self.name == target:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return real(self, data, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "write_text", write_text)


def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, phantom_dir, tiny_model_dir, monkeypatch, capsys):
    _full_disk(monkeypatch, "report.html")  # after the NIfTI files and report.json were written
    out = tmp_path / "out"
    assert main(["analyze", str(phantom_dir), "--out", str(out), "--model-dir", str(tiny_model_dir), "--fast",
                 "--no-classify"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("[glioma-analysis]")]
    assert errors == [f"glioma-analysis: error: {out}: cannot write the outputs (No space left on device)"]
    assert _entries(tmp_path) == []


def test_a_really_full_disk(tmp_path, phantom_dir, tiny_model_dir):
    """A 256 KiB tmpfs (root only): ITK and Python meet a real ENOSPC. (ITK's NIfTI library also prints its own
    ``** ERROR: NWAD`` lines to stderr; the file it leaves short is caught by the length check.)"""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        result = subprocess.run([sys.executable, "-m", "GliomaAnalysisLib.cli", "analyze", str(phantom_dir),
                                 "--out", str(disk / "out"), "--model-dir", str(tiny_model_dir), "--fast",
                                 "--no-classify"], capture_output=True, text=True, timeout=300)
        assert result.returncode == 2, result.stderr
        ours = [line for line in result.stderr.splitlines() if line.startswith("glioma-analysis:")]
        assert ours == [f"glioma-analysis: error: {disk / 'out'}: cannot write the outputs (No space left on device)"]
        assert "Traceback" not in result.stderr and _entries(disk) == []
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_staged_folder_keeps_other_files_and_cleans_up_on_error(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with staged_folder(out) as staging:
        (staging / "report.json").write_text(json.dumps({"a": 1}))
    assert _entries(out) == ["keep.txt", "report.json"]
    with pytest.raises(RuntimeError):
        with staged_folder(tmp_path / "new") as staging:
            (staging / "half.nii.gz").write_text("")
            raise RuntimeError("analysis failed")
    assert _entries(tmp_path) == ["out"]
    with staged_folder(out, replace=True) as staging:
        (staging / "segmentation.nii.gz").write_text("")
    assert _entries(out) == ["segmentation.nii.gz"] and _entries(tmp_path) == ["out"]


def test_a_written_map_reads_back_exactly_and_is_the_same_file_every_time(tmp_path):
    """The maps are gzip-compressed by ISA-L, not ITK: the same voxels, type and geometry come back (an oblique,
    anisotropic float map and a label map), two writes give identical bytes, and no uncompressed file is left."""
    import numpy as np
    import SimpleITK as sitk
    from GliomaAnalysisLib.reporting.writers import _write_image

    rng = np.random.default_rng(0)
    values = np.round(rng.random((7, 9, 11)).astype(np.float32), 3)
    for array in (values, (values * 4).astype(np.uint8)):
        image = sitk.GetImageFromArray(array)
        image.SetSpacing((0.9, 1.1, 3.0))
        image.SetOrigin((-10.5, 20.25, 7.0))
        image.SetDirection((0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
        first, second = tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"
        _write_image(image, first)
        _write_image(image, second)
        back = sitk.ReadImage(str(first))
        assert np.array_equal(sitk.GetArrayFromImage(back), array) and back.GetPixelID() == image.GetPixelID()
        assert np.allclose(back.GetSpacing(), image.GetSpacing()) and np.allclose(back.GetOrigin(), image.GetOrigin())
        assert np.allclose(back.GetDirection(), image.GetDirection(), atol=1e-6)
        assert first.read_bytes() == second.read_bytes()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["a.nii.gz", "b.nii.gz"]
