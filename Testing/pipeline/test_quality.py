"""Automatic QC flags from what a result shows: each flag raised by a constructed fault, none on a clean case."""
import dataclasses

import numpy as np
import pytest
import SimpleITK as sitk

from GliomaAnalysisLib.io.labels import to_contiguous
from GliomaAnalysisLib.pipeline.analysis import analyze
from GliomaAnalysisLib.pipeline.measures import volumes_ml
from GliomaAnalysisLib.pipeline.quality import qc_flags


@pytest.fixture(scope="module")
def clean(small_phantom, tiny_model_dir):
    """A result whose labels are the phantom's truth, with zero uncertainty and the phantom's images."""
    from GliomaAnalysisLib import load_case

    case = load_case({m: small_phantom.image(m) for m in ("t1", "t1ce", "t2", "flair")}, case_id="qc")
    result = analyze(case, model_dir=tiny_model_dir, fast=True, classify=False, device="cpu")
    return _with_labels(result, to_contiguous(small_phantom.labels), np.zeros(small_phantom.labels.shape))


def _with_labels(result, labels, uncertainty):
    geometry = result.labels
    label_image = sitk.GetImageFromArray(labels.astype(np.uint8))
    label_image.CopyInformation(geometry)
    unc = sitk.GetImageFromArray(uncertainty.astype(np.float32))
    unc.CopyInformation(geometry)
    voxel_ml = float(np.prod(geometry.GetSpacing())) / 1000
    return dataclasses.replace(result, labels=label_image, uncertainty=unc, volumes_ml=volumes_ml(labels, voxel_ml))


def _names(result):
    return [flag["flag"] for flag in qc_flags(result)]


def test_a_clean_case_raises_no_flag(clean):
    assert qc_flags(clean) == []


def test_uncertainty_inside_the_tumor(clean):
    labels = sitk.GetArrayFromImage(clean.labels)
    flagged = _with_labels(clean, labels, np.where(labels > 0, 0.6, 0.0))
    assert _names(flagged) == ["uncertain"] and "0.60" in qc_flags(flagged)[0]["detail"]


def test_a_component_far_from_the_main_lesion(clean):
    labels = sitk.GetArrayFromImage(clean.labels).copy()
    centre = np.argwhere(labels > 0).mean(axis=0)
    corner = [2 if c > n / 2 else n - 6 for c, n in zip(centre, labels.shape)]  # the far corner of the grid
    labels[corner[0]:corner[0] + 4, corner[1]:corner[1] + 4, corner[2]:corner[2] + 4] = 2  # 1 mL
    assert _names(_with_labels(clean, labels, np.zeros(labels.shape))) == ["distant_component"]


def test_enhancement_inside_the_core(clean):
    labels = np.zeros(sitk.GetArrayFromImage(clean.labels).shape, np.uint8)
    labels[20:40, 30:50, 30:50] = 1
    labels[28:32, 38:42, 38:42] = 3  # ET wholly inside NCR
    assert _names(_with_labels(clean, labels, np.zeros(labels.shape))) == ["et_inside_core"]


def test_implausible_and_empty_volumes(clean):
    shape = sitk.GetArrayFromImage(clean.labels).shape
    assert _names(_with_labels(clean, np.zeros(shape), np.zeros(shape))) == ["no_tumor"]
    huge = np.full(shape, 2, np.uint8)  # 96 x 96 x 62 at 2.5 mm: 8900 mL of edema
    assert "implausible_volume" in _names(_with_labels(clean, huge, np.zeros(shape)))


def test_inputs_that_look_unregistered(clean):
    images = dict(clean.images)
    shifted = np.roll(sitk.GetArrayFromImage(images["flair"]), 16, axis=2)  # 40 mm to the side
    moved = sitk.GetImageFromArray(shifted)
    moved.CopyInformation(images["flair"])
    images["flair"] = moved
    flags = qc_flags(dataclasses.replace(clean, images=images))
    assert [f["flag"] for f in flags] == ["unregistered"] and "flair" in flags[0]["detail"]


def test_distant_component_distances_are_those_of_the_whole_volume():
    """The check runs on the tumor's bounding box; the gap it reports must be the whole volume's."""
    from scipy import ndimage

    from GliomaAnalysisLib.pipeline.quality import FAR_MM, _far_components

    tumor = np.zeros((60, 70, 80), bool)
    tumor[10:20, 10:20, 10:20] = True  # main lesion
    tumor[40:44, 50:54, 60:64] = True  # a far one, 64 voxels
    spacing = np.array([1.0, 1.0, 1.0])
    flags = _far_components(tumor, spacing, 1.0 / 1000 * 8)  # 0.512 mL at 8 uL voxels
    distance = ndimage.distance_transform_edt(~(ndimage.label(tumor)[0] == 1), sampling=spacing)
    gap = distance[40:44, 50:54, 60:64].min()
    assert gap > FAR_MM and flags and f"farthest {gap:.0f} mm" in flags[0]["detail"]


@pytest.mark.parametrize("where", ["inside", "at the border"])
def test_enclosed_enhancement_share_is_that_of_the_whole_volume(where):
    """The ET-inside-core check reads the ET's bounding box grown by one voxel: the share it reports must be the
    whole volume's, also when the ET touches the array's faces."""
    from scipy import ndimage

    from GliomaAnalysisLib.pipeline.quality import _enclosed_enhancement

    labels = np.zeros((30, 40, 50), np.uint8)
    core, z = (slice(8, 22), slice(10, 20)) if where == "inside" else (slice(0, 10), slice(0, 8))
    labels[core, 10:30, 10:30] = 1
    labels[z, 14:26, 14:26] = 3
    labels[z, 13, 14:20] = 2  # under a tenth of the ET's border on edema, the rest on core
    et = labels == 3
    shell = ndimage.binary_dilation(et) & ~et
    share = float((labels[shell] == 1).mean())
    flags = _enclosed_enhancement(labels)
    assert 0.9 <= share < 1 and flags and f"{share:.0%}" in flags[0]["detail"]
