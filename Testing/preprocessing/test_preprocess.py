import numpy as np
import pytest
import SimpleITK as sitk

from GliomaAnalysisLib import Geometry, load_case, preprocess
from GliomaAnalysisLib.io.labels import to_contiguous
from GliomaAnalysisLib.preprocessing.preprocess import brain_mask

from conftest import GRIDS, _restamp


@pytest.mark.parametrize("grid", sorted(GRIDS))
@pytest.mark.parametrize("spacing", [None, (2.0, 2.0, 2.0)])
def test_round_trip_lands_exactly_on_the_reference_geometry(small_phantom, grid, spacing):
    images, seg = _restamp(small_phantom, *GRIDS[grid])
    case = load_case(images, segmentation=seg)
    pre = preprocess(case, spacing=spacing, divisible_by=8)
    assert all(n % 8 == 0 for n in pre.image.shape[1:])
    labels = pre.to_reference(pre.labels, "label")
    probs = pre.to_reference(pre.image[1], "probability")
    for out in (labels, probs):
        geometry = Geometry.of(out)
        assert geometry.size == case.geometry.size
        assert np.allclose(geometry.spacing, case.geometry.spacing, atol=1e-9, rtol=0)
        assert np.allclose(geometry.origin, case.geometry.origin, atol=1e-9, rtol=0)
        assert np.allclose(geometry.direction, case.geometry.direction, atol=1e-12, rtol=0)
    assert labels.GetPixelID() == sitk.sitkUInt8 and probs.GetPixelID() == sitk.sitkFloat32
    truth = to_contiguous(small_phantom.labels)
    back = sitk.GetArrayFromImage(labels)
    if spacing is None:  # crop + axis permutation only: voxel-exact
        assert np.array_equal(back, truth)
    else:  # resampled to 2 mm and back: whole tumor still matches closely
        wt_dice = 2 * np.sum((back > 0) & (truth > 0)) / (np.sum(back > 0) + np.sum(truth > 0))
        assert wt_dice > 0.8


def test_working_grid_is_lps_ordered_and_cropped_to_the_brain(small_phantom):
    images, seg = _restamp(small_phantom, *GRIDS["anisotropic_flipped"])
    pre = preprocess(load_case(images, segmentation=seg), margin_mm=5.0)
    direction = np.asarray(pre.working.direction).reshape(3, 3)
    assert np.allclose(direction, np.eye(3))  # DICOMOrient to LPS undid the flips
    assert pre.image.shape[1:] < tuple(reversed(small_phantom.geometry.size))
    # the brain touches no face of the working grid except within the margin
    margin_voxels = [int(np.ceil(5.0 / s)) for s in reversed(pre.working.spacing)]
    for axis, m in enumerate(margin_voxels):
        profile = pre.brain_mask.any(axis=tuple(a for a in range(3) if a != axis))
        assert not profile[:m].any() or np.flatnonzero(profile)[0] <= m


def test_zscore_and_presence_mask(small_phantom):
    images = {m: small_phantom.image(m) for m in ("t1ce", "flair")}
    pre = preprocess(load_case(images))
    assert pre.presence.tolist() == [0.0, 1.0, 0.0, 1.0]
    for channel in (1, 3):
        inside = pre.image[channel][pre.brain_mask]
        assert abs(inside.mean()) < 1e-4 and abs(inside.std() - 1) < 1e-3
        assert np.all(pre.image[channel][~pre.brain_mask] == 0)
    assert np.all(pre.image[0] == 0) and np.all(pre.image[2] == 0)


def test_zscore_of_intensities_that_overflow_float32_statistics_is_finite(small_phantom):
    """A scanner file scaled near float32's limit (seen in the fuzz test): the statistics overflow in float32 (NaN
    network input before); standardised in float64, the channel is the same as the unscaled one."""
    image = small_phantom.image("t1ce")
    peak = float(sitk.GetArrayViewFromImage(image).max())
    huge = sitk.Cast(image, sitk.sitkFloat32) * (3e37 / peak)
    pre, reference = preprocess(load_case({"t1ce": huge})), preprocess(load_case({"t1ce": image}))
    assert np.isfinite(pre.image).all()
    assert np.allclose(pre.image[1], reference.image[1], atol=1e-3)


def test_probabilities_return_by_linear_interpolation(small_phantom):
    case = load_case({"t1ce": small_phantom.image("t1ce")})
    pre = preprocess(case, spacing=(4.0, 4.0, 4.0))
    ramp = np.broadcast_to(np.linspace(0, 1, pre.image.shape[3], dtype=np.float32), pre.image.shape[1:])
    back = sitk.GetArrayFromImage(pre.to_reference(np.ascontiguousarray(ramp), "probability"))
    inside = back[back > 0]
    assert back.min() >= 0 and back.max() <= 1
    assert len(np.unique(np.round(inside, 4))) > pre.image.shape[3]  # interpolated, not blocky


def test_non_skull_stripped_input_gets_an_otsu_brain_mask():
    array = np.full((40, 40, 40), 50.0, dtype=np.float32)  # 'skull and scalp' everywhere
    zz, yy, xx = np.mgrid[:40, :40, :40]
    brain = (zz - 20) ** 2 + (yy - 20) ** 2 + (xx - 20) ** 2 < 12 ** 2
    array[brain] = 400.0
    mask = brain_mask(array[None])
    assert 2 * np.sum(mask & brain) / (mask.sum() + brain.sum()) > 0.98


@pytest.mark.parametrize("scale", [1e15, 1e20, 1e25, float(np.finfo(np.float32).max) / 2])
def test_otsu_brain_mask_of_huge_intensities(scale):
    """Skull-on input whose intensities overflow float32 arithmetic (the channel sum near float32's maximum, which
    made skimage's Otsu raise 'range is not finite'; its class variances from about 1e15, which gave a near-full
    mask): the mask of the same volume at ordinary intensities, without a warning."""
    import warnings

    ordinary = np.full((40, 40, 40), 50.0, dtype=np.float32)  # 'skull and scalp' everywhere
    zz, yy, xx = np.mgrid[:40, :40, :40]
    brain = (zz - 20) ** 2 + (yy - 20) ** 2 + (xx - 20) ** 2 < 12 ** 2
    ordinary[brain] = 400.0
    ordinary += np.random.default_rng(0).random(ordinary.shape, dtype=np.float32) * 20
    huge = (ordinary.astype(np.float64) * (scale / 420.0)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mask = brain_mask([huge] * 4)
    assert np.array_equal(mask, brain_mask([ordinary] * 4))
    assert 2 * np.sum(mask & brain) / (mask.sum() + brain.sum()) > 0.98


def test_to_reference_refuses_a_wrong_shape(small_phantom):
    pre = preprocess(load_case({"t1": small_phantom.image("t1")}))
    with pytest.raises(ValueError, match="does not match the working grid"):
        pre.to_reference(np.zeros((3, 3, 3)), "label")


def test_labels_downsampled_to_2mm_stay_centred_on_the_images():
    """A label block at 1 mm keeps its physical centre at 2 mm: area-averaged targets (nearest neighbour picked one
    corner voxel of each 2x2x2 block and shifted every label by 0.5 mm per axis)."""
    size = (40, 40, 40)
    array = np.zeros(size[::-1], dtype=np.int16)
    array[5:35, 5:35, 5:35] = 100
    labels = np.zeros(size[::-1], dtype=np.uint8)
    labels[11:22, 13:26, 9:20] = 2  # odd extents: their centres fall between 2 mm voxel centres
    images = {}
    for m in ("t1", "t1ce", "t2", "flair"):
        image = sitk.GetImageFromArray(array)
        images[m] = image
    seg = sitk.GetImageFromArray(labels)
    case = load_case(images, segmentation=seg)
    pre = preprocess(case, spacing=(2.0, 2.0, 2.0))

    def centre_mm(weights, geometry):
        grid = np.indices(weights.shape).reshape(3, -1)[::-1].T  # x, y, z
        direction = np.asarray(geometry.direction).reshape(3, 3)
        physical = np.asarray(geometry.origin) + (grid * np.asarray(geometry.spacing)) @ direction.T
        w = weights.reshape(-1)
        return (physical * w[:, None]).sum(0) / w.sum()

    truth = centre_mm((labels == 2).astype(float), Geometry.of(seg))
    soft = centre_mm(pre.soft_labels[2].astype(float), pre.working)
    hard = centre_mm((pre.labels == 2).astype(float), pre.working)
    assert np.abs(soft - truth).max() < 0.05
    assert np.abs(hard - truth).max() <= 0.5 + 1e-6  # hard labels: ties at half-covered edge voxels
    assert np.allclose(pre.soft_labels.sum(axis=0), 1.0, atol=1e-5)
    assert abs(pre.soft_labels[2].sum() * 8 - (labels == 2).sum()) < 1.0  # the volume is kept exactly


@pytest.mark.parametrize("grid", sorted(GRIDS))
def test_resampling_only_the_tumor_region_gives_the_rounded_full_resampling(small_phantom, grid):
    """The analysis resamples each probability map only around its voxels >= 0.0005: after rounding to 3 decimals
    the result equals resampling everything, on oblique, flipped and permuted grids, blobs at the border included."""
    images, seg = _restamp(small_phantom, *GRIDS[grid])
    pre = preprocess(load_case(images, segmentation=seg), spacing=(2.0, 2.0, 2.0), divisible_by=8)
    rng = np.random.default_rng(0)
    shape = pre.image.shape[1:]
    probability = np.full(shape, 3e-4, dtype=np.float32)  # below the floor: rounds to 0 everywhere
    probability[4:9, 5:11, 3:8] = rng.random((5, 6, 5))
    probability[-3:, :2, -4:] = rng.random((3, 2, 4))  # touching the grid's faces
    full = np.round(sitk.GetArrayFromImage(pre.to_reference(probability, "probability")), 3)
    boxed = np.round(pre.to_reference_array(probability, 0.0005), 3)
    assert full.shape == boxed.shape and full.max() > 0.5
    assert np.array_equal(full, boxed)
    assert not pre.to_reference_array(np.zeros(shape, np.float32), 0.0005).any()


@pytest.mark.parametrize("grid", sorted(GRIDS))
def test_the_argmax_reads_the_background_only_around_the_tumor_and_gives_the_same_labels(small_phantom, grid):
    """analysis._argmax_labels resamples the background map only inside the box of the NCR/ED/ET maps' non-zero
    voxels: the same labels as the argmax of all four maps resampled everywhere, on oblique, flipped and permuted
    grids; a box resampled on its own has the values of the whole resampling there (to float precision: its corner
    is computed again)."""
    from GliomaAnalysisLib.pipeline.analysis import _argmax_labels, _on_native, argmax_uint8
    from GliomaAnalysisLib.preprocessing.prepared import PreparedInput

    images, seg = _restamp(small_phantom, *GRIDS[grid])
    case = load_case(images, segmentation=seg)
    pre = preprocess(case, spacing=(2.0, 2.0, 2.0), divisible_by=8)
    prepared = PreparedInput(case=case, native=case, registered={}, report={}, warnings=[])
    rng = np.random.default_rng(1)
    shape = pre.image.shape[1:]
    logits = rng.normal(size=(4,) + shape).astype(np.float32)
    logits[0] += 6.0  # background nearly everywhere
    logits[1:, 4:10, 5:12, 3:9] += 7.0  # a tumor, NCR / ED / ET at random inside it
    probabilities = np.exp(logits) / np.exp(logits).sum(0)
    tumor_maps = [_on_native(prepared, pre, p) for p in probabilities[1:]]
    every = argmax_uint8([_on_native(prepared, pre, probabilities[0])] + tumor_maps)
    boxed = _argmax_labels(prepared, pre, probabilities[0], tumor_maps)
    assert set(np.unique(every)) == {0, 1, 2, 3} and np.array_equal(every, boxed)
    whole = sitk.GetArrayFromImage(pre.to_reference(probabilities[0], "probability"))
    box = (slice(3, 20), slice(5, 31), slice(2, 17))
    assert np.abs(pre.to_reference_box(probabilities[0], box) - whole[box]).max() < 1e-6
