"""DICOM in and out: reading MR series (modality from the user or guessed from SeriesDescription) and writing the
segmentation as DICOM SEG (highdicom), referencing the source series when the inputs were DICOM, otherwise a DICOM
MR series written from the reference image alongside it."""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import SimpleITK as sitk

from .._version import __version__
from ..errors import ImageReadError, ModalityConflictError
from .modalities import MODALITIES, classify_text

SEGMENTS = (  # contiguous label, name, SNOMED CT property type (code, meaning), CIELab-ish display RGB
    (1, "Necrotic / non-enhancing tumor core", ("6574001", "Necrosis"), (217, 51, 51)),
    (2, "Peritumoral edema", ("79654002", "Edema"), (51, 191, 77)),
    (3, "Enhancing tumor", ("108369006", "Neoplasm"), (255, 217, 26)),
)


@dataclass
class DicomSeries:
    """One DICOM series found on disk."""

    uid: str
    description: str
    files: List[str]

    @property
    def modality(self) -> Optional[str]:
        guess = classify_text(self.description)
        return guess if guess in MODALITIES else None


def find_series(folder: "str | os.PathLike[str]") -> List[DicomSeries]:
    """Every DICOM image series under ``folder`` (recursively), with its SeriesDescription."""
    import pydicom

    found = []
    for directory, _, _ in os.walk(folder):
        for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(directory) or ():
            files = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(directory, uid))
            header = pydicom.dcmread(files[0], stop_before_pixels=True)
            if getattr(header, "Modality", "MR") == "SEG":
                continue
            found.append(DicomSeries(uid, str(getattr(header, "SeriesDescription", "")), files))
    return found


def modality_series(folder: "str | os.PathLike[str]") -> Dict[str, DicomSeries]:
    """Map modality keys to the series of ``folder`` whose SeriesDescription names them."""
    mapping: Dict[str, DicomSeries] = {}
    for series in find_series(folder):
        modality = series.modality
        if modality is None:
            continue
        if modality in mapping:
            raise ModalityConflictError(f"{folder}: two DICOM series claim modality '{modality}': "
                                        f"'{mapping[modality].description}' and '{series.description}'")
        mapping[modality] = series
    return mapping


def read_series(files: Sequence[str], name: str) -> sitk.Image:
    """Read one DICOM series as a 3D image."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(files))
    try:
        return reader.Execute()
    except RuntimeError as exc:
        raise ImageReadError(f"{name}: cannot read DICOM series ({str(exc).splitlines()[-1][:160]})") from None


def _code(value: str, meaning: str):
    from pydicom.sr.coding import Code

    return Code(value, "SCT", meaning)


def _ds(value: float) -> str:
    """A decimal string of at most 16 characters (the DS limit)."""
    from pydicom.valuerep import format_number_as_ds

    return format_number_as_ds(float(value))


def _twelve_bits(array: np.ndarray):
    """Scale intensities linearly into 12 bits, zero kept at zero: (pixels, PixelRepresentation 0 or 1)."""
    low, high = float(array.min()), float(array.max())
    if low >= 0:
        return np.round(array * (4095.0 / max(high, 1e-6))).astype(np.uint16), 0
    return np.round(array * (2047.0 / max(abs(low), abs(high), 1e-6))).astype(np.int16), 1


def synthetic_source(image: sitk.Image, folder: Path, description: str) -> List[str]:
    """Write ``image`` as a DICOM MR series (one file per axial slice after LPS orientation); returns the files.

    The series passes ``dciodvfy`` (MR Image IOD): acquisition attributes that a derived image cannot know are
    sent empty (Type 2) or as research-mode values (ScanningSequence RM, SequenceVariant NONE). Intensities are
    scaled linearly into 12 bits with zero kept at zero; the MR IOD has no rescale, so the absolute intensity
    scale of the input is not kept (the analysis z-scores each sequence, so it needs none).
    """
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    oriented = sitk.DICOMOrient(image, "LPS")
    pixels, representation = _twelve_bits(sitk.GetArrayFromImage(oriented).astype(np.float64))
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    direction = np.asarray(oriented.GetDirection()).reshape(3, 3)
    spacing = oriented.GetSpacing()
    now = datetime.datetime.now()
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for k in range(pixels.shape[0]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Anonymous^", "ANON", "", ""
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
        ds.AccessionNumber, ds.ReferringPhysicianName, ds.StudyID = "", "", "1"
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "MR", 1, k + 1
        ds.SeriesDescription = description
        ds.PatientPosition, ds.BodyPartExamined = "HFS", "BRAIN"  # unpaired: no Laterality
        ds.PositionReferenceIndicator = ""
        ds.Manufacturer = "GliomaAnalysis (derived from non-DICOM input)"
        ds.ImageType = ["DERIVED", "SECONDARY", "OTHER"]
        ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions = "RM", "NONE", ""
        ds.MRAcquisitionType, ds.RepetitionTime, ds.EchoTime, ds.EchoTrainLength = "", "", "", ""
        ds.ImagePositionPatient = [_ds(v) for v in oriented.TransformIndexToPhysicalPoint((0, 0, k))]
        ds.ImageOrientationPatient = [_ds(v) for v in (*direction[:, 0], *direction[:, 1])]
        ds.PixelSpacing = [_ds(spacing[1]), _ds(spacing[0])]
        ds.SliceThickness = _ds(spacing[2])
        ds.Rows, ds.Columns = int(pixels.shape[1]), int(pixels.shape[2])
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, representation
        ds.PixelData = pixels[k].tobytes()
        path = folder / f"slice_{k:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(str(path))
    return files


def write_dicom_seg(labels: sitk.Image, source_files: Sequence[str], path: "str | os.PathLike[str]") -> Path:
    """Write contiguous labels (on the source series' grid) as a binary DICOM SEG referencing ``source_files``."""
    import highdicom as hd
    import pydicom

    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in source_files]
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in sources])
    normal = np.cross(*np.asarray(sources[0].ImageOrientationPatient, dtype=float).reshape(2, 3))
    sources = [sources[i] for i in np.argsort(positions @ normal)]
    oriented = sitk.GetArrayFromImage(_on_source_grid(labels, sources))  # (frames, rows, cols)
    from pydicom.sr.codedict import codes

    algorithm = hd.AlgorithmIdentificationSequence(name="GliomaAnalysis", version=__version__,
                                                   family=codes.cid7162.ArtificialIntelligence)
    pixel = np.zeros(oriented.shape, dtype=np.uint8)
    present = []
    for label, name, code, rgb in SEGMENTS:  # segment numbers must run 1..n over the segments present
        if not np.any(oriented == label):
            continue
        number = len(present) + 1
        pixel[oriented == label] = number
        present.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=name,
            segmented_property_category=_code("49755003", "Morphologically Abnormal Structure"),
            segmented_property_type=_code(*code), algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm, display_color=hd.color.CIELabColor.from_rgb(*rgb)))
    if not present:
        raise ValueError("the segmentation is empty: DICOM SEG needs at least one segment")
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=pixel, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=present, series_instance_uid=hd.UID(), series_number=100,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="GliomaAnalysis",
        manufacturer_model_name="GliomaAnalysis segmentation", software_versions=__version__,
        device_serial_number="none", content_description="Research use only; not a medical device",
        content_label="GLIOMA", omit_empty_frames=False)
    path = Path(path)
    seg.save_as(path)
    return path


def _on_source_grid(labels: sitk.Image, sources) -> sitk.Image:
    """Resample labels (nearest) onto the grid of sorted source slices."""
    first = sources[0]
    row, col = np.asarray(first.ImageOrientationPatient, dtype=float).reshape(2, 3)
    normal = np.cross(row, col)
    spacing_rc = [float(v) for v in first.PixelSpacing]
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in sources])
    step = float(np.linalg.norm(positions[-1] - positions[0]) / max(1, len(sources) - 1)) or 1.0
    reference = sitk.Image([int(first.Columns), int(first.Rows), len(sources)], sitk.sitkUInt8)
    reference.SetOrigin(tuple(positions[0]))
    reference.SetSpacing((spacing_rc[1], spacing_rc[0], step))
    reference.SetDirection(tuple(np.stack([row, col, normal], axis=1).ravel()))
    return sitk.Resample(labels, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
