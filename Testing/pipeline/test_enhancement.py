"""The enhancement gate: predicted ET must be brighter on T1CE than on T1 (issue #13, item 4: ET tied to T1CE)."""
import json
import shutil

import numpy as np
import SimpleITK as sitk

from GliomaAnalysisLib import load_case
from GliomaAnalysisLib.io.labels import ED, ET, NCR, regions
from GliomaAnalysisLib.pipeline.analysis import analyze
from GliomaAnalysisLib.pipeline.enhancement import enhancement_sd, gate_unenhancing


def _brain(seed=0, shape=(30, 40, 40)):
    """A skull-stripped brain: a box of tissue (T1 about 100, T1CE about 100, SD 10) in a zero background."""
    rng = np.random.default_rng(seed)
    brain = np.zeros(shape, dtype=bool)
    brain[3:-3, 4:-4, 4:-4] = True
    t1 = np.where(brain, rng.normal(100, 10, shape), 0).astype(np.float32)
    t1ce = np.where(brain, rng.normal(100, 10, shape), 0).astype(np.float32)
    return brain, t1, t1ce


def test_enhancement_is_t1ce_minus_t1_in_brain_sd():
    brain, t1, t1ce = _brain()
    t1ce[10:14, 15:20, 15:20] += 30.0  # enhancing: +3 SD on T1CE only
    t1[20:24, 15:20, 15:20] += 30.0  # bright on T1 too (blood): not enhancement
    t1ce[20:24, 15:20, 15:20] += 30.0
    out = enhancement_sd({"t1": t1, "t1ce": t1ce})
    assert out.shape == brain.shape and out.dtype == np.float32
    assert 2.6 < out[10:14, 15:20, 15:20].mean() < 3.5  # about +3 SD (noise: 100 voxels of SD 1.4)
    assert abs(out[20:24, 15:20, 15:20].mean()) < 0.4 and abs(out[brain].mean()) < 0.05
    box = (slice(8, 16), slice(12, 22), slice(12, 22))
    assert np.allclose(enhancement_sd({"t1": t1, "t1ce": t1ce}, box), out[box], atol=1e-5)


def test_without_t1_the_t1ce_z_score_is_the_enhancement_and_without_t1ce_there_is_none():
    brain, t1, t1ce = _brain(1)
    t1ce[10:14, 15:20, 15:20] += 30.0
    alone = enhancement_sd({"t1ce": t1ce, "flair": t1})
    z = (t1ce - t1ce[brain].mean()) / t1ce[brain].std()
    assert np.allclose(alone[brain], z[brain], atol=0.05)  # statistics of every 8th voxel (3,000 here)
    assert enhancement_sd({"t1": t1, "flair": t1ce}) is None


def test_the_gate_moves_only_unenhancing_et_to_ncr():
    labels = np.zeros((10, 10, 10), dtype=np.uint8)
    labels[2:8, 2:8, 2:8] = ED
    labels[3:7, 3:7, 3:7] = ET
    labels[4:6, 4:6, 4:6] = NCR
    enhancement = np.full(labels.shape, 2.0, dtype=np.float32)
    enhancement[3:7, 3:7, 3:5] = 0.1  # half the ET rim is no brighter on T1CE than on T1
    gated = gate_unenhancing(labels, enhancement, 0.5)
    low, high = (labels == ET) & (enhancement < 0.5), (labels == ET) & (enhancement >= 0.5)
    assert low.sum() == high.sum() == 28 and np.all(gated[low] == NCR) and np.all(gated[high] == ET)
    before, after = regions(labels), regions(gated)
    assert np.array_equal(before["wt"], after["wt"]) and np.array_equal(before["tc"], after["tc"])
    assert labels[3, 3, 3] == ET  # the input is not modified
    assert gate_unenhancing(labels, enhancement, -1.0) is labels  # nothing to move: the same array back


def test_the_cards_enhancement_gate_applies_in_the_analysis(small_phantom, tmp_path):
    """A card with ``postprocessing.min_enhancement_sd``: the labels are the ungated labels with every ET voxel below
    it (T1CE - T1 of the case's images) relabelled NCR; the tumor core and whole tumor do not move."""
    from GliomaAnalysisLib.models.model_store import RESOURCES as MODELS_DIR

    for name in ("glioma_seg.json", "glioma_seg.safetensors"):
        shutil.copy(MODELS_DIR / name, tmp_path / name)
    card_path = tmp_path / "glioma_seg.json"
    card = json.loads(card_path.read_text())
    case = load_case({m: small_phantom.image(m) for m in ("t1", "t1ce", "t2", "flair")})
    labels = {}
    for threshold in (None, 1.5):
        card["postprocessing"] = {"min_et_ml": 0.0, **({} if threshold is None else {"min_enhancement_sd": threshold})}
        card_path.write_text(json.dumps(card))
        result = analyze(case, model_dir=tmp_path, fast=True, classify=False)
        labels[threshold] = sitk.GetArrayFromImage(result.labels)
        assert result.settings["min_enhancement_sd"] == threshold  # report.json says which gate ran
    enhancement = enhancement_sd({m: sitk.GetArrayFromImage(case.images[m]) for m in case.present})
    ungated, gated = labels[None], labels[1.5]
    assert (ungated == ET).sum() > 100  # the premise: the phantom's enhancing rim is found
    moved = (ungated == ET) & (enhancement < 1.5)
    assert 0 < moved.sum() < (ungated == ET).sum()  # the premise: some of it is below 1.5 SD, not all
    assert np.array_equal(gated, gate_unenhancing(ungated, enhancement, 1.5))
    assert np.all(enhancement[gated == ET] >= 1.5) and np.all(gated[moved] == NCR)
    assert np.array_equal(regions(gated)["tc"], regions(ungated)["tc"])
