"""The module's scene layer (GliomaAnalysis/GliomaAnalysisModuleLib/scene.py) on Slicer's own libraries.

A real ``analyze --fast`` output folder of a phantom (made once per session) is loaded by
Testing/slicer/slicer_core_scene.py in .venv-slicer (pip: slicer-core, created by .ci/slicer-core-venv, kept apart
from .venv because it pins vtk 9.6): segments, names, colours, terminology, label values, the table, display
ranges, geometry, subject hierarchy, parent transforms, a .mrb round trip and offscreen axial / coronal / 3D renders
(Mesa EGL) with pixel assertions. Skips, naming the reason, only where slicer-core cannot be installed.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "GliomaAnalysis"))

from GliomaAnalysisModuleLib.helpers import SEGMENTS, table_rows, terminology_json  # noqa: E402

SLICER_VENV = ROOT / ".venv-slicer"
SCRIPT = ROOT / "Testing" / "slicer" / "slicer_core_scene.py"
CASE = "GliomaScenePhantom"


@pytest.fixture(scope="module")
def slicer_python() -> Path:
    """.venv-slicer's python, set up by .ci/slicer-core-venv (idempotent; ~25 s the first time)."""
    setup = subprocess.run([str(ROOT / ".ci" / "slicer-core-venv"), str(SLICER_VENV)], capture_output=True,
                           text=True)
    if setup.returncode != 0:
        pytest.skip(f"slicer-core could not be installed into {SLICER_VENV}: {setup.stderr.strip()[-300:]}")
    return SLICER_VENV / "bin" / "python"


@pytest.fixture(scope="module")
def analyzed(tmp_path_factory):
    """(case folder, output folder) of ``glioma-analysis analyze --fast`` on a small phantom (shipped models)."""
    from GliomaAnalysisLib.synthetic.phantom import make_phantom, write_phantom

    root = tmp_path_factory.mktemp("scene")
    case = write_phantom(make_phantom(2024, (96, 96, 62), (2.5, 2.5, 2.5), case_id=CASE), root)
    out = root / "out"
    subprocess.run([sys.executable, "-m", "GliomaAnalysisLib.cli", "analyze", str(case), "--out", str(out), "--fast"],
                   check=True, capture_output=True, text=True)
    return case, out


def _egl_missing():
    """Why offscreen rendering cannot run here (Mesa EGL absent), or None."""
    import ctypes
    for library in ("libEGL.so.1", "libEGL_mesa.so.0"):
        try:
            ctypes.CDLL(library)
        except OSError:
            return f"{library} not found (apt-get install libegl1 libegl-mesa0 libgl1-mesa-dri)"
    return None


@pytest.fixture(scope="module")
def scene(slicer_python, analyzed, tmp_path_factory):
    """What the scene layer made of the output folder, read back: facts.json and the rendered views."""
    case, out = analyzed
    result = tmp_path_factory.mktemp("scene_result")
    no_render = _egl_missing()
    command = [str(slicer_python), str(SCRIPT), str(case), str(out), str(result)]
    command += ["--no-render"] if no_render else ["--screenshot", str(result / "screenshot.png")]
    run = subprocess.run(command, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    facts = json.loads((result / "facts.json").read_text())
    facts["dir"] = result
    facts["no_render"] = no_render
    facts["labels"] = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "segmentation.nii.gz")))
    return facts


def test_segments_carry_the_terminology_names_colours_and_label_values(scene):
    types = terminology_json()["SegmentationCodes"]["Category"][0]["Type"]
    segments = scene["loaded"]["segmentation"]["segments"]
    assert [s["name"] for s in segments] == [t["3dSlicerLabel"] for t in types] == ["NCR", "ED", "ET"]
    assert [s["label"] for s in segments] == [label for label, *_ in SEGMENTS] == [1, 2, 4]
    for segment, kind in zip(segments, types):
        assert segment["color"] == pytest.approx([c / 255 for c in kind["recommendedDisplayRGBValue"]], abs=1e-3)
        fields = segment["tag"].split("~")
        assert fields[0] == "GliomaAnalysis glioma subregions"
        assert fields[1] == "SCT^49755003^Morphologically Altered Structure"
        assert fields[2] == f"SCT^{kind['CodeValue']}^{kind['CodeMeaning']}"
        # the segment holds exactly the voxels of its label value in segmentation.nii.gz
        assert segment["voxels"] == int(np.count_nonzero(scene["labels"] == segment["label"])) > 0
    assert scene["loaded"]["segmentation"]["representations"] == ["Binary labelmap", "Closed surface"]
    # a Slicer without the logic's index accessors gets the same types from the file
    assert scene["typesFromFile"] == scene["types"] and len(scene["types"]) == 3


def test_geometry_equals_the_input_node(scene):
    loaded = scene["loaded"]
    reference = loaded["reference"]
    assert reference["dimensions"] == [96, 96, 62]
    assert reference["ijkToRas"] == [[-2.5, 0, 0, 0], [0, -2.5, 0, 237.5], [0, 0, 2.5, 0], [0, 0, 0, 1]]
    for stem, volume in loaded["maps"].items():
        assert volume["ijkToRas"] == reference["ijkToRas"] and volume["dimensions"] == reference["dimensions"], stem
    for segment in loaded["segmentation"]["segments"]:
        assert segment["shape"] == reference["dimensions"][::-1]
    # the reference-image-geometry node reference DICOM SEG export needs, not only the parameter
    assert loaded["segmentation"]["geometryReference"] == f"{CASE}_t1ce"


def test_results_table_holds_the_report_rows(scene):
    table = scene["loaded"]["table"]
    assert table["name"] == f"{CASE}_t1ce glioma results"
    assert table["columns"] == ["item", "value", "uncertainty", "evidence"]
    assert [tuple(row) for row in table["rows"]] == table_rows(scene["report"])
    rows = {row[0]: row for row in table["rows"]}
    assert "grade (from volumes)" in rows  # the shipped card's grade is read from the segmentation's volumes
    rows["grade"] = rows["grade (from volumes)"]
    for task in ("grade", "idh", "codeletion_1p19q", "mgmt"):  # the evidence level of every prediction
        assert rows[task][3] == scene["report"]["predictions"][task]["evidence"]
        assert rows[task][3] in ("supported", "weak", "not assessable")
    values = {row[0]: row[1] for row in table["rows"]}
    assert values["WT volume (mL)"] == f"{scene['report']['volumes_ml']['wt']:.2f}"
    assert values["grade (from volumes)"].startswith(scene["report"]["predictions"]["grade"]["label"])


def test_maps_are_shown_in_the_probability_range(scene):
    maps = scene["loaded"]["maps"]
    assert sorted(maps) == ["prob_ed", "prob_et", "prob_ncr", "uncertainty"]
    assert maps["prob_et"]["name"] == f"{CASE}_t1ce P(ET)"
    for volume in maps.values():
        assert volume["window"] == [0.0, 1.0] and volume["threshold"] == [0.1, 1.0] and volume["applyThreshold"]
        assert volume["colors"] == "vtkMRMLColorTableNodeFileColdToHotRainbow.txt"
        assert 0.0 < volume["max"] <= 1.0
        assert not volume["autoWindowLevel"]  # the window is fixed: Slicer computes none on loading


def test_maps_hold_the_voxels_of_their_files(scene, analyzed):
    _, out = analyzed
    for stem, volume in scene["loaded"]["maps"].items():
        voxels = sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"{stem}.nii.gz")))
        assert volume["sum"] == pytest.approx(float(voxels.sum(dtype=np.float64)), rel=1e-9), stem
        assert volume["max"] == pytest.approx(float(voxels.max())), stem


def test_a_map_that_cannot_be_read_is_named_and_leaves_no_node(scene, analyzed):
    _, out = analyzed
    unreadable = scene["unreadable"]
    assert unreadable["error"] == f"{out / 'report.json'}: Slicer could not read this volume"
    assert unreadable["nodesAdded"] == 0
    assert unreadable["withoutVolumesLogicMax"] == scene["loaded"]["maps"]["prob_et"]["max"]


def test_results_go_to_the_input_study_and_under_its_transform(scene):
    assert scene["loaded"]["studies"] == ["Phantom study"]  # the reference's study holds every result node
    assert scene["loaded"]["segmentation"]["transform"] is None
    moved = scene["transformed"]
    assert moved["input"] == scene["transformID"]
    assert moved["segmentation"] == moved["input"] and moved["maps"] == [moved["input"]]


def test_scene_saved_as_mrb_reads_back_with_the_same_content(scene):
    assert (scene["dir"] / "scene.mrb").stat().st_size > 10_000
    loaded, reread = scene["loaded"], scene["reread"]
    for key in ("segmentation", "maps", "table", "reference", "studies"):
        assert reread[key] == loaded[key], key


def _rendered(scene):
    if scene["no_render"]:
        pytest.skip(f"no offscreen OpenGL: {scene['no_render']}")
    return scene["dir"]


def _chroma(pixels):
    pixels = pixels.astype(int)
    return pixels.max(axis=2) - pixels.min(axis=2)


@pytest.mark.parametrize("view", ["axial", "coronal"])
def test_slice_views_show_segment_colours_over_the_tumor_only(scene, view):
    pixels = np.load(_rendered(scene) / f"{view}_rgb.npy")
    labels = np.load(scene["dir"] / f"{view}_label.npy")
    coloured = _chroma(pixels) > 40  # the grey image has none
    tumor = labels > 0
    assert tumor.sum() > 500
    outside = coloured & ~ndimage.binary_dilation(tumor, iterations=2)  # outlines may spill a pixel
    assert outside.sum() == 0
    core = ndimage.binary_erosion(tumor, iterations=2)
    assert coloured[core].mean() > 0.95
    mean = {value: pixels[ndimage.binary_erosion(labels == value, iterations=2)].astype(float).mean(axis=0)
            for value in (1, 2, 4)}
    red, green, blue = range(3)
    assert mean[2][green] > mean[2][red] + 30 and mean[2][green] > mean[2][blue] + 30  # ED green
    assert mean[1][red] > mean[1][green] + 30  # NCR red
    assert min(mean[4][red], mean[4][green]) > mean[4][blue] + 60  # ET yellow


def test_3d_view_shows_the_segment_surfaces(scene):
    pixels = np.load(_rendered(scene) / "threed_rgb.npy").astype(int)
    corners = np.concatenate([pixels[:20, :20].reshape(-1, 3), pixels[-20:, -20:].reshape(-1, 3)])
    assert (_chroma(corners[None]) == 0).all()  # plain background
    red, green, blue = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    assert ((green > red + 40) & (green > blue + 40)).sum() > 1000  # ED surface
    assert ((red > blue + 40) & (green < red + 40)).sum() > 200  # the core (NCR red, ET yellow) through the opening


def test_committed_screenshot_is_this_rendering(scene):
    """Resources/screenshot.png: axial | coronal | 3D from this script (regenerate: see README "3D Slicer module");
    referenced by CMake's EXTENSION_SCREENSHOTURLS (what the index checks download) and the README."""
    from PIL import Image

    committed = np.asarray(Image.open(ROOT / "Resources" / "screenshot.png").convert("RGB")).astype(int)
    fresh = np.asarray(Image.open(_rendered(scene) / "screenshot.png").convert("RGB")).astype(int)
    assert committed.shape == fresh.shape == (400, 1200, 3)
    assert np.abs(committed - fresh).mean() < 2.0  # Mesa versions may differ by a grey level here and there
    url = "https://raw.githubusercontent.com/GliomaAnalysis/SlicerGliomaAnalysis/main/Resources/screenshot.png"
    assert f'set(EXTENSION_SCREENSHOTURLS "{url}")' in (ROOT / "CMakeLists.txt").read_text()
    assert "(Resources/screenshot.png)" in (ROOT / "README.md").read_text()


def test_every_slicer_util_name_the_module_uses_is_in_slicer_cores_util(slicer_python):
    """Besides the 4.x-era name list of test_slicer_module: the module's slicer.util names against the util.py that
    slicer-core 5.13 ships (Slicer main)."""
    import ast

    tree = ast.parse((ROOT / "GliomaAnalysis" / "GliomaAnalysis.py").read_text())
    used = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and ast.unparse(n.value) == "slicer.util"}
    used |= {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module == "slicer.util"
             for a in n.names}
    listing = subprocess.run([str(slicer_python), "-c", "import slicer.util as u; print(' '.join(dir(u)))"],
                             capture_output=True, text=True, check=True).stdout.split()
    assert {"tryWithErrorDisplay", "tempDirectory", "pip_install", "errorDisplay"} <= used
    assert used - set(listing) == set()
