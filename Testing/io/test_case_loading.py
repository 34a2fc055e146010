import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from GliomaAnalysisLib import MODALITIES, Geometry, load_case
from GliomaAnalysisLib.io.labels import to_contiguous

from conftest import random_image, write

STYLES = {
    "brats2021": {"t1": "c_t1.nii.gz", "t1ce": "c_t1ce.nii.gz", "t2": "c_t2.nii.gz", "flair": "c_flair.nii.gz"},
    "brats2023": {"t1": "c-t1n.nii.gz", "t1ce": "c-t1c.nii.gz", "t2": "c-t2w.nii.gz", "flair": "c-t2f.nii.gz"},
    "clinical": {"t1": "T1.nrrd", "t1ce": "t1gd.mha", "t2": "T2W.nii", "flair": "Fla.nii.gz"},
}


@pytest.mark.parametrize("style", sorted(STYLES))
def test_folder_of_each_naming_style_loads_all_four(tmp_path, style):
    for i, (modality, name) in enumerate(STYLES[style].items()):
        write(random_image(seed=i), tmp_path / name)
    case = load_case(tmp_path)
    assert case.present == list(MODALITIES)
    assert case.reference == "t1ce"
    for i, modality in enumerate(MODALITIES):
        expected = sitk.GetArrayFromImage(random_image(seed=i)).astype(np.float32)
        assert np.array_equal(case.array(modality), expected)


def test_phantom_folder_loads_with_its_segmentation(phantom_dir, small_phantom):
    case = load_case(phantom_dir)
    assert case.case_id == small_phantom.case_id
    assert case.present == list(MODALITIES) and case.missing == []
    assert "seg" not in case.images
    assert case.segmentation_convention == "brats2021"
    assert np.array_equal(sitk.GetArrayFromImage(case.segmentation), small_phantom.labels)
    assert case.geometry == small_phantom.geometry
    assert case.warnings == []


@pytest.mark.parametrize("subset", [("flair",), ("t1", "t2"), ("t1", "t1ce", "flair")])
def test_any_subset_of_modalities_is_accepted(tmp_path, phantom_dir, subset):
    for path in phantom_dir.iterdir():
        if any(path.name.endswith(f"_{m}.nii.gz") for m in subset):
            shutil.copy(path, tmp_path / path.name)
    case = load_case(tmp_path)
    assert case.present == [m for m in MODALITIES if m in subset]
    assert case.missing == [m for m in MODALITIES if m not in subset]
    assert case.reference == ("t1ce" if "t1ce" in subset else subset[0])


def test_explicit_mapping_and_in_memory_images(phantom_dir, small_phantom):
    paths = {m: phantom_dir / f"{small_phantom.case_id}_{m}.nii.gz" for m in ("t1", "flair")}
    from_paths = load_case({**paths, "t2": None}, reference="flair")
    assert from_paths.present == ["t1", "flair"] and from_paths.reference == "flair"
    images = {m: small_phantom.image(m) for m in MODALITIES}
    in_memory = load_case(images, segmentation=small_phantom.label_image(), case_id="mem")
    assert in_memory.case_id == "mem" and in_memory.present == list(MODALITIES)
    assert np.array_equal(in_memory.array("t1ce"), small_phantom.images["t1ce"].astype(np.float32))
    assert np.array_equal(from_paths.array("flair"), in_memory.array("flair"))


def test_folder_segmentation_is_never_taken_for_an_image(tmp_path, phantom_dir, small_phantom):
    shutil.copy(phantom_dir / f"{small_phantom.case_id}_seg.nii.gz", tmp_path / "x_seg.nii.gz")
    shutil.copy(phantom_dir / f"{small_phantom.case_id}_t2.nii.gz", tmp_path / "x_t2.nii.gz")
    case = load_case(tmp_path)
    assert case.present == ["t2"] and case.segmentation is not None


def test_brats2023_labels_are_read_in_their_convention(tmp_path, small_phantom):
    labels = to_contiguous(small_phantom.labels)  # 0..3 == BraTS 2023 file labels
    seg = small_phantom.geometry.image_from_array(labels)
    case = load_case({"t1ce": small_phantom.image("t1ce")}, segmentation=seg)
    assert case.segmentation_convention == "brats2023"


@pytest.mark.parametrize("change", ["spacing", "direction", "origin", "size"])
def test_mismatched_geometry_is_resampled_onto_the_reference(change):
    reference = random_image(size=(30, 30, 20), seed=1)
    ref_geometry = Geometry.of(reference)
    other = sitk.Image(reference)
    if change == "spacing":
        other = sitk.Resample(reference, [15, 15, 10], sitk.Transform(), sitk.sitkLinear, (0.5, 0.5, 0.5),
                              (2.0, 2.0, 2.0), reference.GetDirection())
    elif change == "direction":  # same voxels, axes flipped and moved so they cover the same space
        array = sitk.GetArrayFromImage(reference)[:, :, ::-1]
        other = sitk.GetImageFromArray(np.ascontiguousarray(array))
        other.SetDirection((-1, 0, 0, 0, 1, 0, 0, 0, 1))
        other.SetOrigin((29.0, 0.0, 0.0))
    elif change == "origin":
        other.SetOrigin((1.0, 0.0, 0.0))
    elif change == "size":
        other = reference[2:28, :, :]
    case = load_case({"t1ce": reference, "flair": other})
    assert any(change in w and "flair" in w for w in case.warnings)
    flair = case.images["flair"]
    assert Geometry.of(flair) == ref_geometry
    if change == "direction":  # an exact permutation: identical voxels after resampling
        assert np.allclose(sitk.GetArrayFromImage(flair), sitk.GetArrayFromImage(reference))
    if change == "origin":  # shifted by one voxel in x: index i of the result is index i-1 of the input
        assert np.allclose(sitk.GetArrayFromImage(flair)[:, :, 1:], sitk.GetArrayFromImage(other)[:, :, :-1])


def test_matching_geometry_leaves_voxels_untouched(phantom_dir):
    case = load_case(phantom_dir)
    raw = sitk.GetArrayFromImage(sitk.ReadImage(str(next(phantom_dir.glob("*_flair.nii.gz")))))
    assert np.array_equal(case.array("flair"), raw.astype(np.float32))


def test_the_short_itk_reason_is_the_description_else_the_fallback_or_last_line():
    from GliomaAnalysisLib.io.image_io import short_itk_reason

    described = RuntimeError("itk::ERROR: ImageFileWriter(0x1)\nsrc/file.cxx:12\nDescription:  No such directory \n")
    assert short_itk_reason(described) == "No such directory"
    assert short_itk_reason(described, fallback="write failed") == "No such directory"
    bare = RuntimeError("first line\n  Could not create IO object for writing file x.nii.gz  \n")
    assert short_itk_reason(bare, fallback="write failed") == "write failed"
    assert short_itk_reason(bare) == "Could not create IO object for writing file x.nii.gz"
    assert short_itk_reason(RuntimeError("")) == "RuntimeError"
