"""Click-to-result of the Slicer module's Apply, through the module's own Logic, on a real case; beside it the
whole-process time of a plain ``glioma-analysis analyze`` of the same case, so the module path's overhead (writing the
input nodes, loading the outputs into the scene) shows as the difference.

Runs under the slicer-core venv (Slicer's real MRML and module logics, no Qt; made by ``.ci/slicer-core-venv``):

    .venv-slicer/bin/python benchmarks/bench_slicer.py [--case DIR] [--repeats 3] [--python .venv/bin/python]
                                                       [--no-warm-up]

Default case ``../shared/data/brats18/Brats18_CBICA_AME_1`` (next to the repository). The analysis child runs with
the main venv's python (``--python``, default ``.venv/bin/python``, where torch, ONNX Runtime and the library are).

Per repeat:

1. untimed, what the user has before clicking Apply: a new scene with the application, colour, volumes,
   segmentations, terminologies, subject-hierarchy and tables logics (and the three slice composite nodes of the
   default layout; slicer-core ships no default terminologies, so the terminologies logic logs that it could not
   load them, nor any file-based colour table: its colour logic logs that too; the maps get the Logic's colour
   node ID all the same), the case's four volumes loaded as scalar volume nodes (the volumes logic's
   AddArchetypeVolume, as Slicer's volume reader does; node names = file names without the extension) and given to
   the selectors with the widget's rule (``helpers.assign_nodes``);
2. timed, the click: what ``GliomaAnalysisWidget.onApplyButton`` and ``onFinished`` do, with default settings
   (the defaults of ``GliomaAnalysisParameterNode``):
   - ``GliomaAnalysisLogic.ensureDependencies(ask=True)`` (the first click imports torch into Slicer's process);
   - ``GliomaAnalysisLogic.start(...)`` with the widget's arguments: it checks the parent transforms, makes the
     temporary folder (``slicer.util.tempDirectory``), writes every input node with
     ``sitk.WriteImage(sitkUtils.PullVolumeFromSlicer(node), <workDir>/inputs/<modality>.nrrd, False)``, builds the
     command (``helpers.build_command``) and the child's PYTHONPATH, and starts ``AnalysisRun`` (child.py's
     ``ChildRun``: ``subprocess.Popen`` in its own session, stderr reader thread). "write inputs" is the time from
     entering start() to entering AnalysisRun, "launch" that of AnalysisRun's constructor;
   - waiting: AnalysisRun's QTimer (every ``POLL_MS``, 50 ms) calls its ``_tick`` -> ``ChildRun.poll`` until the child has ended and
     every stderr line is handed out (``onProgress``), then ``onFinished``; here a loop sleeps the timer's interval
     and calls the timer's callback, as Qt's event loop would;
   - the widget's ``onFinished``: on success ``GliomaAnalysisLogic.loadResults`` (``scene.read_report``,
     ``scene.load_results``: terminology, segmentation with closed surfaces, the four maps, the table, subject
     hierarchy; ``slicer.util.setSliceViewerLayers``; ``showTable``), then ``run.removeInputs()``.
   After the timing the run's temporary folder is removed and the scene cleared (untimed).

Then, interleaved with the module runs, ``<python dir>/glioma-analysis analyze CASE --out OUT`` (the same default
settings) in a child process, timed from Popen to exit.

What is not the module's code (Slicer-application pieces slicer-core lacks; only this process sees them):
- ``qt``: only ``qt.QTimer`` is used by the Logic (AnalysisRun's poll timer); a stand-in keeps its interval and
  callback, which the wait loop calls;
- ``sitkUtils.PullVolumeFromSlicer``: pip's SimpleITK has no MRMLIDImageIO ("slicer:" addresses), so the node's
  voxels and IJK-to-RAS geometry are copied into a SimpleITK image in LPS (what current Slicer's sitkUtils does in
  memory); the uncompressed .nrrd writing is the Logic's own ``sitk.WriteImage`` call;
- ``slicer.util.tempDirectory`` (Qt-based in slicer-core's util.py): the same ``<key><yyyy-MM-dd_hh+mm+ss.zzz>``
  folder under ``slicer.app.temporaryPath`` (a temporary folder of this run);
- ``slicer.app`` (temporaryPath; ``layoutManager()`` None, i.e. batch mode, so ``showTable`` switches no layout),
  ``slicer.modules.{volumes,segmentations,terminologies}.logic()`` (the logics above), ``slicer.mrmlScene``;
- ``slicer.ScriptedLoadableModule`` and ``slicer.parameterNodeWrapper``: empty base classes, ``Choice`` and an
  identity ``parameterNodeWrapper`` (so the parameter node's class attributes are its defaults);
- ``GliomaAnalysisLogic.pythonExecutable`` (``shutil.which("PythonSlicer") or sys.executable``; child.py takes the
  command as given) is replaced on the logic instance by ``--python``, Slicer's python here.
- The widget's GUI updates (progress bar, state line, log, Show 3D button) are left out; onProgress only records
  when the child's progress lines arrive (at poll time: 50 ms resolution). Rendering (Slicer redrawing the slice
  views with the new foreground, the 3D view, the table layout) is not measured: there are no views here.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
MODULE_DIR = ROOT / "GliomaAnalysis"
DEFAULT_CASE = ROOT.parent / "shared" / "data" / "brats18" / "Brats18_CBICA_AME_1"
DEFAULT_PYTHON = ROOT / ".venv" / "bin" / "python"
DONE = re.compile(r"done: .* in ([0-9.]+) s")
"""The analysis's last line (``analyze``: 'done: WT 42.0 mL in 1.7 s'), before the outputs are written."""
WRITTEN = "written to "
"""The CLI's last line, once the outputs are written ('written to OUT: WT ...')."""


# --- stand-ins for the Slicer application (see the docstring) --------------------------------------------------------
class PolledTimer:
    """qt.QTimer as AnalysisRun uses it: interval, one timeout() slot, start / stop; the wait loop fires it."""

    def __init__(self):
        self.interval_ms = 0
        self.slot = None
        self.active = False

    def setInterval(self, ms):
        self.interval_ms = ms

    def connect(self, signal, slot):
        self.slot = slot

    def start(self):
        self.active = True

    def stop(self):
        self.active = False


def pull_volume_from_slicer(node):
    """sitkUtils.PullVolumeFromSlicer without MRMLIDImageIO: the voxels (copied) and the geometry, RAS -> LPS."""
    import SimpleITK as sitk
    import slicer
    import vtk

    image = sitk.GetImageFromArray(slicer.util.arrayFromVolume(node))
    ijk_to_ras = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(ijk_to_ras)
    spacing = node.GetSpacing()
    flip = (-1.0, -1.0, 1.0)  # RAS -> LPS
    image.SetSpacing(spacing)
    image.SetOrigin([flip[r] * ijk_to_ras.GetElement(r, 3) for r in range(3)])
    image.SetDirection([flip[r] * ijk_to_ras.GetElement(r, c) / spacing[c] for r in range(3) for c in range(3)])
    return image


def install_stand_ins(temporary_path: str) -> None:
    """The qt, sitkUtils, slicer.ScriptedLoadableModule, slicer.parameterNodeWrapper modules and slicer.app the
    module file needs to import and run its Logic on slicer-core."""
    import slicer
    import slicer.util

    try:
        import qt  # noqa: F401
        raise SystemExit("bench_slicer.py: a real qt is importable; run this with .venv-slicer/bin/python "
                         "(slicer-core), not inside Slicer")
    except ImportError:
        pass
    qt = types.ModuleType("qt")
    qt.QTimer = PolledTimer
    sys.modules["qt"] = qt

    sitk_utils = types.ModuleType("sitkUtils")
    sitk_utils.PullVolumeFromSlicer = pull_volume_from_slicer
    sys.modules["sitkUtils"] = sitk_utils

    loadable = types.ModuleType("slicer.ScriptedLoadableModule")

    class ScriptedLoadableModuleLogic:
        def __init__(self, parent=None):
            pass

    for name in ("ScriptedLoadableModule", "ScriptedLoadableModuleTest", "ScriptedLoadableModuleWidget"):
        setattr(loadable, name, type(name, (), {}))
    loadable.ScriptedLoadableModuleLogic = ScriptedLoadableModuleLogic
    sys.modules[loadable.__name__] = loadable

    wrapper = types.ModuleType("slicer.parameterNodeWrapper")
    wrapper.Choice = lambda choices: tuple(choices)
    wrapper.parameterNodeWrapper = lambda cls: cls
    sys.modules[wrapper.__name__] = wrapper

    def temp_directory(key="__SlicerTemp__", tempDir=None, includeDateTime=True):
        name = key + (datetime.datetime.now().strftime("%Y-%m-%d_%H+%M+%S.%f")[:-3] if includeDateTime else "")
        path = os.path.join(tempDir or slicer.app.temporaryPath, name)
        os.makedirs(path, exist_ok=True)
        return path

    slicer.util.tempDirectory = temp_directory
    slicer.app = types.SimpleNamespace(temporaryPath=temporary_path, layoutManager=lambda: None,
                                       testingEnabled=lambda: True)


def import_module_file():
    """GliomaAnalysis/GliomaAnalysis.py, the scripted module, imported from its file."""
    spec = importlib.util.spec_from_file_location("GliomaAnalysis", MODULE_DIR / "GliomaAnalysis.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["GliomaAnalysis"] = module
    spec.loader.exec_module(module)
    return module


def module_scene():
    """The test suite's scene with Slicer's logics (Testing/slicer/slicer_core_scene.py), plus the three slice
    composite nodes of Slicer's default layout (setSliceViewerLayers sets them), published as slicer.mrmlScene and
    slicer.modules.*.logic() as the module finds them in Slicer."""
    import slicer

    sys.path.insert(0, str(ROOT / "Testing" / "slicer"))
    from slicer_core_scene import Application

    application = Application()
    for view in ("Red", "Yellow", "Green"):
        composite = slicer.vtkMRMLSliceCompositeNode()
        composite.SetLayoutName(view)
        application.scene.AddNode(composite)
    slicer.modules = types.SimpleNamespace(
        volumes=types.SimpleNamespace(logic=lambda: application.logics["Volumes"]),
        segmentations=types.SimpleNamespace(logic=lambda: application.logics["Segmentations"]),
        terminologies=types.SimpleNamespace(logic=lambda: application.logics["Terminologies"]))
    slicer.app.applicationLogic = lambda: application.app
    return application


def load_case_nodes(application, case: Path) -> Dict:
    """The case's volume files as scalar volume nodes; modality -> node by the selectors' rule (node names)."""
    from GliomaAnalysisModuleLib import scene
    from GliomaAnalysisModuleLib.helpers import VOLUME_SUFFIXES, assign_nodes, node_name_for_file

    files = {node_name_for_file(p.name): p for p in sorted(case.iterdir())
             if p.is_file() and p.name.lower().endswith(VOLUME_SUFFIXES)}
    assigned = assign_nodes(files)
    if not assigned:
        raise SystemExit(f"{case}: no T1 / T1CE / T2 / FLAIR volume recognised by name")
    logics = scene.SceneLogics(application.scene, application.logics["Volumes"],
                               application.logics["Segmentations"], application.logics["Terminologies"])
    return {modality: scene.load_volume(logics, str(files[name]), name) for modality, name in assigned.items()}


# --- one click ------------------------------------------------------------------------------------------------------
def click(module, python: str, inputs: Dict) -> Dict[str, float]:
    """Apply with default settings, as onApplyButton + onFinished do; the seconds of each part (and facts)."""
    defaults = module.GliomaAnalysisParameterNode  # the identity wrapper leaves the class: its attributes = defaults
    logic = module.GliomaAnalysisLogic()
    logic.pythonExecutable = lambda: python  # instead of shutil.which("PythonSlicer") or sys.executable
    marks: Dict[str, float] = {}
    lines: Dict[str, float] = {}
    finished: List = []
    original_run = module.AnalysisRun

    class TimedRun(original_run):
        def __init__(self, *args, **kwargs):
            marks["launch"] = time.perf_counter()
            original_run.__init__(self, *args, **kwargs)
            marks["launched"] = time.perf_counter()

    def on_progress(fraction, message):
        if message:
            now = time.perf_counter()
            if message.startswith("case "):
                lines.setdefault("case", now)
            elif message.startswith(WRITTEN):
                lines.setdefault("written", now)

    def on_finished(run):  # GliomaAnalysisWidget.onFinished, without the GUI updates
        marks["finished"] = time.perf_counter()
        if run.cancelled or run.error:
            finished.append(run)
            return
        finished.append(run)
        run.result = logic.loadResults(run.outDir, run.inputs, run.outputSegmentation)
        marks["loaded"] = time.perf_counter()
        run.removeInputs()
        marks["removed"] = time.perf_counter()

    module.AnalysisRun = TimedRun
    try:
        start = time.perf_counter()
        if not logic.ensureDependencies(ask=True):
            raise SystemExit("ensureDependencies declined")
        marks["dependencies"] = time.perf_counter()
        run = logic.start(inputs, defaults.device, defaults.fast, defaults.uncertainty, defaults.labels,
                          onProgress=on_progress, onFinished=on_finished, classify=defaults.classify,
                          preprocess=defaults.preprocess, saveRegistered=defaults.saveRegistered,
                          outputSegmentation=None)
        marks["started"] = time.perf_counter()
        timer = run._timer
        while timer.active:  # Qt's event loop firing the QTimer (POLL_MS)
            time.sleep(timer.interval_ms / 1000.0)
            if timer.active:
                timer.slot()
    finally:
        module.AnalysisRun = original_run
    try:
        if run.error:
            raise SystemExit(f"the module's run failed: {run.error}\n{''.join(run.log[-20:])}")
        result = run.result
        done = [float(DONE.search(line).group(1)) for line in run.log if DONE.search(line)]
        segmentation = result["segmentation"].GetSegmentation()
        times = {
            "check dependencies (ensureDependencies)": marks["dependencies"] - start,
            "write inputs (start: PullVolumeFromSlicer + WriteImage .nrrd)": marks["launch"] - marks["dependencies"],
            "launch child (AnalysisRun / ChildRun: Popen)": marks["launched"] - marks["launch"],
            "wait for the child (QTimer poll, 50 ms)": marks["finished"] - marks["started"],
            "  child: start -> 'case' line (python, imports, reading inputs)":
                lines.get("case", float("nan")) - marks["launch"],
            "  child: analyze() ('done: ... in')": done[-1] if done else float("nan"),
            "  child: 'case' line -> 'written to' line (analysis + writing outputs)":
                lines.get("written", float("nan")) - lines.get("case", float("nan")),
            "  'written to' line -> end seen (exit, last poll)": marks["finished"] - lines.get("written", float("nan")),
            "load outputs (loadResults: scene.load_results, layers, table)": marks["loaded"] - marks["finished"],
            "remove written inputs (removeInputs)": marks["removed"] - marks["loaded"],
            "total click-to-result": marks["removed"] - start,
        }
        facts = {"segments": [segmentation.GetNthSegment(i).GetName()
                              for i in range(segmentation.GetNumberOfSegments())],
                 "maps": sorted(result["maps"]), "table_rows": result["table"].GetNumberOfRows(),
                 "volumes_ml": result["report"]["volumes_ml"], "command": run._process.args}
        return {"times": times, "facts": facts}
    finally:
        run.removeFiles()


def plain_cli(python: str, case: Path, out: str) -> Dict:
    """``glioma-analysis analyze CASE --out OUT`` as a CLI user runs it: whole-process wall time."""
    import json

    script = Path(python).with_name("glioma-analysis")
    command = [str(script)] if script.is_file() else [python, "-m", "GliomaAnalysisLib.cli"]
    command += ["analyze", str(case), "--out", out]
    with tempfile.TemporaryFile("w+") as stderr:
        start = time.perf_counter()
        child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, text=True)
        child.wait()
        seconds = time.perf_counter() - start
        stderr.seek(0)
        log = stderr.read()
    if child.returncode:
        raise SystemExit(f"{' '.join(command)} failed ({child.returncode}):\n{log[-3000:]}")
    done = DONE.findall(log)
    with open(os.path.join(out, "report.json")) as handle:
        volumes = json.load(handle)["volumes_ml"]
    return {"seconds": seconds, "analyze": float(done[-1]) if done else float("nan"), "volumes_ml": volumes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", default=str(DEFAULT_CASE), help="case folder (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--python", default=str(DEFAULT_PYTHON),
                        help="the child's python, Slicer's python in the module (default: %(default)s)")
    parser.add_argument("--no-warm-up", action="store_true",
                        help="skip the untimed 'analyze --fast --no-classify' run (ONNX export, file cache)")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    case = Path(args.case).resolve()
    python = os.path.abspath(args.python)  # not resolved: a venv's python is a link whose folder marks the venv
    if not case.is_dir():
        raise SystemExit(f"{case}: no such case folder")
    if not os.access(python, os.X_OK):
        raise SystemExit(f"{python}: not an executable python (--python)")

    with tempfile.TemporaryDirectory(prefix="bench_slicer-") as tmp:
        install_stand_ins(os.path.join(tmp, "slicer-temp"))
        os.makedirs(os.path.join(tmp, "slicer-temp"))
        module = import_module_file()
        missing = module.GliomaAnalysisLogic.missingRequirements()
        if missing:  # ensureDependencies would try to install them into this venv
            raise SystemExit(f"missing in {sys.executable}'s environment: {', '.join(missing)}")
        if not args.no_warm_up:
            plain_cli(python, case, os.path.join(tmp, "warm-up"))  # not timed
            print("(warm-up run done, not timed)", flush=True)
        clicks, clis = [], []
        for k in range(args.repeats):
            application = module_scene()
            try:
                inputs = load_case_nodes(application, case)
                clicks.append(click(module, python, inputs))
            finally:
                application.scene.Clear(True)
            clis.append(plain_cli(python, case, os.path.join(tmp, f"cli-{k}")))
            shutil.rmtree(os.path.join(tmp, f"cli-{k}"), ignore_errors=True)
            print(f"repeat {k + 1}/{args.repeats}: module {clicks[-1]['times']['total click-to-result']:.2f} s, "
                  f"CLI {clis[-1]['seconds']:.2f} s", flush=True)

    facts = clicks[0]["facts"]
    print(f"\ncase {case.name}; inputs {', '.join(sorted(inputs))}; child python {python}")
    print(f"module command: {' '.join(facts['command'][1:4])} ... {' '.join(facts['command'][-6:])}")
    print(f"loaded: segments {facts['segments']}, maps {facts['maps']}, table {facts['table_rows']} rows")
    width = max(len(part) for part in clicks[0]["times"])
    header = " ".join(f"run {k + 1:>2}" for k in range(len(clicks)))
    print(f"\nmodule path (GliomaAnalysisLogic, default settings), seconds\n{'':<{width}}  {header}  median")
    for part in clicks[0]["times"]:
        values = [c["times"][part] for c in clicks]
        print(f"{part:<{width}}  {' '.join(f'{v:6.2f}' for v in values)}  {statistics.median(values):6.2f}")
    cli_values = [c["seconds"] for c in clis]
    label = "plain 'glioma-analysis analyze' (whole process)"
    print(f"{label:<{width}}  {' '.join(f'{v:6.2f}' for v in cli_values)}  {statistics.median(cli_values):6.2f}")
    label = "  CLI: analyze() ('done: ... in')"
    values = [c["analyze"] for c in clis]
    print(f"{label:<{width}}  {' '.join(f'{v:6.2f}' for v in values)}  {statistics.median(values):6.2f}")
    module_total = statistics.median(c["times"]["total click-to-result"] for c in clicks)
    difference = module_total - statistics.median(cli_values)
    print(f"\nmodule click-to-result - plain CLI process (medians): {difference:+.2f} s")
    print(f"volumes (mL) module: {', '.join(f'{k} {v:.2f}' for k, v in clicks[0]['facts']['volumes_ml'].items())}")
    print(f"volumes (mL) CLI:    {', '.join(f'{k} {v:.2f}' for k, v in clis[0]['volumes_ml'].items())}")


if __name__ == "__main__":
    main()
