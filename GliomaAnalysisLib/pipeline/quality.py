"""Automatic quality-control flags of one analysis, from what the result itself shows (no ground truth).

Each flag is ``{"flag": name, "detail": one line}``. The thresholds are plausibility limits, not tuned on
outcomes; how well they find low-Dice cases is still to be measured (README, "Batch processing and reliability").
"""
from __future__ import annotations

from typing import Dict, List

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from .postprocess import nonzero_box
from .result import AnalysisResult

UNCERTAIN_MEAN = 0.35
"""Mean voxel uncertainty (normalised entropy) inside the whole tumor above which a case is flagged."""
WT_MAX_ML = 400.0
"""Whole-tumor volume above which the segmentation is implausible (BraTS tumors stay well below)."""
WT_MIN_ML = 0.5
"""Whole-tumor volume below which no tumor was found (a glioma case should have one)."""
FAR_MM = 30.0
"""Distance from the main lesion beyond which another component of at least FAR_MIN_ML is flagged."""
FAR_MIN_ML = 0.5
ET_ENCLOSED = 0.9
"""Share of the enhancing tumor's outer shell lying in the necrotic / non-enhancing core that flags ET inside it."""
FOREGROUND_DICE = 0.8
"""Agreement of the head foregrounds of two inputs below which they look unregistered."""
FOREGROUND_STEP = 2
"""The head outlines are compared on every FOREGROUND_STEP-th voxel along each axis (an eighth of them at 2: on the
31 real cases their Dice moved by at most 0.007 from all voxels' and no flag changed; 0.07 -> 0.02 s a case)."""
FOREGROUND_STRIDE = 8
"""Every how many of those voxels the robust maximum of an input's intensities is read."""


def qc_flags(result: AnalysisResult) -> List[Dict[str, str]]:
    """The flags raised by ``result`` (an empty list when nothing looks wrong)."""
    labels = sitk.GetArrayFromImage(result.labels)
    spacing = np.asarray(result.labels.GetSpacing())[::-1]  # (z, y, x)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    tumor = labels > 0
    flags: List[Dict[str, str]] = []
    wt = float(result.volumes_ml.get("wt", tumor.sum() * voxel_ml))
    if wt < WT_MIN_ML:
        flags.append(_flag("no_tumor", f"whole tumor {wt:.1f} mL: nothing segmented"))
    elif wt > WT_MAX_ML:
        flags.append(_flag("implausible_volume", f"whole tumor {wt:.0f} mL exceeds {WT_MAX_ML:.0f} mL"))
    if tumor.any():
        uncertainty = sitk.GetArrayViewFromImage(result.uncertainty)[tumor]
        mean = float(uncertainty.mean())
        if mean > UNCERTAIN_MEAN:
            flags.append(_flag("uncertain", f"mean voxel uncertainty {mean:.2f} inside the tumor "
                                            f"(> {UNCERTAIN_MEAN})"))
        flags += _far_components(tumor, spacing, voxel_ml)
        flags += _enclosed_enhancement(labels)
    flags += _unregistered(result)
    return flags


def _flag(name: str, detail: str) -> Dict[str, str]:
    return {"flag": name, "detail": detail}


def _far_components(tumor: np.ndarray, spacing: np.ndarray, voxel_ml: float) -> List[Dict[str, str]]:
    # on the tumor's bounding box: every component lies in it, and so does the straight line between any two of
    # their voxels, so the distances are those of the whole volume (at a fraction of the work)
    tumor = tumor[nonzero_box(tumor)]
    components, count = ndimage.label(tumor)
    if count < 2:
        return []
    sizes = ndimage.sum(tumor, components, range(1, count + 1))
    main = int(np.argmax(sizes)) + 1
    distance = ndimage.distance_transform_edt(components != main, sampling=spacing)
    far = []
    for index in range(1, count + 1):
        volume = sizes[index - 1] * voxel_ml
        if index == main or volume < FAR_MIN_ML:
            continue
        gap = float(distance[components == index].min())
        if gap > FAR_MM:
            far.append((gap, volume))
    if not far:
        return []
    gap, volume = max(far)
    return [_flag("distant_component", f"{len(far)} component(s) more than {FAR_MM:.0f} mm from the main lesion "
                                       f"(farthest {gap:.0f} mm, {volume:.1f} mL)")]


def _enclosed_enhancement(labels: np.ndarray) -> List[Dict[str, str]]:
    box = nonzero_box(labels == 3)
    if box is None:
        return []
    # the ET's bounding box grown by the one voxel its shell reaches: the same shell as in the whole volume
    labels = labels[tuple(slice(max(0, b.start - 1), b.stop + 1) for b in box)]
    et = labels == 3
    shell = ndimage.binary_dilation(et) & ~et
    if not shell.any():
        return []
    inside_core = float((labels[shell] == 1).mean())
    if inside_core < ET_ENCLOSED:
        return []
    return [_flag("et_inside_core", f"{inside_core:.0%} of the enhancing tumor's border is necrotic / "
                                    f"non-enhancing core (ET usually rims the core)")]


def _unregistered(result: AnalysisResult) -> List[Dict[str, str]]:
    step = slice(None, None, FOREGROUND_STEP)
    masks = {m: _foreground(sitk.GetArrayViewFromImage(image)[step, step, step]) for m, image in result.images.items()}
    reference = masks.get(result.reference)
    if reference is None or not reference.any():
        return []
    poor = []
    for modality, mask in masks.items():
        if modality == result.reference:
            continue
        dice = 2.0 * float((mask & reference).sum()) / max(1.0, float(mask.sum() + reference.sum()))
        if dice < FOREGROUND_DICE:
            poor.append(f"{modality} {dice:.2f}")
    if not poor:
        return []
    return [_flag("unregistered", f"head outline disagrees with the {result.reference} (Dice {', '.join(poor)}); "
                                  f"inputs may not be co-registered")]


def _foreground(array: np.ndarray) -> np.ndarray:
    """Voxels above 10 % of the robust maximum: the head, whatever the modality's contrast."""
    values = np.ascontiguousarray(array)
    # the 99th percentile of every 8th voxel: within a fraction of a percent of the full one at an eighth of the cost
    high = float(np.percentile(values.ravel()[::FOREGROUND_STRIDE], 99)) if values.size else 0.0
    return values > 0.1 * high if high > 0 else np.zeros(values.shape, bool)
