"""Case folders as they come out of the field's tools: only modality images are inputs; masks, label maps and
probability maps never block the analysis; ground truth only where asked for; every ignored file is reported."""
import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from GliomaAnalysisLib import MODALITIES, load_case
from GliomaAnalysisLib.cli import main
from GliomaAnalysisLib.io.case import find_modality_files, scan_folder

from conftest import REAL_DATA


@pytest.fixture()
def messy_case(tmp_path, phantom_dir, small_phantom):
    """The phantom's BraTS files plus what preprocessing tools leave beside them."""
    folder = tmp_path / small_phantom.case_id
    shutil.copytree(phantom_dir, folder)
    brain = sitk.Cast(small_phantom.image("t1") > 0, sitk.sitkUInt8)
    sitk.WriteImage(brain, str(folder / "mask.nii.gz"))
    sitk.WriteImage(brain, str(folder / "T1_brain_mask.nii.gz"))
    sitk.WriteImage(sitk.Cast(small_phantom.image("t1"), sitk.sitkFloat32) / 1000.0, str(folder / "prob_et.nii.gz"))
    (folder / "README.txt").write_text("exported by a lab script\n")
    return folder


def test_masks_and_probability_maps_never_block_the_case(messy_case, small_phantom):
    case = load_case(messy_case)
    assert case.present == list(MODALITIES)
    assert np.array_equal(sitk.GetArrayFromImage(case.segmentation), small_phantom.labels)  # the _seg, as asked
    assert set(case.ignored) == {"mask.nii.gz", "T1_brain_mask.nii.gz", "prob_et.nii.gz", "README.txt"}
    assert "mask" in case.ignored["mask.nii.gz"] and case.ignored["README.txt"] == "not an image file"
    line = next(w for w in case.warnings if w.startswith("ignored 4 file(s)"))
    assert all(name in line for name in case.ignored)


def test_ground_truth_is_read_only_when_asked_for(messy_case, small_phantom):
    case = load_case(messy_case, ground_truth=False)
    assert case.segmentation is None and "seg" not in case.sources
    assert case.ignored[f"{small_phantom.case_id}_seg.nii.gz"] == "ground truth, not used by the analysis"


def test_a_broken_ground_truth_does_not_stop_the_analysis_inputs(messy_case, small_phantom):
    (messy_case / f"{small_phantom.case_id}_seg.nii.gz").write_bytes(b"")  # zero bytes: unreadable
    case = load_case(messy_case, ground_truth=False)
    assert case.present == list(MODALITIES)


def test_ambiguous_ground_truth_is_a_warning_naming_the_files(tmp_path, phantom_dir, small_phantom):
    folder = tmp_path / "study"
    shutil.copytree(phantom_dir, folder)
    seg = folder / f"{small_phantom.case_id}_seg.nii.gz"
    shutil.copy(seg, folder / "manual_segmentation.nii.gz")
    scan = scan_folder(folder)  # neither file is named after the folder "study": none is picked
    assert scan.ground_truth is None and len(scan.warnings) == 1
    assert seg.name in scan.warnings[0] and "manual_segmentation.nii.gz" in scan.warnings[0]
    case = load_case(folder)
    assert case.segmentation is None and case.present == list(MODALITIES)
    assert {seg.name, "manual_segmentation.nii.gz"} <= set(case.ignored)
    named = tmp_path / small_phantom.case_id  # one of them named after the case folder: that one, with a warning
    shutil.copytree(folder, named)
    scan = scan_folder(named)
    assert scan.ground_truth == named / seg.name and "using" in scan.warnings[0]


def test_brats_toolkit_outputs_load(tmp_path, phantom_dir, small_phantom):
    folder = tmp_path / "BraTS2021_00000"
    folder.mkdir()
    tokens = {"t1": "t1", "t1ce": "t1c", "t2": "t2", "flair": "fla"}
    for modality, token in tokens.items():
        shutil.copy(phantom_dir / f"{small_phantom.case_id}_{modality}.nii.gz",
                    folder / f"BraTS2021_00000_{token}_bet.nii.gz")
        shutil.copy(phantom_dir / f"{small_phantom.case_id}_{modality}.nii.gz",
                    folder / f"BraTS2021_00000_{token}_bet_mask.nii.gz")  # HD-BET's masks beside them
    case = load_case(folder)
    assert case.present == list(MODALITIES) and len(case.ignored) == 4
    assert np.array_equal(case.array("flair"), small_phantom.images["flair"].astype(np.float32))


def test_inspect_lists_ignored_files_and_analyze_reports_them(messy_case, small_phantom, tmp_path, tiny_model_dir,
                                                               capsys):
    assert main(["inspect", str(messy_case)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert set(summary["ignored"]) == {"mask.nii.gz", "T1_brain_mask.nii.gz", "prob_et.nii.gz", "README.txt"}
    assert summary["ground_truth"].endswith("_seg.nii.gz") and summary["ground_truth_volumes_ml"]["wt"] > 0
    (messy_case / f"{small_phantom.case_id}_seg.nii.gz").write_bytes(b"")  # analysis never reads ground truth
    out = tmp_path / "out"
    assert main(["analyze", str(messy_case), "--out", str(out), "--model-dir", str(tiny_model_dir), "--fast",
                 "--no-classify"]) == 0
    report = json.loads((out / "report.json").read_text())
    line = next(w for w in report["warnings"] if w.startswith("ignored 5 file(s)"))
    assert "mask.nii.gz" in line and "prob_et.nii.gz" in line and "_seg.nii.gz (ground truth" in line


@pytest.mark.skipif(not REAL_DATA.is_dir(), reason="real BraTS data not present")
def test_training_discovery_keeps_finding_the_real_ground_truth():
    from training.common.datasets import discover_cases

    for root in (REAL_DATA, REAL_DATA.parent / "brats-extra"):
        folders = sorted(p for p in root.iterdir() if p.is_dir())
        found = {c.case_id: c for c in discover_cases(root)}
        assert sorted(found) == [p.name for p in folders]
        for case in found.values():
            assert case.segmentation == case.folder / f"{case.case_id}_seg.nii.gz"
            assert sorted(case.files) == sorted(MODALITIES)
            assert find_modality_files(case.folder)["seg"] == case.segmentation
