"""Every user mistake gives a specific exception with a one-line message naming the file and the problem,
and in the CLI a non-zero exit, one line on stderr, no traceback and no partial output."""
import gzip
import shutil
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from GliomaAnalysisLib import (GeometryError, ImageReadError, InvalidImageError, ModalityConflictError,
                               NoModalityError, SegmentationAsImageError, load_case)
from GliomaAnalysisLib.cli import main

from conftest import random_image, write


def _single_line(message: str) -> bool:
    return "\n" not in message and len(message) < 400


def _truncated_gzip(tmp_path):
    good = write(random_image(), tmp_path / "src" / "a_t1.nii.gz")
    data = good.read_bytes()
    bad = tmp_path / "case" / "x_t1.nii.gz"
    bad.parent.mkdir()
    bad.write_bytes(data[: len(data) // 2])
    return bad


def _truncated_nii(tmp_path):
    good = write(random_image(), tmp_path / "src" / "a_t1.nii")
    bad = tmp_path / "case" / "x_t1.nii"
    bad.parent.mkdir()
    bad.write_bytes(good.read_bytes()[:-100])
    return bad


def _garbage(tmp_path):
    bad = tmp_path / "case" / "x_flair.nii.gz"
    bad.parent.mkdir()
    bad.write_bytes(gzip.compress(b"this is not a NIfTI header" * 20))
    return bad


def _empty(tmp_path):
    bad = tmp_path / "case" / "x_t2.nii"
    bad.parent.mkdir()
    bad.write_bytes(b"")
    return bad


def _image_case(tmp_path, image, name="x_t1ce.nii.gz"):
    return write(image, tmp_path / "case" / name)


def _two_d(tmp_path):
    return _image_case(tmp_path, sitk.GetImageFromArray(np.arange(400, dtype=np.int16).reshape(20, 20)))


def _single_slice(tmp_path):
    return _image_case(tmp_path, sitk.GetImageFromArray(np.arange(400, dtype=np.int16).reshape(1, 20, 20)))


def _four_d(tmp_path):
    return _image_case(tmp_path, sitk.GetImageFromArray(np.arange(4 * 1000, dtype=np.float32).reshape(4, 10, 10, 10),
                                                        isVector=False))


def _constant(tmp_path):
    return _image_case(tmp_path, sitk.GetImageFromArray(np.full((10, 10, 10), 7, dtype=np.int16)))


def _nan(tmp_path):
    array = sitk.GetArrayFromImage(random_image()).astype(np.float32)
    array[3, 4, 5] = np.nan
    array[4, 4, 5] = np.inf
    # .mha keeps NaN/Inf; ITK's NIfTI reader already turns them into 0 on read
    return _image_case(tmp_path, sitk.GetImageFromArray(array), name="x_t1ce.mha")


def _label_content(tmp_path):
    labels = np.zeros((12, 12, 12), dtype=np.uint8)
    labels[3:6, 3:6, 3:6], labels[6:8, 6:8, 6:8] = 2, 4
    return _image_case(tmp_path, sitk.GetImageFromArray(labels))


def _rgb(tmp_path):
    return _image_case(tmp_path, sitk.GetImageFromArray(np.ones((10, 10, 10, 3), dtype=np.uint8) * 9, isVector=True))


CORRUPT = {
    "truncated gzip": (_truncated_gzip, ImageReadError, "truncated"),
    "truncated nii": (_truncated_nii, ImageReadError, "truncated"),
    "wrong header": (_garbage, ImageReadError, "cannot read image"),
    "zero-byte file": (_empty, ImageReadError, "empty"),
    "2D image": (_two_d, InvalidImageError, "expected a 3D image, got a 2D"),
    "single slice": (_single_slice, InvalidImageError, "expected a 3D image, got a 2D"),
    "4D image": (_four_d, InvalidImageError, "expected a 3D image, got a 4D"),
    "constant image": (_constant, InvalidImageError, "constant"),
    "non-finite voxels": (_nan, InvalidImageError, "2 non-finite"),
    "label map as image": (_label_content, SegmentationAsImageError, "looks like a segmentation"),
    "vector image": (_rgb, InvalidImageError, "components per voxel"),
}


@pytest.mark.parametrize("fault", sorted(CORRUPT))
def test_bad_file_gives_a_specific_one_line_error_naming_it(tmp_path, fault):
    make, error, text = CORRUPT[fault]
    bad = make(tmp_path)
    with pytest.raises(error) as info:
        load_case(bad.parent)
    message = str(info.value)
    assert message.startswith(str(bad)) and text in message and _single_line(message)


def test_zero_spacing_is_refused(tmp_path):
    image = random_image()  # SimpleITK refuses to set a zero spacing: edit the MetaImage header instead
    path = tmp_path / "case" / "x_t1.mha"
    write(image, path)
    text = path.read_bytes().replace(b"ElementSpacing = 1 1 1", b"ElementSpacing = 1 0 1")
    path.write_bytes(text)
    with pytest.raises((InvalidImageError, ImageReadError)) as info:
        load_case(path.parent)
    assert str(info.value).startswith(str(path)) and _single_line(str(info.value))


def test_two_files_claiming_one_modality(tmp_path):
    write(random_image(seed=1), tmp_path / "a_flair.nii.gz")
    write(random_image(seed=2), tmp_path / "FLAIR.nrrd")
    with pytest.raises(ModalityConflictError, match="two files claim modality 'flair': FLAIR.nrrd and a_flair.nii.gz"):
        load_case(tmp_path)


def test_same_file_for_two_modalities(tmp_path):
    path = write(random_image(), tmp_path / "scan.nii.gz")
    with pytest.raises(ModalityConflictError, match="same input is given for modalities 't1' and 't2'"):
        load_case({"t1": path, "t2": path})


def test_no_modality_found(tmp_path):
    write(random_image(), tmp_path / "scan_001.nii.gz")
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(NoModalityError, match=r"no MRI modality file found.*scan_001.nii.gz"):
        load_case(tmp_path)
    with pytest.raises(NoModalityError):
        load_case({"t1": None})
    with pytest.raises(NoModalityError, match="unknown modality 'pd'"):
        load_case({"pd": tmp_path / "scan_001.nii.gz"})


def test_segmentation_named_file_passed_as_image(tmp_path, phantom_dir):
    seg = next(phantom_dir.glob("*_seg.nii.gz"))
    with pytest.raises(SegmentationAsImageError, match="named as a segmentation"):
        load_case({"t1ce": seg})


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(ImageReadError, match="file not found"):
        load_case({"t1": tmp_path / "nope_t1.nii.gz"})
    with pytest.raises(ImageReadError, match="folder not found"):
        load_case(tmp_path / "no-such-case")


def test_modalities_that_do_not_overlap_in_space():
    a = random_image(seed=1)
    b = random_image(seed=2, origin=(500.0, 0.0, 0.0))
    with pytest.raises(GeometryError, match="does not overlap"):
        load_case({"t1ce": a, "t2": b})


@pytest.mark.parametrize("fault", ["truncated gzip", "constant image", "label map as image"])
def test_cli_exits_non_zero_with_one_line_and_no_traceback(tmp_path, fault):
    bad = CORRUPT[fault][0](tmp_path)
    result = subprocess.run([sys.executable, "-m", "GliomaAnalysisLib.cli", "inspect", str(bad.parent)],
                            capture_output=True, text=True)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("glioma-analysis: error: ") and str(bad) in lines[0]
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_cli_usage_errors(tmp_path, capsys):
    assert main(["inspect"]) == 2
    assert "no input" in capsys.readouterr().err
    assert main(["phantom", "--out", str(tmp_path / "p"), "--n", "0"]) == 2
    assert not (tmp_path / "p").exists() or not any((tmp_path / "p").iterdir())


def test_failed_phantom_run_leaves_no_partial_output(tmp_path, monkeypatch):
    import GliomaAnalysisLib.synthetic.phantom as phantom
    calls = {"n": 0}
    real = phantom.write_phantom

    def fail_on_second(p, folder):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(28, "No space left on device")
        return real(p, folder)

    monkeypatch.setattr(phantom, "write_phantom", fail_on_second)
    out = tmp_path / "cohort"
    assert main(["phantom", "--out", str(out), "--n", "3", "--size", "48", "48", "31", "--spacing", "5", "5", "5"]) == 2
    assert list(out.iterdir()) == []


def test_inputs_are_never_modified(tmp_path, phantom_dir):
    case_dir = tmp_path / "case"
    shutil.copytree(phantom_dir, case_dir)
    before = {p.name: p.read_bytes() for p in case_dir.iterdir()}
    assert main(["inspect", str(case_dir)]) == 0
    assert {p.name: p.read_bytes() for p in case_dir.iterdir()} == before
