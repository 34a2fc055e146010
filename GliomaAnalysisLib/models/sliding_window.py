"""A sliding window over a pass of the segmentation network, in NumPy: the network sees windows of the field of view
it was trained on (its training crop) instead of the whole input, as MONAI's ``sliding_window_inference`` does it
(overlap 0.25, Gaussian weights, windows in the same order; tested against it), without torch. A window may be
longer along some axes than others (:func:`window_shape`: an axis a little longer than the crop in one window).

    windowed(run_pass, window) -> run_pass over windows of window (an int: a cube) voxels, blended
"""
from __future__ import annotations

import math
import numbers
from functools import lru_cache
from typing import List, Sequence, Tuple, Union

import numpy as np

from .segment import RunPass

OVERLAP = 0.25
"""Share of a window that the next one along an axis overlaps."""
SIGMA_SCALE = 0.125
"""Standard deviation of the Gaussian weights, as a share of the window's width."""
MIN_WEIGHT = 1e-3
"""Smallest weight of a voxel in a window (its corners)."""

Window = Union[int, Tuple[int, int, int]]
"""A window's size in voxels: a cube's edge or (Z, Y, X)."""


def window_size(window: Window) -> Tuple[int, int, int]:
    """(Z, Y, X) voxels of ``window`` (an integer: a cube's edge)."""
    return (int(window),) * 3 if isinstance(window, numbers.Integral) else tuple(int(n) for n in window)


def window_shape(size_zyx: Sequence[int], crop: int, longest: int, divisor: int) -> Tuple[int, int, int]:
    """(Z, Y, X) window for an input of ``size_zyx`` voxels by a network trained on ``crop``^3 crops: per axis the
    crop, except that an axis up to ``longest`` voxels runs in one window, its length rounded up to a multiple of
    ``divisor`` (so that a region 70 voxels long runs once in 72 instead of twice in 64)."""
    return tuple(-(-n // divisor) * divisor if crop < n <= longest else crop for n in size_zyx)


def window_starts(size: int, roi: int, overlap: float = OVERLAP) -> List[int]:
    """First voxel of each window along an axis of ``size`` voxels (>= ``roi``): a step of ``roi * (1 - overlap)``,
    the last window moved back to end at the edge."""
    if size <= roi:
        return [0]
    step = max(1, int(roi * (1 - overlap)))
    count = next(k for k in range(math.ceil(size / step)) if k * step + roi >= size) + 1
    return [min(k * step, size - roi) for k in range(count)]


@lru_cache(maxsize=8)
def gaussian_weights(window: Window) -> np.ndarray:
    """float32 (Z, Y, X) of ``window``: a Gaussian about the window's centre (SD ``SIGMA_SCALE`` of the window's
    length along each axis), at least ``MIN_WEIGHT`` (read only)."""
    lines = []
    for n in window_size(window):
        x = np.arange(n, dtype=np.float32) - (n - 1) / 2.0
        lines.append(np.exp(x ** 2 / (-2 * (SIGMA_SCALE * n) ** 2)).astype(np.float32))
    weights = lines[0][:, None, None] * lines[1][None, :, None] * lines[2][None, None, :]
    weights = np.maximum(weights, max(float(weights.min()), MIN_WEIGHT)).astype(np.float32)
    weights.flags.writeable = False
    return weights


def _padding(shape: Sequence[int], window: Sequence[int]) -> Tuple[Tuple[int, int], ...]:
    """(before, after) zero padding per spatial axis that brings an axis shorter than the window up to it."""
    return tuple(((w - n) // 2, w - n - (w - n) // 2) if n < w else (0, 0) for n, w in zip(shape, window))


def windowed(run_pass: RunPass, window: Window) -> RunPass:
    """``run_pass`` applied to every window of ``window`` voxels (an int: along each axis; an axis shorter than the
    window is zero-padded to it, as MONAI pads) and blended with :func:`gaussian_weights`. x (1, 4, Z, Y, X) ->
    probabilities (1, C, Z, Y, X); each window draws its own dropout masks from the pass's generator, in window
    order."""
    shape = window_size(window)

    def run(x: np.ndarray, presence: np.ndarray, rng, last: bool = True) -> np.ndarray:
        pads = _padding(x.shape[2:], shape)
        padded = np.pad(x, ((0, 0), (0, 0)) + pads) if any(any(p) for p in pads) else x
        weights = gaussian_weights(shape)
        rz, ry, rx = shape
        corners = [(z, y, w) for z in window_starts(padded.shape[2], rz) for y in window_starts(padded.shape[3], ry)
                   for w in window_starts(padded.shape[4], rx)]
        total = weight_sum = None
        for k, (z, y, w) in enumerate(corners):
            where = (slice(None), slice(None), slice(z, z + rz), slice(y, y + ry), slice(w, w + rx))
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
