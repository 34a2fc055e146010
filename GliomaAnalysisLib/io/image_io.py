"""Reading and validating MR images.

``read_image`` turns every failure into a one-line :class:`GliomaAnalysisError` naming the file.
``validate_image`` checks an in-memory image is usable as an MR volume.
"""
from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path
from typing import Optional, Union

import numpy as np
import SimpleITK as sitk

from ..errors import ImageReadError, InvalidImageError, SegmentationAsImageError

PathLike = Union[str, "os.PathLike[str]"]

_LABEL_VALUES = {0, 1, 2, 3, 4}


def read_image(path: PathLike) -> sitk.Image:
    """Read one image file (NIfTI, NRRD, MetaImage) with SimpleITK; raise ImageReadError on any failure."""
    path = Path(path)
    if not path.exists():
        raise ImageReadError(f"{path}: file not found")
    if path.is_dir():
        raise ImageReadError(f"{path}: is a folder, expected an image file")
    if path.stat().st_size == 0:
        raise ImageReadError(f"{path}: file is empty (0 bytes)")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise ImageReadError(f"{path}: cannot read image ({short_itk_reason(exc)})") from None
    _check_complete(path, image)
    return image


def _check_complete(path: Path, image: sitk.Image) -> None:
    """Refuse truncated NIfTI files, which ITK reads silently with the missing voxels set to 0.

    A .nii.gz whose gzip trailer records exactly the header's data offset plus the voxels is complete (a cut file
    ends in compressed data instead, which matches with odds of 1 in 2**32); any other one is decompressed in full
    and measured, which also catches corrupt compressed data."""
    name = path.name.lower()
    if not (name.endswith(".nii") or name.endswith(".nii.gz")):
        return
    data_bytes = image.GetNumberOfPixels() * image.GetNumberOfComponentsPerPixel() * image.GetSizeOfPixelComponent()
    gzipped = name.endswith(".gz")
    opener = gzip.open if gzipped else open
    try:
        with opener(path, "rb") as stream:
            header = stream.read(560)
    except (EOFError, OSError, zlib.error) as exc:
        raise ImageReadError(f"{path}: file is truncated or corrupt ({exc})") from None
    expected = _nifti_data_offset(header) + data_bytes
    if gzipped and expected < (1 << 32) and gzip_length_matches(path, expected):
        return
    stored = 0
    try:
        with opener(path, "rb") as stream:
            while True:
                chunk = stream.read(1 << 22)
                if not chunk:
                    break
                stored += len(chunk)
    except (EOFError, OSError, zlib.error) as exc:
        raise ImageReadError(f"{path}: file is truncated or corrupt ({exc})") from None
    if stored < expected:
        raise ImageReadError(f"{path}: file is truncated ({stored} bytes, its header promises {expected})")


def gzip_length_matches(path: Path, expected: int) -> bool:
    """Whether the gzip trailer of ``path`` records ``expected`` uncompressed bytes (mod 2**32)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(-4, os.SEEK_END)
            return struct.unpack("<I", handle.read(4))[0] == expected % (1 << 32)
    except OSError:
        return False


def _nifti_data_offset(header: bytes) -> int:
    """Byte offset of the voxel data from a NIfTI-1 or NIfTI-2 header (352 / 544 when unreadable)."""
    for order in ("<", ">"):
        if len(header) >= 112 and struct.unpack(order + "i", header[:4])[0] == 348:
            return int(struct.unpack(order + "f", header[108:112])[0])
        if len(header) >= 176 and struct.unpack(order + "i", header[:4])[0] == 540:
            return int(struct.unpack(order + "q", header[168:176])[0])
    return 352


def short_itk_reason(exc: Exception, fallback: Optional[str] = None) -> str:
    """The most informative part of a SimpleITK/ITK exception, at most 200 characters: the text after the first
    ``Description:``; without one, ``fallback`` if given, else the last non-blank line (or the exception's type
    name when the message is empty)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for line in lines:
        if "Description:" in line:
            return line.split("Description:", 1)[1].strip()[:200]
    if fallback is not None:
        return fallback[:200]
    return (lines[-1] if lines else type(exc).__name__)[:200]


def effective_dimension(image: sitk.Image) -> int:
    """Number of axes longer than one voxel."""
    return sum(1 for n in image.GetSize() if n > 1)


def validate_image(image: sitk.Image, name: str) -> sitk.Image:
    """Check that ``image`` can be an MR volume; return it as a new float32 image (same geometry; ``image`` itself is
    never changed).

    ``name`` (a path or a description) starts every error message.
    """
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InvalidImageError(
            f"{name}: has {image.GetNumberOfComponentsPerPixel()} components per voxel "
            f"({image.GetPixelIDTypeAsString()}), expected a scalar MR image")
    size = "x".join(str(n) for n in image.GetSize())
    if image.GetDimension() != 3 or effective_dimension(image) < 3:
        dim = effective_dimension(image) if image.GetDimension() == 3 else image.GetDimension()
        raise InvalidImageError(f"{name}: expected a 3D image, got a {dim}D image (size {size})")
    spacing = np.asarray(image.GetSpacing())
    if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise InvalidImageError(f"{name}: invalid voxel spacing {tuple(spacing)}")
    pixel_id = image.GetPixelID()
    if pixel_id in (sitk.sitkComplexFloat32, sitk.sitkComplexFloat64):
        raise InvalidImageError(f"{name}: complex-valued voxels, expected a real-valued MR image")
    array = sitk.GetArrayViewFromImage(image)
    integer = np.issubdtype(array.dtype, np.integer)
    # cast by ITK: one pass into one new buffer (numpy's copy then a new image filled from it cost three)
    as_float = sitk.Cast(image, sitk.sitkFloat32)  # a new image, without the input's metadata, for every type
    values = sitk.GetArrayViewFromImage(as_float)
    if not integer:
        bad = int(np.count_nonzero(~np.isfinite(values)))
        if bad:
            raise InvalidImageError(f"{name}: contains {bad} non-finite (NaN/Inf) voxels")
    low, high = float(values.min()), float(values.max())
    if low == high:
        raise InvalidImageError(f"{name}: image is constant (every voxel is {low:g})")
    if integer and low >= 0 and high <= 4:
        labels = set(np.unique(array).tolist())
        if labels <= _LABEL_VALUES:
            listed = ", ".join(str(v) for v in sorted(labels))
            raise SegmentationAsImageError(
                f"{name}: looks like a segmentation (only labels {listed}), not an MR image")
    return as_float



MSD_CHANNELS = ("flair", "t1", "t1ce", "t2")
"""Channel order of the Medical Segmentation Decathlon's 4D brain-tumour files (FLAIR, T1w, T1gd, T2w)."""


def channel_count(path: PathLike) -> int:
    """Channels of a multi-channel (4D or vector) image file from its header alone; 1 for a 3D scalar image, 0 when
    the header cannot be read."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return 0
    size = reader.GetSize()
    if len(size) == 4 and reader.GetNumberOfComponents() == 1:
        return int(size[3])
    if len(size) == 3 and reader.GetNumberOfComponents() > 1:
        return int(reader.GetNumberOfComponents())
    return 1


def split_channels(image: sitk.Image, name: str, channels: "tuple[str, ...] | list[str]") -> "dict[str, sitk.Image]":
    """The 3D images of a 4D (x, y, z, channel) or vector image, keyed by ``channels`` (modality keys, in order).

    Refused with a one-line error: a channel count that differs from ``channels``, or an image that is neither.
    """
    if image.GetDimension() == 4 and image.GetNumberOfComponentsPerPixel() == 1:
        size = list(image.GetSize())
        count = size[3]
        pick = lambda index: sitk.Extract(  # noqa: E731
            image, size[:3] + [0], [0, 0, 0, index], sitk.ExtractImageFilter.DIRECTIONCOLLAPSETOSUBMATRIX)
    elif image.GetDimension() == 3 and image.GetNumberOfComponentsPerPixel() > 1:
        count = image.GetNumberOfComponentsPerPixel()
        pick = lambda index: sitk.VectorIndexSelectionCast(image, index)  # noqa: E731
    else:
        raise InvalidImageError(f"{name}: expected a 4D image with one channel per modality, got a "
                                f"{image.GetDimension()}D image (size {'x'.join(map(str, image.GetSize()))})")
    if count != len(channels):
        raise InvalidImageError(f"{name}: has {count} channels but {len(channels)} are named "
                                f"({','.join(channels)}); give the order with --channels, e.g. flair,t1,t1ce,t2")
    return {modality: pick(index) for index, modality in enumerate(channels)}
