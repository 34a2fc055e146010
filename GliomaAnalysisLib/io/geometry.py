"""Image grid geometry in physical (LPS, mm) space and resampling between grids."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np
import SimpleITK as sitk

from .axis_aligned import AxisSteps, resample_box

_ORIGIN_TOL_MM = 1e-3
_SPACING_RTOL = 1e-5
_DIRECTION_TOL = 1e-5


@dataclass(frozen=True)
class Geometry:
    """A voxel grid: size (x, y, z voxels), spacing (mm), origin (mm, LPS), direction (row-major 3x3)."""

    size: Tuple[int, int, int]
    spacing: Tuple[float, float, float]
    origin: Tuple[float, float, float]
    direction: Tuple[float, ...]

    @classmethod
    def of(cls, image: sitk.Image) -> "Geometry":
        return cls(tuple(int(n) for n in image.GetSize()), tuple(float(s) for s in image.GetSpacing()),
                   tuple(float(o) for o in image.GetOrigin()), tuple(float(d) for d in image.GetDirection()))

    def differences(self, other: "Geometry") -> List[str]:
        """Names of the properties (size, spacing, origin, direction) in which ``other`` differs."""
        diffs = []
        if self.size != other.size:
            diffs.append("size")
        if not np.allclose(self.spacing, other.spacing, rtol=_SPACING_RTOL, atol=0):
            diffs.append("spacing")
        if not np.allclose(self.origin, other.origin, rtol=0, atol=_ORIGIN_TOL_MM):
            diffs.append("origin")
        if not np.allclose(self.direction, other.direction, rtol=0, atol=_DIRECTION_TOL):
            diffs.append("direction")
        return diffs

    def matches(self, other: "Geometry") -> bool:
        return not self.differences(other)

    def empty_image(self, pixel_type: int = sitk.sitkFloat32) -> sitk.Image:
        """A zero image on this grid."""
        image = sitk.Image(list(self.size), pixel_type)
        self.apply_to(image)
        return image

    def apply_to(self, image: sitk.Image) -> sitk.Image:
        """Stamp this geometry on ``image`` (sizes must agree); returns the same image."""
        if tuple(image.GetSize()) != self.size:
            raise ValueError(f"image size {image.GetSize()} does not match geometry size {self.size}")
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    def image_from_array(self, array: np.ndarray) -> sitk.Image:
        """An image on this grid from an array shaped (z, y, x)."""
        return self.apply_to(sitk.GetImageFromArray(array))

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in millilitres (1 mL = 1000 mm^3)."""
        return float(np.prod(self.spacing)) / 1000.0

    def physical_corners(self) -> np.ndarray:
        """The 8 corner voxel centres in physical space, shape (8, 3), mm."""
        image = self.empty_image(sitk.sitkUInt8)
        idx = [(i, j, k) for i in (0, self.size[0] - 1) for j in (0, self.size[1] - 1) for k in (0, self.size[2] - 1)]
        return np.array([image.TransformIndexToPhysicalPoint(p) for p in idx])

    def bounds(self) -> Tuple[np.ndarray, np.ndarray]:
        """Axis-aligned physical bounding box (min, max) of the voxel centres, mm."""
        corners = self.physical_corners()
        return corners.min(axis=0), corners.max(axis=0)


def overlaps(a: Geometry, b: Geometry) -> bool:
    """Whether the physical bounding boxes of two grids intersect."""
    amin, amax = a.bounds()
    bmin, bmax = b.bounds()
    return bool(np.all(amin <= bmax) and np.all(bmin <= amax))


def resample_to(image: sitk.Image, target: Geometry, interpolator: int = sitk.sitkLinear,
                default_value: float = 0.0, pixel_type: int = sitk.sitkFloat32) -> sitk.Image:
    """Resample ``image`` onto the ``target`` grid through physical space (identity transform)."""
    return sitk.Resample(image, list(target.size), sitk.Transform(), interpolator, target.origin,
                         target.spacing, target.direction, default_value, pixel_type)


def index_to_physical(geometry: Geometry, index_xyz: np.ndarray) -> np.ndarray:
    """Continuous voxel indices (N, 3), x-y-z order, to physical points (N, 3), mm."""
    direction = np.asarray(geometry.direction).reshape(3, 3)
    return np.asarray(geometry.origin) + (np.asarray(index_xyz, dtype=float) * np.asarray(geometry.spacing)) @ direction.T


def physical_to_index(geometry: Geometry, points: np.ndarray) -> np.ndarray:
    """Physical points (N, 3), mm, to continuous voxel indices (N, 3), x-y-z order."""
    direction = np.asarray(geometry.direction).reshape(3, 3)
    return ((np.asarray(points, dtype=float) - np.asarray(geometry.origin)) @ direction) / np.asarray(geometry.spacing)


def sub_grid(geometry: Geometry, start_xyz: np.ndarray, stop_xyz: np.ndarray) -> Geometry:
    """The part of ``geometry`` from voxel ``start_xyz`` (inclusive) to ``stop_xyz`` (exclusive)."""
    origin = index_to_physical(geometry, np.asarray(start_xyz)[None])[0]
    return Geometry(tuple(int(b - a) for a, b in zip(start_xyz, stop_xyz)), geometry.spacing,
                    tuple(float(o) for o in origin), geometry.direction)


def resample_array_within(array: np.ndarray, source: Geometry, target: Geometry, floor: float,
                          decimals: Optional[int] = None) -> np.ndarray:
    """Linear resampling of ``array`` (z, y, x on ``source``; values >= 0) onto ``target``, computed only where it
    can reach ``floor``: float32 (z, y, x) on ``target``, exactly 0 where every source voxel that a linear
    interpolation reads is below ``floor`` (there the full resampling is below ``floor`` too).

    A target voxel's value is a convex combination of the 8 source voxels around it, so outside the target box
    covering the source voxels >= ``floor`` grown by one source voxel, it is < ``floor``. The box is resampled,
    the rest left 0: for probability maps rounded to 3 decimals with floor 0.0005, the same result as resampling
    everything, at the cost of the tumor's region instead of the whole volume. ``decimals``: round the values to
    that many decimals (``np.round``).
    """
    out = np.zeros(tuple(reversed(target.size)), dtype=np.float32)
    where = np.argwhere(array >= floor)  # (N, 3) z-y-x
    if where.size == 0:
        return out
    lo, hi = where.min(axis=0)[::-1] - 1, where.max(axis=0)[::-1] + 1  # x-y-z source indices, grown by 1 voxel
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    indices = physical_to_index(target, index_to_physical(source, corners))
    start = np.clip(np.floor(indices.min(axis=0)).astype(int), 0, target.size)
    stop = np.clip(np.ceil(indices.max(axis=0)).astype(int) + 1, 0, target.size)
    if np.any(stop <= start):
        return out
    box = resample_array_box(array, source, target, start, stop)
    if decimals is not None:
        np.round(box, decimals, out=box)
    out[start[2]:stop[2], start[1]:stop[1], start[0]:stop[0]] = box
    return out


def resample_array_box(array: np.ndarray, source: Geometry, target: Geometry, start_xyz: np.ndarray,
                       stop_xyz: np.ndarray) -> np.ndarray:
    """Linear resampling of ``array`` (z, y, x on ``source``) onto the voxels ``start_xyz`` (inclusive) to
    ``stop_xyz`` (exclusive) of ``target`` only: float32 (z, y, x) of that box, the values the whole resampling
    has there (each target voxel reads only the source around its own centre). Grids with parallel index axes
    (the working grid of a case) take the separable path of :mod:`.axis_aligned`, others ``sitk.Resample``."""
    steps = axis_steps(source, target)
    if steps is not None:
        return resample_box(array, steps, np.asarray(start_xyz), np.asarray(stop_xyz))
    image = source.image_from_array(np.ascontiguousarray(array, dtype=np.float32))
    part = resample_to(image, sub_grid(target, start_xyz, stop_xyz), sitk.sitkLinear, pixel_type=sitk.sitkFloat32)
    return sitk.GetArrayFromImage(part)


AXIS_TOLERANCE = 1e-6
"""Largest drift across source axes, per target voxel step, relative to the step along the matching source axis,
that still counts as parallel: the neglected term moves a sample by < 0.001 voxel on a 512-voxel axis."""


def axis_steps(source: Geometry, target: Geometry) -> Optional[AxisSteps]:
    """How target indices (x, y, z) map to continuous source indices, axis by axis (:mod:`.axis_aligned`'s
    ``AxisSteps``); None when an index axis of ``target`` does not run along one index axis of ``source`` (oblique,
    or two axes on one)."""
    origin = physical_to_index(source, index_to_physical(target, np.zeros((1, 3))))[0]
    moves = physical_to_index(source, index_to_physical(target, np.eye(3))) - origin  # [j, k]: per step along j
    source_of = np.abs(moves).argmax(axis=1)
    if sorted(source_of.tolist()) != [0, 1, 2]:
        return None
    along = moves[[0, 1, 2], source_of]
    drift = np.abs(moves)
    drift[[0, 1, 2], source_of] = 0.0
    if np.any(drift.max(axis=1) > AXIS_TOLERANCE * np.abs(along)):
        return None
    return sorted((int(k), j, float(origin[k]), float(along[j])) for j, k in enumerate(source_of.tolist()))


def regrid(geometry: Geometry, spacing: Tuple[float, float, float]) -> Geometry:
    """A grid over the same physical extent with a new spacing (same direction, same first-voxel corner).

    The field of view is kept: new size = ceil(old extent / new spacing); the origin moves so the
    outer voxel corners stay where they were.
    """
    old_spacing = np.asarray(geometry.spacing)
    new_spacing = np.asarray(spacing, dtype=float)
    extent = np.asarray(geometry.size) * old_spacing
    new_size = np.maximum(1, np.ceil(extent / new_spacing - 1e-6)).astype(int)
    direction = np.asarray(geometry.direction).reshape(3, 3)
    corner = np.asarray(geometry.origin) - direction @ (old_spacing / 2)
    origin = corner + direction @ (new_spacing / 2)
    return Geometry(tuple(int(n) for n in new_size), tuple(float(s) for s in new_spacing),
                    tuple(float(o) for o in origin), geometry.direction)


def lps_array(image: sitk.Image) -> Tuple[np.ndarray, Tuple[float, float, float]]:
    """``image``'s voxels as a (z, y, x) array in LPS order (x towards the patient's left, y posterior, z superior)
    and their spacing (z, y, x), mm: what ``sitk.DICOMOrient(image, "LPS")`` gives, but as a transposed and flipped
    view of the image's own buffer, without a copy. Valid while ``image`` lives; read-only."""
    direction = np.asarray(image.GetDirection()).reshape(3, 3)  # column j: physical direction of index axis j
    axis_of = np.abs(direction).argmax(axis=0)
    if sorted(axis_of.tolist()) != [0, 1, 2]:  # degenerate (two index axes closest to one physical axis)
        oriented = sitk.DICOMOrient(image, "LPS")
        return sitk.GetArrayFromImage(oriented), tuple(reversed(oriented.GetSpacing()))
    array = sitk.GetArrayViewFromImage(image)  # numpy axis 2 - j is index axis j
    spacing = image.GetSpacing()
    index_axes = [int(np.flatnonzero(axis_of == k)[0]) for k in (2, 1, 0)]  # S, P, L: the output's z, y, x
    out = np.transpose(array, [2 - j for j in index_axes])
    for position, (k, j) in enumerate(zip((2, 1, 0), index_axes)):
        if direction[k, j] < 0:
            out = np.flip(out, position)
    return out, tuple(float(spacing[j]) for j in index_axes)
