"""Synthetic "clinical" acquisitions of a phantom: each series in its own native space with known rigid motion.

A BraTS-style phantom (:mod:`GliomaAnalysisLib.synthetic.phantom`, skull-stripped, one grid) is optionally given a head
(CSF rim, skull with diploe, muscle, scalp fat, skin, noisy air) and then "acquired" once per modality: the head
is moved by a known rigid transform (a few degrees, a few mm: patient motion between series) and sampled on a
clinical grid (e.g. a 3D T1CE at 1 mm, a 2D FLAIR at 0.9 x 0.9 x 5 mm with a box slice profile), with Rician noise
in the background. For tests and benchmarks of the clinical-input pipeline only; never real data.

Convention: ``to_phantom`` of a series maps a physical point of that series' native space (mm, LPS) to the
phantom's physical space, which is exactly ITK's resampling convention (output point -> input point).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ..io.geometry import Geometry
from ..io.modalities import MODALITIES
from .phantom import Phantom, make_phantom


@dataclass(frozen=True)
class Acquisition:
    """How one series is acquired: voxel spacing (mm, x y z), head motion and slice tilt.

    rotation_deg: head rotation about the x, y, z axes (degrees); translation_mm: head translation (mm);
    tilt_deg: rotation of the slice stack about the x axis (an oblique acquisition; degrees).
    """

    spacing: Tuple[float, float, float]
    rotation_deg: Tuple[float, float, float] = (0.0, 0.0, 0.0)
    translation_mm: Tuple[float, float, float] = (0.0, 0.0, 0.0)
    tilt_deg: float = 0.0


CLINICAL_PROTOCOL: Dict[str, Acquisition] = {
    "t1ce": Acquisition((1.0, 1.0, 1.0), (3.0, -2.0, 4.0), (4.0, -3.0, 5.0)),
    "t1": Acquisition((0.9, 0.9, 3.0), (-6.0, 4.0, 2.0), (-5.0, 7.0, -4.0), tilt_deg=6.0),
    "t2": Acquisition((0.6, 0.6, 4.0), (5.0, 6.0, -5.0), (8.0, 2.0, 6.0)),
    "flair": Acquisition((0.9, 0.9, 5.0), (-4.0, -7.0, 6.0), (-6.0, -8.0, 3.0), tilt_deg=-8.0),
}
"""A typical glioma protocol: 3D T1CE at 1 mm, 2D T1 / T2 / FLAIR with thick (3-5 mm), partly oblique slices,
and patient motion of 4-10 degrees and 6-11 mm between series."""


@dataclass
class NativeSeries:
    """One acquired series: ``image`` on its native grid; ``to_phantom`` maps its physical points to the phantom's."""

    image: sitk.Image
    to_phantom: sitk.Euler3DTransform


@dataclass
class NativePhantom:
    """A phantom acquired as separate clinical series (see module docstring)."""

    phantom: Phantom
    series: Dict[str, NativeSeries]
    head: bool
    brain_mask: np.ndarray = field(repr=False, default=None)
    """bool (z, y, x) on the phantom grid: the brain (what skull stripping should keep)."""

    def images(self) -> Dict[str, sitk.Image]:
        """Modality -> native image."""
        return {m: s.image for m, s in self.series.items()}

    def truth_on(self, modality: str) -> sitk.Image:
        """Ground-truth labels (BraTS 2021 values) resampled (nearest) onto the native grid of ``modality``."""
        series = self.series[modality]
        return sitk.Resample(self.phantom.label_image(), series.image, series.to_phantom, sitk.sitkNearestNeighbor,
                             0, sitk.sitkUInt8)

    def tumor_points(self) -> np.ndarray:
        """Tumor centroid and the 8 corners of the tumor's bounding box, phantom physical space, shape (9, 3) mm."""
        zyx = np.argwhere(self.phantom.labels > 0)
        image = self.phantom.label_image()
        lo, hi = zyx.min(axis=0), zyx.max(axis=0)
        corners = [(x, y, z) for x in (lo[2], hi[2]) for y in (lo[1], hi[1]) for z in (lo[0], hi[0])]
        centre = tuple(float(v) for v in zyx.mean(axis=0)[::-1])
        points = [image.TransformContinuousIndexToPhysicalPoint(centre)]
        points += [image.TransformIndexToPhysicalPoint(tuple(int(v) for v in c)) for c in corners]
        return np.asarray(points)


def rigid(rotation_deg: Sequence[float], translation_mm: Sequence[float], centre: Sequence[float]
          ) -> sitk.Euler3DTransform:
    """Euler3DTransform rotating by ``rotation_deg`` (x, y, z; degrees) about ``centre`` (mm), then translating."""
    transform = sitk.Euler3DTransform()
    transform.SetCenter(tuple(float(c) for c in centre))
    transform.SetRotation(*(math.radians(a) for a in rotation_deg))
    transform.SetTranslation(tuple(float(t) for t in translation_mm))
    return transform


def add_head(phantom: Phantom, seed: int = 0) -> Tuple[Dict[str, np.ndarray], np.ndarray]:
    """Images (z, y, x, float32) of the phantom with CSF rim, skull, muscle, scalp fat and skin around the brain.

    Returns (images per modality, brain mask). Layers follow the distance from the brain surface (mm); contrast
    is relative to each modality's typical brain intensity (T1: fat bright, bone dark; T2: CSF bright).
    """
    rng = np.random.default_rng(seed)
    brain = np.zeros(phantom.labels.shape, dtype=bool)
    for array in phantom.images.values():
        brain |= array != 0
    brain = ndimage.binary_fill_holes(ndimage.binary_closing(brain, iterations=2))
    spacing_zyx = tuple(reversed(phantom.geometry.spacing))
    distance = ndimage.distance_transform_edt(~brain, sampling=spacing_zyx).astype(np.float32)
    # layer boundaries (mm from the brain surface) and relative intensities per modality
    layers = ((2.0, "csf"), (3.5, "bone"), (5.5, "diploe"), (7.0, "bone"), (9.0, "muscle"), (14.0, "fat"),
              (15.5, "skin"))
    contrast = {"csf": {"t1": 0.30, "t1ce": 0.32, "t2": 1.60, "flair": 0.15},
                "bone": {"t1": 0.06, "t1ce": 0.06, "t2": 0.05, "flair": 0.05},
                "diploe": {"t1": 0.95, "t1ce": 0.95, "t2": 0.65, "flair": 0.70},
                "muscle": {"t1": 0.60, "t1ce": 0.70, "t2": 0.50, "flair": 0.55},
                "fat": {"t1": 1.40, "t1ce": 1.35, "t2": 1.10, "flair": 1.20},
                "skin": {"t1": 0.80, "t1ce": 0.85, "t2": 0.80, "flair": 0.80}}
    sigma_vox = [0.7 / s for s in spacing_zyx]
    images = {}
    for modality in MODALITIES:
        source = phantom.images[modality].astype(np.float32)
        level = float(np.percentile(source[source > 0], 60))
        head = np.zeros(source.shape, dtype=np.float32)
        inner = 0.0
        for outer, tissue in layers:
            shell = (distance > inner) & (distance <= outer)
            head[shell] = contrast[tissue][modality] * level
            inner = outer
        head = ndimage.gaussian_filter(head, sigma_vox, truncate=2.0)
        head *= 1.0 + 0.04 * rng.standard_normal(head.shape, dtype=np.float32)
        images[modality] = np.where(brain, source, head).astype(np.float32)
    return images, brain


def acquire(phantom: Phantom, protocol: Mapping[str, Acquisition] = CLINICAL_PROTOCOL, head: bool = True,
            noise: float = 0.02, seed: int = 0, margin_mm: float = 5.0) -> NativePhantom:
    """Acquire ``phantom`` as separate native series following ``protocol`` (modality -> Acquisition).

    head: add skull and scalp (else each series is skull-stripped in its own space: zero outside the brain mask
    sampled on its grid). noise: Rician noise standard deviation relative to each modality's typical brain
    intensity (added everywhere, so air is noisy when there is a head).
    """
    rng = np.random.default_rng(seed)
    if head:
        arrays, brain = add_head(phantom, seed)
    else:
        arrays = {m: a.astype(np.float32) for m, a in phantom.images.items()}
        brain = np.zeros(phantom.labels.shape, dtype=bool)
        for array in arrays.values():
            brain |= array != 0
    geometry = phantom.geometry
    lo, hi = geometry.bounds()
    centre = (lo + hi) / 2
    series = {}
    for modality, acquisition in protocol.items():
        source = geometry.image_from_array(arrays[modality])
        to_phantom = rigid(acquisition.rotation_deg, acquisition.translation_mm, centre)
        grid = _native_grid(geometry, to_phantom, acquisition, margin_mm)
        image = _sample(source, grid, to_phantom, acquisition.spacing[2], geometry.spacing)
        array = sitk.GetArrayFromImage(image)
        if noise > 0:
            level = float(np.percentile(arrays[modality][brain], 60)) * noise
            real = array + level * rng.standard_normal(array.shape, dtype=np.float32)
            imag = level * rng.standard_normal(array.shape, dtype=np.float32)
            array = np.sqrt(real * real + imag * imag)
        if not head:  # skull-stripped in its own space: the brain mask sampled on the native grid, zero outside
            mask = _sample(geometry.image_from_array(brain.astype(np.float32)), grid, to_phantom,
                           acquisition.spacing[2], geometry.spacing)
            array[sitk.GetArrayViewFromImage(mask) < 0.5] = 0.0
        image = grid.image_from_array(np.round(array).astype(np.int16))
        series[modality] = NativeSeries(image, to_phantom)
    return NativePhantom(phantom, series, head, brain)


def _native_grid(phantom_grid: Geometry, to_phantom: sitk.Transform, acquisition: Acquisition,
                 margin_mm: float) -> Geometry:
    """The smallest grid with the acquisition's spacing and slice tilt covering the phantom's field of view."""
    tilt = math.radians(acquisition.tilt_deg)
    direction = np.array([[1, 0, 0], [0, math.cos(tilt), -math.sin(tilt)], [0, math.sin(tilt), math.cos(tilt)]])
    inverse = to_phantom.GetInverse()
    corners = np.array([inverse.TransformPoint(tuple(c)) for c in phantom_grid.physical_corners()])
    in_axes = corners @ direction  # coordinates along the grid axes (columns of direction)
    low, high = in_axes.min(axis=0) - margin_mm, in_axes.max(axis=0) + margin_mm
    spacing = np.asarray(acquisition.spacing, dtype=float)
    size = np.ceil((high - low) / spacing).astype(int) + 1
    origin = direction @ low
    return Geometry(tuple(int(n) for n in size), tuple(float(s) for s in spacing), tuple(float(o) for o in origin),
                    tuple(float(d) for d in direction.ravel()))


def _sample(source: sitk.Image, grid: Geometry, to_phantom: sitk.Transform, thickness: float,
            source_spacing: Sequence[float]) -> sitk.Image:
    """Sample ``source`` on ``grid`` through ``to_phantom`` with a box slice profile of ``thickness`` mm."""
    sub = max(1, int(round(thickness / min(source_spacing))))
    if sub == 1:
        return sitk.Resample(source, grid.empty_image(), to_phantom, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    direction = np.asarray(grid.direction).reshape(3, 3)
    fine_spacing = (grid.spacing[0], grid.spacing[1], grid.spacing[2] / sub)
    # the first sub-slice centre lies half a slice below the thick slice's centre (plus half a sub-slice)
    offset = direction[:, 2] * (-grid.spacing[2] / 2 + fine_spacing[2] / 2)
    fine = Geometry((grid.size[0], grid.size[1], grid.size[2] * sub), fine_spacing,
                    tuple(float(o) for o in np.asarray(grid.origin) + offset), grid.direction)
    sampled = sitk.GetArrayFromImage(sitk.Resample(source, fine.empty_image(), to_phantom, sitk.sitkLinear, 0.0,
                                                   sitk.sitkFloat32))
    thick = sampled.reshape(grid.size[2], sub, grid.size[1], grid.size[0]).mean(axis=1)
    return grid.image_from_array(thick.astype(np.float32))


def clinical_phantom(seed: int = 2024, size: Tuple[int, int, int] = (120, 120, 78),
                     spacing: Tuple[float, float, float] = (2.0, 2.0, 2.0),
                     protocol: Optional[Mapping[str, Acquisition]] = None, head: bool = True) -> NativePhantom:
    """A phantom (``make_phantom(seed, size, spacing)``) acquired with ``protocol`` (default CLINICAL_PROTOCOL)."""
    return acquire(make_phantom(seed, size, spacing), protocol or CLINICAL_PROTOCOL, head=head, seed=seed)
