"""The module's child process (GliomaAnalysisModuleLib/child.py) with real processes: a crash keeps its stderr tail,
the CLI's one-line error wins, Cancel kills the whole tree, the temporary folder goes away."""
import os
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "GliomaAnalysis"))

from GliomaAnalysisModuleLib.child import ChildRun  # noqa: E402


def _python(code):
    return [sys.executable, "-c", code]


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_crash_reports_the_exit_status_and_the_last_stderr_lines(tmp_path):
    progress = []
    run = ChildRun(_python("import sys\n"
                           "print('[glioma-analysis] preprocessing', file=sys.stderr, flush=True)\n"
                           "raise ModuleNotFoundError(\"No module named 'monai'\")"),
                   None, str(tmp_path), lambda fraction, message: progress.append((fraction, message)))
    run.wait()
    assert progress == [(0.12, "preprocessing")]
    assert run.error.startswith("The analysis stopped with exit status 1. Last lines of its log:\n")
    assert run.error.endswith("ModuleNotFoundError: No module named 'monai'")
    assert "Traceback (most recent call last):" in run.error and run.log[0] == "[glioma-analysis] preprocessing\n"
    assert run.poll() is False  # the end is reported once


def test_the_cli_one_line_error_is_the_message(tmp_path):
    run = ChildRun(_python("import sys\nprint('glioma-analysis: error: /in/t1.nii: file is empty (0 bytes)', "
                           "file=sys.stderr)\nsys.exit(2)"), None, str(tmp_path))
    run.wait()
    assert run.error == "/in/t1.nii: file is empty (0 bytes)" and not run.cancelled
    ok = ChildRun(_python("pass"), None, str(tmp_path))
    ok.wait()
    assert ok.error is None


@pytest.mark.skipif(os.name != "posix", reason="process groups are checked with POSIX signals here")
def test_cancel_kills_the_child_and_what_it_started(tmp_path):
    run = ChildRun(_python("import subprocess, sys, time\n"
                           "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
                           "print(p.pid, file=sys.stderr, flush=True)\ntime.sleep(60)"), None, str(tmp_path))
    deadline = time.monotonic() + 20
    while not run.log and time.monotonic() < deadline:
        run.poll()
        time.sleep(0.05)
    grandchild = int(run.log[0])
    started = time.monotonic()
    run.cancel()
    run.wait()
    assert run.cancelled and run.error is None and time.monotonic() - started < 5
    while _alive(grandchild) and time.monotonic() - started < 5:
        time.sleep(0.05)
    assert not _alive(grandchild)


def test_temporary_files_are_removed(tmp_path):
    work = tmp_path / "GliomaAnalysis-run"
    (work / "inputs").mkdir(parents=True)
    (work / "inputs" / "t1.nrrd").write_bytes(b"x")
    (work / "out").mkdir()
    (work / "out" / "report.json").write_text("{}")
    run = ChildRun(_python("pass"), None, str(work))
    run.wait()
    run.removeInputs()
    assert sorted(p.name for p in work.iterdir()) == ["out"] and Path(run.outDir, "report.json").is_file()
    run.removeFiles()
    assert not work.exists()
