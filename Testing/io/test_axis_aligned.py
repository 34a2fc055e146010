"""The separable linear resampling gives sitk.Resample's values on grids with parallel axes, borders included."""
import itertools

import numpy as np
import pytest
import SimpleITK as sitk

from GliomaAnalysisLib.io.geometry import Geometry, axis_steps, regrid, resample_array_box, resample_to, sub_grid


def _signed_permutations():
    for permutation in itertools.permutations(range(3)):
        for signs in itertools.product((1, -1), repeat=3):
            direction = np.zeros((3, 3))
            direction[list(permutation), [0, 1, 2]] = signs
            yield direction


def _sitk_box(array, source, target, start, stop):
    image = source.image_from_array(array)
    return sitk.GetArrayFromImage(resample_to(image, sub_grid(target, start, stop), sitk.sitkLinear))


@pytest.mark.parametrize("index", range(0, 48, 5))
def test_same_values_as_sitk_on_permuted_flipped_and_shifted_grids(index):
    rng = np.random.default_rng(index)
    direction = list(_signed_permutations())[index]
    target = Geometry((31, 24, 19), (1.0, 0.9, 1.3), tuple(rng.uniform(-40, 40, 3)), tuple(direction.ravel()))
    # the working grid of such a target: oriented to LPS, coarsened, and shifted by a few mm so that part of the
    # target lies beyond its last voxel centres (there the values are 0, or the edge value within half a voxel)
    lps = Geometry.of(sitk.DICOMOrient(target.empty_image(), "LPS"))
    source = regrid(lps, (2.0, 1.7, 2.5))
    source = Geometry(source.size, source.spacing, tuple(np.asarray(source.origin) + rng.uniform(-2, 2, 3) + [6, -5, 0]),
                      source.direction)
    array = rng.random(tuple(reversed(source.size))).astype(np.float32)
    start, stop = np.array([2, 0, 3]), np.array([29, 24, 17])
    assert axis_steps(source, target) is not None
    got = resample_array_box(array, source, target, start, stop)
    expected = _sitk_box(array, source, target, start, stop)
    assert got.shape == expected.shape == (14, 24, 27) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert np.array_equal(got == 0, expected == 0)  # the same voxels fall outside
    assert (expected == 0).any() and (expected > 0).mean() > 0.3


def test_oblique_grids_take_sitk():
    angle = np.deg2rad(20)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    target = Geometry((20, 20, 10), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), tuple(rotation.ravel()))
    source = Geometry((10, 10, 5), (2.0, 2.0, 2.0), (-5.0, -5.0, 0.0), tuple(np.eye(3).ravel()))
    assert axis_steps(source, target) is None
    array = np.random.default_rng(1).random((5, 10, 10)).astype(np.float32)
    start, stop = np.zeros(3, int), np.array(target.size)
    np.testing.assert_array_equal(resample_array_box(array, source, target, start, stop),
                                  _sitk_box(array, source, target, start, stop))
