"""Static checks of the Slicer module (Slicer itself cannot run here): every slicer.util name it calls exists in
Slicer's API, every widget it touches exists in its .ui file, every GUI-bound parameter exists, and the CMake lists
name files that exist."""
import ast
import re
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / "GliomaAnalysis" / "GliomaAnalysis.py"
UI = ROOT / "GliomaAnalysis" / "Resources" / "UI" / "GliomaAnalysis.ui"


def _tree():
    return ast.parse(MODULE.read_text())


def _known_util_names():
    lines = (ROOT / "Testing" / "slicer_util_api_names.txt").read_text().splitlines()
    return {line.strip() for line in lines if line.strip() and not line.startswith("#")}


def test_every_slicer_util_name_used_exists_in_slicers_api():
    used = set()
    for node in ast.walk(_tree()):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
                and node.value.attr == "util" and isinstance(node.value.value, ast.Name)
                and node.value.value.id == "slicer"):
            used.add(node.attr)
        if isinstance(node, ast.ImportFrom) and node.module == "slicer.util":
            used.update(alias.name for alias in node.names)
    assert used, "the module should use slicer.util"
    assert used - _known_util_names() == set()


def test_no_function_rebinds_the_slicer_name():
    """``import slicer.x`` inside a function makes ``slicer`` local there (UnboundLocalError on earlier uses)."""
    for function in (n for n in ast.walk(_tree()) if isinstance(n, ast.FunctionDef)):
        for node in ast.walk(function):
            if isinstance(node, ast.Import):
                assert not any(a.name.split(".")[0] == "slicer" and not a.asname for a in node.names), function.name


def test_every_ui_widget_the_code_uses_exists():
    widgets = {w.get("name") for w in ET.parse(UI).getroot().iter("widget")}
    used = set(re.findall(r"self\.ui\.(\w+)", MODULE.read_text()))
    assert used and used <= widgets, used - widgets


def test_gui_bound_parameters_exist_on_the_parameter_node():
    tree = _tree()
    wrapper = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == "GliomaAnalysisParameterNode")
    fields = {n.target.id for n in wrapper.body if isinstance(n, ast.AnnAssign)}
    bound = {p.find("string").text for p in ET.parse(UI).getroot().iter("property")
             if p.get("name") == "SlicerParameterName"}
    assert bound == fields


def test_module_keeps_to_the_slicer_module_shape():
    classes = {n.name for n in _tree().body if isinstance(n, ast.ClassDef)}
    assert {"GliomaAnalysis", "GliomaAnalysisWidget", "GliomaAnalysisLogic", "GliomaAnalysisTest"} <= classes
    text = MODULE.read_text()
    assert "def process(" in text and "Research use only" in text


def test_cmake_lists_name_existing_files():
    cmake = (ROOT / "GliomaAnalysis" / "CMakeLists.txt").read_text()
    block = re.findall(r"set\((MODULE_PYTHON_(?:SCRIPTS|RESOURCES))(.*?)\)", cmake, re.S)
    assert len(block) == 2
    for _, body in block:
        for entry in body.split():
            path = ROOT / "GliomaAnalysis" / entry.replace("${MODULE_NAME}", "GliomaAnalysis")
            assert path.is_file(), entry
    top = (ROOT / "CMakeLists.txt").read_text()
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", 'EXTENSION_DEPENDS "PyTorch"'):
        assert key in top
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in cmake
