"""Batch processing with injected faults: every bad case fails cleanly, good cases complete, nothing is lost."""
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import SimpleITK as sitk

from GliomaAnalysisLib.batch import COMPLETE_MARKER, analyze_folder, discover_cases
from GliomaAnalysisLib.synthetic.phantom import make_phantom, write_phantom

from conftest import SMALL_SIZE, SMALL_SPACING, random_image, write


def _copy_case(source, target, rename=lambda name: name):
    target.mkdir(parents=True)
    for path in source.iterdir():
        shutil.copy(path, target / rename(path.name.replace(source.name, target.name)))


def _faults(root, good):
    """Case folders with one injected fault each; returns {case: expected error text}."""
    faults = {}

    def case(name, text):
        folder = root / name
        _copy_case(good, folder)
        faults[name] = text
        return folder

    folder = case("truncated_gzip", "truncated")
    data = (folder / "truncated_gzip_t2.nii.gz").read_bytes()
    (folder / "truncated_gzip_t2.nii.gz").write_bytes(data[: len(data) // 3])
    folder = case("zero_byte", "empty")
    (folder / "zero_byte_flair.nii.gz").write_bytes(b"")
    folder = case("wrong_header", "cannot read image")
    (folder / "wrong_header_t1.nii.gz").write_bytes(b"\x1f\x8b" + os.urandom(500))
    folder = case("nan_voxels", "non-finite")
    array = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "nan_voxels_t1.nii.gz"))).astype(np.float32)
    array[10, 10, 10] = np.nan
    image = sitk.GetImageFromArray(array)
    (folder / "nan_voxels_t1.nii.gz").unlink()
    sitk.WriteImage(image, str(folder / "nan_voxels_t1.mha"))
    folder = case("two_d", "expected a 3D image")
    (folder / "two_d_t2.nii.gz").unlink()
    sitk.WriteImage(sitk.GetImageFromArray(np.arange(400, dtype=np.int16).reshape(20, 20)), str(folder / "two_d_t2.nii.gz"))
    folder = case("one_voxel", "expected a 3D image")
    (folder / "one_voxel_t2.nii.gz").unlink()
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((1, 1, 1), np.int16)), str(folder / "one_voxel_t2.nii.gz"))
    folder = case("constant", "constant")
    (folder / "constant_flair.nii.gz").unlink()
    write(sitk.GetImageFromArray(np.full((20, 20, 20), 3, np.int16)), folder / "constant_flair.nii.gz")
    folder = case("label_as_image", "looks like a segmentation")
    shutil.copy(folder / "label_as_image_seg.nii.gz", folder / "label_as_image_t1.nii.gz")
    folder = case("other_patient", "does not overlap")
    flair = sitk.ReadImage(str(folder / "other_patient_flair.nii.gz"))
    flair.SetOrigin((900.0, 0.0, 0.0))
    sitk.WriteImage(flair, str(folder / "other_patient_flair.nii.gz"))
    folder = case("duplicate_modality", "two files claim modality 't2'")
    shutil.copy(folder / "duplicate_modality_t2.nii.gz", folder / "T2W.nii.gz")
    folder = case("wrong_dtype", "components per voxel")
    (folder / "wrong_dtype_t1ce.nii.gz").unlink()
    rgb = sitk.GetImageFromArray(np.full((20, 20, 20, 3), 7, np.uint8), isVector=True)
    sitk.WriteImage(rgb, str(folder / "wrong_dtype_t1ce.nrrd"))
    folder = case("same_file_twice", "same input is given for modalities")
    (folder / "same_file_twice_t2.nii.gz").unlink()
    (folder / "same_file_twice_t2.nii.gz").symlink_to(folder / "same_file_twice_t1.nii.gz")
    folder = case("zero_spacing", "spacing")
    image = sitk.ReadImage(str(folder / "zero_spacing_t1.nii.gz"))
    (folder / "zero_spacing_t1.nii.gz").unlink()
    sitk.WriteImage(image, str(folder / "zero_spacing_t1.mha"))
    path = folder / "zero_spacing_t1.mha"
    path.write_bytes(path.read_bytes().replace(b"ElementSpacing = 2.5 2.5 2.5", b"ElementSpacing = 2.5 0 2.5"))
    # negative spacing is a valid way to store a flipped axis: ITK reads it as a flipped direction, and the case
    # is recovered (resampled onto the reference grid with a warning), not refused
    folder = case("negative_spacing", "RECOVERED")
    image = sitk.ReadImage(str(folder / "negative_spacing_t1.nii.gz"))
    flipped = sitk.GetImageFromArray(np.ascontiguousarray(sitk.GetArrayFromImage(image)[:, ::-1, :]))
    far_corner = image.TransformIndexToPhysicalPoint((0, image.GetSize()[1] - 1, 0))
    flipped.SetOrigin(far_corner)
    flipped.SetSpacing(image.GetSpacing())
    (folder / "negative_spacing_t1.nii.gz").unlink()
    path = folder / "negative_spacing_t1.mha"
    sitk.WriteImage(flipped, str(path))
    path.write_bytes(path.read_bytes().replace(b"ElementSpacing = 2.5 2.5 2.5", b"ElementSpacing = 2.5 -2.5 2.5"))
    return faults


@pytest.fixture(scope="module")
def cohort(tmp_path_factory, small_phantom):
    root = tmp_path_factory.mktemp("cohort")
    good = write_phantom(small_phantom, root / "_source")
    for index in range(3):
        phantom = make_phantom(40 + index, SMALL_SIZE, SMALL_SPACING, case_id=f"good_{index}")
        write_phantom(phantom, root)
    faults = _faults(root, good)
    shutil.rmtree(root / "_source")
    return root, faults


def test_faults_fail_cleanly_and_good_cases_complete(cohort, tmp_path, tiny_model_dir):
    root, faults = cohort
    out = tmp_path / "out"
    messages = []
    outcomes = {o.case: o for o in analyze_folder(root, out, fast=True, model_dir=tiny_model_dir,
                                                  progress=messages.append)}
    assert set(outcomes) == {"good_0", "good_1", "good_2", *faults}
    for name, text in faults.items():
        if text == "RECOVERED":
            assert outcomes[name].status == "ok", outcomes[name].error
            assert "direction differ" in (out / name / "analysis.log").read_text()
            continue
        assert outcomes[name].status == "failed", name
        assert text in outcomes[name].error and "\n" not in outcomes[name].error, (name, outcomes[name].error)
        assert not (out / name).exists()  # nothing half-written for a failed case
    for name in ("good_0", "good_1", "good_2"):
        assert outcomes[name].status == "ok" and (out / name / COMPLETE_MARKER).is_file()
        assert (out / name / "report.json").is_file() and (out / name / "analysis.log").is_file()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    rows = {r["case"]: r for r in csv.DictReader(open(out / "summary.csv"))}
    assert set(rows) == set(outcomes) and rows["good_1"]["status"] == "ok" and float(rows["good_1"]["seconds"]) > 0
    assert rows["zero_byte"]["status"] == "failed" and "empty" in rows["zero_byte"]["error"]
    assert any("ETA" in m for m in messages)
    print("\n| case | fault | outcome |")
    for name in sorted(outcomes):
        print(f"| {name} | {faults.get(name, 'none')} | {outcomes[name].status}: {outcomes[name].error[:70]} |")


def test_resume_skips_completed_cases(cohort, tmp_path, tiny_model_dir):
    root, faults = cohort
    subset = tmp_path / "root"
    for name in ("good_0", "good_1", "zero_byte"):
        shutil.copytree(root / name, subset / name)
    out = tmp_path / "out"
    analyze_folder(subset, out, fast=True, model_dir=tiny_model_dir)
    stamp = (out / "good_0" / "report.json").stat().st_mtime_ns
    outcomes = {o.case: o for o in analyze_folder(subset, out, resume=True, fast=True, model_dir=tiny_model_dir)}
    assert (out / "good_0" / "report.json").stat().st_mtime_ns == stamp
    assert outcomes["good_0"].status == "ok" and outcomes["good_0"].volumes_ml
    assert outcomes["zero_byte"].status == "failed"  # retried, still failing
    # a run stopped while a case was written leaves it complete but out of the summary: read back from its files
    (out / "summary.csv").unlink()
    again = {o.case: o for o in analyze_folder(subset, out, resume=True, fast=True, model_dir=tiny_model_dir)}
    assert again["good_0"].volumes_ml == outcomes["good_0"].volumes_ml
    assert again["good_0"].predictions == outcomes["good_0"].predictions
    assert again["good_0"].qc_flags == outcomes["good_0"].qc_flags
    rows = {r["case"]: r for r in csv.DictReader(open(out / "summary.csv"))}
    assert float(rows["good_1"]["wt_ml"]) == outcomes["good_1"].volumes_ml["wt"]


def test_interrupt_leaves_no_half_written_case(cohort, tmp_path, tiny_model_dir, monkeypatch):
    import GliomaAnalysisLib.reporting.writers as writers

    root, _ = cohort
    subset = tmp_path / "root"
    for name in ("good_0", "good_1"):
        shutil.copytree(root / name, subset / name)
    real, calls = writers.write_contract_files, []

    def interrupted(result, out, *args, **kwargs):
        calls.append(out)
        real(result, out, *args, **kwargs)
        if len(calls) == 2:
            raise KeyboardInterrupt  # e.g. Ctrl-C after the files but before the completion marker

    monkeypatch.setattr(writers, "write_contract_files", interrupted)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        analyze_folder(subset, out, fast=True, model_dir=tiny_model_dir)
    assert (out / "good_0" / COMPLETE_MARKER).is_file() and not (out / "good_1").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".") and p.is_dir()]
    rows = list(csv.DictReader(open(out / "summary.csv")))
    assert [r["case"] for r in rows] == ["good_0"]


def test_a_case_failing_while_written_fails_alone(cohort, tmp_path, tiny_model_dir, monkeypatch):
    """With one job a case is written while the next is analysed: a write failure fails that case only."""
    import GliomaAnalysisLib.reporting.writers as writers

    root, _ = cohort
    subset = tmp_path / "root"
    for name in ("good_0", "good_1", "good_2"):
        shutil.copytree(root / name, subset / name)
    real = writers.write_contract_files

    def full_disk_for_good_1(result, out, *args, **kwargs):
        if result.case_id == "good_1":
            raise OSError(28, "No space left on device")
        return real(result, out, *args, **kwargs)

    monkeypatch.setattr(writers, "write_contract_files", full_disk_for_good_1)
    out = tmp_path / "out"
    outcomes = {o.case: o for o in analyze_folder(subset, out, fast=True, model_dir=tiny_model_dir)}
    assert outcomes["good_1"].status == "failed" and "No space left on device" in outcomes["good_1"].error
    assert not (out / "good_1").exists()
    for name in ("good_0", "good_2"):
        assert outcomes[name].status == "ok" and (out / name / COMPLETE_MARKER).is_file()
    rows = {r["case"]: r["status"] for r in csv.DictReader(open(out / "summary.csv"))}
    assert rows == {"good_0": "ok", "good_1": "failed", "good_2": "ok"}


def test_ctrl_c_during_the_next_analysis_completes_and_reports_the_case_being_written(cohort, tmp_path,
                                                                                    tiny_model_dir, monkeypatch):
    """With one job, Ctrl-C arrives in the main thread while it analyses case 2 and case 1 is being written: case 1
    completes, has its summary row, and nothing is half-written."""
    import GliomaAnalysisLib.batch as batch
    import GliomaAnalysisLib.reporting.writers as writers

    root, _ = cohort
    subset = tmp_path / "root"
    for name in ("good_0", "good_1", "good_2"):
        shutil.copytree(root / name, subset / name)
    real_write, real_analyse, analysed = writers.write_contract_files, batch._analyse_case, []

    def slow_write(*args, **kwargs):
        time.sleep(0.5)  # still writing when the interrupt comes
        return real_write(*args, **kwargs)

    def interrupted_second(*args, **kwargs):
        analysed.append(args[0])
        if len(analysed) == 2:
            raise KeyboardInterrupt
        return real_analyse(*args, **kwargs)

    monkeypatch.setattr(writers, "write_contract_files", slow_write)
    monkeypatch.setattr(batch, "_analyse_case", interrupted_second)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        analyze_folder(subset, out, fast=True, model_dir=tiny_model_dir)
    assert (out / "good_0" / COMPLETE_MARKER).is_file() and not (out / "good_1").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    rows = list(csv.DictReader(open(out / "summary.csv")))
    assert [r["case"] for r in rows] == ["good_0"] and float(rows[0]["wt_ml"]) > 0


def test_resume_reads_a_completed_case_missing_from_the_summary_back_from_its_files(tmp_path):
    from GliomaAnalysisLib.batch import _outcome_of_folder

    folder = tmp_path / "case_a"
    folder.mkdir()
    (folder / "report.json").write_text(json.dumps({
        "volumes_ml": {"ncr": 1.5, "ed": 20.0, "et": 3.25, "tc": 4.75, "wt": 24.75},
        "predictions": {"grade": {"label": "HGG"}, "idh": {"label": "wildtype"}, "codeletion_1p19q": None,
                        "mgmt": {"label": "methylated"}},
        "timings_s": {"total": 2.5}}))
    (folder / "qc.json").write_text(json.dumps({"case": "case_a", "flags": [{"flag": "unregistered", "detail": ""}]}))
    outcome = _outcome_of_folder(folder)
    assert (outcome.case, outcome.status, outcome.seconds) == ("case_a", "ok", 2.5)
    assert outcome.volumes_ml["wt"] == 24.75 and outcome.qc_flags == ["unregistered"]
    assert outcome.predictions == {"grade": "HGG", "idh": "wildtype", "codeletion_1p19q": None, "mgmt": "methylated"}
    (folder / "report.json").write_text("{not json")
    damaged = _outcome_of_folder(folder)
    assert (damaged.status, damaged.error, damaged.volumes_ml) == ("ok", "completed in an earlier run", {})


@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
def test_parallel_jobs_give_the_same_volumes(cohort, tmp_path, tiny_model_dir, monkeypatch, engine):
    """Two 1-thread workers against one process of two threads: ONNX Runtime's convolutions give the same numbers
    on any thread count, OpenVINO's (oneDNN's) differ by about 1e-3 in the probabilities (README, Inference)."""
    monkeypatch.setenv("GLIOMA_ANALYSIS_ENGINE", engine)  # the spawned workers inherit it
    root, _ = cohort
    subset = tmp_path / "root"
    for name in ("good_0", "good_1"):
        shutil.copytree(root / name, subset / name)
    serial = {o.case: o.volumes_ml for o in analyze_folder(subset, tmp_path / "a", fast=True, model_dir=tiny_model_dir)}
    parallel = {o.case: o.volumes_ml for o in analyze_folder(subset, tmp_path / "b", jobs=2, fast=True,
                                                             model_dir=tiny_model_dir)}
    if engine == "onnxruntime":
        assert serial == parallel
    else:
        assert serial.keys() == parallel.keys() and all(
            parallel[case] == pytest.approx(volumes, rel=0.01, abs=0.5) for case, volumes in serial.items())


def test_cli_batch_exit_status_and_sigterm(cohort, tmp_path, tiny_model_dir):
    root, _ = cohort
    subset = tmp_path / "root"
    for name in ("good_0", "good_1", "good_2", "constant"):
        shutil.copytree(root / name, subset / name)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "GliomaAnalysisLib.cli", "batch", str(subset), "--out", str(out), "--fast",
               "--model-dir", str(tiny_model_dir)]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "summary.csv").exists():
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=120)
    assert process.returncode != 0
    for folder in out.iterdir():  # whatever exists is complete
        assert folder.name in ("summary.csv", "index.html") or (folder / COMPLETE_MARKER).is_file(), folder.name
    finished = subprocess.run(command + ["--resume"], capture_output=True, text=True, timeout=300)
    assert finished.returncode == 1  # one case fails
    assert "3 of 4 case(s) ok, 1 failed" in finished.stderr and "Traceback" not in finished.stderr


def test_discovery_finds_nested_cases_and_ignores_hidden(tmp_path):
    for name in ("site_a/case1", "site_b/case2", ".trash/case3"):
        write(random_image(), tmp_path / name / "x_t1.nii.gz")
    found = [p.relative_to(tmp_path).as_posix() for p in discover_cases(tmp_path)]
    assert found == ["site_a/case1", "site_b/case2"]
