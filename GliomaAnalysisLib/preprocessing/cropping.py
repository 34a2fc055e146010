"""Tumor-centred boxes and padding for the classifiers' inputs (working-grid arrays, axes Z, Y, X)."""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np


def tumor_centre(labels: np.ndarray) -> np.ndarray:
    """Centre of mass (voxel index, Z, Y, X) of the tumor (labels > 0); the volume centre when there is none."""
    tumor = np.argwhere(labels > 0)
    return tumor.mean(axis=0) if len(tumor) else (np.array(labels.shape, dtype=float) - 1) / 2


def tumor_box(labels: np.ndarray, size: Sequence[int], jitter: int = 0,
              rng: Optional[np.random.Generator] = None) -> Tuple[slice, ...]:
    """A ``size`` box centred on the tumor (see :func:`tumor_centre`), shifted by up to ``jitter`` voxels per axis
    when ``rng`` is given, kept inside the volume where it fits (it may extend past the end when it does not)."""
    centre = tumor_centre(labels)
    slices = []
    for axis, (n, s) in enumerate(zip(labels.shape, size)):
        c = int(round(centre[axis]))
        if rng is not None and jitter:
            c += int(rng.integers(-jitter, jitter + 1))
        start = min(max(0, c - s // 2), max(0, n - s))
        slices.append(slice(start, start + s))
    return tuple(slices)


def crop_padded(array: np.ndarray, box: Tuple[slice, ...]) -> np.ndarray:
    """``array[..., box]`` over its last ``len(box)`` axes, zero-padded at the end to the box size."""
    lead = array.ndim - len(box)
    out = array[(slice(None),) * lead + box]
    pad = [(0, 0)] * lead + [(0, s.stop - s.start - n) for s, n in zip(box, out.shape[lead:])]
    return np.pad(out, pad) if any(p[1] for p in pad) else out


def pad_to_multiple(array: np.ndarray, multiple: int, axes: int = 3) -> np.ndarray:
    """Zero-pad the last ``axes`` axes at their end to multiples of ``multiple``."""
    pad = [(0, 0)] * (array.ndim - axes) + [(0, (-n) % multiple) for n in array.shape[-axes:]]
    return np.pad(array, pad) if any(p[1] for p in pad) else array
