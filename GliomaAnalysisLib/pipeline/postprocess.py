"""Post-processing of a contiguous label map (0 bg, 1 NCR, 2 ED, 3 ET).

* ``decode_regions``: the label map from the probabilities by thresholds on the nested regions (WT, TC inside it,
  ET inside TC) instead of the argmax, when the model card sets ``postprocessing.region_thresholds`` (chosen in
  cross-validation: the argmax under-called ET, which must out-vote NCR and ED at once). ``region_thresholds_for``
  picks them: a card may set other thresholds for a case without a given modality
  (``postprocessing.missing_region_thresholds``, e.g. ``{"flair": [0.3, 0.5, 0.2]}``: without FLAIR the networks
  under-call edema, P(WT) stays below 0.5 over much of it; chosen in cross-validation on predictions without it).
* ``widen_whole_tumor``: the same finding for an argmax card: its ``wt_threshold``, or without a modality its
  ``missing_wt_thresholds`` (``whole_tumor_threshold_for``, e.g. ``{"flair": 0.4}``), label edema where the argmax
  left background but P(WT) reaches the threshold; ``analyze`` does it after the lesion filter and filters again
  (widened first, a false ET speck's component could grow past the filter).

* ``lesion_filter``: keeps the lesion and drops false-positive blobs. Whole-tumor components (26-connected) that
  hold a tumor core (NCR or ET) of at least ``min_core_ml`` are lesions and are all kept (multifocal tumors), and
  so is the largest component (in cross-validation a lower-grade tumor read with under 0.1 mL of core was erased
  beside two small cored false positives: WT 0.47 -> 0.00); core-free components of at least ``min_near_ml`` are kept when they lie within ``near_mm`` of a lesion (edema
  split from its tumor); everything else goes. When no component holds a core (a non-enhancing, core-free
  reading) nothing tells tumor from false positive, so only specks go: components below ``min_lesion_ml`` (the
  largest is always kept).
  Why not seed 001's Algorithm 1: it ranked components by their peak density in a 5 mm window, which is 1.0 for
  nearly every component, so ties fell to label order (bottom of the brain first) and a low cerebellar or
  skull-base blob could win over the tumor and erase it. Its sparse-box rule (keep the largest components until
  they hold 60 %) erased the real 8 mL tumor of an ET-free LGG in cross-validation, beside a 31 mL false positive.
* ``merge_enhancement_into_core``: without T1CE, enhancement cannot be seen; ET probability is moved into NCR so
  the core is kept (as NCR) and no ET is claimed.
* ``suppress_small_enhancement``: a predicted ET below ``min_et_ml`` in all is relabelled NCR (non-enhancing
  tumors: a few enhancing voxels are far more often noise than real enhancement; BraTS winners do the same).
* ``remove_small_components``: whole-tumor components smaller than ``min_volume_ml`` are erased (never the
  largest one).
"""
from __future__ import annotations

from typing import Callable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk


def _components(mask: np.ndarray) -> Tuple[np.ndarray, int]:
    """26-connected components of ``mask`` (Z, Y, X) as (labels int32 1..count in raster order, count): the same
    labels as ``scipy.ndimage.label`` with a full 3x3x3 structure (tested), without importing scipy (0.2-0.6 s of
    every analysis's start-up)."""
    components = sitk.ConnectedComponentImageFilter()
    components.SetFullyConnected(True)
    labels = components.Execute(sitk.GetImageFromArray(mask.astype(np.uint8)))
    return sitk.GetArrayFromImage(labels).astype(np.int32, copy=False), int(components.GetObjectCount())


def _sums(mask: np.ndarray, components: np.ndarray, count: int) -> np.ndarray:
    """Voxels of ``mask`` in each component 1..count, shape (count,)."""
    return np.bincount(components.ravel(), weights=mask.ravel(), minlength=count + 1)[1:]


def _boxes(components: np.ndarray, count: int) -> List[Tuple[slice, ...]]:
    """Bounding box (slices, as ``scipy.ndimage.find_objects``) of each component 1..count."""
    coordinates = np.nonzero(components)
    index = components[coordinates] - 1
    low = np.full((components.ndim, count), np.iinfo(np.int64).max, dtype=np.int64)
    high = np.full((components.ndim, count), -1, dtype=np.int64)
    for axis, values in enumerate(coordinates):
        np.minimum.at(low[axis], index, values)
        np.maximum.at(high[axis], index, values)
    return [tuple(slice(int(low[a, i]), int(high[a, i]) + 1) for a in range(components.ndim)) for i in range(count)]


def nonzero_box(labels: np.ndarray) -> Optional[Tuple[slice, ...]]:
    """The bounding box (slices) of the non-zero voxels, None when there are none."""
    box = []
    for axis in range(labels.ndim):
        present = np.flatnonzero(labels.any(axis=tuple(a for a in range(labels.ndim) if a != axis)))
        if present.size == 0:
            return None
        box.append(slice(int(present[0]), int(present[-1]) + 1))
    return tuple(box)


def _within_tumor_box(labels: np.ndarray, filter_crop: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """``filter_crop`` applied to the tumor's bounding box only (every component lies inside it, so the result is
    that of the whole volume at a fraction of the work); returns ``labels`` itself when nothing changes."""
    box = nonzero_box(labels)
    if box is None:
        return labels
    crop = labels[box]
    filtered = filter_crop(crop)
    if filtered is crop:
        return labels
    out = labels.copy()
    out[box] = filtered
    return out


def lesion_filter(labels: np.ndarray, spacing_zyx: Sequence[float], min_core_ml: float = 0.1,
                  min_near_ml: float = 0.1, near_mm: float = 15.0, min_lesion_ml: float = 1.0) -> np.ndarray:
    """See the module docstring. labels (Z, Y, X) contiguous, spacing_zyx in mm; returns a new array (or
    ``labels`` itself when nothing is dropped)."""
    return _within_tumor_box(labels, lambda crop: _lesion_filter(crop, spacing_zyx, min_core_ml, min_near_ml, near_mm,
                                                                 min_lesion_ml))


def _lesion_filter(labels: np.ndarray, spacing_zyx: Sequence[float], min_core_ml: float, min_near_ml: float,
                   near_mm: float, min_lesion_ml: float) -> np.ndarray:
    tumor = labels > 0
    components, count = _components(tumor)
    if count <= 1:
        return labels
    voxel_ml = float(np.prod(spacing_zyx)) / 1000.0
    sizes = _sums(tumor, components, count) * voxel_ml
    cores = _sums((labels == 1) | (labels == 3), components, count) * voxel_ml
    largest = int(np.argmax(sizes))
    cored = [i for i in range(count) if cores[i] >= min_core_ml]
    lesions = sorted(set(cored) | {largest})
    if cored:
        boxes = _boxes(components, count)
        keep = set(lesions)
        for i in range(count):
            if i not in keep and sizes[i] >= min_near_ml and any(
                    _box_distance_mm(boxes[i], boxes[j], spacing_zyx) <= near_mm for j in lesions):
                keep.add(i)
    else:
        keep = {i for i in range(count) if sizes[i] >= min_lesion_ml} | {largest}
    if len(keep) == count:
        return labels
    out = labels.copy()
    out[tumor & ~np.isin(components, [i + 1 for i in keep])] = 0
    return out


def _box_distance_mm(a: Tuple[slice, ...], b: Tuple[slice, ...], spacing_zyx: Sequence[float]) -> float:
    """Distance (mm) between two voxel bounding boxes (0 when they overlap)."""
    gaps = [max(0, max(sa.start, sb.start) - min(sa.stop, sb.stop)) * s
            for sa, sb, s in zip(a, b, spacing_zyx)]
    return float(np.sqrt(np.sum(np.square(gaps))))


def remove_small_components(labels: np.ndarray, voxel_volume_ml: float, min_volume_ml: float = 0.1) -> np.ndarray:
    """Erase whole-tumor components below ``min_volume_ml`` except the largest; returns a new label array (or
    ``labels`` itself when nothing is erased)."""
    return _within_tumor_box(labels, lambda crop: _remove_small_components(crop, voxel_volume_ml, min_volume_ml))


def _remove_small_components(labels: np.ndarray, voxel_volume_ml: float, min_volume_ml: float) -> np.ndarray:
    components, count = _components(labels > 0)
    if count <= 1:
        return labels
    sizes = _sums(labels > 0, components, count)
    small = [i + 1 for i, n in enumerate(sizes) if n * voxel_volume_ml < min_volume_ml and i != int(np.argmax(sizes))]
    if not small:
        return labels
    out = labels.copy()
    out[np.isin(components, small)] = 0
    return out


def region_thresholds_for(settings: Mapping, missing: Sequence[str]) -> Optional[List[float]]:
    """(t_wt, t_tc, t_et) of a model card's ``postprocessing`` ``settings`` for a case without the ``missing``
    modalities: of the ``missing_region_thresholds`` entries of the missing modalities, the one with the lowest t_wt
    (each was chosen with that modality missing alone; the one that under-calls most decides), else
    ``region_thresholds``; None when the card reads labels by argmax."""
    if not settings.get("region_thresholds"):
        return None
    by_missing = settings.get("missing_region_thresholds") or {}
    entries = [[float(t) for t in by_missing[m]] for m in missing if m in by_missing]
    return min(entries, key=lambda t: t[0]) if entries else [float(t) for t in settings["region_thresholds"]]


def whole_tumor_threshold_for(settings: Mapping, missing: Sequence[str]) -> Optional[float]:
    """The P(WT) at or above which an argmax card's labels get edema where they have background, for a case without
    the ``missing`` modalities: of the card's ``missing_wt_thresholds`` entries of the missing modalities (e.g.
    ``{"flair": 0.4}``, each chosen in cross-validation with that modality missing alone) the lowest, else its
    ``wt_threshold`` (chosen with all four), else None (the argmax alone)."""
    by_missing = settings.get("missing_wt_thresholds") or {}
    entries = [float(by_missing[m]) for m in missing if m in by_missing]
    if entries:
        return min(entries)
    return float(settings["wt_threshold"]) if settings.get("wt_threshold") is not None else None


def widen_whole_tumor(labels: np.ndarray, ncr: np.ndarray, ed: np.ndarray, et: np.ndarray,
                      t_wt: float) -> np.ndarray:
    """Argmax ``labels`` (Z, Y, X uint8, 0 bg, 1 NCR, 2 ED, 3 ET) with each background voxel where
    P(NCR) + P(ED) + P(ET) >= ``t_wt`` labelled edema: a new array (``labels`` is not changed). The two-stage pair
    under-calls edema, most without FLAIR: the argmax leaves background where P(WT) is 0.3-0.5 around the tumor.
    Edema, not the likeliest tumor label: the core and ET stay the argmax's (on the pair's out-of-fold predictions
    without FLAIR the likeliest label took TC -0.007, edema none, for the same WT)."""
    whole = ncr + ed
    whole += et
    out = labels.copy()
    out[(whole >= t_wt) & (labels == 0)] = 2
    return out


def decode_regions(ncr: np.ndarray, ed: np.ndarray, et: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """Labels uint8 (0 background, 1 NCR, 2 ED, 3 ET) read from the nested BraTS regions instead of the argmax:
    WT where P(NCR) + P(ED) + P(ET) > t_wt, TC inside it where P(NCR) + P(ET) > t_tc, ET inside TC where
    P(ET) > t_et. ``ncr``, ``ed``, ``et``: probability maps of one shape; ``thresholds``: (t_wt, t_tc, t_et)."""
    t_wt, t_tc, t_et = (float(t) for t in thresholds)
    core = ncr + et
    whole = (core + ed) > t_wt
    tumor_core = whole & (core > t_tc)
    enhancing = tumor_core & (et > t_et)
    # ED 2, NCR 2 - 1, ET 2 - 1 + 2: integer arithmetic on the masks instead of three masked assignments
    labels = whole.view(np.uint8) * np.uint8(2)
    labels -= tumor_core.view(np.uint8)
    labels += enhancing.view(np.uint8) * np.uint8(2)
    return labels


def merge_enhancement_into_core(probabilities: np.ndarray) -> np.ndarray:
    """probabilities (4, Z, Y, X) over bg, NCR, ED, ET -> a copy with ET's probability added to NCR and ET 0."""
    out = probabilities.copy()
    out[1] += out[3]
    out[3] = 0.0
    return out


def suppress_small_enhancement(labels: np.ndarray, voxel_volume_ml: float, min_et_ml: float) -> np.ndarray:
    """Relabel all ET (3) as NCR (1) when the total ET volume is below ``min_et_ml``; returns a new array or
    ``labels`` itself when nothing changes."""
    et = labels == 3
    count = int(et.sum())
    if count == 0 or count * voxel_volume_ml >= min_et_ml:
        return labels
    out = labels.copy()
    out[et] = 1
    return out
