"""lps_array: the LPS-ordered view of an image equals what SimpleITK's DICOMOrient copies, for every axis order,
sign and a rotated (oblique) direction."""
import itertools

import numpy as np
import SimpleITK as sitk

from GliomaAnalysisLib.io.geometry import lps_array


def test_lps_view_equals_dicom_orient_for_every_orientation():
    rng = np.random.default_rng(0)
    theta = 0.2
    rotation = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    for permutation in itertools.permutations(range(3)):
        for signs in itertools.product((1, -1), repeat=3):
            direction = np.zeros((3, 3))
            for index_axis, (physical_axis, sign) in enumerate(zip(permutation, signs)):
                direction[physical_axis, index_axis] = sign
            for matrix in (direction, rotation @ direction):
                image = sitk.GetImageFromArray(rng.random((5, 6, 7)).astype(np.float32))
                image.SetSpacing((1.0, 2.0, 3.0))
                image.SetDirection(matrix.ravel().tolist())
                reference = sitk.DICOMOrient(image, "LPS")
                array, spacing_zyx = lps_array(image)
                assert np.array_equal(array, sitk.GetArrayFromImage(reference)), (permutation, signs)
                assert spacing_zyx == tuple(reversed(reference.GetSpacing()))
                assert not array.flags.owndata  # a view, not a copy
