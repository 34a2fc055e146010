"""Linear resampling between two grids whose index axes are parallel (any order, any sign), one axis at a time.

When every index axis of the target grid runs along one index axis of the source grid (the usual case: the working
grid is the reference grid oriented to LPS and coarsened to 2 mm), a target voxel's continuous source index along
source axis k depends only on its own index along one target axis j: ``c_k = offset_k + step_k * i_j``. Trilinear
interpolation is then three 1D linear interpolations in turn, each a gather of two slabs and a weighted sum:
the values of ITK's linear interpolator in ``sitk.Resample`` (up to float32 rounding, ~1e-7), with its border rules:
a point within half a voxel outside the outermost source centres takes the edge value, one further out is 0.
On a 5.9 M-voxel box of a 240x240x155 grid from its 2 mm LPS grid: 0.029 s against 0.059 s for ``sitk.Resample`` (with
its copies in and out) on two threads.
"""
from __future__ import annotations

from typing import List, Tuple

import numpy as np

AxisSteps = List[Tuple[int, int, float, float]]
"""Per source axis k (x, y, z), in that order: (k, target axis j, offset, step): ``c_k = offset + step * i_j``
(``geometry.axis_steps``)."""


def resample_box(array: np.ndarray, steps: AxisSteps, start_xyz: np.ndarray, stop_xyz: np.ndarray) -> np.ndarray:
    """Linear resampling of ``array`` (z, y, x on the source grid) onto the target voxels ``start_xyz`` (inclusive)
    to ``stop_xyz`` (exclusive): float32 (z, y, x) in the target's axis order."""
    out = np.asarray(array, dtype=np.float32)
    for k, j, offset, step in steps:  # x first: the passes that grow the array come last, on contiguous slabs
        positions = offset + step * np.arange(start_xyz[j], stop_xyz[j], dtype=np.float64)
        out = _interpolate_axis(out, 2 - k, positions)
    # numpy axis 2 - k now holds target axis j: reorder to the target's (z, y, x)
    target_axis_of = {2 - k: 2 - j for k, j, _, _ in steps}
    return np.ascontiguousarray(np.moveaxis(out, list(target_axis_of), list(target_axis_of.values())))


def _interpolate_axis(array: np.ndarray, axis: int, positions: np.ndarray) -> np.ndarray:
    """``array`` sampled at the continuous ``positions`` along ``axis`` (linear; ITK's border rules)."""
    n = array.shape[axis]
    base = np.floor(positions)
    weight = (positions - base).astype(np.float32)
    low = np.clip(base, 0, n - 1).astype(np.intp)
    high = np.clip(base + 1, 0, n - 1).astype(np.intp)
    inside = (positions >= -0.5) & (positions < n - 0.5)
    shape = [1, 1, 1]
    shape[axis] = len(positions)
    weight = np.where(inside, weight, 0.0).astype(np.float32).reshape(shape)
    keep = inside.astype(np.float32).reshape(shape)
    low_values = np.take(array, low, axis=axis)
    high_values = np.take(array, high, axis=axis)
    high_values -= low_values
    high_values *= weight
    low_values *= keep
    low_values += high_values
    return low_values
