import numpy as np

from GliomaAnalysisLib.pipeline.measures import ratios, volumes_ml
from GliomaAnalysisLib.pipeline.postprocess import lesion_filter, remove_small_components


def _ball(shape, centre, radius):
    zz, yy, xx = np.indices(shape)
    return (zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2 <= radius ** 2


def test_core_filter_erases_scattered_false_positives_and_keeps_the_tumor():
    labels = np.zeros((60, 60, 60), dtype=np.uint8)
    labels[_ball(labels.shape, (20, 20, 20), 6)] = 2
    labels[_ball(labels.shape, (20, 20, 20), 3)] = 3
    rng = np.random.default_rng(0)
    specks = rng.integers(0, 60, size=(30, 3))
    specks = specks[np.linalg.norm(specks - 20, axis=1) > 12]
    labels[tuple(specks.T)] = 1
    out = lesion_filter(labels, (1.0, 1.0, 1.0))
    assert np.array_equal(out > 0, _ball(labels.shape, (20, 20, 20), 6))
    assert np.array_equal(out[out > 0], labels[out > 0])  # kept voxels keep their class


def test_a_core_free_reading_loses_only_its_specks():
    labels = np.zeros((40, 40, 40), dtype=np.uint8)
    labels[_ball(labels.shape, (20, 20, 20), 8)] = 2
    labels[5, 5, 5] = 2
    out = lesion_filter(labels, (1, 1, 1))
    assert np.array_equal(out > 0, _ball(labels.shape, (20, 20, 20), 8))
    compact = np.where(out > 0, labels, 0).astype(np.uint8)
    assert lesion_filter(compact, (1, 1, 1)) is compact


def test_a_core_free_tumor_beside_a_larger_core_free_blob_is_kept():
    """An ET-free LGG in cross-validation (fold 0): the real tumor read as an 8 mL core-free component beside a
    31 mL core-free false positive; seed 001's sparse-box rule (largest components until 60 %) erased the tumor.
    Without a core nothing tells them apart, so both stay; a speck goes."""
    labels = np.zeros((70, 110, 100), dtype=np.uint8)
    spacing = (2.0, 2.0, 2.0)
    false_positive = _ball(labels.shape, (15, 30, 30), 10)  # 4,187 voxels x 8 uL = 33 mL
    tumor = _ball(labels.shape, (50, 80, 70), 6)  # 905 voxels = 7.2 mL
    labels[false_positive | tumor] = 2
    labels[68, 5, 5] = 2
    out = lesion_filter(labels, spacing)
    assert np.array_equal(out > 0, false_positive | tumor)


def test_a_larger_low_blob_never_erases_the_tumor():
    """glioma_seg 0.1.0's filter ranked components by peak density (1.0 for both) and broke the tie by label order,
    bottom of the brain first: a 7.2 mL low edema-only blob beside a 4.2 mL tumor won and the tumor was erased.
    Now the cored tumor is a lesion; the largest component is kept as well (never erased by a rule about cores)."""
    labels = np.zeros((90, 120, 120), dtype=np.uint8)
    spacing = (1.0, 1.0, 1.0)
    blob = _ball(labels.shape, (12, 30, 60), 12)  # 7.2 mL, low (cerebellum / skull base), edema only
    tumor = _ball(labels.shape, (60, 80, 60), 10)  # 4.2 mL with a core
    labels[blob] = 2
    labels[tumor] = 2
    labels[_ball(labels.shape, (60, 80, 60), 5)] = 1
    labels[_ball(labels.shape, (60, 80, 60), 3)] = 3
    labels[_ball(labels.shape, (80, 10, 10), 3)] = 2  # a far edema-only speck goes
    assert blob.sum() > tumor.sum()
    out = lesion_filter(labels, spacing)
    assert np.array_equal(out > 0, tumor | blob)
    assert np.array_equal(out[tumor], labels[tumor])


def test_the_largest_component_survives_small_cored_false_positives():
    """Cross-validation, BraTS2021_00009: the real tumor read as 5.5 mL with 0.08 mL of core (under the 0.1 mL
    rule) far from two small cored false positives; the old filter kept only those (WT 0.47 -> 0.00)."""
    labels = np.zeros((60, 100, 100), dtype=np.uint8)
    spacing = (2.0, 2.0, 2.0)
    tumor = _ball(labels.shape, (30, 70, 70), 5)  # 515 voxels x 8 uL = 4.1 mL, core-free
    labels[tumor] = 2
    for centre in ((10, 10, 10), (50, 10, 20)):
        labels[_ball(labels.shape, centre, 2)] = 3  # 33 voxels = 0.26 mL each, all enhancing
    out = lesion_filter(labels, spacing)
    assert np.array_equal(out[tumor], labels[tumor]) and (out == 3).sum() == (labels == 3).sum()


def test_edema_beside_the_tumor_and_a_second_cored_focus_are_kept():
    labels = np.zeros((80, 80, 80), dtype=np.uint8)
    labels[_ball(labels.shape, (20, 20, 20), 6)] = 2
    labels[_ball(labels.shape, (20, 20, 20), 3)] = 3
    labels[_ball(labels.shape, (20, 20, 33), 4)] = 2  # split-off edema 3 mm from the tumor
    labels[_ball(labels.shape, (60, 60, 60), 6)] = 2  # a second focus far away, with its own core
    labels[_ball(labels.shape, (60, 60, 60), 3)] = 1
    out = lesion_filter(labels, (1.0, 1.0, 1.0))
    assert out is labels


def test_small_components_are_removed_but_never_the_largest():
    labels = np.zeros((30, 30, 30), dtype=np.uint8)
    labels[5:10, 5:10, 5:10] = 2  # 125 voxels at 1 mm^3 = 0.125 mL
    labels[20:22, 20:22, 20:22] = 1  # 8 voxels = 0.008 mL
    out = remove_small_components(labels, 0.001, min_volume_ml=0.1)
    assert out[21, 21, 21] == 0 and out[7, 7, 7] == 2
    only = np.zeros_like(labels)
    only[1, 1, 1] = 3
    assert remove_small_components(only, 0.001)[1, 1, 1] == 3


def test_volumes_in_millilitres_and_ratios():
    labels = np.zeros((10, 10, 10), dtype=np.uint8)
    labels[0, 0, :4] = 1
    labels[1, :, :] = 2
    labels[2, 0, :6] = 3
    volumes = volumes_ml(labels, voxel_volume_ml=0.008)  # 2 mm isotropic voxels
    assert volumes == {"ncr": 0.03, "ed": 0.8, "et": 0.05, "tc": 0.08, "wt": 0.88}
    r = ratios(volumes)
    assert abs(r["ncr"] + r["ed"] + r["et"] - 1) < 1e-3 and r["ed"] == round(0.8 / 0.88, 4)
    assert ratios(volumes_ml(np.zeros((2, 2, 2), np.uint8), 1.0)) == {"ncr": 0.0, "ed": 0.0, "et": 0.0}


def test_filters_on_the_tumor_box_equal_the_whole_volume_computation():
    """The filters work on the tumor's bounding box only; the result must be that of the whole volume."""
    from scipy import ndimage

    rng = np.random.default_rng(4)
    labels = np.zeros((40, 50, 60), np.uint8)
    labels[10:20, 10:22, 12:25] = 2
    labels[13:17, 13:18, 15:20] = 3
    for _ in range(12):  # scattered small blobs, some touching the volume's border
        z, y, x = rng.integers(0, 38), rng.integers(0, 48), rng.integers(0, 58)
        labels[z:z + 2, y:y + 2, x:x + 2] = rng.integers(1, 4)
    filtered = remove_small_components(labels, 0.001, min_volume_ml=0.01)
    components, count = ndimage.label(labels > 0, structure=np.ones((3, 3, 3)))
    sizes = ndimage.sum(labels > 0, components, index=np.arange(1, count + 1))
    expected = labels.copy()
    for i, n in enumerate(sizes):
        if n < 10 and i != int(np.argmax(sizes)):
            expected[components == i + 1] = 0
    assert np.array_equal(filtered, expected) and (filtered != labels).any()
    assert remove_small_components(np.zeros((5, 5, 5), np.uint8), 0.001) is not None


def test_region_decoding_reads_nested_regions_where_the_argmax_splits_the_vote():
    from GliomaAnalysisLib.pipeline.postprocess import decode_regions

    # voxels: (NCR, ED, ET) probabilities; background is the rest
    cases = {"split core vote": ((0.30, 0.35, 0.25), 3),  # argmax: ED; core 0.55 > 0.5 and ET 0.25 > 0.2
             "edema": ((0.10, 0.60, 0.05), 2), "weak core": ((0.25, 0.30, 0.20), 2),  # core 0.45: not TC
             "necrosis": ((0.60, 0.20, 0.10), 1), "background": ((0.10, 0.15, 0.10), 0)}
    ncr, ed, et = (np.array([[[v[k] for v, _ in cases.values()]]], dtype=np.float32) for k in range(3))
    labels = decode_regions(ncr, ed, et, (0.5, 0.5, 0.2))
    assert labels.ravel().tolist() == [label for _, label in cases.values()]
    argmax = np.argmax(np.stack([1 - ncr - ed - et, ncr, ed, et]), axis=0)
    assert argmax.ravel()[0] == 2  # the case the decoding exists for


def test_decoded_regions_are_always_nested():
    from GliomaAnalysisLib.pipeline.postprocess import decode_regions

    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(4), size=(20, 20, 20)).astype(np.float32)  # (Z, Y, X, bg/NCR/ED/ET)
    labels = decode_regions(p[..., 1], p[..., 2], p[..., 3], (0.4, 0.3, 0.1))
    whole, core, enhancing = labels > 0, np.isin(labels, (1, 3)), labels == 3
    assert np.array_equal(whole, p[..., 1:].sum(-1) > 0.4)
    assert np.array_equal(core, whole & (p[..., 1] + p[..., 3] > 0.3))
    assert np.array_equal(enhancing, core & (p[..., 3] > 0.1))


def test_region_thresholds_follow_the_missing_modality():
    """A card's ``missing_region_thresholds`` replace ``region_thresholds`` for a case without that modality (with
    several missing, the entry with the lowest t_WT); argmax cards stay argmax."""
    from GliomaAnalysisLib.pipeline.postprocess import region_thresholds_for

    settings = {"region_thresholds": [0.5, 0.5, 0.2], "missing_region_thresholds": {"flair": [0.3, 0.5, 0.2],
                                                                                     "t2": [0.4, 0.5, 0.2]}}
    assert region_thresholds_for(settings, []) == [0.5, 0.5, 0.2]
    assert region_thresholds_for(settings, ["t1"]) == [0.5, 0.5, 0.2]
    assert region_thresholds_for(settings, ["flair"]) == [0.3, 0.5, 0.2]
    assert region_thresholds_for(settings, ["t1", "t2"]) == [0.4, 0.5, 0.2]
    assert region_thresholds_for(settings, ["t1", "t2", "flair"]) == [0.3, 0.5, 0.2]
    assert region_thresholds_for({"region_thresholds": [0.6, 0.5, 0.2]}, ["flair"]) == [0.6, 0.5, 0.2]
    assert region_thresholds_for({"min_et_ml": 0.5, "missing_region_thresholds": {"flair": [0.3, 0.5, 0.2]}},
                                 ["flair"]) is None


def test_an_argmax_reading_is_widened_only_where_the_whole_tumor_probability_reaches_the_threshold():
    """``widen_whole_tumor``: background voxels with P(NCR) + P(ED) + P(ET) >= t_WT become edema; every other voxel
    keeps the argmax label, and the input is not changed. ``whole_tumor_threshold_for`` reads the card's
    ``missing_wt_thresholds`` for the modalities missing (the lowest applies), else its ``wt_threshold``, else None."""
    from GliomaAnalysisLib.pipeline.analysis import argmax_uint8
    from GliomaAnalysisLib.pipeline.postprocess import whole_tumor_threshold_for, widen_whole_tumor

    rng = np.random.default_rng(3)
    p = rng.dirichlet(np.ones(4) * 0.7, size=(16, 18, 20)).astype(np.float32)  # (Z, Y, X, bg/NCR/ED/ET)
    maps = [np.ascontiguousarray(p[..., k]) for k in range(4)]
    labels = argmax_uint8(maps)
    before = labels.copy()
    widened = widen_whole_tumor(labels, *maps[1:], 0.4)
    whole = p[..., 1:].sum(-1)
    added = (labels == 0) & (whole >= 0.4)
    assert added.sum() > 50 and np.array_equal(labels, before)
    assert np.array_equal(widened[~added], labels[~added])
    assert np.all(widened[added] == 2)
    assert np.array_equal(widen_whole_tumor(labels, *maps[1:], 1.01), labels)  # nothing reaches it: unchanged
    settings = {"missing_wt_thresholds": {"flair": 0.4, "t2": 0.3}}
    assert whole_tumor_threshold_for(settings, []) is None
    assert whole_tumor_threshold_for(settings, ["t1"]) is None
    assert whole_tumor_threshold_for(settings, ["flair"]) == 0.4
    assert whole_tumor_threshold_for(settings, ["t2", "flair"]) == 0.3
    assert whole_tumor_threshold_for({"min_et_ml": 0.5}, ["flair"]) is None
    every_case = {"wt_threshold": 0.45, "missing_wt_thresholds": {"flair": 0.3}}  # a missing entry replaces it
    assert whole_tumor_threshold_for(every_case, []) == 0.45 and whole_tumor_threshold_for(every_case, ["t1"]) == 0.45
    assert whole_tumor_threshold_for(every_case, ["flair"]) == 0.3


def test_components_sums_and_boxes_match_scipy_ndimage():
    """The lesion filter's SimpleITK components are scipy.ndimage's (26-connected, the same raster-order labels,
    so ties between equal sizes break the same way), and so are the per-component sums and bounding boxes."""
    from scipy import ndimage
    from GliomaAnalysisLib.pipeline.postprocess import _boxes, _components, _sums

    rng = np.random.default_rng(3)
    for _ in range(40):
        mask = rng.random(tuple(rng.integers(3, 24, 3))) < rng.uniform(0.02, 0.4)
        ours, count = _components(mask)
        theirs, expected = ndimage.label(mask, structure=ndimage.generate_binary_structure(3, 3))
        assert count == expected and np.array_equal(ours, theirs)
        weights = mask & (rng.random(mask.shape) < 0.5)
        assert np.array_equal(_sums(weights, ours, count), ndimage.sum(weights, theirs, np.arange(1, count + 1)))
        assert _boxes(ours, count) == ndimage.find_objects(theirs)
