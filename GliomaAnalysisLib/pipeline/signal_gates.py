"""Each label held to the MRI signal that defines it: enhancing tumor is brighter on T1CE than on T1, edema is
bright on FLAIR (the BraTS label definitions).

The network learns ET largely from shape and from FLAIR / T2 appearance, and over-calls it into non-enhancing core
(issue #13: false ET in lower-grade gliomas had a T1CE z-score of 0.6-0.9 against about 2 in true ET); it also
over-calls edema in a ring of normal-looking tissue around many tumors. After the lesion filter, with thresholds
chosen in cross-validation (the card's ``postprocessing.min_enhancement_sd`` and ``min_flair_sd``):

* ``gate_unenhancing``: ET voxels whose ``SignalMaps.enhancement`` is below ``min_enhancement_sd`` become NCR (the
  tumor core and whole tumor do not move, only the ET / NCR split);
* ``gate_dark_edema``: ED voxels whose ``SignalMaps.flair`` is below ``min_flair_sd`` become background.

Signals are z-scores over the brain (SD units; the non-zero voxels of skull-stripped input, else an Otsu head mask,
as the preprocessing does). ``enhancement``: T1CE - T1, or without T1 the T1CE z-score alone; none without T1CE.
``flair``: the FLAIR z-score; none without FLAIR (T2 instead lowered WT in cross-validation). On the 31 real cases
the expert ET is 0.95-3.5 SD brighter on T1CE than on T1 in all but one case
(``training.segmentation.label_contrast``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional, Tuple

import numpy as np

from ..io.labels import BACKGROUND, ED, ET, NCR
from ..preprocessing.preprocess import brain_mask

_STATISTICS_STRIDE = 2
"""The brain mean and SD are taken over every 2nd voxel along each axis: the same figures to about 1e-3 SD at an
eighth of the work (a 240x240x155 case has about 1.5 million brain voxels)."""


@dataclass
class SignalMaps:
    """Signals (float32, SD units) on one box of the label grid; None where the defining modality is absent."""

    enhancement: Optional[np.ndarray]
    flair: Optional[np.ndarray]


def _z_score(image: np.ndarray, brain: np.ndarray, box: Tuple[slice, ...]) -> np.ndarray:
    """``image`` inside ``box`` in SD units of its ``brain`` voxels (mean and SD on the strided subsample)."""
    step = (slice(None, None, _STATISTICS_STRIDE),) * image.ndim
    values = image[step][brain[step]].astype(np.float64)
    mean, sd = (float(values.mean()), float(values.std())) if values.size else (0.0, 1.0)
    return (image[box].astype(np.float32) - np.float32(mean)) / np.float32(sd if sd > 0 else 1.0)


def signal_maps(images: Mapping[str, np.ndarray], box: Optional[Tuple[slice, ...]] = None,
                brain: Optional[np.ndarray] = None) -> SignalMaps:
    """The signals of ``images`` (modality -> (Z, Y, X) array on one grid, every present modality: they define the
    brain mask, unless ``brain``, that mask already computed, is given) inside ``box`` (slices; the whole array when
    None)."""
    brain = brain_mask(list(images.values())) if brain is None else brain
    box = box or tuple(slice(None) for _ in brain.shape)
    z = {m: _z_score(images[m], brain, box) for m in ("t1ce", "t1", "flair") if m in images}
    enhancement = None
    if "t1ce" in z:
        enhancement = z["t1ce"] - z["t1"] if "t1" in z else z["t1ce"]
    return SignalMaps(enhancement, z.get("flair"))


def gate_unenhancing(labels: np.ndarray, enhancement: np.ndarray, min_enhancement_sd: float) -> np.ndarray:
    """Relabel ET voxels of ``labels`` (Z, Y, X, contiguous) whose ``enhancement`` (same shape, SD) is below
    ``min_enhancement_sd`` as NCR; returns a new array, or ``labels`` itself when nothing changes."""
    return _relabel(labels, (labels == ET) & (enhancement < min_enhancement_sd), NCR)


def gate_dark_edema(labels: np.ndarray, flair: np.ndarray, min_flair_sd: float) -> np.ndarray:
    """Relabel ED voxels of ``labels`` (Z, Y, X, contiguous) whose ``flair`` z-score (same shape) is below
    ``min_flair_sd`` as background; returns a new array, or ``labels`` itself when nothing changes."""
    return _relabel(labels, (labels == ED) & (flair < min_flair_sd), BACKGROUND)


def apply_gates(labels: np.ndarray, maps: SignalMaps, min_enhancement_sd: Optional[float],
                min_flair_sd: Optional[float]) -> np.ndarray:
    """Both gates on ``labels`` (the box ``maps`` were computed on); a gate without its threshold or its signal
    does nothing. Returns ``labels`` itself when nothing changes."""
    if min_enhancement_sd is not None and maps.enhancement is not None:
        labels = gate_unenhancing(labels, maps.enhancement, min_enhancement_sd)
    if min_flair_sd is not None and maps.flair is not None:
        labels = gate_dark_edema(labels, maps.flair, min_flair_sd)
    return labels


def _relabel(labels: np.ndarray, where: np.ndarray, label: int) -> np.ndarray:
    if not where.any():
        return labels
    out = labels.copy()
    out[where] = label
    return out
