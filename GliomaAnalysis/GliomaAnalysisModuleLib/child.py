"""The analysis child process, without Qt: launched in its own process group (no console window on Windows), its
stderr read on a thread and handed out line by line, killed as a tree on cancel, its temporary folder removed.
GliomaAnalysis.AnalysisRun polls it from a QTimer; tests drive it directly. Python 3.9 syntax (Slicer 5.8)."""
import os
import queue
import shutil
import signal
import subprocess
import threading
from typing import Callable, Dict, List, Optional, Sequence

from .helpers import failure_message, parse_progress, popen_options

ProgressCallback = Callable[[Optional[float], Optional[str]], None]


class ChildRun:
    """One run of the CLI in ``workDir`` (inputs in ``workDir/inputs``, outputs in ``workDir/out``).

    ``log`` keeps every stderr line; ``error`` is set when the run has ended badly (the CLI's one-line error, else the
    exit status with the last lines of stderr); ``cancelled`` after ``cancel()``. ``poll()`` returns True once, when
    the child has ended and every line has been handed to ``onProgress``."""

    def __init__(self, command: Sequence[str], env: Optional[Dict[str, str]], workDir: str,
                 onProgress: Optional[ProgressCallback] = None):
        self.workDir = workDir
        self.outDir = os.path.join(workDir, "out")
        self.error: Optional[str] = None
        self.cancelled = False
        self.log: List[str] = []
        self._onProgress = onProgress
        self._cliError: Optional[str] = None
        self._ended = False
        self._process = subprocess.Popen(list(command), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                         text=True, **popen_options())
        self._lines: "queue.Queue[str]" = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self._process.stderr:
            self._lines.put(line)

    def _drain(self) -> None:
        while not self._lines.empty():
            line = self._lines.get()
            self.log.append(line)
            fraction, message, error = parse_progress(line)
            self._cliError = error or self._cliError
            if self._onProgress and (fraction is not None or message):
                self._onProgress(fraction, message)

    def poll(self) -> bool:
        """Hand out the new lines; True exactly once, when the child has ended."""
        self._drain()
        if self._ended or self._process.poll() is None:
            return False
        self._ended = True
        self._reader.join(timeout=2)
        self._drain()
        if not self.cancelled:
            self.error = failure_message(self._process.returncode, self._cliError, self.log)
        return True

    def wait(self) -> None:
        """Block until the child ends, handing out its lines."""
        self._process.wait()
        self.poll()

    def cancel(self) -> None:
        """Kill the whole process tree (the CLI and anything it started)."""
        self.cancelled = True
        if self._process.poll() is None:
            if os.name == "posix":
                os.killpg(self._process.pid, signal.SIGKILL)
            else:
                subprocess.run(["taskkill", "/T", "/F", "/PID", str(self._process.pid)], capture_output=True,
                               **popen_options())

    def removeInputs(self) -> None:
        """Delete the written input volumes (the outputs stay for "Save report")."""
        shutil.rmtree(os.path.join(self.workDir, "inputs"), ignore_errors=True)

    def removeFiles(self) -> None:
        """Delete the whole temporary folder of this run."""
        shutil.rmtree(self.workDir, ignore_errors=True)
