"""The defects of issue 14 that a test can see without a running Slicer: static checks of GliomaAnalysis.py, its .ui
file and the publishing files against Slicer's real sources (cited per test). Each failed on the code before the
fix. What needs Qt (the widget itself) is listed in the README's "3D Slicer module" section."""
import argparse
import ast
import json
import re
import urllib.parse
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODULE = ROOT / "GliomaAnalysis" / "GliomaAnalysis.py"
SCENE = ROOT / "GliomaAnalysis" / "GliomaAnalysisModuleLib" / "scene.py"
UI = ROOT / "GliomaAnalysis" / "Resources" / "UI" / "GliomaAnalysis.ui"


def _tree(path=MODULE):
    return ast.parse(path.read_text())


def _class(name):
    return next(n for n in _tree().body if isinstance(n, ast.ClassDef) and n.name == name)


def _method(cls, name):
    return next(n for n in _class(cls).body if isinstance(n, ast.FunctionDef) and n.name == name)


def _calls(node, name):
    return [n for n in ast.walk(node) if isinstance(n, ast.Call)
            and (getattr(n.func, "id", None) == name or getattr(n.func, "attr", None) == name)]


def _inside_try_with_error_display(function, call_name):
    """Every call of ``call_name`` in ``function`` sits in a ``with slicer.util.tryWithErrorDisplay(...)`` block."""
    blocks = [w for w in ast.walk(function) if isinstance(w, ast.With)
              and any("tryWithErrorDisplay" in ast.unparse(item.context_expr) for item in w.items)]
    calls = _calls(function, call_name)
    covered = {id(c) for block in blocks for c in _calls(block, call_name)}
    return bool(calls) and all(id(c) in covered for c in calls)


def _widgets():
    return {w.get("name"): w for w in ET.parse(UI).getroot().iter("widget")}


# 1 -------------------------------------------------------------------------------------------------------------------
def test_combo_box_parameters_carry_the_choice_annotation_with_the_cli_choices():
    """guiConnectors.QComboBoxToStringableConnector.create raises "requires the Choice annotation" for a plain str
    bound to a QComboBox; the choices must be what the CLI accepts."""
    from GliomaAnalysisLib.cli import build_parser

    analyze = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices["analyze"]
    cli_choices = {a.dest: list(a.choices) for a in analyze._actions if a.choices}
    wrapper = _class("GliomaAnalysisParameterNode")
    fields = {n.target.id: n for n in wrapper.body if isinstance(n, ast.AnnAssign)}
    combos = {w.find("property[@name='SlicerParameterName']/string").text
              for w in _widgets().values() if w.get("class") == "QComboBox"}
    assert combos == {"device", "labels", "preprocess"}
    for name in combos:
        annotation = fields[name].annotation
        assert ast.unparse(annotation).startswith("Annotated[str, Choice(["), name
        choices = ast.literal_eval(annotation.slice.elts[1].args[0])
        assert choices == cli_choices[name], name
        assert fields[name].value.value == analyze.get_default(name), name
    # the connector fills the combo boxes itself: no addItems left in setup()
    assert not _calls(_method("GliomaAnalysisWidget", "setup"), "addItems")


# 2 -------------------------------------------------------------------------------------------------------------------
def test_publishing_files_pass_the_extensions_index_checks():
    """Slicer/ExtensionsIndex scripts/check_description_files.py, offline parts: the extension name is the index
    file's stem and the CMake project name; the repository name contains "slicer"; https scm_url; a licence file;
    icon and screenshot URLs that point at files of this repository."""
    (index,) = [p for p in ROOT.glob("*.json") if "$schema" in p.read_text()]
    assert index.name == "GliomaAnalysis.json" and not (ROOT / "GliomaAnalysis.s4ext.json").exists()
    entry = json.loads(index.read_text())
    cmake = (ROOT / "CMakeLists.txt").read_text()
    assert re.findall(r"project\s*\(\s*([^\s\)\n\r]+)", cmake, re.I)[0] == index.stem
    url = urllib.parse.urlsplit(entry["scm_url"])
    repository = url.path.split("/")[-1].removesuffix(".git")
    assert url.scheme == "https" and repository == "SlicerGliomaAnalysis" and "slicer" in repository.lower()
    owner = url.path.split("/")[1]
    licence = (ROOT / "LICENSE").read_text()
    assert licence.lstrip().startswith("Apache License") and "Version 2.0, January 2004" in licence
    assert 'license = "Apache-2.0"' in (ROOT / "pyproject.toml").read_text()  # SPDX expression
    raw = f"https://raw.githubusercontent.com/{owner}/{repository}/main/"
    icon = re.findall(r'set\s*\(EXTENSION_ICONURL\s*"([^"]+)"[ ]*\)', cmake)[0]
    shots = re.findall(r'set\s*\(EXTENSION_SCREENSHOTURLS\s*"([^"]+)"\)', cmake)[0].split()
    for link in [icon, *shots]:
        assert link.startswith(raw) and link.endswith(".png"), link
        assert (ROOT / link[len(raw):]).is_file(), link
    assert shots == [raw + "Resources/screenshot.png"]
    assert f"https://github.com/{owner}/{repository}" in re.findall(r'EXTENSION_HOMEPAGE "([^"]+)"', cmake)[0]


# 3 -------------------------------------------------------------------------------------------------------------------
def test_errors_are_displayed_and_a_crash_keeps_the_stderr_tail():
    """slicer.util.tryWithErrorDisplay around ensureDependencies, start and loadResults (Slicer's util.py: it shows
    the message with the traceback as detailed text, then re-raises); the run keeps every stderr line."""
    assert _inside_try_with_error_display(_method("GliomaAnalysisWidget", "onApplyButton"), "ensureDependencies")
    assert _inside_try_with_error_display(_method("GliomaAnalysisWidget", "onApplyButton"), "start")
    assert _inside_try_with_error_display(_method("GliomaAnalysisWidget", "onFinished"), "loadResults")
    assert [ast.unparse(b) for b in _class("AnalysisRun").bases] == ["ChildRun"]  # test_slicer_child runs it
    finished = ast.unparse(_method("GliomaAnalysisWidget", "onFinished"))
    assert "errorDisplay(run.error, detailedText=''.join(run.log))" in finished


# 4 -------------------------------------------------------------------------------------------------------------------
def test_self_test_installs_dependencies_and_runs_inference_once():
    process = _method("GliomaAnalysisLogic", "process")
    first = process.body[1] if isinstance(process.body[0], ast.Expr) else process.body[0]
    assert "self.ensureDependencies(ask=True)" in ast.unparse(first)  # before anything runs
    test = _class("GliomaAnalysisTest")
    assert len(_calls(test, "process")) == 1  # one fast CPU inference, not two
    end_to_end = ast.unparse(_method("GliomaAnalysisTest", "test_phantom_end_to_end"))
    assert "slicer.app.testingEnabled()" in end_to_end  # build machines without torch skip it, as MONAIAuto3DSeg


# 5 -------------------------------------------------------------------------------------------------------------------
def test_inputs_are_captured_at_start_the_gui_locked_and_scene_close_cancels():
    finished = _method("GliomaAnalysisWidget", "onFinished")
    assert "self._parameterNode." not in ast.unparse(finished).replace("self._parameterNode.outputSegmentation =", "")
    (load,) = _calls(finished, "loadResults")
    assert [ast.unparse(a) for a in load.args] == ["run.outDir", "run.inputs", "run.outputSegmentation"]
    assert "self.inputs, self.outputSegmentation = (dict(inputs), outputSegmentation)" in ast.unparse(
        _method("AnalysisRun", "__init__"))
    running = ast.unparse(_method("GliomaAnalysisWidget", "_setRunning"))
    assert "self.ui.inputsCollapsibleButton.enabled = not running" in running
    assert "self.ui.outputsCollapsibleButton.enabled = not running" in running
    assert "self._run.cancel()" in ast.unparse(_method("GliomaAnalysisWidget", "onSceneStartClose"))


# 6 -------------------------------------------------------------------------------------------------------------------
def test_enter_fills_the_selectors_only_once():
    initialize = _method("GliomaAnalysisWidget", "initializeParameterNode")
    guard = initialize.body[2]
    assert ast.unparse(guard) == "if self._parameterNode.inputsAssigned:\n    return"
    assert "self._parameterNode.inputsAssigned = bool(volumes)" in ast.unparse(initialize)
    assert "parameters.inputsAssigned = True" in ast.unparse(_tree().body[[
        getattr(n, "name", "") for n in _tree().body].index("downloadSamplePhantom")])


# 7 -------------------------------------------------------------------------------------------------------------------
def test_parent_transforms_are_checked_and_followed():
    start = ast.unparse(_method("GliomaAnalysisLogic", "start"))
    assert "common_transform({modality: node.GetTransformNodeID() for modality, node in inputs.items()})" in start
    assert "SetAndObserveTransformNodeID(transformID)" in SCENE.read_text()  # test_scene checks the nodes


# 8 -------------------------------------------------------------------------------------------------------------------
def test_selectors_offer_plain_scalar_volumes_only():
    """vtkMRMLLabelMapVolumeNode and vtkMRMLVectorVolumeNode derive from vtkMRMLScalarVolumeNode: without
    showChildNodeTypes=false the selectors list them."""
    widgets = _widgets()
    for modality in ("t1", "t1ce", "t2", "flair"):
        properties = {p.get("name"): p for p in widgets[f"{modality}Selector"].findall("property")}
        assert properties["nodeTypes"].find("stringlist/string").text == "vtkMRMLScalarVolumeNode"
        assert properties["showChildNodeTypes"].find("bool").text == "false", modality


# 9 -------------------------------------------------------------------------------------------------------------------
def test_child_process_has_no_console_and_temporary_folders_are_removed():
    text = MODULE.read_text()
    assert "tempfile" not in text and "slicer.util.tempDirectory('GliomaAnalysis-')" in ast.unparse(
        _method("GliomaAnalysisLogic", "start"))
    child = (ROOT / "GliomaAnalysis" / "GliomaAnalysisModuleLib" / "child.py").read_text()
    assert "text=True, **popen_options())" in child  # the options: test_slicer_helpers
    finished = ast.unparse(_method("GliomaAnalysisWidget", "onFinished"))
    assert finished.count("run.removeFiles()") == 3  # cancelled, failed, not loadable
    assert "run.removeInputs()" in finished and "self._lastRun.removeFiles()" in finished
    assert "run.removeFiles()" in ast.unparse(_method("GliomaAnalysisLogic", "process"))


# 10 ------------------------------------------------------------------------------------------------------------------
def test_installer_terminology_dicom_reference_torch_version_apply_and_table():
    text = MODULE.read_text()
    assert "slicer.pydeps" not in text and 'importlib.import_module("slicer.packaging")' in text
    ensure = ast.unparse(_method("GliomaAnalysisLogic", "ensureDependencies"))
    assert "packaging.pip_install(missing, interactive=ask)" in ensure  # slicer/packaging/installer.py
    assert "except packaging.InstallationAbortedError:" in ensure
    (install,) = _calls(_method("GliomaAnalysisLogic", "ensureDependencies"), "installTorch")
    assert {k.arg: ast.unparse(k.value) for k in install.keywords} == {
        "askConfirmation": "ask", "torchVersionRequirement": "TORCH_REQUIREMENT"}
    assert re.search(r'"torch(>=[\d.]+)"', (ROOT / "pyproject.toml").read_text()).group(1) == \
        ast.literal_eval(next(n.value for n in _tree().body if isinstance(n, ast.Assign)
                              and ast.unparse(n.targets[0]) == "TORCH_REQUIREMENT"))
    scene = SCENE.read_text()
    assert "LoadTerminologyFromFile" in scene  # the .term.json is loaded; names come from it (test_scene)
    assert "SetNodeReferenceID(segmentation.GetReferenceImageGeometryReferenceRole(), reference.GetID())" in scene
    update = ast.unparse(_method("GliomaAnalysisWidget", "_updateApplyButton"))
    assert "ready = bool(self._parameterNode and self._inputs())" in update
    assert "self.ui.applyButton.enabled = ready" in update
    assert "vtk.vtkCommand.ModifiedEvent, self._updateApplyButton" in ast.unparse(
        _method("GliomaAnalysisWidget", "setParameterNode"))
    show = ast.unparse(_method("GliomaAnalysisLogic", "showTable"))
    assert "SlicerLayoutFourUpTableView" in show and "SetActiveTableID(table.GetID())" in show
    assert "self.showTable(result['table'])" in ast.unparse(_method("GliomaAnalysisLogic", "loadResults"))
    assert _widgets()["show3DButton"].get("class") == "qMRMLSegmentationShow3DButton"


def test_scene_layer_is_qt_free_python_3_9_and_the_only_scene_code():
    for path in (SCENE, SCENE.with_name("child.py"), SCENE.with_name("helpers.py")):
        tree = _tree(path)
        ast.parse(path.read_text(), feature_version=(3, 9))
        imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert imported.isdisjoint({"qt", "ctk"}), path.name
        assert not [n for n in ast.walk(tree) if isinstance(n, ast.Attribute) and ast.unparse(n) == "slicer.util"]
    module = MODULE.read_text()
    for moved in ("ImportLabelmapToSegmentationNode", "vtkStringArray", "SetItemParent", "loadLabelVolume",
                  "subprocess.Popen"):
        assert moved not in module, moved
    assert "scene.load_results(self.sceneLogics()" in module


def test_checking_dependencies_does_not_import_torch_into_slicer():
    """Only the child process runs torch: Slicer's own process finds it without importing it (1.1 s, 150 MB)."""
    ensure = ast.unparse(_method("GliomaAnalysisLogic", "ensureDependencies"))
    assert "import torch" not in ensure and "importlib.util.find_spec('torch') is None" in ensure


def test_the_module_installs_every_runtime_dependency_of_the_library():
    """The child process imports the library inside Slicer's Python: REQUIREMENTS must hold pyproject.toml's runtime
    dependencies, less torch (the PyTorch extension installs it), vtk and numpy (Slicer ships them)."""
    import tomllib
    declared = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])
    requirements = ast.literal_eval(next(n.value for n in _tree().body if isinstance(n, ast.Assign)
                                         and ast.unparse(n.targets[0]) == "REQUIREMENTS"))
    provided_by_slicer = {d for d in declared if re.match(r"(torch|vtk|numpy)\b", d)}
    assert set(requirements) == declared - provided_by_slicer
