"""GliomaAnalysis: 3D Slicer scripted module (thin GUI and scene glue over GliomaAnalysisLib).

The analysis runs out of process: the input volumes are written to a temporary folder and the library's command line
(`python -m GliomaAnalysisLib.cli analyze`) is launched with Slicer's Python; its progress lines are polled with a
QTimer so the GUI stays responsive, Cancel kills the process tree, and the results are loaded into the scene only when
the run succeeded. Research use only; not a medical device.
"""
import importlib
import json
import logging
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the bundled GliomaAnalysisLib and helpers
from GliomaAnalysisModuleLib.helpers import (SEGMENTS, assign_nodes, build_command,  # noqa: E402
                                             parse_progress, table_rows, terminology_entry)

MODALITIES = ("t1", "t1ce", "t2", "flair")
RESEARCH_USE = "Research use only; not a medical device. Results must not be used for clinical decisions."
REQUIREMENTS = ("monai>=1.3", "SimpleITK>=2.2", "scikit-image>=0.19", "safetensors>=0.4", "matplotlib>=3.5",
                "highdicom>=0.22")


class GliomaAnalysis(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "Glioma Analysis"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["GliomaAnalysis developers"]
        self.parent.helpText = ("Segments glioma subregions (necrotic core, edema, enhancing tumor) from T1, T1CE, "
                                "T2 and FLAIR (any subset) and reports volumes and marker predictions. "
                                + RESEARCH_USE)
        self.parent.acknowledgementText = ("Trained on BraTS 2018 data (Menze et al. 2015; Bakas et al. 2017, "
                                           "2018) and synthetic phantoms.")


@parameterNodeWrapper
class GliomaAnalysisParameterNode:
    t1: vtkMRMLScalarVolumeNode
    t1ce: vtkMRMLScalarVolumeNode
    t2: vtkMRMLScalarVolumeNode
    flair: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode
    device: str = "auto"
    fast: bool = False
    uncertainty: bool = True
    labels: str = "brats2021"


class GliomaAnalysisWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._run = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/GliomaAnalysis.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.ui.deviceComboBox.addItems(["auto", "cpu", "cuda"])
        self.ui.labelsComboBox.addItems(["brats2021", "brats2023"])
        self.ui.researchUseLabel.text = RESEARCH_USE
        self.logic = GliomaAnalysisLogic()
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.saveReportButton.connect("clicked(bool)", self.onSaveReport)
        self.ui.saveReportButton.enabled = False
        self.initializeParameterNode()

    def cleanup(self):
        self.removeObservers()
        if self._run:
            self._run.cancel()

    def enter(self):
        self.initializeParameterNode()

    def onSceneStartClose(self, caller, event):
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())
        volumes = slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
        assigned = assign_nodes(node.GetName() for node in volumes)
        byName = {node.GetName(): node for node in volumes}
        for modality, name in assigned.items():
            if not getattr(self._parameterNode, modality):
                setattr(self._parameterNode, modality, byName[name])

    def setParameterNode(self, inputParameterNode):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)

    def onApplyButton(self):
        if self._run:  # the button reads Cancel while a run is going
            self._run.cancel()
            return
        inputs = {m: getattr(self._parameterNode, m) for m in MODALITIES if getattr(self._parameterNode, m)}
        if not inputs:
            slicer.util.errorDisplay("Select at least one input volume (T1, T1CE, T2 or FLAIR).")
            return
        if not self.logic.ensureDependencies(ask=True):
            return
        self.ui.logTextEdit.clear()
        self.ui.progressBar.value = 0
        self._run = self.logic.start(inputs, self._parameterNode.device, self._parameterNode.fast,
                                     self._parameterNode.uncertainty, self._parameterNode.labels,
                                     onProgress=self.onProgress, onFinished=self.onFinished)
        self.ui.applyButton.text = "Cancel"

    def onProgress(self, fraction, message):
        if fraction is not None:
            self.ui.progressBar.value = int(100 * fraction)
        if message:
            self.ui.logTextEdit.appendPlainText(message)

    def onFinished(self, run):
        self.ui.applyButton.text = "Apply"
        self._run = None
        if run.cancelled:
            self.ui.logTextEdit.appendPlainText("Cancelled; the scene was left unchanged.")
            return
        if run.error:
            slicer.util.errorDisplay(run.error)
            return
        inputs = {m: getattr(self._parameterNode, m) for m in MODALITIES if getattr(self._parameterNode, m)}
        result = self.logic.loadResults(run.outDir, inputs, self._parameterNode.outputSegmentation,
                                        self._parameterNode.labels)
        self._parameterNode.outputSegmentation = result["segmentation"]
        self._lastOutDir = run.outDir
        self.ui.saveReportButton.enabled = True
        self.ui.progressBar.value = 100

    def onSaveReport(self):
        folder = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), "Save the report files into")
        if folder:
            self.logic.saveReport(self._lastOutDir, folder)


class AnalysisRun:
    """One out-of-process run of the library's CLI, polled from the GUI thread with a QTimer."""

    def __init__(self, command, env, outDir, workDir, onProgress, onFinished, onDone):
        self.outDir, self._workDir = outDir, workDir
        self.error, self.cancelled = None, False
        self._onProgress, self._onFinished, self._onDone = onProgress, onFinished, onDone
        kwargs = {"start_new_session": True} if os.name == "posix" else {
            "creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}
        self._process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                         text=True, **kwargs)
        self._lines = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._timer = qt.QTimer()
        self._timer.setInterval(200)
        self._timer.connect("timeout()", self._poll)
        self._timer.start()

    def _read(self):
        for line in self._process.stderr:
            self._lines.put(line)

    def _poll(self):
        while not self._lines.empty():
            fraction, message, error = parse_progress(self._lines.get())
            if error:
                self.error = error
            if self._onProgress and (fraction is not None or message):
                self._onProgress(fraction, message)
        if self._process.poll() is None:
            return
        self._timer.stop()
        self._reader.join(timeout=2)
        while not self._lines.empty():
            fraction, message, error = parse_progress(self._lines.get())
            self.error = error or self.error
        if self._process.returncode != 0 and not self.cancelled and not self.error:
            self.error = f"The analysis stopped with exit status {self._process.returncode}."
        self._onDone(self)
        if self._onFinished:
            self._onFinished(self)

    def cancel(self):
        """Kill the whole process tree; the scene is not touched."""
        self.cancelled = True
        if self._process.poll() is None:
            if os.name == "posix":
                os.killpg(self._process.pid, signal.SIGKILL)
            else:
                subprocess.run(["taskkill", "/T", "/F", "/PID", str(self._process.pid)], capture_output=True)

    def wait(self):
        """Block until the run ends (console / tests), still processing its output."""
        self._process.wait()
        self._poll()


class GliomaAnalysisLogic(ScriptedLoadableModuleLogic):
    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return GliomaAnalysisParameterNode(super().getParameterNode())

    # --- dependencies --------------------------------------------------------------------------------------------
    def ensureDependencies(self, ask=True):
        """torch through the PyTorch extension, the rest through pip after asking; returns False if declined."""
        try:
            import torch  # noqa: F401
        except ImportError:
            try:
                import PyTorchUtils
            except ImportError:
                slicer.util.errorDisplay("GliomaAnalysis needs the PyTorch extension: install 'PyTorch' from the "
                                         "Extensions Manager and restart Slicer.")
                return False
            if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=ask) is None:
                return False  # declined
        missing = self.missingRequirements()
        if not missing:
            return True
        try:  # Slicer 5.11+: asks the user itself, checks versions, installs
            pydeps = importlib.import_module("slicer.pydeps")  # not "import slicer.pydeps": would rebind slicer here
        except ImportError:
            pydeps = None
        if pydeps is not None:
            from packaging.requirements import Requirement
            try:
                pydeps.pip_ensure([Requirement(r) for r in missing], requester="GliomaAnalysis")
            except RuntimeError:  # the user declined
                return False
        else:  # Slicer 5.8-5.10: ask, then pip_install (a whitespace-separated string there)
            if ask and not slicer.util.confirmOkCancelDisplay(
                    "GliomaAnalysis needs these Python packages, which will now be installed:\n" + "\n".join(missing)):
                return False
            slicer.util.pip_install(" ".join(missing))
        return not self.missingRequirements()

    @staticmethod
    def missingRequirements():
        from importlib.metadata import PackageNotFoundError, version

        from packaging.requirements import Requirement
        missing = []
        for text in REQUIREMENTS:
            requirement = Requirement(text)
            try:
                if version(requirement.name) not in requirement.specifier:
                    missing.append(text)
            except PackageNotFoundError:
                missing.append(text)
        return missing

    # --- running -------------------------------------------------------------------------------------------------
    @staticmethod
    def pythonExecutable():
        return shutil.which("PythonSlicer") or sys.executable

    def start(self, inputs, device="auto", fast=False, uncertainty=True, labels="brats2021", onProgress=None,
              onFinished=None):
        """Write the input volumes and launch the CLI; returns the AnalysisRun (poll-driven, non-blocking)."""
        workDir = tempfile.mkdtemp(prefix="GliomaAnalysis-")
        files = {}
        for modality, node in inputs.items():
            path = os.path.join(workDir, f"input_{modality}.nrrd")
            if not slicer.util.saveNode(node, path):  # writes a copy; the node itself is not modified
                raise RuntimeError(f"Could not write {node.GetName()} to {path}")
            files[modality] = path
        outDir = os.path.join(workDir, "out")
        command = build_command(self.pythonExecutable(), files, outDir, device, fast, uncertainty, labels)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(os.path.abspath(__file__)), env.get("PYTHONPATH", "")])
        logging.info("GliomaAnalysis: %s", " ".join(command))
        return AnalysisRun(command, env, outDir, workDir, onProgress, onFinished, onDone=lambda run: None)

    def process(self, inputs, outputSegmentation=None, device="auto", fast=False, uncertainty=True,
                labels="brats2021"):
        """Blocking analysis for the Python console: ``inputs`` maps modality keys to volume nodes.

        Returns a dict with the segmentation, probability / uncertainty volumes, the table node and the report.
        """
        run = self.start(inputs, device, fast, uncertainty, labels)
        run.wait()
        if run.error:
            raise RuntimeError(run.error)
        return self.loadResults(run.outDir, inputs, outputSegmentation, labels)

    # --- results into the scene ----------------------------------------------------------------------------------
    def loadResults(self, outDir, inputs, outputSegmentation=None, labels="brats2021"):
        with open(os.path.join(outDir, "report.json")) as handle:
            report = json.load(handle)
        reference = inputs.get(report["inputs"]["reference"]) or next(iter(inputs.values()))
        segmentation = self._loadSegmentation(outDir, reference, outputSegmentation, report)
        maps = {}
        for name, title in (("prob_et", "P(ET)"), ("prob_ncr", "P(NCR)"), ("prob_ed", "P(ED)"),
                            ("uncertainty", "uncertainty")):
            node = slicer.util.loadVolume(os.path.join(outDir, f"{name}.nii.gz"),
                                          {"name": f"{reference.GetName()} {title}", "show": False})
            display = node.GetDisplayNode()
            display.SetAndObserveColorNodeID("vtkMRMLColorTableNodeFileColdToHotRainbow.txt")
            display.AutoWindowLevelOff()
            display.SetWindowLevelMinMax(0.0, 1.0)
            display.SetApplyThreshold(True)
            display.SetLowerThreshold(0.1)
            display.SetUpperThreshold(1.0)
            maps[name] = node
        slicer.util.setSliceViewerLayers(background=reference, foreground=maps["prob_et"], foregroundOpacity=0.4)
        table = self._table(report, reference)
        self._placeInStudy(reference, [segmentation, table, *maps.values()])
        return {"segmentation": segmentation, "maps": maps, "table": table, "report": report}

    def _loadSegmentation(self, outDir, reference, outputSegmentation, report):
        labelmap = slicer.util.loadLabelVolume(os.path.join(outDir, "segmentation.nii.gz"), {"show": False})
        if outputSegmentation is None:
            outputSegmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode",
                                                                    f"{reference.GetName()} glioma")
        else:
            outputSegmentation.GetSegmentation().RemoveAllSegments()
        outputSegmentation.SetReferenceImageGeometryParameterFromVolumeNode(reference)
        slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(labelmap, outputSegmentation)
        slicer.mrmlScene.RemoveNode(labelmap)
        segmentation = outputSegmentation.GetSegmentation()
        value = {"brats2021": {1: 1, 2: 2, 4: 4}, "brats2023": {1: 1, 2: 2, 4: 3}}[report["label_convention"]]
        for label, name, colour, (code, meaning) in SEGMENTS:
            segment = self._segmentWithLabel(segmentation, value[label])
            if segment is None:
                continue
            segment.SetName(name)
            segment.SetColor(*colour)
            segment.SetTag(segment.GetTerminologyEntryTagName(), terminology_entry(code, meaning))
        outputSegmentation.CreateClosedSurfaceRepresentation()
        outputSegmentation.CreateDefaultDisplayNodes()
        return outputSegmentation

    @staticmethod
    def _segmentWithLabel(segmentation, labelValue):
        for index in range(segmentation.GetNumberOfSegments()):
            segment = segmentation.GetNthSegment(index)
            if segment.GetLabelValue() == labelValue:
                return segment
        return None

    @staticmethod
    def _table(report, reference):
        table = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTableNode", f"{reference.GetName()} glioma results")
        columns = [vtk.vtkStringArray() for _ in range(3)]
        for column, title in zip(columns, ("item", "value", "uncertainty")):
            column.SetName(title)
        for row in table_rows(report):
            for column, value in zip(columns, row):
                column.InsertNextValue(value)
        for column in columns:
            table.AddColumn(column)
        return table

    @staticmethod
    def _placeInStudy(reference, nodes):
        shNode = slicer.mrmlScene.GetSubjectHierarchyNode()
        study = shNode.GetItemParent(shNode.GetItemByDataNode(reference))
        for node in nodes:
            shNode.SetItemParent(shNode.GetItemByDataNode(node), study)

    @staticmethod
    def saveReport(outDir, folder):
        """Copy the CLI's report files (report.json, report.html and the images) into ``folder``."""
        for name in os.listdir(outDir):
            source = os.path.join(outDir, name)
            if os.path.isfile(source):
                shutil.copy2(source, os.path.join(folder, name))


class GliomaAnalysisTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_phantom_end_to_end()

    def test_phantom_end_to_end(self):
        """A synthetic phantom through the logic: segments, table and input nodes left unchanged."""
        from GliomaAnalysisLib.phantom import make_phantom, write_phantom

        folder = tempfile.mkdtemp(prefix="GliomaAnalysisTest-")
        case = write_phantom(make_phantom(2024, (96, 96, 62), (2.5, 2.5, 2.5)), folder)
        inputs = {m: slicer.util.loadVolume(os.path.join(case, f"{case.name}_{m}.nii.gz")) for m in MODALITIES}
        before = {m: slicer.util.arrayFromVolume(node).copy() for m, node in inputs.items()}
        result = GliomaAnalysisLogic().process(inputs, fast=True)
        segmentation = result["segmentation"].GetSegmentation()
        self.assertGreaterEqual(segmentation.GetNumberOfSegments(), 1)
        self.assertTrue(segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName("ED")))
        self.assertGreater(result["table"].GetNumberOfRows(), 8)
        for modality, node in inputs.items():
            self.assertTrue((slicer.util.arrayFromVolume(node) == before[modality]).all())
        self.delayDisplay("GliomaAnalysis phantom test passed")
