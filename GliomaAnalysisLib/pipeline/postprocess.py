"""Post-processing of a contiguous label map (0 bg, 1 NCR, 2 ED, 3 ET).

* ``tumor_density_filter``: seed 001, Algorithm 1. When the tumor's bounding box is sparsely filled (density
  below ``density_threshold``: scattered false positives), keep the densest tumor component(s): components are
  ranked by their peak local density (the count of tumor neighbours in a window, "find_center") and kept, densest
  first, until they hold ``keep_fraction`` of the tumor voxels; the rest is erased.
* ``remove_small_components``: whole-tumor components smaller than ``min_volume_ml`` are erased (never the
  largest one).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

_CONNECTIVITY = ndimage.generate_binary_structure(3, 3)  # 26-connectivity


def _components(mask: np.ndarray):
    return ndimage.label(mask, structure=_CONNECTIVITY)


def bounding_box_density(mask: np.ndarray) -> float:
    """Fraction of the mask's bounding box that the mask fills (1.0 for an empty mask)."""
    if not mask.any():
        return 1.0
    coords = np.nonzero(mask)
    box = np.prod([int(c.max()) - int(c.min()) + 1 for c in coords])
    return float(mask.sum()) / float(box)


def tumor_density_filter(labels: np.ndarray, spacing_zyx: Sequence[float], density_threshold: float = 0.1,
                         keep_fraction: float = 0.6, window_mm: float = 5.0) -> np.ndarray:
    """Algorithm 1 of seed 001 (see module docstring); returns a new label array."""
    tumor = labels > 0
    if bounding_box_density(tumor) >= density_threshold:
        return labels
    components, count = _components(tumor)
    if count <= 1:
        return labels
    window = [max(1, int(round(window_mm / s))) | 1 for s in spacing_zyx]
    density = ndimage.uniform_filter(tumor.astype(np.float32), size=window)
    peaks = ndimage.maximum(density, components, index=np.arange(1, count + 1))
    sizes = ndimage.sum(tumor, components, index=np.arange(1, count + 1))
    keep, kept = [], 0.0
    for index in np.argsort(-np.asarray(peaks), kind="stable"):
        keep.append(index + 1)
        kept += sizes[index]
        if kept >= keep_fraction * tumor.sum():
            break
    out = labels.copy()
    out[tumor & ~np.isin(components, keep)] = 0
    return out


def remove_small_components(labels: np.ndarray, voxel_volume_ml: float, min_volume_ml: float = 0.1) -> np.ndarray:
    """Erase whole-tumor components below ``min_volume_ml`` except the largest; returns a new label array."""
    components, count = _components(labels > 0)
    if count <= 1:
        return labels
    sizes = np.asarray(ndimage.sum(labels > 0, components, index=np.arange(1, count + 1)))
    small = [i + 1 for i, n in enumerate(sizes) if n * voxel_volume_ml < min_volume_ml and i != int(np.argmax(sizes))]
    if not small:
        return labels
    out = labels.copy()
    out[np.isin(components, small)] = 0
    return out
