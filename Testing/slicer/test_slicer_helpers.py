"""Pure helpers of the Slicer module (GliomaAnalysis/GliomaAnalysisModuleLib), tested without Slicer."""
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "GliomaAnalysis"))

from GliomaAnalysisModuleLib.helpers import (SEGMENTS, assign_nodes, build_command, common_transform,  # noqa
                                             failure_message, modality_for_node_name, parse_progress,
                                             popen_options, run_state, stderr_tail, table_rows, terminology_json)


@pytest.mark.parametrize("name,modality", [("BraTS2021_00000_t1ce", "t1ce"), ("AX T1 POST GD", "t1ce"),
                                           ("FLAIR", "flair"), ("t2w", "t2"), ("T1", "t1"), ("Segmentation", None),
                                           ("MRHead", None)])
def test_node_names_map_to_modalities(name, modality):
    assert modality_for_node_name(name) == modality


def test_first_matching_node_wins():
    assert assign_nodes(["MRHead", "case_flair", "T1Gd", "flair_2", "t1"]) == {
        "flair": "case_flair", "t1ce": "T1Gd", "t1": "t1"}


def test_command_line_runs_the_library_cli():
    command = build_command("/slicer/bin/PythonSlicer", {"flair": "/tmp/in/flair.nii.gz", "t1ce": "/tmp/in/t1ce.nrrd"},
                            "/tmp/out", device="cpu", fast=True, uncertainty=False, labels="brats2023",
                            classify=False)
    assert command == ["/slicer/bin/PythonSlicer", "-m", "GliomaAnalysisLib.cli", "analyze",
                       "--t1ce", "/tmp/in/t1ce.nrrd", "--flair", "/tmp/in/flair.nii.gz", "--out", "/tmp/out",
                       "--device", "cpu", "--labels", "brats2023", "--fast", "--no-uncertainty", "--no-classify"]
    from GliomaAnalysisLib.cli import build_parser
    args = build_parser().parse_args(command[3:])  # the CLI accepts exactly this command line
    assert args.fast and args.no_uncertainty and args.no_classify and args.labels == "brats2023"
    with pytest.raises(ValueError):
        build_command("python", {}, "/tmp/out")


def test_progress_lines_are_parsed():
    assert parse_progress("[glioma-analysis] preprocessing\n") == (0.12, "preprocessing", None)
    fraction, message, _ = parse_progress("[glioma-analysis] network pass 3/4")
    assert fraction == pytest.approx(0.2 + 0.6 * 2 / 4) and message == "network pass 3/4"
    fraction, message, _ = parse_progress("[glioma-analysis] network passes 3-4/4 side by side")
    assert fraction == pytest.approx(0.2 + 0.6 * 2 / 4) and message == "network passes 3-4/4 side by side"
    assert parse_progress("glioma-analysis: error: /x/t1.nii: file is empty (0 bytes)") == (
        None, None, "/x/t1.nii: file is empty (0 bytes)")
    assert parse_progress("some library warning") == (None, None, None)


def test_progress_parsing_follows_the_real_cli_messages(phantom_dir, tiny_model_dir, tmp_path):
    import subprocess
    result = subprocess.run([sys.executable, "-m", "GliomaAnalysisLib.cli", "analyze", str(phantom_dir), "--out",
                             str(tmp_path / "out"), "--model-dir", str(tiny_model_dir)],
                            capture_output=True, text=True, check=True)
    fractions = [parse_progress(line)[0] for line in result.stderr.splitlines()]
    known = [f for f in fractions if f is not None]
    assert known == sorted(known) and known[-1] == 1.0 and len(known) >= 6


def test_table_rows_cover_volumes_ratios_and_predictions():
    report = {"volumes_ml": {"ncr": 1.0, "ed": 2.0, "et": 3.0, "tc": 4.0, "wt": 6.0},
              "ratios": {"ncr": 0.1667, "ed": 0.3333, "et": 0.5},
              "predictions": {"grade": {"label": "HGG", "probability": 0.9, "uncertainty": 0.05}, "idh": None,
                              "codeletion_1p19q": None, "mgmt": None},
              "mgmt_late_fusion": {"per_modality": {"t1": None, "t1ce": 0.7, "t2": None, "flair": 0.5},
                                   "weights": {"t1": 0.0, "t1ce": 0.6, "t2": 0.0, "flair": 0.4}, "fused": 0.62,
                                   "uncertainty": 0.04},
              "slice_grade": {"majority": 1.0, "soft": 0.8, "attention": 0.85, "n_slices": 12, "uncertainty": 0.02},
              "uncertainty": {"mean_in_tumor": 0.12}}
    rows = table_rows(report)
    assert ("WT volume (mL)", "6.00", "", "") in rows and ("grade", "HGG (p=0.90)", "0.050", "") in rows
    assert ("idh", "not available", "", "") in rows
    assert ("slice grade (attention): P(HGG)", "0.85", "0.020", "") in rows
    assert ("slice grade (majority): P(HGG)", "1.00", "12 slices", "") in rows
    assert ("MGMT late fusion: P(methylated)", "0.62", "0.040", "") in rows
    assert ("MGMT T1CE model", "0.70", "weight 0.60", "") in rows and not any("MGMT T1 model" in r[0] for r in rows)
    assert len(rows) == 5 + 3 + 4 + 3 + 3 + 1
    report["slice_grade"] = {"majority": None, "soft": None, "attention": None, "n_slices": 0,
                             "reason": "no tumor slice in the segmentation"}
    assert ("slice grade", "not available", "no tumor slice in the segmentation", "") in table_rows(report)
    # an evidence level on a prediction (a string, or a dict with "level") fills the fourth column
    report["predictions"]["grade"]["evidence"] = {"level": "exploratory", "basis": "synthetic validation"}
    report["mgmt_late_fusion"]["evidence"] = "validated on BraTS"
    rows = table_rows(report)
    assert ("grade", "HGG (p=0.90)", "0.050", "exploratory") in rows
    assert ("MGMT late fusion: P(methylated)", "0.62", "0.040", "validated on BraTS") in rows
    # a grade read from the segmentation's volumes says so
    report["predictions"]["grade"]["basis"] = "segmentation volumes (enhancing volume and its share of the whole tumor)"
    assert ("grade (from volumes)", "HGG (p=0.90)", "0.050", "exploratory") in table_rows(report)


def test_shipped_term_json_names_the_segments_with_the_dicom_category():
    shipped = json.loads((ROOT / "GliomaAnalysis" / "Resources" / "GliomaAnalysis.term.json").read_text())
    assert shipped == terminology_json()
    category = shipped["SegmentationCodes"]["Category"][0]
    # SCT 49755003 is "Morphologically Altered Structure" in DICOM CID 7150 and Slicer's terminologies
    assert (category["CodeValue"], category["CodeMeaning"]) == ("49755003", "Morphologically Altered Structure")
    types = category["Type"]
    assert [t["CodeValue"] for t in types] == [code for _, _, _, (code, _) in SEGMENTS]
    assert [t["3dSlicerLabel"] for t in types] == ["NCR", "ED", "ET"]
    assert types[1]["recommendedDisplayRGBValue"] == [51, 191, 76]


def test_a_failed_run_shows_the_cli_error_or_the_tail_of_its_stderr():
    assert failure_message(0, None, ["anything\n"]) is None
    assert failure_message(2, "/x/t1.nii: file is empty (0 bytes)", []) == "/x/t1.nii: file is empty (0 bytes)"
    crash = ["[glioma-analysis] loading\n", "Traceback (most recent call last):\n", '  File "x.py", line 1\n',
             "\n", "ModuleNotFoundError: No module named 'monai'\n"]
    message = failure_message(1, None, crash)
    assert message.startswith("The analysis stopped with exit status 1. Last lines of its log:\n")
    assert message.endswith("ModuleNotFoundError: No module named 'monai'")
    assert stderr_tail([f"line {i}\n" for i in range(50)], 3) == "line 47\nline 48\nline 49"
    assert failure_message(-9, None, []) == "The analysis stopped with exit status -9."


def test_inputs_under_different_transforms_are_refused():
    assert common_transform({"t1": None, "flair": None}) is None
    assert common_transform({"t1": "vtkMRMLLinearTransformNode4", "t2": "vtkMRMLLinearTransformNode4"}) == \
        "vtkMRMLLinearTransformNode4"
    with pytest.raises(ValueError, match=r"t1 under vtkMRMLLinearTransformNode4, flair under no transform.*Harden"):
        common_transform({"t1": "vtkMRMLLinearTransformNode4", "flair": None})


def test_child_process_options_hide_the_windows_console(monkeypatch):
    import subprocess

    assert popen_options("posix") == {"start_new_session": True}

    class StartupInfo:  # subprocess.STARTUPINFO exists only on Windows
        dwFlags, wShowWindow = 0, 1

    for name, value in (("STARTUPINFO", StartupInfo), ("STARTF_USESHOWWINDOW", 1),
                        ("CREATE_NO_WINDOW", 0x08000000), ("CREATE_NEW_PROCESS_GROUP", 0x200)):
        monkeypatch.setattr(subprocess, name, value, raising=False)
    options = popen_options("nt")
    assert options["creationflags"] == 0x08000000 | 0x200
    assert options["startupinfo"].dwFlags == 1 and options["startupinfo"].wShowWindow == 0


def test_the_fine_stage_moves_the_progress_on_after_the_coarse_passes():
    messages = ["segmenting with 'glioma_seg' on cpu (2 passes)", "network pass 1/2", "network pass 2/2",
                "fine stage: preprocessing at 1.25 mm", "fine stage: 'glioma_seg_fine' over 65x73x64 voxels by windows "
                "of 64x64x64", "fine stage: network pass 1/2", "fine stage: network pass 2/2",
                "mapping results back to the input grid", "done: WT 42.0 mL in 5.7 s"]
    fractions = [parse_progress(f"[glioma-analysis] {m}")[0] for m in messages]
    assert fractions == sorted(fractions)  # never back (a fine pass read as the coarse network's went to 0.2)
    assert fractions[3] == pytest.approx(0.65) and fractions[-1] == 1.0
    assert fractions[2] < fractions[3] < fractions[6] < fractions[7] < fractions[-1]
    assert {run_state(m) for m in messages[3:7]} == {"Segmenting"}


def test_run_states_follow_the_cli_messages():
    assert [run_state(m) for m in ("loading inputs", "clinical input: co-registering flair to t1ce (rigid)",
                                   "segmenting (2 passes)", "network pass 2/2", "classifying",
                                   "mapping results back to the input grid", "done")] == [
        "Starting", "Registering", "Segmenting", "Segmenting", "Classifying", "Classifying", None]
    # the classifiers and the mapping back run side by side: their messages never move the progress backwards
    assert parse_progress("[glioma-analysis] classifying MGMT")[0] == parse_progress(
        "[glioma-analysis] mapping results back to the input grid")[0]


def test_command_line_carries_the_clinical_preprocessing_choices():
    command = build_command("python", {"t1ce": "/in/t1ce.nrrd"}, "/out", preprocess="brats", save_registered=True)
    assert command[-3:] == ["--preprocess", "brats", "--save-registered"]
    assert "--preprocess" not in build_command("python", {"t1ce": "/in/t1ce.nrrd"}, "/out")  # auto: the CLI default
    from GliomaAnalysisLib.cli import build_parser
    args = build_parser().parse_args(command[3:])
    assert args.preprocess == "brats" and args.save_registered and args.clinical_backend == "auto"
    fraction, message, _ = parse_progress("[glioma-analysis] clinical input: co-registering flair to t1ce (rigid)")
    assert fraction == 0.1 and message.startswith("clinical input")
