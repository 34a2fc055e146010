"""The segmentation's second, finer stage (pipeline/fine_stage.py) inside ``analyze``: the region it runs over, its
probabilities replacing the coarse ones there and only there, the geometry of the fine grid and back, and what the
result says about it."""
import json
import time
from importlib import resources

import jsonschema
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from GliomaAnalysisLib.io.case import Case
from GliomaAnalysisLib.io.geometry import Geometry
from GliomaAnalysisLib.io.labels import to_contiguous
from GliomaAnalysisLib.models.model_store import save_model
from GliomaAnalysisLib.models.network import GliomaSegNet, NetworkConfig
from GliomaAnalysisLib.models.segment import Segmentation
from GliomaAnalysisLib.pipeline import analysis, fine_stage
from GliomaAnalysisLib.pipeline.analysis import analyze
from GliomaAnalysisLib.pipeline.fine_stage import fitted_to_windows, tumor_region
from GliomaAnalysisLib.pipeline.measures import dice
from GliomaAnalysisLib.preprocessing.preprocess import preprocess
from GliomaAnalysisLib.synthetic.phantom import make_phantom

SCHEMA = json.loads(resources.files("GliomaAnalysisLib").joinpath("schemas/report.schema.json").read_text())
FINE_SPACING = 1.25
WINDOW = 16
CONFIG = NetworkConfig(widths=(4, 8), encoder_blocks=(1, 1), transformer_layers=1, transformer_heads=2)


def test_the_region_is_the_tumor_box_with_a_margin_at_least_one_window_wide_and_inside_the_array():
    mask = np.zeros((40, 50, 60), bool)
    mask[10:14, 20:40, 55:58] = True
    region = tumor_region(mask, margin=2, minimum=16)
    assert region[0] == slice(4, 20)   # 8:16 grown, then widened to 16 about its centre
    assert region[1] == slice(18, 42)  # grown by 2 each side, already wider than 16
    assert region[2] == slice(44, 60)  # 53:60 cut at the edge, widened inwards to 16
    assert tumor_region(mask, margin=2, minimum=64)[0] == slice(0, 40)  # never more than the array


@pytest.mark.parametrize("origin, direction", [((15.0, -13.5, 11.0), (-1, 0, 0, 0, 1, 0, 0, 0, -1)),
                                               ((-10.0, -16.0, -10.0), (0.96, -0.28, 0, 0.28, 0.96, 0, 0, 0, 1))])
@pytest.mark.parametrize("region", [(slice(3, 14), slice(5, 20), slice(4, 9)), (slice(0, 18), slice(10, 22),
                                                                                 slice(0, 7))])
def test_the_region_alone_maps_back_to_the_values_the_whole_fine_grid_gives(origin, direction, region):
    """``FineStage.padded``: a map on the region, padded by one voxel of zeros, resampled onto the native grid gives
    what the whole fine grid (zeros outside the region) gives, at the region's edge and at the grid's edge too; the
    native grid stored with x and z flipped (axis-aligned path) or rotated (SimpleITK's resampling)."""
    from GliomaAnalysisLib.io.geometry import resample_array_within
    from GliomaAnalysisLib.preprocessing.preprocess import PreprocessedCase

    working = Geometry((24, 22, 18), (1.25, 1.25, 1.25), (-14.0, -12.0, -10.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    native = Geometry((30, 28, 22), (1.0, 1.0, 1.0), origin, direction)
    pre = PreprocessedCase(np.zeros((4, 18, 22, 24), np.float32), np.ones(4, np.float32),
                           np.ones((18, 22, 24), bool), working, native)
    values = np.random.default_rng(0).random([s.stop - s.start for s in region]).astype(np.float32)
    values[0] = 0.0  # a zero face: the floor's box starts inside the region
    stage = fine_stage.FineStage(pre, region, np.zeros((4,) + values.shape, np.float32), values, {}, "cpu", "f32",
                                 [], 1)
    whole = resample_array_within(stage.on_grid(values), working, native, 5e-4, 3)
    padded, grid = stage.padded(values)
    assert padded.shape == tuple(min(s.stop + 1, n) - max(s.start - 1, 0) for s, n in zip(region, (18, 22, 24)))
    assert (whole > 0).sum() > 1000
    np.testing.assert_array_equal(resample_array_within(padded, grid, native, 5e-4, 3), whole)
    ones = np.ones(values.shape, np.float32)
    inside = resample_array_within(stage.on_grid(ones), working, native, 5e-4, 3) >= 0.999
    assert np.array_equal(resample_array_within(*stage.padded(ones), native, 5e-4, 3) >= 0.999, inside)


def test_an_axis_that_runs_in_one_window_longer_than_the_crop_is_widened_to_fill_it():
    region = (slice(10, 27), slice(5, 21), slice(0, 40))  # 17, 16 and 40 voxels long
    fitted = fitted_to_windows(region, (60, 60, 30), crop=16, longest=24, divisor=4)
    assert fitted[0] == slice(8, 28)   # 17 -> one window of 20, widened about its centre
    assert fitted[1] == slice(5, 21)   # the crop: unchanged
    assert fitted[2] == slice(0, 40)   # longer than 24: windows of the crop, unchanged
    assert fitted_to_windows((slice(0, 17),) * 3, (18, 60, 60), 16, 24, 4)[0] == slice(0, 18)  # the array's end


@pytest.fixture(scope="module")
def ras_case():
    """A phantom stored x- and y-flipped with a RAS direction (the same physical image), with its labels."""
    phantom = make_phantom(3, size=(60, 60, 48), spacing=(2.0, 2.0, 2.5))

    def ras(image):
        return sitk.Flip(image, [True, True, False])

    images = {m: ras(sitk.Cast(phantom.image(m), sitk.sitkFloat32)) for m in phantom.images}
    labels = ras(phantom.label_image())
    assert images["t1"].GetDirection()[0] == -1.0
    return Case("ras", images, "t1", Geometry.of(images["t1"]), sources={m: "<in-memory>" for m in images},
                segmentation=labels, segmentation_convention="brats2021")


@pytest.fixture(scope="module")
def two_stage_dir(tmp_path_factory):
    """A coarse model naming a fine one as its fine stage (random weights: the tests replace their outputs)."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("two_stage")
    save_model(GliomaSegNet(CONFIG), {"version": "test", "preprocessing": {"spacing_mm": [FINE_SPACING] * 3},
                                      "window_voxels": WINDOW}, folder, "glioma_seg_fine")
    save_model(GliomaSegNet(CONFIG), {"version": "test", "preprocessing": {"spacing_mm": [2.0] * 3},
                                      "fine_stage": {"model": "glioma_seg_fine", "margin_mm": 10.0}},
               folder, "glioma_seg")
    return folder


def _one_hot(labels: np.ndarray) -> np.ndarray:
    """float32 (4, Z, Y, X) of contiguous labels (Z, Y, X)."""
    return np.stack([(labels == k) for k in range(4)]).astype(np.float32)


def _truth_on(case: Case, spacing: float) -> np.ndarray:
    """The case's contiguous labels on the working grid of a model at ``spacing`` (the coarse one padded as analyze
    pads for the network; the fine one not: it runs by windows)."""
    return preprocess(case, spacing=(spacing,) * 3, divisible_by=1 if spacing == FINE_SPACING else CONFIG.divisor
                      ).labels


def _coarse_finds(case: Case, monkeypatch, labels: np.ndarray) -> None:
    """The coarse network answers ``labels`` (its working grid's), one-hot, with P(NCR) 0.1 where it sees
    background (a coarse map that must survive outside the fine region)."""
    def coarse(name, folder, config, image, presence, device, passes, mc_dropout, progress=None, side_by_side=True):
        assert image.shape[1:] == labels.shape
        maps = _one_hot(labels)
        maps[1][labels == 0], maps[0][labels == 0] = 0.1, 0.9
        return Segmentation(maps, np.full(labels.shape, 0.1, np.float32), [], None, "test")

    monkeypatch.setattr(analysis, "segment", coarse)


def test_the_fine_stage_replaces_the_coarse_probabilities_in_the_tumor_region_only(ras_case, two_stage_dir,
                                                                                     monkeypatch):
    coarse_labels = _truth_on(ras_case, 2.0)
    _coarse_finds(ras_case, monkeypatch, coarse_labels)
    calls = []

    def fine(name, folder, config, image, presence, device, passes, mc_dropout, progress=None, window=None):
        calls.append((name, image.shape, passes, mc_dropout, window))
        progress("network pass 1/2")
        maps = np.ones((4,) + image.shape[1:], np.float32) * np.array([0.1, 0.2, 0.3, 0.4], np.float32)[:, None,
                                                                                                       None, None]
        return Segmentation(maps, np.full(image.shape[1:], 0.77, np.float32), ["fine warning"], None, "test", "f32")

    monkeypatch.setattr(fine_stage, "segment", fine)
    regions = []
    real_region_of = fine_stage.region_of
    monkeypatch.setattr(fine_stage, "region_of", lambda *args: regions.append(real_region_of(*args)) or regions[-1])
    loaded = []  # the worker loads both networks; the fine stage waits for its network's (slow) load

    def load(name, folder, passes):
        time.sleep(0.5 if name == "glioma_seg_fine" else 0.0)
        loaded.append((name, passes, len(calls)))

    monkeypatch.setattr(analysis, "load_segmentation_networks", load)
    messages = []
    result = analyze(ras_case, model_dir=two_stage_dir, classify=False, postprocess=False, progress=messages.append)
    assert loaded == [("glioma_seg", 2, 0), ("glioma_seg_fine", 1, 0)]
    assert "fine stage: network pass 1/2" in messages  # its passes told apart from the coarse network's
    [(name, shape, passes, mc, window)] = calls
    fine_truth = _truth_on(ras_case, FINE_SPACING)
    assert regions == [tumor_region(fine_truth > 0, 8, WINDOW)]  # the tumor's box + 10 mm (8 voxels), no more
    assert name == "glioma_seg_fine" and passes == 2 and mc and window == (WINDOW,) * 3 and min(shape[1:]) >= WINDOW
    et = sitk.GetArrayFromImage(result.probabilities["et"])
    inside = np.abs(et - 0.4) < 1e-3
    labels = sitk.GetArrayFromImage(result.labels)
    truth = to_contiguous(sitk.GetArrayFromImage(ras_case.segmentation), "brats2021")
    assert inside[truth > 0].all()  # the whole tumor lies in the region, 10 mm beyond it too
    grown = sitk.GetArrayFromImage(sitk.BinaryDilate(sitk.GetImageFromArray((truth > 0).astype(np.uint8)),
                                                     [4, 4, 3]))  # 8 mm in x, y; 7.5 mm in z
    assert inside[grown > 0].all() and not inside.all()
    assert (labels[inside] == 3).all()  # the fine network's ET everywhere in the region
    assert np.allclose(sitk.GetArrayFromImage(result.probabilities["ncr"])[inside], 0.2, atol=1e-3)
    assert np.allclose(sitk.GetArrayFromImage(result.uncertainty)[inside], 0.77, atol=1e-3)
    assert (labels[~inside] == 0).all()  # outside: the coarse labels, background there
    ncr = sitk.GetArrayFromImage(result.probabilities["ncr"])
    assert np.isclose(ncr[~inside], 0.1, atol=1e-3).mean() > 0.3  # and the coarse maps, kept (0 off the brain's box)
    assert [m["name"] for m in result.models] == ["glioma_seg", "glioma_seg_fine"]
    assert result.settings["fine_stage"]["model"] == "glioma_seg_fine"
    assert result.settings["fine_stage"]["working_spacing_mm"] == [FINE_SPACING] * 3
    assert result.settings["fine_stage"]["passes"] == 2
    assert result.settings["fine_stage"]["region_voxels"] == [s.stop - s.start for s in regions[0]]
    jsonschema.validate(result.report(), SCHEMA)
    assert "fine warning" in result.warnings


def test_fine_labels_come_back_onto_the_native_grid_of_a_case_stored_ras(ras_case, two_stage_dir, monkeypatch):
    """The fine network answering the truth of its own 1.25 mm grid gives back the native truth (the coarse one
    answers a shifted tumor, which the fine stage must correct wherever its region reaches)."""
    coarse_labels = _truth_on(ras_case, 2.0)
    _coarse_finds(ras_case, monkeypatch, np.roll(coarse_labels, 2, axis=2))
    fine_truth = _truth_on(ras_case, FINE_SPACING)
    recorded = {}
    real_region_of = fine_stage.region_of

    def spy(*args):  # the region the fine stage chose on its grid
        recorded["region"] = real_region_of(*args)
        return recorded["region"]

    def fine(name, folder, config, image, presence, device, passes, mc_dropout, progress=None, window=None):
        assert image.shape[1:] == fine_truth[recorded["region"]].shape
        return Segmentation(_one_hot(fine_truth[recorded["region"]]), np.zeros(image.shape[1:], np.float32), [],
                            None, "test")

    monkeypatch.setattr(fine_stage, "region_of", spy)
    monkeypatch.setattr(fine_stage, "segment", fine)
    result = analyze(ras_case, model_dir=two_stage_dir, classify=False, postprocess=False)
    labels = sitk.GetArrayFromImage(result.labels)
    truth = to_contiguous(sitk.GetArrayFromImage(ras_case.segmentation), "brats2021")
    for k in (1, 2, 3):
        assert dice(labels == k, truth == k) > 0.85, k


def test_no_fine_stage_without_a_coarse_tumor(ras_case, two_stage_dir, monkeypatch):
    _coarse_finds(ras_case, monkeypatch, np.zeros_like(_truth_on(ras_case, 2.0)))
    monkeypatch.setattr(fine_stage, "segment", lambda *a, **k: pytest.fail("the fine network ran"))
    result = analyze(ras_case, model_dir=two_stage_dir, classify=False)
    assert result.volumes_ml["wt"] == 0 and result.settings["fine_stage"] is None
    assert [m["name"] for m in result.models] == ["glioma_seg"]


def test_fast_skips_the_fine_stage_unless_asked_for(ras_case, two_stage_dir, monkeypatch):
    """--fast is the first stage alone (about 1 s less a case); fine_stage=True runs it in one pass anyway, as the
    pair's cross-validation without a modality does."""
    _coarse_finds(ras_case, monkeypatch, _truth_on(ras_case, 2.0))
    monkeypatch.setattr(fine_stage, "segment", lambda *a, **k: pytest.fail("the fine network ran"))
    result = analyze(ras_case, model_dir=two_stage_dir, classify=False, fast=True)
    assert result.settings["fine_stage"] is None and [m["name"] for m in result.models] == ["glioma_seg"]


def test_fast_without_t1ce_the_fine_stage_runs_one_plain_pass_and_merges_enhancement_into_the_core(
        ras_case, two_stage_dir, monkeypatch):
    without_t1ce = Case("ras", {m: i for m, i in ras_case.images.items() if m != "t1ce"}, "t1", ras_case.geometry,
                        sources={m: "<in-memory>" for m in ras_case.images if m != "t1ce"})
    _coarse_finds(without_t1ce, monkeypatch, _truth_on(ras_case, 2.0))
    calls = []

    def fine(name, folder, config, image, presence, device, passes, mc_dropout, progress=None, window=None):
        calls.append((passes, mc_dropout, presence.tolist()))
        maps = np.ones((4,) + image.shape[1:], np.float32) * np.array([0.1, 0.2, 0.3, 0.4], np.float32)[:, None,
                                                                                                       None, None]
        return Segmentation(maps, np.zeros(image.shape[1:], np.float32), [], None, "test")

    monkeypatch.setattr(fine_stage, "segment", fine)
    result = analyze(without_t1ce, model_dir=two_stage_dir, classify=False, postprocess=False, fast=True,
                     single_model=True, fine_stage=True)
    assert calls == [(1, False, [1.0, 0.0, 1.0, 1.0])]
    ncr = sitk.GetArrayFromImage(result.probabilities["ncr"])
    assert np.isclose(ncr, 0.6, atol=1e-3).any() and sitk.GetArrayFromImage(result.probabilities["et"]).max() == 0
    assert not result.settings["et_assessable"] and result.volumes_ml["et"] == 0


@pytest.mark.parametrize("fine_card, message", [({"window_voxels": 15}, "window_voxels must be a positive multiple"),
                                                ({}, "window_voxels must be a positive multiple")])
def test_a_fine_model_without_a_usable_window_is_a_one_line_model_error(tmp_path, ras_case, monkeypatch, fine_card,
                                                                         message):
    from GliomaAnalysisLib.models.model_store import ModelError

    torch.manual_seed(0)
    save_model(GliomaSegNet(CONFIG), {"version": "test", "preprocessing": {"spacing_mm": [FINE_SPACING] * 3},
                                      **fine_card}, tmp_path, "glioma_seg_fine")
    save_model(GliomaSegNet(CONFIG), {"version": "test", "preprocessing": {"spacing_mm": [2.0] * 3},
                                      "fine_stage": {"model": "glioma_seg_fine"}}, tmp_path, "glioma_seg")
    _coarse_finds(ras_case, monkeypatch, _truth_on(ras_case, 2.0))
    with pytest.raises(ModelError, match=message) as raised:
        analyze(ras_case, model_dir=tmp_path, classify=False)
    assert "\n" not in str(raised.value) and "glioma_seg_fine" in str(raised.value)
    with pytest.raises(ModelError, match="fine_stage must name a model"):
        fine_stage.fine_model({"margin_mm": 10}, str(tmp_path))


def test_the_card_caps_the_fine_passes_and_runs_an_axis_up_to_its_longest_window_in_one(tmp_path, ras_case,
                                                                                        monkeypatch):
    """fine_stage ``passes`` 1: one plain pass where the coarse network ran two with dropout; a fine card's
    ``window_max_voxels``: the region's axes up to that long run in one window each, the region widened to it."""
    torch.manual_seed(0)
    save_model(GliomaSegNet(CONFIG), {"version": "test", "preprocessing": {"spacing_mm": [FINE_SPACING] * 3},
                                      "window_voxels": WINDOW, "window_max_voxels": 48}, tmp_path, "glioma_seg_fine")
    save_model(GliomaSegNet(CONFIG), {"version": "test", "preprocessing": {"spacing_mm": [2.0] * 3},
                                      "fine_stage": {"model": "glioma_seg_fine", "passes": 1}}, tmp_path,
               "glioma_seg")
    _coarse_finds(ras_case, monkeypatch, _truth_on(ras_case, 2.0))
    calls = []

    def fine(name, folder, config, image, presence, device, passes, mc_dropout, progress=None, window=None):
        calls.append((image.shape[1:], passes, mc_dropout, window))
        return Segmentation(_one_hot(np.zeros(image.shape[1:], np.uint8)), np.zeros(image.shape[1:], np.float32),
                            [], None, "test")

    monkeypatch.setattr(fine_stage, "segment", fine)
    analyze(ras_case, model_dir=tmp_path, classify=False, postprocess=False)
    [(shape, passes, mc, window)] = calls
    grid = _truth_on(ras_case, FINE_SPACING).shape
    unfitted = [s.stop - s.start for s in tumor_region(_truth_on(ras_case, FINE_SPACING) > 0, 8, WINDOW)]
    assert passes == 1 and not mc
    for n, m, w, full in zip(unfitted, shape, window, grid):
        if n <= 48:  # one window of the axis: the region rounded up to the network's divisor (the grid allowing)
            assert w % CONFIG.divisor == 0 and w >= n and m == min(w, full)
        else:
            assert w == WINDOW and m == n
    assert any(WINDOW < w for w in window)  # the phantom's tumor is longer than the crop along some axis


@pytest.mark.parametrize("stage, fine_card, message", [
    ({"passes": 0}, {"window_voxels": 16}, "passes must be a positive integer"),
    ({}, {"window_voxels": 16, "window_max_voxels": 8}, "window_max_voxels must be a multiple"),
    ({}, {"window_voxels": 16, "window_max_voxels": 25}, "window_max_voxels must be a multiple")])
def test_bad_fine_passes_or_longest_window_are_one_line_model_errors(tmp_path, stage, fine_card, message):
    from GliomaAnalysisLib.models.model_store import ModelError

    save_model(GliomaSegNet(CONFIG), {"version": "test", "preprocessing": {"spacing_mm": [FINE_SPACING] * 3},
                                      **fine_card}, tmp_path, "glioma_seg_fine")
    with pytest.raises(ModelError, match=message) as raised:
        fine_stage.fine_model({"model": "glioma_seg_fine", **stage}, str(tmp_path))
    assert "\n" not in str(raised.value)
