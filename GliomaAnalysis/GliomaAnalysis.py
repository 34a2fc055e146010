"""GliomaAnalysis: 3D Slicer scripted module (thin GUI over GliomaAnalysisLib and the Qt-free scene layer).

The analysis runs out of process: the input volumes are written to a temporary folder and the library's command line
(`python -m GliomaAnalysisLib.cli analyze`) is launched with Slicer's Python; its progress lines are polled with a
QTimer so the GUI stays responsive, Cancel (or closing the scene) kills the process tree, and the results are loaded
into the scene (GliomaAnalysisModuleLib/scene.py) only when the run succeeded. Research use only; not a medical device.
"""
import importlib
import importlib.util
import logging
import os
import shutil
import sys
from typing import Annotated

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the bundled GliomaAnalysisLib and helpers
if os.path.isdir(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "GliomaAnalysisLib")):
    sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a source checkout (CTest)
from GliomaAnalysisModuleLib import scene  # noqa: E402
from GliomaAnalysisModuleLib.child import ChildRun  # noqa: E402
from GliomaAnalysisModuleLib.helpers import (SAMPLE_NAME, assign_nodes, build_command, common_transform,  # noqa: E402
                                             node_name_for_file, registration_keywords, run_state,
                                             sample_data_sources, write_sample_phantom)

MODALITIES = ("t1", "t1ce", "t2", "flair")
POLL_MS = 50  # how often the GUI thread reads the running child's progress and exit (a few microseconds a tick)
RESEARCH_USE = "Research use only; not a medical device. Results must not be used for clinical decisions."
TORCH_REQUIREMENT = ">=2.0"  # pyproject.toml's torch requirement, passed to PyTorchUtils.installTorch
REQUIREMENTS = ("SimpleITK>=2.2", "scipy>=1.8", "scikit-image>=0.19", "safetensors>=0.4",
                "highdicom>=0.22", "onnxruntime>=1.16", "openvino>=2025.0", "isal>=1.6", "onnx>=1.14")
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
    """SampleData's ``customDownloader`` (called with the SampleDataSource): load the synthetic phantom, put its
    volumes into this module's selectors (through the parameter node) and open the module, so that Apply is the
    second click. Returns the loaded volume nodes."""
    logic = GliomaAnalysisLogic()
    with slicer.util.tryWithErrorDisplay("Could not create the GliomaAnalysis sample case.", waitCursor=True):
        nodes = logic.loadSamplePhantom()
    parameters = logic.getParameterNode()
    for modality, node in nodes.items():
        setattr(parameters, modality, node)
    parameters.inputsAssigned = True
    if slicer.util.mainWindow():
        slicer.util.selectModule("GliomaAnalysis")
    return list(nodes.values())


@parameterNodeWrapper
class GliomaAnalysisParameterNode:
    t1: vtkMRMLScalarVolumeNode
    t1ce: vtkMRMLScalarVolumeNode
    t2: vtkMRMLScalarVolumeNode
    flair: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"
    fast: bool = False
    uncertainty: bool = True
    labels: Annotated[str, Choice(["brats2021", "brats2023"])] = "brats2021"
    classify: bool = True
    preprocess: Annotated[str, Choice(["auto", "none", "brats"])] = "auto"
    saveRegistered: bool = False
    inputsAssigned: bool = False  # not GUI-bound: the selectors were filled from node names once (never again)


class GliomaAnalysisWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._run = None
        self._lastRun = None  # the finished run whose output folder "Save report" copies from

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/GliomaAnalysis.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
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
        if self._lastRun:
            self._lastRun.removeFiles()

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateApplyButton)

    def onSceneStartClose(self, caller, event):
        if self._run:  # its inputs and outputs are going away: stop it; onFinished leaves the scene alone
            self._run.cancel()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        """Bind the module's parameter node; fill the modality selectors from node names only the first time, so a
        slot the user cleared stays empty."""
        self.setParameterNode(self.logic.getParameterNode())
        if self._parameterNode.inputsAssigned:
            return
        volumes = slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
        volumes = [node for node in volumes if not node.IsA("vtkMRMLLabelMapVolumeNode")]
        byName = {node.GetName(): node for node in volumes}
        for modality, name in assign_nodes(node.GetName() for node in volumes).items():
            if not getattr(self._parameterNode, modality):
                setattr(self._parameterNode, modality, byName[name])
        self._parameterNode.inputsAssigned = bool(volumes)

    def setParameterNode(self, inputParameterNode):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateApplyButton)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateApplyButton)
        self._updateApplyButton()

    def _inputs(self):
        return {m: getattr(self._parameterNode, m) for m in MODALITIES if getattr(self._parameterNode, m)}

    def _updateApplyButton(self, caller=None, event=None):
        """Apply needs at least one input; while a run goes the button is Cancel and always enabled."""
        if self._run:
            self.ui.applyButton.enabled = True
            return
        ready = bool(self._parameterNode and self._inputs())
        self.ui.applyButton.enabled = ready
        self.ui.applyButton.toolTip = ("Segment the selected volumes" if ready
                                       else "Select at least one input volume (T1, T1CE, T2 or FLAIR)")

    def _setRunning(self, running):
        """Lock the inputs and options while a run goes (the run keeps the nodes captured at its start)."""
        self.ui.inputsCollapsibleButton.enabled = not running
        self.ui.outputsCollapsibleButton.enabled = not running
        self.ui.saveReportButton.enabled = (not running) and self._lastRun is not None
        self.ui.applyButton.text = "Cancel" if running else "Apply"
        self._updateApplyButton()

    def _setState(self, state):
        self.ui.statusLabel.text = state

    def onApplyButton(self):
        if self._run:  # the button reads Cancel while a run is going
            self._run.cancel()
            return
        inputs = self._inputs()
        if not inputs:
            return
        with slicer.util.tryWithErrorDisplay("Could not install the Python packages GliomaAnalysis needs."):
            if not self.logic.ensureDependencies(ask=True):
                return
        self.ui.logTextEdit.clear()
        self.ui.progressBar.value = 0
        self._setState("Starting")
        parameters = self._parameterNode
        with slicer.util.tryWithErrorDisplay("Could not start the analysis."):
            try:
                self._run = self.logic.start(inputs, parameters.device, parameters.fast, parameters.uncertainty,
                                             parameters.labels, onProgress=self.onProgress,
                                             onFinished=self.onFinished, classify=parameters.classify,
                                             preprocess=parameters.preprocess,
                                             saveRegistered=parameters.saveRegistered,
                                             outputSegmentation=parameters.outputSegmentation)
            except Exception:
                self._setState("Failed")
                raise
        self._setRunning(True)

    def onProgress(self, fraction, message):
        if fraction is not None:
            self.ui.progressBar.value = int(100 * fraction)
        if message:
            self.ui.logTextEdit.appendPlainText(message)
            state = run_state(message)
            if state:
                self._setState(state)

    def onFinished(self, run):
        """Called once when the child has ended: load the results of the nodes captured at the start."""
        self._run = None
        self._setRunning(False)
        if run.cancelled:
            run.removeFiles()
            self._setState("Cancelled")
            self.ui.logTextEdit.appendPlainText("Cancelled; the scene was left unchanged.")
            return
        if run.error:
            run.removeFiles()
            self._setState("Failed")
            self.ui.logTextEdit.appendPlainText(run.error)
            slicer.util.errorDisplay(run.error, detailedText="".join(run.log))
            return
        self._setState("Loading")
        try:
            with slicer.util.tryWithErrorDisplay("Could not load the results into the scene.", waitCursor=True):
                result = self.logic.loadResults(run.outDir, run.inputs, run.outputSegmentation)
        except Exception:
            run.removeFiles()
            self._setState("Failed")
            return
        if self._lastRun:
            self._lastRun.removeFiles()
        self._lastRun = run
        run.removeInputs()
        if self._parameterNode:
            self._parameterNode.outputSegmentation = result["segmentation"]
        self.ui.show3DButton.setSegmentationNode(result["segmentation"])
        self.ui.saveReportButton.enabled = True
        self.ui.progressBar.value = 100
        self._setState("Done")

    def onSaveReport(self):
        folder = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), "Save the report files into")
        if folder:
            with slicer.util.tryWithErrorDisplay("Could not copy the report files."):
                self.logic.saveReport(self._lastRun.outDir, folder)


class AnalysisRun(ChildRun):
    """One out-of-process run of the library's CLI (child.ChildRun), polled from the GUI thread with a QTimer. It also
    keeps what it was started with (``inputs``, ``outputSegmentation``), so that the results go to those nodes."""

    def __init__(self, command, env, workDir, inputs, outputSegmentation, onProgress, onFinished):
        ChildRun.__init__(self, command, env, workDir, onProgress)
        self.inputs, self.outputSegmentation = dict(inputs), outputSegmentation
        self._onFinished = onFinished
        self._timer = qt.QTimer()
        self._timer.setInterval(POLL_MS)
        self._timer.connect("timeout()", self._tick)
        self._timer.start()

    def _tick(self):
        if self.poll():
            self._timer.stop()
            if self._onFinished:
                self._onFinished(self)

    def wait(self):
        """Block until the run ends (console / tests), still processing its output."""
        ChildRun.wait(self)
        self._timer.stop()


class GliomaAnalysisLogic(ScriptedLoadableModuleLogic):
    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return GliomaAnalysisParameterNode(super().getParameterNode())

    # --- dependencies --------------------------------------------------------------------------------------------
    def ensureDependencies(self, ask=True):
        """torch through the PyTorch extension, the rest through Slicer's installer after asking; False if declined
        (or, in ``ask=False`` mode on a machine without the PyTorch extension, not possible)."""
        if importlib.util.find_spec("torch") is None:  # found, not imported: only the child process needs torch
            try:
                import PyTorchUtils
            except ImportError:
                raise RuntimeError("GliomaAnalysis needs the PyTorch extension: install 'PyTorch' from the "
                                   "Extensions Manager and restart Slicer.") from None
            torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=ask,
                                                                   torchVersionRequirement=TORCH_REQUIREMENT)
            if torch is None:
                return False  # declined
        missing = self.missingRequirements()
        if not missing:
            return True
        try:  # Slicer 5.12+: uv with a dry run and its own confirmation
            packaging = importlib.import_module("slicer.packaging")  # "import slicer.packaging" would rebind slicer
        except ImportError:
            packaging = None
        if packaging is not None:
            try:
                packaging.pip_install(missing, interactive=ask)
            except packaging.InstallationAbortedError:
                return False
        else:  # Slicer 5.8-5.11: ask, then pip
            if ask and not slicer.util.confirmOkCancelDisplay(
                    "GliomaAnalysis needs these Python packages, which will now be installed:\n" + "\n".join(missing)):
                return False
            slicer.util.pip_install(missing)
        still = self.missingRequirements()
        if still:
            raise RuntimeError("These packages are still missing after the installation: " + ", ".join(still))
        return True

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
              onFinished=None, classify=True, preprocess="auto", saveRegistered=False, outputSegmentation=None):
        """Write the input volumes and launch the CLI; returns the AnalysisRun (poll-driven, non-blocking).

        classify: also predict grade, IDH, 1p/19q and MGMT (table rows; the CLI's --no-classify when False);
        preprocess: auto | none | brats (clinical scans); saveRegistered: keep the co-registered inputs
        (loaded with the results). Inputs under different parent transforms are refused (ValueError); under one
        transform they are sent in their local coordinates and the results are placed under that transform.
        """
        import SimpleITK as sitk
        import sitkUtils

        common_transform({modality: node.GetTransformNodeID() for modality, node in inputs.items()})
        workDir = slicer.util.tempDirectory("GliomaAnalysis-")
        try:
            files = {}
            os.makedirs(os.path.join(workDir, "inputs"))
            for modality, node in inputs.items():
                path = os.path.join(workDir, "inputs", f"{modality}.nrrd")
                # sitkUtils reads the voxels and geometry without touching the node; slicer.util.saveNode would
                # point the node's storage node at this temporary copy. Uncompressed: the copy lives for one run,
                # and gzip cost about 0.04 s a volume here and again in the child.
                try:
                    sitk.WriteImage(sitkUtils.PullVolumeFromSlicer(node), path, False)
                except RuntimeError as exc:
                    raise RuntimeError(f"Could not write {node.GetName()} to {path}: {exc}") from None
                files[modality] = path
            command = build_command(self.pythonExecutable(), files, os.path.join(workDir, "out"), device, fast,
                                    uncertainty, labels, classify=classify, preprocess=preprocess,
                                    save_registered=saveRegistered)
            env = dict(os.environ)
            import GliomaAnalysisLib  # the child imports the same library (and its Resources/models) as this process
            paths = [os.path.dirname(os.path.abspath(__file__)),
                     os.path.dirname(os.path.dirname(os.path.abspath(GliomaAnalysisLib.__file__))),
                     env.get("PYTHONPATH")]
            env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(path for path in paths if path))
            logging.info("GliomaAnalysis: %s", " ".join(command))
            return AnalysisRun(command, env, workDir, inputs, outputSegmentation, onProgress, onFinished)
        except Exception:
            shutil.rmtree(workDir, ignore_errors=True)
            raise

    def process(self, inputs, outputSegmentation=None, device="auto", fast=False, uncertainty=True,
                labels="brats2021", classify=True, preprocess="auto", saveRegistered=False):
        """Blocking analysis for the Python console: ``inputs`` maps modality keys to volume nodes. Installs the
        dependencies first (asking), removes its temporary folder afterwards.

        Returns a dict with the segmentation, probability / uncertainty volumes, the table node and the report.
        """
        if not self.ensureDependencies(ask=True):
            raise RuntimeError("GliomaAnalysis needs torch and its Python packages; the installation was declined.")
        run = self.start(inputs, device, fast, uncertainty, labels, classify=classify, preprocess=preprocess,
                         saveRegistered=saveRegistered)
        try:
            run.wait()
            if run.error:
                raise RuntimeError(run.error)
            return self.loadResults(run.outDir, inputs, outputSegmentation)
        finally:
            run.removeFiles()

    # --- results into the scene ----------------------------------------------------------------------------------
    @staticmethod
    def sceneLogics():
        """The scene layer's view of this Slicer: the scene and the module logics."""
        return scene.SceneLogics(slicer.mrmlScene, slicer.modules.volumes.logic(),
                                 slicer.modules.segmentations.logic(), slicer.modules.terminologies.logic())

    def loadResults(self, outDir, inputs, outputSegmentation=None):
        """The output folder into the scene (scene.load_results), then shown: the reference with the P(ET) overlay,
        the segmentation in 3D and the results table in the table view."""
        report = scene.read_report(outDir)
        reference = inputs.get(report["inputs"]["reference"]) or next(iter(inputs.values()))
        result = scene.load_results(self.sceneLogics(), outDir, reference, outputSegmentation)
        slicer.util.setSliceViewerLayers(background=reference, foreground=result["maps"].get("prob_et"),
                                         foregroundOpacity=0.4)
        self.showTable(result["table"])
        return result

    @staticmethod
    def showTable(table):
        """Switch to a layout with a table view and show ``table`` there (as the Tables module does)."""
        layoutManager = slicer.app.layoutManager()
        if layoutManager is None:  # no main window (batch mode)
            return
        layoutManager.setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpTableView)
        slicer.app.applicationLogic().GetSelectionNode().SetActiveTableID(table.GetID())
        slicer.app.applicationLogic().PropagateTableSelection()

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
        files = write_sample_phantom(folder or sampleCacheFolder())
        nodes = {modality: slicer.util.loadVolume(files[modality],
                                                  {"name": node_name_for_file(os.path.basename(files[modality]))})
                 for modality in MODALITIES}
        slicer.util.setSliceViewerLayers(background=nodes["t1ce"], fit=True)
        return nodes


class GliomaAnalysisTest(ScriptedLoadableModuleTest):
    """Reload & Test in Slicer, and Slicer's CTest. The end-to-end run (one fast CPU inference, with the classifiers)
    installs the dependencies first; on a build machine (testing mode) without torch it is skipped, as the
    reference extensions do, and the scene and sample tests still run."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_sample_data()
        self.setUp()
        self.test_phantom_end_to_end()

    def test_phantom_end_to_end(self):
        """A small synthetic phantom through the logic: segments named from the terminology, the table rows of
        the report, results in the input's study and the input nodes left unchanged."""
        from GliomaAnalysisLib.synthetic.phantom import make_phantom, write_phantom
        from GliomaAnalysisModuleLib.helpers import table_rows

        logic = GliomaAnalysisLogic()
        if slicer.app.testingEnabled() and logic.missingRequirements() + self._torchMissing():
            self.delayDisplay("GliomaAnalysis end-to-end test skipped: torch or its packages are not installed "
                              "(testing mode installs nothing)")
            return
        folder = slicer.util.tempDirectory("GliomaAnalysisTest-")
        try:
            case = write_phantom(make_phantom(2024, (96, 96, 62), (2.5, 2.5, 2.5)), folder)
            inputs = {m: slicer.util.loadVolume(os.path.join(case, f"{case.name}_{m}.nii.gz")) for m in MODALITIES}
            before = {m: slicer.util.arrayFromVolume(node).copy() for m, node in inputs.items()}
            result = logic.process(inputs, fast=True)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        segmentation = result["segmentation"].GetSegmentation()
        names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
        self.assertEqual(names, ["NCR", "ED", "ET"])
        self.assertEqual(scene.table_cells(result["table"]), table_rows(result["report"]))
        values = {row[0]: row[1] for row in scene.table_cells(result["table"])}
        for task in ("grade", "idh", "codeletion_1p19q", "mgmt"):
            self.assertNotEqual(values[task], "not available")
        reference = result["segmentation"].GetNodeReference(
            result["segmentation"].GetReferenceImageGeometryReferenceRole())
        self.assertEqual(reference.GetID(), inputs["t1ce"].GetID())
        for modality, node in inputs.items():
            self.assertTrue((slicer.util.arrayFromVolume(node) == before[modality]).all())
        self.delayDisplay("GliomaAnalysis phantom test passed")

    @staticmethod
    def _torchMissing():
        try:
            import torch  # noqa: F401
        except ImportError:
            return ["torch"]
        return []

    def test_sample_data(self):
        """The SampleData entry: registered under "GliomaAnalysis"; its customDownloader loads the four phantom
        volumes under the names the selectors assign and puts them into the parameter node."""
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
        parameters = GliomaAnalysisLogic().getParameterNode()
        self.assertEqual([getattr(parameters, m).GetID() for m in MODALITIES], [node.GetID() for node in nodes])
        self.delayDisplay("GliomaAnalysis sample data test passed")
