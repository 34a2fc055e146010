"""Approximate tumor location from the brain mask's geometry, in LPS whatever the file orientation."""
import numpy as np
import pytest
import SimpleITK as sitk

from GliomaAnalysisLib.pipeline.location import tumor_location

SIZE = (60, 72, 50)  # x, y, z voxels at 2 mm


def _brain_and_tumor(centre_fraction, direction=(1, 0, 0, 0, 1, 0, 0, 0, 1), skull_on=False):
    """An ellipsoid brain filling the grid and a 5-voxel ball at ``centre_fraction`` (lr, ap, si) of the brain in
    LPS (lr 0 = right, 1 = left; ap 0 = anterior; si 0 = inferior)."""
    z, y, x = np.mgrid[:SIZE[2], :SIZE[1], :SIZE[0]].astype(float)
    half = [(s - 1) / 2 for s in SIZE]
    brain = ((x - half[0]) / half[0]) ** 2 + ((y - half[1]) / half[1]) ** 2 + ((z - half[2]) / half[2]) ** 2 <= 1
    # fractions in LPS; the flip of an axis by the direction turns index order around
    signs = np.diag(np.asarray(direction, float).reshape(3, 3))
    index = [f * (s - 1) if sign > 0 else (1 - f) * (s - 1) for f, s, sign in zip(centre_fraction, SIZE, signs)]
    tumor = (x - index[0]) ** 2 + (y - index[1]) ** 2 + (z - index[2]) ** 2 <= 25
    image = sitk.GetImageFromArray(np.where(brain, 100.0, 5.0 if skull_on else 0.0).astype(np.float32))
    labels = sitk.GetImageFromArray((tumor & brain).astype(np.uint8) * 2)
    for im in (image, labels):
        im.SetSpacing((2.0, 2.0, 2.0))
        im.SetDirection(direction)
    return labels, {"t1": image}


@pytest.mark.parametrize("fraction,hemisphere,region", [
    ((0.75, 0.2, 0.6), "left", "frontal lobe"),
    ((0.2, 0.5, 0.3), "right", "temporal lobe"),
    ((0.7, 0.9, 0.6), "left", "occipital lobe"),
    ((0.3, 0.55, 0.8), "right", "parietal lobe"),
    ((0.6, 0.8, 0.15), "left", "posterior fossa (cerebellum / brainstem)"),
    ((0.5, 0.5, 0.45), "both hemispheres, centred on the midline", "deep central (basal ganglia / thalamus)"),
    ((0.55, 0.3, 0.7), "both hemispheres, centred left", "frontal lobe"),
])
def test_hemisphere_and_region_of_known_positions(fraction, hemisphere, region):
    location = tumor_location(*_brain_and_tumor(fraction))
    assert (location["hemisphere"], location["region"]) == (hemisphere, region)
    for key, expected in zip(("left_right", "anterior_posterior", "inferior_superior"), fraction):
        assert location["position"][key] == pytest.approx(expected, abs=0.03)


def test_ras_file_orientation_gives_the_same_location():
    ras = (-1, 0, 0, 0, -1, 0, 0, 0, 1)
    location = tumor_location(*_brain_and_tumor((0.75, 0.2, 0.6), direction=ras))
    assert (location["hemisphere"], location["region"]) == ("left", "frontal lobe")
    assert location["position"]["left_right"] == pytest.approx(0.75, abs=0.03)
    assert location["left_fraction"] == 1.0


def test_skull_on_input_uses_an_otsu_brain_mask():
    location = tumor_location(*_brain_and_tumor((0.2, 0.2, 0.6), skull_on=True))
    assert (location["hemisphere"], location["region"]) == ("right", "frontal lobe")


def test_no_tumor_or_no_image_gives_none():
    labels, images = _brain_and_tumor((0.5, 0.5, 0.5))
    empty = sitk.Image(labels.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(labels)
    assert tumor_location(empty, images) is None and tumor_location(labels, {}) is None


def test_the_analysis_hands_its_brain_mask_to_the_location(phantom_dir, tiny_model_dir):
    """analyze keeps the preprocessing's brain mask of the very images the report holds, and the location read
    from it is the one computed from those images."""
    from GliomaAnalysisLib import analyze
    from GliomaAnalysisLib.pipeline.location import brain_mask

    result = analyze(phantom_dir, fast=True, classify=False, model_dir=tiny_model_dir)
    assert result.brain_mask is not None
    assert np.array_equal(result.brain_mask, brain_mask(result.images))
    assert result.report()["location"] == tumor_location(result.labels, result.images)
