"""From a Case to a model-ready array, and back to the reference grid.

Forward: orient to the nearest LPS axis order (an exact axis permutation, no resampling) -> crop to the brain
bounding box plus a margin -> optionally resample to a model spacing -> per-channel z-score over brain voxels
-> pad to a multiple of ``divisible_by``. Inverse: any array on the working grid is resampled through physical
space onto the reference grid (nearest for labels, linear for probabilities), so outputs lie exactly on the
reference geometry.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from ..io.case import Case
from ..io.geometry import Geometry, regrid, resample_array_box, resample_array_within, resample_to
from ..io.labels import to_contiguous
from ..io.modalities import MODALITIES

_NOT_SKULL_STRIPPED_FRACTION = 0.9
N_LABEL_CLASSES = 4
"""Contiguous label classes: 0 bg, 1 NCR, 2 ED, 3 ET."""


@dataclass
class PreprocessedCase:
    """A case on its working grid.

    image:      float32 (4, Z, Y, X), channels in MODALITIES order, z-scored inside the brain, 0 outside the
                brain and in absent channels.
    presence:   float32 (4,), 1 for a present modality, 0 for a missing one.
    brain_mask: bool (Z, Y, X).
    labels:     uint8 (Z, Y, X) contiguous ground truth (0 bg, 1 NCR, 2 ED, 3 ET) when the case had one: the
                class with the largest area-averaged fraction (see ``soft_labels``).
    soft_labels: float32 (4, Z, Y, X) fraction of each working voxel covered by each class (bg, NCR, ED, ET),
                from linear resampling of the one-hot ground truth: at a 2x downsampling exactly the mean over
                the 2x2x2 input voxels a working voxel covers, so labels stay centred with the images
                (nearest-neighbour picked one corner voxel and shifted every label by half an input voxel).
    working:    grid of the arrays above (after cropping, resampling and padding).
    reference:  the case's reference grid, where outputs go back to.
    input_brain_mask: bool (Z, Y, X) on the case's own grid, in its index order: the brain mask the crop came from
                (:func:`brain_mask` of the present channels), kept so that later steps need not compute it again.
    """

    image: np.ndarray
    presence: np.ndarray
    brain_mask: np.ndarray
    working: Geometry
    reference: Geometry
    labels: Optional[np.ndarray] = None
    soft_labels: Optional[np.ndarray] = None
    input_brain_mask: Optional[np.ndarray] = None

    def to_reference(self, array: np.ndarray, kind: str = "probability") -> sitk.Image:
        """Put an array on the working grid back onto the reference grid.

        array: (Z, Y, X) on ``working``. kind: ``"label"`` (nearest, uint8) or ``"probability"`` (linear,
        float32). Voxels outside the working grid get 0.
        """
        if tuple(array.shape) != tuple(reversed(self.working.size)):
            raise ValueError(f"array shape {array.shape} does not match the working grid "
                             f"{tuple(reversed(self.working.size))}")
        if kind == "label":
            source = self.working.image_from_array(np.ascontiguousarray(array, dtype=np.uint8))
            return resample_to(source, self.reference, sitk.sitkNearestNeighbor, pixel_type=sitk.sitkUInt8)
        if kind == "probability":
            source = self.working.image_from_array(np.ascontiguousarray(array, dtype=np.float32))
            return resample_to(source, self.reference, sitk.sitkLinear, pixel_type=sitk.sitkFloat32)
        raise ValueError(f"kind must be 'label' or 'probability', not {kind!r}")

    def to_reference_array(self, array: np.ndarray, floor: float, decimals: Optional[int] = None) -> np.ndarray:
        """A map >= 0 on the working grid (Z, Y, X) linearly resampled onto the reference grid, float32 (z, y, x),
        computed only around the voxels >= ``floor`` and exactly 0 elsewhere (``resample_array_within``), rounded
        to ``decimals`` when given."""
        if tuple(array.shape) != tuple(reversed(self.working.size)):
            raise ValueError(f"array shape {array.shape} does not match the working grid "
                             f"{tuple(reversed(self.working.size))}")
        return resample_array_within(array, self.working, self.reference, floor, decimals)

    def to_reference_box(self, array: np.ndarray, box: Tuple[slice, slice, slice]) -> np.ndarray:
        """A map on the working grid (Z, Y, X) linearly resampled onto the (z, y, x) slices ``box`` of the reference
        grid only: float32, the values the whole resampling has there."""
        start = np.array([box[2].start, box[1].start, box[0].start])
        stop = np.array([box[2].stop, box[1].stop, box[0].stop])
        return resample_array_box(array, self.working, self.reference, start, stop)


def preprocess(case: Case, spacing: Optional[Sequence[float]] = None, margin_mm: float = 10.0,
               divisible_by: int = 1, include_labels: bool = True) -> PreprocessedCase:
    """Bring ``case`` onto a cropped, oriented, optionally resampled working grid (see module docstring).

    spacing: model voxel spacing in mm (x, y, z), or None to keep the reference spacing.
    margin_mm: margin around the brain bounding box. divisible_by: pad each axis up to a multiple of it.
    """
    present = case.present
    # Crop in the input's own index space first (no copy of the full volume), then orient the small crop.
    input_mask = mask = brain_mask([sitk.GetArrayViewFromImage(case.images[m]) for m in present])
    box = _bounding_box(mask, np.asarray(case.geometry.spacing)[::-1], margin_mm)
    index_slices = tuple(slice(lo, hi) for lo, hi in box)  # (z, y, x)
    sitk_slices = tuple(reversed(index_slices))  # (x, y, z)
    cropped = {m: sitk.DICOMOrient(case.images[m][sitk_slices], "LPS") for m in present}
    mask_image = sitk.GetImageFromArray(mask[index_slices].astype(np.uint8))
    mask_image.CopyInformation(case.images[present[0]][sitk_slices])
    mask = sitk.GetArrayFromImage(sitk.DICOMOrient(mask_image, "LPS")).astype(bool)
    working = Geometry.of(cropped[present[0]])

    labels = None
    soft = None
    label_image = None
    if include_labels and case.segmentation is not None:
        label_image = sitk.DICOMOrient(case.segmentation[sitk_slices], "LPS")
        contiguous = to_contiguous(sitk.GetArrayFromImage(label_image), case.segmentation_convention or "brats2021")
        soft = np.stack([(contiguous == k).astype(np.float32) for k in range(N_LABEL_CLASSES)])

    if spacing is not None and not np.allclose(spacing, working.spacing):
        target = regrid(working, tuple(float(s) for s in spacing))
        cropped = {m: resample_to(img, target, sitk.sitkLinear) for m, img in cropped.items()}
        mask_image = working.image_from_array(mask.astype(np.float32))
        mask = sitk.GetArrayFromImage(resample_to(mask_image, target, sitk.sitkLinear)) >= 0.5
        if soft is not None:
            soft = area_averaged(soft, working, target)
        working = target

    if soft is not None:
        labels = np.argmax(soft, axis=0).astype(np.uint8)

    shape = tuple(reversed(working.size))
    image = np.zeros((len(MODALITIES),) + shape, dtype=np.float32)
    presence = np.zeros(len(MODALITIES), dtype=np.float32)
    for channel, modality in enumerate(MODALITIES):
        if modality in cropped:
            image[channel] = zscore(sitk.GetArrayFromImage(cropped[modality]), mask)
            presence[channel] = 1.0

    pad = [(0, (-n) % divisible_by) for n in shape]
    if any(after for _, after in pad):
        image = np.pad(image, [(0, 0)] + pad)
        mask = np.pad(mask, pad)
        labels = np.pad(labels, pad) if labels is not None else None
        if soft is not None:
            soft = np.pad(soft, [(0, 0)] + pad)
            soft[0][soft.sum(axis=0) == 0] = 1.0  # padding is background
        working = Geometry(tuple(int(n + p[1]) for n, p in zip(working.size, reversed(pad))),
                           working.spacing, working.origin, working.direction)
    return PreprocessedCase(image, presence, mask, working, case.geometry, labels, soft, input_mask)


def area_averaged(one_hot: np.ndarray, source: Geometry, target: Geometry) -> np.ndarray:
    """Class fractions (K, Z, Y, X) on ``target`` from a one-hot / fraction stack (K, Z', Y', X') on ``source``:
    each class resampled linearly through physical space, then renormalised to sum to 1 (background outside)."""
    out = np.empty((one_hot.shape[0],) + tuple(reversed(target.size)), dtype=np.float32)
    for k in range(one_hot.shape[0]):
        image = source.image_from_array(np.ascontiguousarray(one_hot[k], dtype=np.float32))
        out[k] = sitk.GetArrayFromImage(resample_to(image, target, sitk.sitkLinear, pixel_type=sitk.sitkFloat32))
    total = out.sum(axis=0)
    out[0] += np.clip(1.0 - total, 0.0, 1.0)  # outside the source grid: background
    out /= np.maximum(out.sum(axis=0, keepdims=True), 1e-6)
    return out


_OTSU_SAFE_MAGNITUDE = 1e12
"""Above this intensity the Otsu threshold of the channel mean is taken on the mean rescaled to [0, 1]: skimage's
class-variance arithmetic overflows float32 from about 1e15 (a wrong, near-full mask from 1e20 to 1e29)."""


def brain_mask(channels: Sequence[np.ndarray]) -> np.ndarray:
    """Brain mask (Z, Y, X) from the present channels (each (Z, Y, X)), without stacking them.

    Skull-stripped input (zero background): voxels where any channel is non-zero. Otherwise (the non-zero
    region fills most of the volume) an Otsu threshold of the channel mean, holes filled, largest component.
    """
    nonzero = np.zeros(channels[0].shape, dtype=bool)
    for channel in channels:
        nonzero |= channel != 0
    if nonzero.mean() < _NOT_SKULL_STRIPPED_FRACTION:
        return nonzero
    from scipy import ndimage  # here only: the skull-stripped inputs most runs get need no scipy import
    from skimage.filters import threshold_otsu

    mean = np.zeros(channels[0].shape, dtype=np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        for channel in channels:
            mean += channel
        mean /= len(channels)
        low, high = float(mean.min()), float(mean.max())
    if not np.isfinite(high - low) or max(abs(low), abs(high)) > _OTSU_SAFE_MAGNITUDE:
        # Otsu's float32 arithmetic overflows (or the sum did): the same threshold on the mean rescaled to [0, 1]
        mean = sum(np.asarray(channel, np.float64) for channel in channels) / len(channels)
        low, high = float(mean.min()), float(mean.max())
        mean = (mean - low) / (high - low if high > low else 1.0)
    mask = mean > threshold_otsu(mean.ravel())  # the values' histogram (a 3D shape ending in 3 looks RGB to skimage)
    components, count = ndimage.label(mask)
    if count > 1:
        sizes = ndimage.sum(mask, components, index=np.arange(1, count + 1))
        mask = components == (1 + int(np.argmax(sizes)))
    return ndimage.binary_fill_holes(mask)


def zscore(array: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(array - mean) / std over ``mask`` voxels, 0 outside the mask; float32, same shape. Intensities so large
    that float32 statistics overflow (|values| above about 1e19) are standardised in float64 instead of becoming NaN."""
    values = array[mask]
    out = np.zeros(array.shape, dtype=np.float32)
    if values.size == 0:
        return out
    with np.errstate(over="ignore", invalid="ignore"):
        std = float(values.std())
    if not np.isfinite(std):
        values = values.astype(np.float64)
        std = float(values.std())
    out[mask] = (values - float(values.mean())) / (std if std > 0 else 1.0)
    return out


def _bounding_box(mask: np.ndarray, spacing_zyx: np.ndarray, margin_mm: float) -> Tuple[Tuple[int, int], ...]:
    """Per-axis [lo, hi) voxel range of ``mask`` grown by ``margin_mm``; the whole axis for an empty mask."""
    if not mask.any():
        return tuple((0, n) for n in mask.shape)
    box = []
    for axis, n in enumerate(mask.shape):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        grow = int(np.ceil(margin_mm / spacing_zyx[axis]))
        box.append((max(0, int(hits[0]) - grow), min(n, int(hits[-1]) + 1 + grow)))
    return tuple(box)
