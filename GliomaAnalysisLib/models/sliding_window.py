"""A sliding window over a pass of the segmentation network, in NumPy: the network sees windows of the field of view
it was trained on (its training crop) instead of the whole input, as MONAI's ``sliding_window_inference`` does it
(overlap 0.25, Gaussian weights, windows in the same order; tested against it), without torch.

    windowed(run_pass, roi) -> run_pass over windows of roi^3 voxels, blended
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import List, Sequence, Tuple

import numpy as np

from .segment import RunPass

OVERLAP = 0.25
"""Share of a window that the next one along an axis overlaps."""
SIGMA_SCALE = 0.125
"""Standard deviation of the Gaussian weights, as a share of the window's width."""
MIN_WEIGHT = 1e-3
"""Smallest weight of a voxel in a window (its corners)."""


def window_starts(size: int, roi: int, overlap: float = OVERLAP) -> List[int]:
    """First voxel of each window along an axis of ``size`` voxels (>= ``roi``): a step of ``roi * (1 - overlap)``,
    the last window moved back to end at the edge."""
    if size <= roi:
        return [0]
    step = max(1, int(roi * (1 - overlap)))
    count = next(k for k in range(math.ceil(size / step)) if k * step + roi >= size) + 1
    return [min(k * step, size - roi) for k in range(count)]


@lru_cache(maxsize=4)
def gaussian_weights(roi: int) -> np.ndarray:
    """float32 (roi, roi, roi): a Gaussian about the window's centre (SD ``SIGMA_SCALE * roi``), at least
    ``MIN_WEIGHT`` (read only)."""
    x = np.arange(roi, dtype=np.float32) - (roi - 1) / 2.0
    line = np.exp(x ** 2 / (-2 * (SIGMA_SCALE * roi) ** 2)).astype(np.float32)
    weights = line[:, None, None] * line[None, :, None] * line[None, None, :]
    weights = np.maximum(weights, max(float(weights.min()), MIN_WEIGHT)).astype(np.float32)
    weights.flags.writeable = False
    return weights


def _padding(shape: Sequence[int], roi: int) -> Tuple[Tuple[int, int], ...]:
    """(before, after) zero padding per spatial axis that brings an axis shorter than ``roi`` up to it."""
    return tuple(((roi - n) // 2, roi - n - (roi - n) // 2) if n < roi else (0, 0) for n in shape)


def windowed(run_pass: RunPass, roi: int) -> RunPass:
    """``run_pass`` applied to every window of ``roi`` voxels per axis (an axis shorter than that is zero-padded to
    it, as MONAI pads) and blended with :func:`gaussian_weights`. x (1, 4, Z, Y, X) -> probabilities
    (1, C, Z, Y, X); each window draws its own dropout masks from the pass's generator, in window order."""

    def run(x: np.ndarray, presence: np.ndarray, rng, last: bool = True) -> np.ndarray:
        pads = _padding(x.shape[2:], roi)
        padded = np.pad(x, ((0, 0), (0, 0)) + pads) if any(any(p) for p in pads) else x
        weights = gaussian_weights(roi)
        corners = [(z, y, w) for z in window_starts(padded.shape[2], roi) for y in window_starts(padded.shape[3], roi)
                   for w in window_starts(padded.shape[4], roi)]
        total = weight_sum = None
        for k, (z, y, w) in enumerate(corners):
            where = (slice(None), slice(None), slice(z, z + roi), slice(y, y + roi), slice(w, w + roi))
            out = run_pass(np.ascontiguousarray(padded[where]), presence, rng, last and k == len(corners) - 1)
            if total is None:
                total = np.zeros(out.shape[:2] + padded.shape[2:], np.float32)
                weight_sum = np.zeros(padded.shape[2:], np.float32)
            total[where] += out * weights
            weight_sum[where[2:]] += weights
        total /= weight_sum
        inside = tuple(slice(before, n - after) for (before, after), n in zip(pads, padded.shape[2:]))
        return total[(slice(None), slice(None)) + inside]

    return run
