"""Static checks of the Slicer module (Slicer itself cannot run here): every slicer.util name it calls exists in
Slicer's API, every widget it touches exists in its .ui file, every GUI-bound parameter exists, and the CMake lists
name files that exist."""
import ast
import re
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODULE = ROOT / "GliomaAnalysis" / "GliomaAnalysis.py"
UI = ROOT / "GliomaAnalysis" / "Resources" / "UI" / "GliomaAnalysis.ui"


def _tree():
    return ast.parse(MODULE.read_text())


def _known_util_names():
    lines = (ROOT / "Testing" / "slicer" / "slicer_util_api_names.txt").read_text().splitlines()
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
    assert bound == fields - {"inputsAssigned"}  # the one state field no widget shows


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


def test_module_code_parses_as_python_3_9():
    """Slicer 5.8 ships Python 3.9: the module, its helpers and the library it bundles must parse there."""
    files = [MODULE, *(ROOT / "GliomaAnalysis" / "GliomaAnalysisModuleLib").glob("*.py"),
             *(ROOT / "GliomaAnalysisLib").glob("*.py")]
    for path in files:
        ast.parse(path.read_text(), filename=str(path), feature_version=(3, 9))


def _calls(tree, name):
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call)
            and (getattr(n.func, "id", None) == name or getattr(n.func, "attr", None) == name)]


def test_classification_option_reaches_the_command_line():
    tree = _tree()
    wrapper = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == "GliomaAnalysisParameterNode")
    classify = next(n for n in wrapper.body if isinstance(n, ast.AnnAssign) and n.target.id == "classify")
    assert ast.unparse(classify.annotation) == "bool" and classify.value.value is True
    checkbox = next(w for w in ET.parse(UI).getroot().iter("widget") if w.get("name") == "classifyCheckBox")
    properties = {p.get("name"): p for p in checkbox.iter("property")}
    assert properties["checked"].find("bool").text == "true"
    assert properties["SlicerParameterName"].find("string").text == "classify"
    assert "MGMT" in properties["text"].find("string").text
    (command,) = _calls(tree, "build_command")
    assert {k.arg: ast.unparse(k.value) for k in command.keywords}["classify"] == "classify"
    starts = [c for c in _calls(tree, "start") if any(k.arg == "classify" for k in c.keywords)]
    assert sorted(ast.unparse(k.value) for c in starts for k in c.keywords if k.arg == "classify") == [
        "classify", "parameters.classify"]  # process(...) and the Apply button
    for function in ("start", "process"):
        definition = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == function)
        arguments = [a.arg for a in definition.args.args]
        defaults = dict(zip(arguments[-len(definition.args.defaults):], definition.args.defaults))
        assert defaults["classify"].value is True, function


def test_sample_data_is_registered_at_startup_the_slicer_way():
    tree = _tree()
    module_class = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "GliomaAnalysis")
    connects = [ast.unparse(c) for c in _calls(module_class, "connect")]
    assert connects == ["slicer.app.connect('startupCompleted()', registerSampleData)"]
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert {"registerSampleData", "downloadSamplePhantom", "sampleCacheFolder"} <= set(functions)
    # SampleData calls customDownloader(source) from its button (Slicer 5.8 and main): one positional parameter
    assert [a.arg for a in functions["downloadSamplePhantom"].args.args] == ["source"]
    hosted = next(n for n in tree.body if isinstance(n, ast.Assign) and ast.unparse(n.targets[0]) == "HOSTED_SAMPLE")
    assert hosted.value.value is None  # no real case is shipped or downloaded until one is published
    register = ast.unparse(functions["registerSampleData"])
    assert "registration_keywords(" in register and "inspect.signature(" in register
    assert (ROOT / "GliomaAnalysis" / "Resources" / "Icons" / "GliomaAnalysis.png").is_file()  # the thumbnail


def test_cmake_installs_the_whole_library_and_every_shipped_model():
    """The globs in GliomaAnalysis/CMakeLists.txt cover every library file and all model weights and cards."""
    import fnmatch
    cmake = (ROOT / "GliomaAnalysis" / "CMakeLists.txt").read_text()
    globs = re.findall(r"\$\{_repo_root\}/([\w/.*]+)", cmake)
    assert "GliomaAnalysisLib/*.py" in globs and "Resources/models/*.safetensors" in globs

    def installed(path):
        relative = path.relative_to(ROOT).as_posix()
        return any(fnmatch.fnmatchcase(relative, g) and relative.count("/") == g.count("/") for g in globs)

    library = [p for p in (ROOT / "GliomaAnalysisLib").rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    assert library and [p for p in library if not installed(p)] == []
    models = sorted(p.stem for p in (ROOT / "Resources" / "models").glob("*.json"))
    assert {"glioma_seg", "glioma_multitask", "mgmt_fusion", "slice_grade"} <= set(models)
    for name in models:
        for suffix in (".safetensors", ".json", ".md"):
            assert installed(ROOT / "Resources" / "models" / f"{name}{suffix}"), name + suffix


def test_extensions_index_entry_matches_the_schema_and_the_cmake_metadata():
    """GliomaAnalysis.json against Slicer's Schemas/slicer-extension-catalog-entry-schema-v1.0.1.json
    (required keys, no others: additionalProperties is false there) and the top-level CMakeLists.txt."""
    import json
    entry = json.loads((ROOT / "GliomaAnalysis.json").read_text())
    allowed = {"$schema", "category", "scm_url", "scm_revision", "scm_type", "build_dependencies",
               "build_subdirectory", "enabled", "tier"}
    assert {"$schema", "category", "scm_url"} <= set(entry) <= allowed
    assert entry["$schema"].endswith("slicer-extension-catalog-entry-schema-v1.0.1.json#")
    assert entry["tier"] in (1, 3, 5)
    top = (ROOT / "CMakeLists.txt").read_text()
    assert f'set(EXTENSION_CATEGORY "{entry["category"]}")' in top
    depends = re.search(r'set\(EXTENSION_DEPENDS "([^"]*)"\)', top).group(1).split()
    assert entry["build_dependencies"] == depends == ["PyTorch"]
