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
    fine = 0.9 * rng.dirichlet(np.ones(3), size=(6, 5, 4)).transpose(3, 0, 1, 2).astype(np.float32)  # P(tumor) 0.9
    fine[:, 0, 0, 0] = 0.0             # a voxel the fine network calls background: the coarse proportions
    fine[:, 0, 0, 1] = (0.25, 0, 0)    # half-way to SPLIT_CONFIDENT: half the fine proportions, half the coarse
    inside = np.zeros((6, 5, 4), bool)
    inside[:3] = True
    out = {how: combine(coarse, fine, inside, how) for how in COMBINATIONS}
    for how in COMBINATIONS:
        assert np.array_equal(out[how][:, ~inside], coarse[:, ~inside])
    assert np.array_equal(out["replace"][:, inside], fine[:, inside])
    np.testing.assert_allclose(out["mean"][:, inside], 0.5 * (coarse + fine)[:, inside], rtol=1e-6)
    split = out["split"]
    np.testing.assert_allclose(split[:, inside].sum(0), coarse[:, inside].sum(0), rtol=1e-5)  # P(tumor): coarse's
    np.testing.assert_allclose(split[:, 1:3] / split[:, 1:3].sum(0), fine[:, 1:3] / fine[:, 1:3].sum(0), rtol=1e-5)
    np.testing.assert_allclose(split[:, 0, 0, 0], coarse[:, 0, 0, 0], rtol=1e-6)
    c = coarse[:, 0, 0, 1]
    np.testing.assert_allclose(split[:, 0, 0, 1], c.sum() * (0.5 * np.array([1, 0, 0]) + 0.5 * c / c.sum()), rtol=1e-5)
    with pytest.raises(ValueError, match="combination must be one of"):
        combine(coarse, fine, inside, "max")


def test_the_screen_refines_each_held_out_case_in_the_cross_validation_format(tmp_path, capsys, monkeypatch):
    data = tmp_path / "data"
    write_cohort(data, 4, seed=5, size=(48, 48, 40), spacing=(3.0, 3.0, 3.0))
    network = json.dumps({"widths": [4, 8], "encoder_blocks": [1, 1], "transformer_layers": 1, "transformer_heads": 2})
    common = ["--data", str(data), "--cache", str(tmp_path / "cache"), "--batch", "1", "--steps", "2", "--n-folds",
              "2", "--val-every", "100", "--network", network, "--foreground-probability", "1"]
    coarse = tmp_path / "coarse"
    assert cross_validate.main(common + ["--run-dir", str(coarse), "--crop", "16", "--spacing", "4"]) == 0
    fine = tmp_path / "fine"
    assert cross_validate.main(common + ["--run-dir", str(fine), "--crop", "16", "--spacing", "3", "--folds", "1"]) == 0
    for path in (coarse / "oof").glob("*.npz"):  # a coarse network that found the true tumor
        with np.load(path) as stored:
            fields = dict(stored)
        fields["probabilities"] = np.stack([fields["truth"] == k for k in (1, 2, 3)]).astype(np.float16)
        np.savez_compressed(path, **fields)
    capsys.readouterr()
    from GliomaAnalysisLib.models import inference
    windows = []

    def constant(model, image, presence, device, passes, mc_dropout):  # the fine network: known probabilities
        windows.append((image.shape, inference.SLIDING_WINDOW_ROI, passes, mc_dropout))
        maps = np.ones((4,) + image.shape[1:], np.float32) * np.array([0.1, 0.2, 0.3, 0.4], np.float32)[:, None, None,
                                                                                                            None]
        return maps, np.zeros(image.shape[1:], np.float32), []

    monkeypatch.setattr(inference, "predict", constant)
    out = tmp_path / "refined"
    args = ["--coarse", str(coarse), "--fine", str(fine), "--out", str(out), "--data", str(data)]
    assert main(args) == 0
    held_out = json.loads((fine / "fold1" / "config.json").read_text())["validation_cases"]
    assert f"{4 - len(held_out)} case(s) skipped" in capsys.readouterr().err  # fold 0 has no fine model
    for how in COMBINATIONS:  # only fold 1 has a fine model: only its cases are refined
        assert sorted(p.stem for p in (out / how / "oof").glob("*.npz")) == sorted(held_out)
    assert all(shape[0] == 4 and min(shape[1:]) >= 16 and roi == (16, 16, 16) and passes == 2 and mc
               for shape, roi, passes, mc in windows)  # over a region at least a crop wide, by windows of the crop
    for case in held_out:
        before = np.load(coarse / "oof" / f"{case}.npz")
        replaced = np.load(out / "replace" / "oof" / f"{case}.npz")
        for key in ("truth", "box", "fold", "spacing_zyx", "uncertainty", "passes", "engine", "precision"):
            assert np.array_equal(replaced[key], before[key]), key
        assert replaced["probabilities"].dtype == np.float16 and replaced["seconds"] > before["seconds"]
        assert replaced["fine_spacing"] == 3.0 and replaced["fine_passes"] == 2
        probabilities = replaced["probabilities"].astype(np.float32)
        coarse_wt = cross_validate.decode(before["probabilities"].astype(np.float32)) > 0
        inside = np.all(np.abs(probabilities - np.array([0.2, 0.3, 0.4])[:, None, None, None]) < 2e-3, axis=0)
        assert coarse_wt.any() and inside[coarse_wt].all()  # the coarse tumor lies in the region, with the fine values
        assert np.array_equal(probabilities[:, ~inside], before["probabilities"][:, ~inside].astype(np.float32))
    stamp = {p: p.stat().st_mtime_ns for p in out.rglob("*.npz")}
    assert main(args) == 0
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.npz")} == stamp  # resumable: nothing done twice
    assert cross_validate.report(out / "split")["cases"] == len(held_out)
    capsys.readouterr()

    only_fold0 = tmp_path / "coarse0"
    (only_fold0 / "oof").mkdir(parents=True)
    for path in (coarse / "oof").glob("*.npz"):
        if int(np.load(path)["fold"]) == 0:
            (only_fold0 / "oof" / path.name).write_bytes(path.read_bytes())
    assert main(["--coarse", str(only_fold0), "--fine", str(fine), "--out", str(tmp_path / "o2"), "--data",
                 str(data)]) == 2
    assert "no fine model for the folds" in capsys.readouterr().err.strip().splitlines()[-1]
    config = json.loads((fine / "fold1" / "config.json").read_text())
    (fine / "fold1" / "config.json").write_text(json.dumps({**config, "validation_cases": []}))
    with pytest.raises(SystemExit, match="is not held out by"):  # a case the fine fold trained on
        main(["--coarse", str(coarse), "--fine", str(fine), "--out", str(tmp_path / "o3"), "--data", str(data)])
    assert main(["--coarse", str(tmp_path / "none"), "--fine", str(fine), "--out", str(out)]) == 2
    assert main(["--coarse", str(coarse), "--fine", str(tmp_path / "none"), "--out", str(out)]) == 2
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
