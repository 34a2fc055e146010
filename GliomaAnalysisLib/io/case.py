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
from .image_io import MSD_CHANNELS, channel_count, read_image, split_channels, validate_image
from .labels import CONVENTIONS, guess_convention
from .modalities import MODALITIES, SEGMENTATION, describe_name, strip_image_suffix

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
    ignored: Dict[str, str] = field(default_factory=dict)
    """Files of the case folder that were not used as inputs, with the reason (label maps, masks, other files)."""

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


@dataclass
class FolderScan:
    """What a case folder holds: the modality inputs, the ground-truth candidate, and every file left aside.

    ``ignored`` maps each file that is not an input (nor the ground truth picked) to the reason; ``warnings``
    names the ambiguous ground-truth files, if any. ``multichannel`` is a 4D file holding every modality.
    """

    folder: Path
    inputs: Dict[str, Path]
    ground_truth: Optional[Path]
    ignored: Dict[str, str]
    warnings: List[str]
    multichannel: Optional[Path] = None


def scan_folder(folder: Union[str, "os.PathLike[str]"]) -> FolderScan:
    """Sort the files of ``folder`` by name into modality inputs, ground truth and ignored files.

    Raises ModalityConflictError when two files claim one modality. Files that look like label maps, masks,
    probability maps or predictions are never inputs; two or more ground-truth candidates are a warning.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageReadError(f"{folder}: folder not found")
    inputs: Dict[str, Path] = {}
    candidates: List[Path] = []
    ignored: Dict[str, str] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        match = describe_name(path.name, folder.name)
        if match.kind in MODALITIES:
            if match.kind in inputs:
                raise ModalityConflictError(f"{folder}: two files claim modality '{match.kind}': "
                                            f"{inputs[match.kind].name} and {path.name}")
            inputs[match.kind] = path
        elif match.kind == SEGMENTATION:
            candidates.append(path)
        else:
            ignored[path.name] = match.reason
    multichannel = None
    if not inputs:
        multichannel = _single_multichannel(folder, ignored)
    ground_truth, warnings = _pick_ground_truth(folder, candidates, ignored)
    return FolderScan(folder, inputs, ground_truth, ignored, warnings, multichannel)


def _single_multichannel(folder: Path, ignored: Dict[str, str]) -> Optional[Path]:
    """The one multi-channel (4D) image among the unrecognised files of a folder without modality names."""
    found = [folder / name for name, reason in ignored.items()
             if reason == "no modality in the name" and channel_count(folder / name) > 1]
    if len(found) != 1:
        return None
    del ignored[found[0].name]
    return found[0]


def _pick_ground_truth(folder: Path, candidates: List[Path],
                       ignored: Dict[str, str]) -> "tuple[Optional[Path], List[str]]":
    """One ground-truth file among ``candidates``: the only one, or the only one named after the folder."""
    if len(candidates) <= 1:
        return (candidates[0] if candidates else None), []
    named = [p for p in candidates if p.name.lower().startswith(folder.name.lower())]
    chosen = named[0] if len(named) == 1 else None
    for path in candidates:
        if path != chosen:
            ignored[path.name] = "another ground-truth candidate" if chosen else "ambiguous ground truth"
    names = ", ".join(p.name for p in candidates)
    if chosen:
        return chosen, [f"{folder}: several files look like ground truth ({names}); using {chosen.name}"]
    return None, [f"{folder}: several files look like ground truth ({names}); none used (give one explicitly)"]


def find_modality_files(folder: Union[str, "os.PathLike[str]"]) -> Dict[str, Path]:
    """Map modality keys (and ``"seg"`` for the ground truth, when one is unambiguous) to the files of ``folder``.

    Raises NoModalityError when no modality file is there and ModalityConflictError when two files claim one.
    """
    scan = scan_folder(folder)
    if not scan.inputs:
        raise _no_modality(scan)
    found: Dict[str, Path] = dict(scan.inputs)
    if scan.ground_truth is not None:
        found[SEGMENTATION] = scan.ground_truth
    return found


def _no_modality(scan: FolderScan) -> NoModalityError:
    images = [name for name in scan.ignored if strip_image_suffix(name)]
    hint = f" (image files there: {', '.join(images[:6])})" if images else ""
    return NoModalityError(
        f"{scan.folder}: no MRI modality file found; expected names like *_t1ce.nii.gz, *-t2f.nii.gz, "
        f"*_fla_bet.nii.gz or FLAIR.nrrd, a 4D file with --channels, or pass the files explicitly{hint}")


def ignored_warning(ignored: Mapping[str, str]) -> Optional[str]:
    """One warning line naming the ignored files and why, or None."""
    if not ignored:
        return None
    listed = "; ".join(f"{name} ({reason})" for name, reason in ignored.items())
    return f"ignored {len(ignored)} file(s) that are not modality inputs: {listed}"


def parse_channels(text: "str | Sequence[str] | None") -> "tuple[str, ...]":
    """Modality keys of a 4D file's channels from ``"flair,t1,t1ce,t2"`` (default: the MSD order)."""
    if text is None:
        return MSD_CHANNELS
    keys = tuple(k.strip().lower() for k in (text.split(",") if isinstance(text, str) else text) if k.strip())
    _check_modality_keys(keys, "--channels")
    if len(set(keys)) != len(keys):
        raise NoModalityError(f"--channels: a modality is named twice ({','.join(keys)})")
    if not keys:
        raise NoModalityError("--channels: no modality given; e.g. flair,t1,t1ce,t2")
    return keys


def _check_modality_keys(keys: Sequence[str], where: str) -> None:
    unknown = [k for k in keys if k not in MODALITIES]
    if unknown:
        raise NoModalityError(f"{where}: unknown modality {unknown[0]!r}; use one of {', '.join(MODALITIES)}")


def load_case(source: Union[str, "os.PathLike[str]", Mapping[str, Optional[ImageSource]]],
              reference: Optional[str] = None, segmentation: Optional[ImageSource] = None,
              case_id: Optional[str] = None, ground_truth: bool = True,
              channels: "str | Sequence[str] | None" = None) -> Case:
    """Load a case from a folder, a 4D multi-channel file, or a mapping of modality key -> file path or image.

    Empty entries (None) of a mapping count as missing. ``reference`` picks the modality whose grid all
    others are resampled onto (default: first present of t1ce, t1, flair, t2). In a folder, only files named as
    modalities are inputs; label maps, masks and probability maps are listed in ``Case.ignored`` (and one warning),
    never read. ``ground_truth``: read the folder's ground-truth file (``<case>_seg``) into ``Case.segmentation``;
    analysis front ends pass False. ``channels``: modality of each channel of a 4D file (default MSD order
    flair, t1, t1ce, t2).
    """
    ignored: Dict[str, str] = {}
    notes: List[str] = []
    if isinstance(source, Mapping):
        inputs = {k: v for k, v in source.items() if v is not None}
        where = case_id or "inputs"
        _check_modality_keys(list(inputs), where)
        if not inputs:
            raise NoModalityError(f"{where}: no modality given; give at least one of {', '.join(MODALITIES)}")
        default_id = case_id or _case_id_from_paths(inputs)
    elif Path(source).is_file():
        path = Path(source)
        inputs = _multichannel_inputs(path, channels)
        default_id = case_id or (strip_image_suffix(path.name) or path.name)
    else:
        folder = Path(source)
        scan = scan_folder(folder)
        ignored, notes = dict(scan.ignored), list(scan.warnings)
        if scan.inputs:
            inputs = dict(scan.inputs)
        elif scan.multichannel is not None:
            inputs = _multichannel_inputs(scan.multichannel, channels)
        else:
            inputs = _dicom_modalities(folder, _no_modality(scan))
            ignored = {}
        if segmentation is None and ground_truth:
            segmentation = scan.ground_truth
        elif scan.ground_truth is not None:
            ignored[scan.ground_truth.name] = "ground truth, not used by the analysis"
        default_id = case_id or folder.resolve().name
    _refuse_shared_files(inputs)
    case = _assemble(inputs, reference, segmentation, default_id)
    case.ignored = ignored
    line = ignored_warning(ignored)
    case.warnings[:0] = notes + ([line] if line else [])
    return case


def _multichannel_inputs(path: Path, channels: "str | Sequence[str] | None") -> Dict[str, sitk.Image]:
    """Modality -> 3D image of each channel of a 4D file (float32 conversion and checks follow in _assemble)."""
    keys = parse_channels(channels)
    images = split_channels(read_image(path), str(path), keys)
    return {modality: _Channel(image, f"{path} (channel {index} {modality})")
            for index, (modality, image) in enumerate(images.items())}


@dataclass
class _Channel:
    """One channel of a multi-channel file: the image and the name used in messages and ``Case.sources``."""

    image: sitk.Image
    name: str


def _case_id_from_paths(inputs: Mapping[str, ImageSource]) -> str:
    for value in inputs.values():
        if isinstance(value, (str, os.PathLike)):
            return Path(value).resolve().parent.name or "case"
    return "case"


def _refuse_shared_files(inputs: Mapping[str, ImageSource]) -> None:
    seen: Dict[str, str] = {}
    for modality, value in inputs.items():
        if not isinstance(value, (str, os.PathLike, sitk.Image)):
            continue  # DICOM series found by description, channels of one file: distinct by construction
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
    if isinstance(value, _Channel):
        return value.image, value.name, []
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
    match = describe_name(path.name, path.parent.name)
    if match.kind == SEGMENTATION:
        raise SegmentationAsImageError(f"{path}: is named as {match.reason}, not an MR image ({modality})")
    return read_image(path), str(path), []


_TINY_COSINE = 1e-12


def _without_tiny_cosines(direction: "tuple[float, ...]") -> "tuple[float, ...]":
    """Direction cosines below 1e-12 set to 0: ITK cannot invert a direction matrix holding subnormal numbers
    (e.g. sin(1e-308)) and then resamples to zeros; a change far below any geometry tolerance."""
    return tuple(0.0 if abs(d) < _TINY_COSINE else float(d) for d in direction)


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
        as_float = validate_image(image, name)
        as_float.SetDirection(_without_tiny_cosines(image.GetDirection()))
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


MIN_EXTENT_MM = 20.0
"""The smallest field of view (along its longest axis) that the segmentation network can work on."""


def require_analysable_extent(case: Case) -> None:
    """Refuse a case whose reference grid covers less than :data:`MIN_EXTENT_MM` along every axis (a few voxels,
    or sub-millimetre spacing by mistake): the network's coarsest level would hold one voxel."""
    extent = [n * s for n, s in zip(case.geometry.size, case.geometry.spacing)]
    if max(extent) < MIN_EXTENT_MM:
        source = case.sources.get(case.reference, case.case_id)
        raise InvalidImageError(f"{source}: covers only {' x '.join(f'{e:.3g}' for e in extent)} mm; too small "
                                f"to be a brain MRI (check the voxel spacing in the header)")
