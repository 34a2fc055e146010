"""The signal gates: predicted ET must be brighter on T1CE than on T1, predicted edema bright on FLAIR (issue #13)."""
import json
import shutil

import numpy as np
import SimpleITK as sitk

from GliomaAnalysisLib import load_case
from GliomaAnalysisLib.io.labels import BACKGROUND, ED, ET, NCR, regions
from GliomaAnalysisLib.pipeline.analysis import analyze
from GliomaAnalysisLib.pipeline.signal_gates import (SignalMaps, apply_gates, gate_dark_edema, gate_unenhancing,
                                                     signal_maps)


def _brain(seed=0, shape=(30, 40, 40)):
    """A skull-stripped brain: a box of tissue (each image about 100, SD 10) in a zero background."""
    rng = np.random.default_rng(seed)
    brain = np.zeros(shape, dtype=bool)
    brain[3:-3, 4:-4, 4:-4] = True
    return brain, *(np.where(brain, rng.normal(100, 10, shape), 0).astype(np.float32) for _ in range(3))


def test_enhancement_is_t1ce_minus_t1_and_flair_its_z_score_in_brain_sd():
    brain, t1, t1ce, flair = _brain()
    t1ce[10:14, 15:20, 15:20] += 30.0  # enhancing: +3 SD on T1CE only
    t1[20:24, 15:20, 15:20] += 30.0  # bright on T1 too (blood): not enhancement
    t1ce[20:24, 15:20, 15:20] += 30.0
    flair[10:14, 22:27, 15:20] += 20.0  # edema-like: +2 SD on FLAIR
    maps = signal_maps({"t1": t1, "t1ce": t1ce, "flair": flair})
    assert maps.enhancement.shape == brain.shape and maps.enhancement.dtype == np.float32
    assert 2.6 < maps.enhancement[10:14, 15:20, 15:20].mean() < 3.5  # about +3 SD (noise: 100 voxels of SD 1.4)
    assert abs(maps.enhancement[20:24, 15:20, 15:20].mean()) < 0.4 and abs(maps.enhancement[brain].mean()) < 0.05
    assert 1.6 < maps.flair[10:14, 22:27, 15:20].mean() < 2.3 and abs(maps.flair[brain].mean()) < 0.05
    box = (slice(8, 16), slice(12, 22), slice(12, 22))
    cropped = signal_maps({"t1": t1, "t1ce": t1ce, "flair": flair}, box)
    assert np.allclose(cropped.enhancement, maps.enhancement[box], atol=1e-5)
    assert np.allclose(cropped.flair, maps.flair[box], atol=1e-5)
    from GliomaAnalysisLib.preprocessing.preprocess import brain_mask

    given = signal_maps({"t1": t1, "t1ce": t1ce, "flair": flair}, box, brain_mask([t1, t1ce, flair]))
    assert np.array_equal(given.enhancement, cropped.enhancement)  # the preprocessing's mask, not computed again


def test_without_t1_the_t1ce_z_score_is_the_enhancement_and_absent_modalities_give_no_signal():
    brain, t1, t1ce, _ = _brain(1)
    t1ce[10:14, 15:20, 15:20] += 30.0
    alone = signal_maps({"t1ce": t1ce, "t2": t1})
    z = (t1ce - t1ce[brain].mean()) / t1ce[brain].std()
    assert np.allclose(alone.enhancement[brain], z[brain], atol=0.05)  # statistics of every 8th voxel (3,000 here)
    assert alone.flair is None
    assert signal_maps({"t1": t1, "flair": t1ce}).enhancement is None


def _tumor():
    labels = np.zeros((10, 10, 10), dtype=np.uint8)
    labels[2:8, 2:8, 2:8] = ED
    labels[3:7, 3:7, 3:7] = ET
    labels[4:6, 4:6, 4:6] = NCR
    return labels


def test_the_enhancement_gate_moves_only_unenhancing_et_to_ncr():
    labels = _tumor()
    enhancement = np.full(labels.shape, 2.0, dtype=np.float32)
    enhancement[3:7, 3:7, 3:5] = 0.1  # half the ET rim is no brighter on T1CE than on T1
    gated = gate_unenhancing(labels, enhancement, 0.5)
    low, high = (labels == ET) & (enhancement < 0.5), (labels == ET) & (enhancement >= 0.5)
    assert low.sum() == high.sum() == 28 and np.all(gated[low] == NCR) and np.all(gated[high] == ET)
    before, after = regions(labels), regions(gated)
    assert np.array_equal(before["wt"], after["wt"]) and np.array_equal(before["tc"], after["tc"])
    assert labels[3, 3, 3] == ET  # the input is not modified
    assert gate_unenhancing(labels, enhancement, -1.0) is labels  # nothing to move: the same array back


def test_the_edema_gate_drops_only_edema_dark_on_flair():
    labels = _tumor()
    flair = np.full(labels.shape, 2.0, dtype=np.float32)
    flair[:, :, :3] = 0.2  # one side of the edema shell is no brighter on FLAIR than normal brain
    flair[4:6, 4:6, 4:6] = -1.0  # dark necrosis: a core label, never touched by this gate
    gated = gate_dark_edema(labels, flair, 0.5)
    dark = (labels == ED) & (flair < 0.5)
    assert dark.sum() > 0 and np.all(gated[dark] == BACKGROUND)
    assert np.array_equal(gated[~dark], labels[~dark])
    assert np.array_equal(regions(gated)["tc"], regions(labels)["tc"])
    both = apply_gates(labels, SignalMaps(np.zeros(labels.shape, np.float32), flair), 0.5, 0.5)
    assert not np.any(both == ET) and np.array_equal(both == BACKGROUND, (labels == BACKGROUND) | dark)
    assert apply_gates(labels, SignalMaps(None, None), 0.5, 0.5) is labels  # no signal, no gate


def test_the_cards_signal_gates_apply_in_the_analysis(small_phantom, tmp_path):
    """A card with ``postprocessing.min_enhancement_sd`` / ``min_flair_sd``: the labels are the ungated labels with
    both gates applied (signals of the case's own images); the tumor core does not move, and report.json's
    settings say which gates ran."""
    from GliomaAnalysisLib.models.model_store import RESOURCES as MODELS_DIR

    for name in ("glioma_seg.json", "glioma_seg.safetensors", "glioma_seg_fine.json", "glioma_seg_fine.safetensors"):
        shutil.copy(MODELS_DIR / name, tmp_path / name)
    card_path = tmp_path / "glioma_seg.json"
    card = json.loads(card_path.read_text())
    case = load_case({m: small_phantom.image(m) for m in ("t1", "t1ce", "t2", "flair")})
    labels = {}
    for gates in ((None, None), (1.5, 1.0)):
        card["postprocessing"] = {"min_et_ml": 0.0, **{k: t for k, t in zip(("min_enhancement_sd", "min_flair_sd"),
                                                                              gates) if t is not None}}
        card_path.write_text(json.dumps(card))
        result = analyze(case, model_dir=tmp_path, fast=True, classify=False)
        labels[gates] = sitk.GetArrayFromImage(result.labels)
        assert (result.settings["min_enhancement_sd"], result.settings["min_flair_sd"]) == gates
    maps = signal_maps({m: sitk.GetArrayFromImage(case.images[m]) for m in case.present})
    ungated, gated = labels[(None, None)], labels[(1.5, 1.0)]
    assert (ungated == ET).sum() > 100  # the premise: the phantom's enhancing rim is found
    moved = (ungated == ET) & (maps.enhancement < 1.5)
    dropped = (ungated == ED) & (maps.flair < 1.0)
    assert 0 < moved.sum() < (ungated == ET).sum() and dropped.sum() > 0  # the premise: both gates have work
    assert np.array_equal(gated, apply_gates(ungated, maps, 1.5, 1.0))
    assert np.all(maps.enhancement[gated == ET] >= 1.5) and np.all(maps.flair[gated == ED] >= 1.0)
    assert np.array_equal(regions(gated)["tc"], regions(ungated)["tc"])
