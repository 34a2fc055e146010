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
if os.path.isdir(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "GliomaAnalysisLib")):
    sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a source checkout (CTest)
from GliomaAnalysisModuleLib.helpers import (SAMPLE_NAME, SEGMENTS, assign_nodes, build_command,  # noqa: E402
                                             node_name_for_file, parse_progress, registration_keywords,
                                             sample_data_sources, table_rows, terminology_entry,
                                             write_sample_phantom)

MODALITIES = ("t1", "t1ce", "t2", "flair")
RESEARCH_USE = "Research use only; not a medical device. Results must not be used for clinical decisions."
REQUIREMENTS = ("monai>=1.3", "SimpleITK>=2.2", "scikit-image>=0.19", "safetensors>=0.4", "matplotlib>=3.5",
                "highdicom>=0.22")
# A published BraTS-style case offered in SampleData beside the synthetic phantom; None until one is hosted
# (publishing one = setting this). Shape, checked by helpers.check_hosted_sample:
#   {"uris": ["https://.../case_t1.nii.gz", ...],             # one https URL per modality present
#    "fileNames": ["case_t1.nii.gz", "case_t1ce.nii.gz", ...],  # names the selectors recognise (_t1ce, -t2f, ...)
#    "checksums": ["SHA256:<64 lowercase hex>", ...],
#    "sampleName": "GliomaCase"}                               # optional
HOSTED_SAMPLE = None


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
        # SampleData entries, once the application has started (as Slicer's module template does)
        slicer.app.connect("startupCompleted()", registerSampleData)


def sampleCacheFolder() -> str:
    """Where the synthetic sample case is generated (in Slicer's temporary folder; reused while it is there)."""
    return os.path.join(slicer.app.temporaryPath, "GliomaAnalysisSample")


def registerSampleData() -> None:
    """Register the samples with SampleData (category "GliomaAnalysis"): the synthetic phantom, generated on click
    by ``downloadSamplePhantom``, and HOSTED_SAMPLE when set. Calling it again (module reload) replaces them."""
    import inspect

    import SampleData
    register = SampleData.SampleDataLogic.registerCustomSampleDataSource
    accepted = inspect.signature(register).parameters  # loadFileType (Slicer 5.8) or loadFileTypes (later)
    thumbnail = os.path.join(os.path.dirname(os.path.abspath(__file__)), "Resources", "Icons", "GliomaAnalysis.png")
    try:
        sources = sample_data_sources(sampleCacheFolder(), thumbnail, HOSTED_SAMPLE)
    except ValueError as error:  # a malformed HOSTED_SAMPLE: keep the phantom, say why
        logging.error("GliomaAnalysis: %s", error)
        sources = sample_data_sources(sampleCacheFolder(), thumbnail)
    for arguments in sources:
        if arguments["sampleName"] == SAMPLE_NAME:
            arguments["customDownloader"] = downloadSamplePhantom
        registered = SampleData.SampleDataLogic.sampleDataSourcesByCategory(arguments["category"])
        registered[:] = [source for source in registered if source.sampleName != arguments["sampleName"]]
        register(**registration_keywords(arguments, accepted))


def downloadSamplePhantom(source=None) -> list:
    """SampleData's ``customDownloader`` (called with the SampleDataSource): load the synthetic phantom and open
    this module with its selectors filled, so that Apply is the second click. Returns the loaded volume nodes."""
    try:
        nodes = GliomaAnalysisLogic().loadSamplePhantom()
    except Exception as error:  # shown as one line; the traceback goes to the log
        logging.exception("GliomaAnalysis: the sample case could not be created")
        slicer.util.errorDisplay(f"Could not create the GliomaAnalysis sample case: {error}")
        return []
    if slicer.util.mainWindow():
        slicer.util.selectModule("GliomaAnalysis")
        widget = getattr(slicer.modules, "GliomaAnalysisWidget", None)
        if widget is not None:  # already open: enter() is not called again
            widget.initializeParameterNode()
    return list(nodes.values())


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
    classify: bool = True
    preprocess: str = "auto"
    saveRegistered: bool = False


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
        self.ui.preprocessComboBox.addItems(["auto", "none", "brats"])
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
                                     onProgress=self.onProgress, onFinished=self.onFinished,
                                     classify=self._parameterNode.classify,
                                     preprocess=self._parameterNode.preprocess,
                                     saveRegistered=self._parameterNode.saveRegistered)
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
              onFinished=None, classify=True, preprocess="auto", saveRegistered=False):
        """Write the input volumes and launch the CLI; returns the AnalysisRun (poll-driven, non-blocking).

        classify: also predict grade, IDH, 1p/19q and MGMT (table rows; the CLI's --no-classify when False);
        preprocess: auto | none | brats (clinical scans); saveRegistered: keep the co-registered inputs
        (loaded with the results).
        """
        workDir = tempfile.mkdtemp(prefix="GliomaAnalysis-")
        files = {}
        import SimpleITK as sitk
        import sitkUtils

        for modality, node in inputs.items():
            path = os.path.join(workDir, f"input_{modality}.nrrd")
            # sitkUtils reads the voxels and geometry without touching the node; slicer.util.saveNode would point
            # the node's storage node at this temporary copy.
            try:
                sitk.WriteImage(sitkUtils.PullVolumeFromSlicer(node), path, True)
            except RuntimeError as exc:
                raise RuntimeError(f"Could not write {node.GetName()} to {path}: {exc}") from None
            files[modality] = path
        outDir = os.path.join(workDir, "out")
        command = build_command(self.pythonExecutable(), files, outDir, device, fast, uncertainty, labels,
                                classify=classify, preprocess=preprocess, save_registered=saveRegistered)
        env = dict(os.environ)
        import GliomaAnalysisLib  # the child imports the same library (and its Resources/models) as this process
        paths = [os.path.dirname(os.path.abspath(__file__)),
                 os.path.dirname(os.path.dirname(os.path.abspath(GliomaAnalysisLib.__file__))), env.get("PYTHONPATH")]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(path for path in paths if path))
        logging.info("GliomaAnalysis: %s", " ".join(command))
        return AnalysisRun(command, env, outDir, workDir, onProgress, onFinished, onDone=lambda run: None)

    def process(self, inputs, outputSegmentation=None, device="auto", fast=False, uncertainty=True,
                labels="brats2021", classify=True, preprocess="auto", saveRegistered=False):
        """Blocking analysis for the Python console: ``inputs`` maps modality keys to volume nodes.

        Returns a dict with the segmentation, probability / uncertainty volumes, the table node and the report.
        """
        run = self.start(inputs, device, fast, uncertainty, labels, classify=classify, preprocess=preprocess,
                         saveRegistered=saveRegistered)
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
        registered = self._loadRegistered(outDir, reference)
        self._placeInStudy(reference, [segmentation, table, *maps.values(), *registered.values()])
        return {"segmentation": segmentation, "maps": maps, "table": table, "report": report,
                "registered": registered}

    @staticmethod
    def _loadRegistered(outDir, reference):
        """The co-registered inputs the CLI kept (``--save-registered``), as hidden volumes; {} when none."""
        folder = os.path.join(outDir, "registered")
        if not os.path.isdir(folder):
            return {}
        volumes = {}
        for name in sorted(os.listdir(folder)):
            if name.endswith(".nii.gz"):
                modality = name[:-len(".nii.gz")]
                volumes[modality] = slicer.util.loadVolume(
                    os.path.join(folder, name), {"name": f"{reference.GetName()} registered {modality}", "show": False})
        return volumes

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

    # --- sample data ---------------------------------------------------------------------------------------------
    @staticmethod
    def loadSamplePhantom(folder=None):
        """Generate (once per ``folder``, default ``sampleCacheFolder()``) the synthetic phantom of
        ``glioma-analysis demo`` and load its four volumes as GliomaPhantom_t1, _t1ce, _t2 and _flair, the names the
        selectors assign; returns modality -> volume node. Synthetic, never real data."""
        qt.QApplication.setOverrideCursor(qt.Qt.WaitCursor)
        try:
            files = write_sample_phantom(folder or sampleCacheFolder())
            nodes = {modality: slicer.util.loadVolume(files[modality],
                                                      {"name": node_name_for_file(os.path.basename(files[modality]))})
                     for modality in MODALITIES}
        finally:
            qt.QApplication.restoreOverrideCursor()
        slicer.util.setSliceViewerLayers(background=nodes["t1ce"], fit=True)
        return nodes


class GliomaAnalysisTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_phantom_end_to_end()
        self.setUp()
        self.test_sample_data()

    @staticmethod
    def _tableItems(table):
        """(item, value, uncertainty) rows of a results table node."""
        return [tuple(table.GetCellText(row, column) for column in range(3)) for row in range(table.GetNumberOfRows())]

    def test_phantom_end_to_end(self):
        """A synthetic phantom through the logic, with and without classification: segments, the table (exactly the
        rows of helpers.table_rows, prediction rows included when classifying) and input nodes left unchanged."""
        from GliomaAnalysisLib.synthetic.phantom import make_phantom, write_phantom

        folder = tempfile.mkdtemp(prefix="GliomaAnalysisTest-")
        case = write_phantom(make_phantom(2024, (96, 96, 62), (2.5, 2.5, 2.5)), folder)
        inputs = {m: slicer.util.loadVolume(os.path.join(case, f"{case.name}_{m}.nii.gz")) for m in MODALITIES}
        before = {m: slicer.util.arrayFromVolume(node).copy() for m, node in inputs.items()}
        result = GliomaAnalysisLogic().process(inputs, fast=True)
        segmentation = result["segmentation"].GetSegmentation()
        self.assertGreaterEqual(segmentation.GetNumberOfSegments(), 1)
        self.assertTrue(segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName("ED")))
        rows = self._tableItems(result["table"])
        self.assertEqual(rows, table_rows(result["report"]))
        values = {item: value for item, value, _ in rows}
        for task in ("grade", "idh", "codeletion_1p19q", "mgmt"):
            self.assertIn(task, values)
            self.assertNotEqual(values[task], "not available")
        self.assertIn("MGMT late fusion: P(methylated)", values)
        self.assertIn("slice grade (attention): P(HGG)", values)

        unclassified = GliomaAnalysisLogic().process(inputs, fast=True, classify=False)
        values = {item: value for item, value, _ in self._tableItems(unclassified["table"])}
        self.assertEqual([values[t] for t in ("grade", "idh", "codeletion_1p19q", "mgmt")], ["not available"] * 4)
        self.assertNotIn("MGMT late fusion: P(methylated)", values)
        self.assertIn("WT volume (mL)", values)
        for modality, node in inputs.items():
            self.assertTrue((slicer.util.arrayFromVolume(node) == before[modality]).all())
        self.delayDisplay("GliomaAnalysis phantom test passed")

    def test_sample_data(self):
        """The SampleData entry: registered under "GliomaAnalysis"; its customDownloader loads the four phantom
        volumes under the names the selectors assign."""
        import SampleData

        registerSampleData()
        registerSampleData()  # again, as on a module reload: replaced, not duplicated
        sources = [s for s in SampleData.SampleDataLogic.sampleDataSourcesByCategory("GliomaAnalysis")
                   if s.sampleName == SAMPLE_NAME]
        self.assertEqual(len(sources), 1)
        nodes = sources[0].customDownloader(sources[0])
        self.assertEqual([node.GetName() for node in nodes],
                         ["GliomaPhantom_t1", "GliomaPhantom_t1ce", "GliomaPhantom_t2", "GliomaPhantom_flair"])
        self.assertEqual(slicer.util.arrayFromVolume(nodes[1]).shape, (155, 240, 240))
        volumes = [node.GetName() for node in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")]
        self.assertEqual(assign_nodes(volumes), dict(zip(MODALITIES, [node.GetName() for node in nodes])))
        self.delayDisplay("GliomaAnalysis sample data test passed")
