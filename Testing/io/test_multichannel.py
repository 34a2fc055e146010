"""4D multi-channel input (the Medical Segmentation Decathlon's format): MSD channel order by default,
``--channels`` to override, in load_case, inspect, analyze and batch."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from GliomaAnalysisLib import MODALITIES, load_case
from GliomaAnalysisLib.batch import analyze_folder, discover_cases
from GliomaAnalysisLib.cli import main
from GliomaAnalysisLib.io.geometry import Geometry
from GliomaAnalysisLib.io.image_io import MSD_CHANNELS

from conftest import REAL_DATA

MSD_CASE = REAL_DATA.parent / "brats-extra" / "MSD_BRATS_001"


def _four_d(images, order, path: Path) -> Path:
    joined = sitk.JoinSeries([images[m] for m in order])
    reference = images[order[0]]
    direction = np.eye(4)
    direction[:3, :3] = np.reshape(reference.GetDirection(), (3, 3))
    joined.SetDirection(direction.ravel().tolist())
    joined.SetOrigin(list(reference.GetOrigin()) + [0.0])
    joined.SetSpacing(list(reference.GetSpacing()) + [1.0])
    sitk.WriteImage(joined, str(path))
    return path


@pytest.fixture()
def msd_file(tmp_path, small_phantom):
    images = {m: small_phantom.image(m) for m in MODALITIES}
    return _four_d(images, MSD_CHANNELS, tmp_path / "BRATS_007.nii.gz")


def test_a_4d_file_loads_in_msd_order(msd_file, small_phantom):
    case = load_case(msd_file)
    assert case.case_id == "BRATS_007" and case.present == list(MODALITIES) and case.reference == "t1ce"
    for modality in MODALITIES:
        assert np.array_equal(case.array(modality), small_phantom.images[modality].astype(np.float32)), modality
    assert case.geometry == small_phantom.geometry
    assert case.sources["flair"].endswith("(channel 0 flair)")


def test_channels_override_the_order(tmp_path, small_phantom):
    order = ("t2", "t1ce", "t1", "flair")
    path = _four_d({m: small_phantom.image(m) for m in MODALITIES}, order, tmp_path / "scan.nii.gz")
    case = load_case(path, channels="t2,t1ce,t1,flair")
    for modality in MODALITIES:
        assert np.array_equal(case.array(modality), small_phantom.images[modality].astype(np.float32))
    two = _four_d({m: small_phantom.image(m) for m in MODALITIES}, ("t1ce", "flair"), tmp_path / "two.nii.gz")
    assert load_case(two, channels=["t1ce", "flair"]).present == ["t1ce", "flair"]


@pytest.mark.parametrize("channels,message", [
    ("flair,t1,t1ce", "has 4 channels but 3 are named"),
    ("flair,t1,t1ce,dwi", "unknown modality 'dwi'"),
    ("flair,t1,t1,t2", "named twice"),
])
def test_wrong_channels_are_one_line_errors(msd_file, channels, message, capsys):
    assert main(["inspect", str(msd_file), "--channels", channels]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith("glioma-analysis: error: ")


def test_a_folder_with_one_4d_file_and_inspect(msd_file, capsys):
    case = load_case(msd_file.parent)
    assert case.present == list(MODALITIES)
    assert main(["inspect", str(msd_file)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["missing"] == [] and summary["inputs"]["t2"].endswith("(channel 3 t2)")


def test_analyze_and_batch_take_4d_files(msd_file, small_phantom, tmp_path, tiny_model_dir):
    out = tmp_path / "out"
    assert main(["analyze", str(msd_file), "--out", str(out), "--model-dir", str(tiny_model_dir), "--fast",
                 "--no-classify"]) == 0
    labels = sitk.ReadImage(str(out / "segmentation.nii.gz"))
    assert Geometry.of(labels) == small_phantom.geometry
    report = json.loads((out / "report.json").read_text())
    paths = {entry["modality"]: entry["path"] for entry in report["inputs"]["files"]}
    assert paths["t1ce"] == f"{msd_file} (channel 2 t1ce)" and report["inputs"]["missing"] == []
    images_tr = tmp_path / "imagesTr"  # the MSD layout: many 4D files in one folder, each a case
    images_tr.mkdir()
    for name in ("BRATS_001.nii.gz", "BRATS_002.nii.gz"):
        (images_tr / name).write_bytes(msd_file.read_bytes())
    sitk.WriteImage(small_phantom.label_image(), str(images_tr / "BRATS_001_seg.nii.gz"))  # 3D: not a case
    assert [p.name for p in discover_cases(tmp_path / "imagesTr")] == ["BRATS_001.nii.gz", "BRATS_002.nii.gz"]
    outcomes = analyze_folder(images_tr, tmp_path / "results", fast=True, model_dir=tiny_model_dir, classify=False)
    assert [(o.case, o.status) for o in outcomes] == [("BRATS_001", "ok"), ("BRATS_002", "ok")]
    assert outcomes[0].volumes_ml == outcomes[1].volumes_ml
    first = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "results" / "BRATS_001" / "segmentation.nii.gz")))
    assert np.array_equal(first, sitk.GetArrayFromImage(labels))


@pytest.mark.skipif(not MSD_CASE.is_dir(), reason="the real MSD case is not present")
def test_real_msd_case_as_one_4d_file(tmp_path):
    """The real MSD case (RAS, float32) joined into the MSD release's 4D layout gives the same case."""
    separate = load_case(MSD_CASE, ground_truth=False)
    path = _four_d(dict(separate.images), MSD_CHANNELS, tmp_path / "BRATS_001.nii")  # uncompressed: fast
    joined = load_case(path)
    assert joined.geometry == separate.geometry and joined.present == list(MODALITIES)
    for modality in MODALITIES:
        assert np.array_equal(joined.array(modality), separate.array(modality)), modality
    result = subprocess.run([sys.executable, "-m", "GliomaAnalysisLib.cli", "inspect", str(path)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["reference_geometry"]["size"] == list(separate.geometry.size)
