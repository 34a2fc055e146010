"""A multimodal MRI case: the modalities present, on one reference grid, and where they came from.

Build one with :func:`load_case` from a folder, a modality -> path mapping, or in-memory SimpleITK images.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import SimpleITK as sitk

from ..errors import (GeometryError, ImageReadError, InvalidImageError, ModalityConflictError, NoModalityError,
                     SegmentationAsImageError)
from .geometry import Geometry, overlaps, resample_to
from .image_io import read_image, validate_image
from .labels import CONVENTIONS, guess_convention
from .modalities import MODALITIES, SEGMENTATION, classify_name, strip_image_suffix

REFERENCE_PREFERENCE = ("t1ce", "t1", "flair", "t2")
"""Reference modality when none is asked for: the first present in this order."""

ImageSource = Union[str, "os.PathLike[str]", sitk.Image]


@dataclass
class Case:
    """Modalities on one reference grid.

    ``images`` maps each present modality key to a float32 image on ``geometry`` (the reference grid).
    ``segmentation`` is a ground-truth label map on the same grid when one was found (file labels as read,
    convention in ``segmentation_convention``). ``sources`` gives each input's path or ``"<in-memory>"``.
    """

    case_id: str
    images: Dict[str, sitk.Image]
    reference: str
    geometry: Geometry
    sources: Dict[str, str] = field(default_factory=dict)
    segmentation: Optional[sitk.Image] = None
    segmentation_convention: Optional[str] = None
    warnings: List[str] = field(default_factory=list)
    dicom_files: Dict[str, List[str]] = field(default_factory=dict)
    """Source DICOM files per modality when the inputs were DICOM series (for DICOM SEG references)."""
    originals: Dict[str, sitk.Image] = field(default_factory=dict)
    """float32 images in their own (native) geometry, for the modalities that were resampled onto the reference
    grid (what co-registration starts from; see :mod:`GliomaAnalysisLib.preprocessing.clinical`)."""

    @property
    def present(self) -> List[str]:
        """Present modality keys, in channel order."""
        return [m for m in MODALITIES if m in self.images]

    @property
    def missing(self) -> List[str]:
        """Missing modality keys, in channel order."""
        return [m for m in MODALITIES if m not in self.images]

    def array(self, modality: str) -> np.ndarray:
        """Voxels of one modality as float32 array (z, y, x)."""
        return sitk.GetArrayFromImage(self.images[modality])


def find_modality_files(folder: Union[str, "os.PathLike[str]"]) -> Dict[str, Path]:
    """Map modality keys (and ``"seg"``) to the files of ``folder`` recognised by name.

    Raises NoModalityError when no modality file is there and ModalityConflictError when two files claim one.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageReadError(f"{folder}: folder not found")
    found: Dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.name.startswith("."):
            continue
        kind = classify_name(path.name)
        if kind is None:
            continue
        if kind in found:
            raise ModalityConflictError(
                f"{folder}: two files claim {_describe(kind)}: {found[kind].name} and {path.name}")
        found[kind] = path
    if not any(k in found for k in MODALITIES):
        images = [p.name for p in sorted(folder.iterdir()) if strip_image_suffix(p.name)]
        hint = f" (image files there: {', '.join(images[:6])})" if images else ""
        raise NoModalityError(
            f"{folder}: no MRI modality file found; expected names like *_t1ce.nii.gz, *-t2f.nii.gz or "
            f"FLAIR.nrrd, or pass the files explicitly{hint}")
    return found


def _describe(kind: str) -> str:
    return "the segmentation" if kind == SEGMENTATION else f"modality '{kind}'"


def _check_modality_keys(keys: Sequence[str], where: str) -> None:
    unknown = [k for k in keys if k not in MODALITIES]
    if unknown:
        raise NoModalityError(f"{where}: unknown modality {unknown[0]!r}; use one of {', '.join(MODALITIES)}")


def load_case(source: Union[str, "os.PathLike[str]", Mapping[str, Optional[ImageSource]]],
              reference: Optional[str] = None, segmentation: Optional[ImageSource] = None,
              case_id: Optional[str] = None) -> Case:
    """Load a case from a folder, or from a mapping of modality key -> file path or SimpleITK image.

    Empty entries (None) of a mapping count as missing. ``reference`` picks the modality whose grid all
    others are resampled onto (default: first present of t1ce, t1, flair, t2). In a folder, a ``_seg`` file
    is read as ground truth, never as an image.
    """
    if isinstance(source, Mapping):
        inputs = {k: v for k, v in source.items() if v is not None}
        where = case_id or "inputs"
        _check_modality_keys(list(inputs), where)
        if not inputs:
            raise NoModalityError(f"{where}: no modality given; give at least one of {', '.join(MODALITIES)}")
        default_id = case_id or _case_id_from_paths(inputs)
    else:
        folder = Path(source)
        try:
            found = find_modality_files(folder)
        except NoModalityError as no_files:
            found = _dicom_modalities(folder, no_files)
        inputs = {k: v for k, v in found.items() if k in MODALITIES}
        if segmentation is None:
            segmentation = found.get(SEGMENTATION)
        default_id = case_id or folder.resolve().name
    _refuse_shared_files(inputs)
    return _assemble(inputs, reference, segmentation, default_id)


def _case_id_from_paths(inputs: Mapping[str, ImageSource]) -> str:
    for value in inputs.values():
        if isinstance(value, (str, os.PathLike)):
            return Path(value).resolve().parent.name or "case"
    return "case"


def _refuse_shared_files(inputs: Mapping[str, ImageSource]) -> None:
    seen: Dict[str, str] = {}
    for modality, value in inputs.items():
        if not isinstance(value, (str, os.PathLike, sitk.Image)):
            continue  # DICOM series found by description: distinct by construction
        key = str(Path(value).resolve()) if not isinstance(value, sitk.Image) else f"image@{id(value)}"
        if key in seen:
            raise ModalityConflictError(
                f"{value if not isinstance(value, sitk.Image) else '<in-memory image>'}: "
                f"the same input is given for modalities '{seen[key]}' and '{modality}'")
        seen[key] = modality


def _dicom_modalities(folder: Path, no_files: NoModalityError) -> Dict[str, object]:
    """Modality -> DICOM series in ``folder``, by SeriesDescription; re-raise ``no_files`` when there are none."""
    from .dicom_io import modality_series

    series = modality_series(folder)
    if not series:
        raise no_files
    return dict(series)


def _read(value: ImageSource, modality: str) -> "tuple[sitk.Image, str, List[str]]":
    """(image, name for messages, source DICOM files or [])."""
    if isinstance(value, sitk.Image):
        return value, f"<in-memory {modality}>", []
    from .dicom_io import DicomSeries, find_series, read_series

    if isinstance(value, DicomSeries):
        folder = str(Path(value.files[0]).parent)
        return read_series(value.files, f"{folder} ({value.description})"), folder, list(value.files)
    path = Path(value)
    if path.is_dir():  # an explicit DICOM series folder
        series = find_series(path)
        if len(series) != 1:
            raise ImageReadError(f"{path}: expected one DICOM series for {modality}, found {len(series)}")
        return read_series(series[0].files, str(path)), str(path), list(series[0].files)
    if classify_name(path.name) == SEGMENTATION:
        raise SegmentationAsImageError(f"{path}: is named as a segmentation, not an MR image ({modality})")
    return read_image(path), str(path), []


def _assemble(inputs: Mapping[str, ImageSource], reference: Optional[str],
              segmentation: Optional[ImageSource], case_id: str) -> Case:
    raw: Dict[str, sitk.Image] = {}
    sources: Dict[str, str] = {}
    dicom_files: Dict[str, List[str]] = {}
    for modality in MODALITIES:
        if modality not in inputs:
            continue
        image, name, dicom = _read(inputs[modality], modality)
        if dicom:
            dicom_files[modality] = dicom
        values = validate_image(image, name)
        as_float = sitk.GetImageFromArray(values)
        as_float.CopyInformation(image)
        raw[modality], sources[modality] = as_float, name

    if reference is None:
        reference = next(m for m in REFERENCE_PREFERENCE if m in raw)
    elif reference not in raw:
        raise NoModalityError(f"{case_id}: reference modality '{reference}' is not among the inputs "
                              f"({', '.join(raw)})")
    geometry = Geometry.of(raw[reference])

    warnings: List[str] = []
    images: Dict[str, sitk.Image] = {}
    originals: Dict[str, sitk.Image] = {}
    for modality, image in raw.items():
        own = Geometry.of(image)
        diffs = geometry.differences(own)
        if not diffs:
            image.CopyInformation(raw[reference])  # remove sub-tolerance jitter
            images[modality] = image
            continue
        if not overlaps(own, geometry):
            raise GeometryError(f"{sources[modality]}: does not overlap the reference {reference} image in "
                                f"physical space (different patient or coordinate system?)")
        warnings.append(f"{modality}: {', '.join(diffs)} differ from the reference {reference}; "
                        f"resampled onto the {reference} grid")
        images[modality] = resample_to(image, geometry, sitk.sitkLinear)
        originals[modality] = image

    seg_image, convention = None, None
    if segmentation is not None:
        seg_image, convention, sources[SEGMENTATION] = _read_segmentation(segmentation, geometry, warnings)
    return Case(case_id, images, reference, geometry, sources, seg_image, convention, warnings, dicom_files,
                originals)


def _read_segmentation(value: ImageSource, geometry: Geometry,
                       warnings: List[str]) -> "tuple[sitk.Image, str, str]":
    image = value if isinstance(value, sitk.Image) else read_image(value)
    name = "<in-memory segmentation>" if isinstance(value, sitk.Image) else str(value)
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InvalidImageError(f"{name}: a segmentation must be a 3D scalar label map")
    array = sitk.GetArrayViewFromImage(image)
    values = set(np.unique(array).tolist())
    allowed = set(CONVENTIONS["brats2021"]) | set(CONVENTIONS["brats2023"])
    if not values <= allowed:
        raise InvalidImageError(f"{name}: segmentation holds labels {sorted(values - allowed)[:5]} outside "
                                f"0/1/2/3/4")
    labels = sitk.Cast(image, sitk.sitkUInt8)
    if geometry.differences(Geometry.of(labels)):
        warnings.append("segmentation: geometry differs from the reference; resampled (nearest neighbour)")
        labels = resample_to(labels, geometry, sitk.sitkNearestNeighbor, pixel_type=sitk.sitkUInt8)
    else:
        labels.CopyInformation(geometry.empty_image(sitk.sitkUInt8))
    return labels, guess_convention(sitk.GetArrayViewFromImage(labels)), name
