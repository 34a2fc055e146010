"""Writing an AnalysisResult as the files of the output contract, atomically.

Files are written into a hidden staging folder beside ``out`` (:mod:`GliomaAnalysisLib.io.atomic`) that becomes
``out`` in one rename only when all of them exist, so a failed or interrupted run leaves no half-written result.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path
from typing import Callable, List, Optional, Union

import SimpleITK as sitk
from isal import igzip

from ..io.atomic import staged_folder
from ..io.image_io import short_itk_reason
from ..pipeline.result import AnalysisResult
from .report_html import render_report, start_tumor_view

CONTRACT_FILES = ("segmentation.nii.gz", "prob_ncr.nii.gz", "prob_ed.nii.gz", "prob_et.nii.gz",
                  "uncertainty.nii.gz", "report.json", "report.html")


LOG_FILE = "analysis.log"
DICOM_SEG_FILE = "segmentation.seg.dcm"
DICOM_SOURCE_FOLDER = "dicom_source"


def write_outputs(result: AnalysisResult, out: Union[str, "os.PathLike[str]"],
                  convention: str = "brats2021", figures: bool = True, dicom_seg: bool = False) -> List[Path]:
    """Write the contract files into ``out`` as a whole (staged beside it, then renamed); returns their paths.

    figures: embed figures in report.html. dicom_seg: also write ``segmentation.seg.dcm`` (DICOM SEG) referencing
    the source series when the inputs were DICOM, else a DICOM MR series of the reference image written into
    ``dicom_source/``. A write failure (e.g. a full disk) raises :class:`OutputError` and leaves nothing new.
    """
    out = Path(out)
    with staged_folder(out) as staging:
        names = write_contract_files(result, staging, convention, figures, dicom_seg)
    return [out / name for name in names]


def write_contract_files(result: AnalysisResult, folder: Path, convention: str = "brats2021", figures: bool = True,
                         dicom_seg: bool = False) -> List[str]:
    """Write the contract files into the (staging) ``folder``, not atomically; returns the names written.

    Each writer is one step of this list: add a new output (e.g. a DICOM Structured Report) as one more call.
    """
    if dicom_seg and not sitk.GetArrayViewFromImage(result.labels).any():
        result.warnings.append("DICOM SEG not written: the segmentation is empty")
        dicom_seg = False
    # the report's 3D view renders in a child process (Linux) while the maps are written
    tumor_view = start_tumor_view(result) if figures and result.images else None
    try:
        _write_image(result.label_image(convention), folder / "segmentation.nii.gz")
        for name, image in result.probabilities.items():
            _write_image(image, folder / f"prob_{name}.nii.gz")
        _write_image(result.uncertainty, folder / "uncertainty.nii.gz")
        result.finish()  # the classifiers, when analyze() did not wait for them, ran beside the maps' writing
        report = result.report(convention)
        (folder / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        (folder / "report.html").write_text(render_report(result, report, figures=figures, tumor_view=tumor_view))
    finally:
        _collect(tumor_view)
    (folder / LOG_FILE).write_text("\n".join(result.log) + "\n")
    names = list(CONTRACT_FILES) + [LOG_FILE]
    if dicom_seg:
        names += _write_dicom(result, folder)
    return names


def _collect(tumor_view: Optional[Callable[[], bytes]]) -> None:
    """Wait for a started 3D view (no child process is left behind, also when the report was not written)."""
    try:
        if tumor_view is not None:
            tumor_view()
    except Exception:
        pass


def _write_image(image: sitk.Image, path: Path) -> None:
    """``image`` as a gzip-compressed NIfTI at ``path``, compressed at level 1 by ISA-L (``isal``): ITK writes the
    uncompressed file beside it, which is read back, checked complete and compressed. Same voxels and header as
    ``sitk.WriteImage(image, path, True)``, 3-4x faster on the five maps of a BraTS case (0.9 -> 0.3 s; the files
    about 40 % larger). ITK's NIfTI writer can leave a short file on a full disk without raising, hence the length
    check. Failures become OSError (ENOSPC when the disk is full)."""
    uncompressed = path.with_name(path.name[:-len(".gz")])
    expected = _NIFTI_HEADER + (image.GetNumberOfPixels() * image.GetNumberOfComponentsPerPixel()
                                * image.GetSizeOfPixelComponent())
    try:
        try:
            sitk.WriteImage(image, str(uncompressed), False)
            data = uncompressed.read_bytes()
            reason = "the file is incomplete after writing"
        except RuntimeError as exc:
            data = b""
            reason = short_itk_reason(exc, fallback="write failed")
        if len(data) == expected:
            path.write_bytes(igzip.compress(data, compresslevel=1, mtime=0))
            return
    finally:
        uncompressed.unlink(missing_ok=True)
    if shutil.disk_usage(path.parent).free < (1 << 20):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    raise OSError(errno.EIO, f"{path.name}: {reason[:160]}", str(path))


_NIFTI_HEADER = 352
"""Bytes before the voxels in the NIfTI-1 files ITK writes (348-byte header, 4 extension bytes)."""


def _write_dicom(result: AnalysisResult, staging: Path) -> List[str]:
    from ..io.dicom_io import synthetic_source, write_dicom_seg
    from .dicom_sr import DICOM_SR_FILE, write_measurement_sr

    names = [DICOM_SEG_FILE]
    sources = result.dicom_sources
    if not sources:
        sources = synthetic_source(result.images[result.reference], staging / DICOM_SOURCE_FOLDER,
                                   f"{result.reference.upper()} (GliomaAnalysis reference)")
        names.append(DICOM_SOURCE_FOLDER)
    write_dicom_seg(result.labels, sources, staging / DICOM_SEG_FILE)
    names.append(write_measurement_sr(staging / DICOM_SEG_FILE, sources, result.volumes_ml,
                                      staging / DICOM_SR_FILE).name)
    return names
