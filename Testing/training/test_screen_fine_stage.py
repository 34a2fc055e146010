"""Coarse-to-fine screen: the region a fine network runs over, how its probabilities join the coarse ones, and the
stored predictions it leaves for the cross-validation report."""
import json

import numpy as np
import pytest

from GliomaAnalysisLib.synthetic.phantom import write_cohort
from training.segmentation import cross_validate
from training.segmentation.screen_fine_stage import COMBINATIONS, combine, main, tumor_region


def test_the_region_is_the_tumor_box_with_a_margin_at_least_one_crop_wide_and_inside_the_array():
    mask = np.zeros((40, 50, 60), bool)
    mask[10:14, 20:40, 55:58] = True
    region = tumor_region(mask, margin=2, minimum=16)
    assert region[0] == slice(4, 20)   # 8:16 grown, then widened to 16 about its centre
    assert region[1] == slice(18, 42)  # grown by 2 each side, already wider than 16
    assert region[2] == slice(44, 60)  # 53:60 cut at the edge, widened inwards to 16
    assert tumor_region(mask, margin=2, minimum=64)[0] == slice(0, 40)  # never more than the array


def test_combinations_keep_the_coarse_outside_and_share_the_coarse_tumor_inside():
    rng = np.random.default_rng(0)
    coarse = rng.dirichlet(np.ones(4), size=(6, 5, 4)).transpose(3, 0, 1, 2)[1:].astype(np.float32)
    fine = rng.dirichlet(np.ones(4), size=(6, 5, 4)).transpose(3, 0, 1, 2)[1:].astype(np.float32)
    fine[:, 0, 0, 0] = 0.0  # the fine network sees no tumor in one voxel
    inside = np.zeros((6, 5, 4), bool)
    inside[:3] = True
    out = {how: combine(coarse, fine, inside, how) for how in COMBINATIONS}
    for how in COMBINATIONS:
        assert np.array_equal(out[how][:, ~inside], coarse[:, ~inside])
    assert np.array_equal(out["replace"][:, inside], fine[:, inside])
    np.testing.assert_allclose(out["mean"][:, inside], 0.5 * (coarse + fine)[:, inside], rtol=1e-6)
    split = out["split"]
    np.testing.assert_allclose(split[:, inside].sum(0), coarse[:, inside].sum(0), rtol=1e-5)  # P(tumor): coarse's
    shares = split[:, 1:3] / split[:, 1:3].sum(0)
    np.testing.assert_allclose(shares, fine[:, 1:3] / fine[:, 1:3].sum(0), rtol=1e-5)  # the split: fine's
    np.testing.assert_allclose(split[:, 0, 0, 0], coarse[:, 0, 0, 0], rtol=1e-6)  # no fine tumor: coarse's split
    with pytest.raises(ValueError, match="combination must be one of"):
        combine(coarse, fine, inside, "max")


def test_the_screen_refines_each_held_out_case_in_the_cross_validation_format(tmp_path, capsys):
    data = tmp_path / "data"
    write_cohort(data, 4, seed=5, size=(48, 48, 40), spacing=(3.0, 3.0, 3.0))
    network = json.dumps({"widths": [4, 8], "encoder_blocks": [1, 1], "transformer_layers": 1, "transformer_heads": 2})
    common = ["--data", str(data), "--cache", str(tmp_path / "cache"), "--batch", "1", "--steps", "2", "--n-folds",
              "2", "--val-every", "100", "--network", network, "--foreground-probability", "1"]
    assert cross_validate.main(common + ["--run-dir", str(tmp_path / "coarse"), "--crop", "16", "--spacing", "4"]) == 0
    fine = tmp_path / "fine"
    assert cross_validate.main(common + ["--run-dir", str(fine), "--crop", "16", "--spacing", "3", "--folds", "1"]) == 0
    out = tmp_path / "refined"
    assert main(["--coarse", str(tmp_path / "coarse"), "--fine", str(fine), "--out", str(out),
                 "--data", str(data)]) == 0
    held_out = json.loads((fine / "fold1" / "config.json").read_text())["validation_cases"]
    for how in COMBINATIONS:  # only fold 1 has a fine model: only its cases are refined
        assert sorted(p.stem for p in (out / how / "oof").glob("*.npz")) == sorted(held_out)
    refined_somewhere = False
    for case in held_out:
        coarse = np.load(tmp_path / "coarse" / "oof" / f"{case}.npz")
        replaced = np.load(out / "replace" / "oof" / f"{case}.npz")
        for key in ("truth", "box", "fold", "spacing_zyx", "uncertainty"):
            assert np.array_equal(replaced[key], coarse[key]), key
        assert replaced["probabilities"].shape == coarse["probabilities"].shape
        assert replaced["probabilities"].dtype == np.float16 and replaced["seconds"] > coarse["seconds"]
        tumor = replaced["probabilities"].astype(np.float32).sum(axis=0)
        assert tumor.min() >= 0 and tumor.max() <= 1.0 + 1e-2
        refined_somewhere |= not np.array_equal(replaced["probabilities"], coarse["probabilities"])
    assert refined_somewhere
    assert "refined over" in capsys.readouterr().err
    stamp = {p: p.stat().st_mtime_ns for p in out.rglob("*.npz")}
    assert main(["--coarse", str(tmp_path / "coarse"), "--fine", str(fine), "--out", str(out),
                 "--data", str(data)]) == 0
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.npz")} == stamp  # resumable: nothing done twice
    report = cross_validate.report(out / "split")
    assert report["cases"] == len(held_out)
    assert main(["--coarse", str(tmp_path / "none"), "--fine", str(fine), "--out", str(out)]) == 2
    assert main(["--coarse", str(tmp_path / "coarse"), "--fine", str(tmp_path / "none"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "no out-of-fold predictions" in err[0] and "no trained fold models" in err[1]


def test_the_region_maps_to_the_fine_grid_and_back_onto_the_native_box_of_a_file_stored_ras(tmp_path):
    import SimpleITK as sitk

    from GliomaAnalysisLib.io.case import Case
    from GliomaAnalysisLib.io.geometry import Geometry
    from GliomaAnalysisLib.io.labels import to_contiguous
    from GliomaAnalysisLib.pipeline.measures import dice
    from GliomaAnalysisLib.preprocessing.preprocess import preprocess
    from GliomaAnalysisLib.synthetic.phantom import make_phantom
    from training.segmentation.cross_validate import _box
    from training.segmentation.screen_fine_stage import region_on_working, region_to_native

    phantom = make_phantom(3, size=(60, 60, 48), spacing=(2.0, 2.0, 2.5))

    def ras(image):  # stored x- and y-flipped with a RAS direction: the same physical image
        return sitk.Flip(image, [True, True, False])

    images = {m: ras(sitk.Cast(phantom.image(m), sitk.sitkFloat32)) for m in phantom.images}
    labels = ras(phantom.label_image())
    assert images["t1"].GetDirection()[0] == -1.0
    case = Case("ras", images, "t1", Geometry.of(images["t1"]), segmentation=labels,
                segmentation_convention="brats2021")
    truth = to_contiguous(sitk.GetArrayFromImage(labels), "brats2021")
    box = _box(truth > 0, margin=4)
    pre = preprocess(case, spacing=(1.25,) * 3)
    region = region_on_working(pre, truth[box] > 0, box, margin=8, minimum=32)
    assert region is not None and pre.labels[region].astype(bool).sum() == (pre.labels > 0).sum()  # all of it
    one_hot = np.stack([(pre.labels[region] == k).astype(np.float32) for k in (1, 2, 3)])
    native, inside = region_to_native(pre, one_hot, region, box)
    assert native.shape == (3,) + truth[box].shape and inside[truth[box] > 0].all()
    back = cross_validate.decode(native)
    for k in (1, 2, 3):  # the fine grid's own labels, back on the native grid, are the truth again
        assert dice(back == k, truth[box] == k) > 0.85, k
    assert region_on_working(pre, np.zeros_like(truth[box], bool), box, 8, 32) is None
