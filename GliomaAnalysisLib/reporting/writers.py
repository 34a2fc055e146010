"""Writing an AnalysisResult as the files of the output contract, atomically.

Files are written under a hidden staging folder inside ``out`` and renamed into place only when all of them
exist, so a failed run leaves no half-written result.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import List, Union

import SimpleITK as sitk

from .report_html import render_report
from ..pipeline.result import AnalysisResult

CONTRACT_FILES = ("segmentation.nii.gz", "prob_ncr.nii.gz", "prob_ed.nii.gz", "prob_et.nii.gz",
                  "uncertainty.nii.gz", "report.json", "report.html")


LOG_FILE = "analysis.log"
DICOM_SEG_FILE = "segmentation.seg.dcm"
DICOM_SOURCE_FOLDER = "dicom_source"


def write_outputs(result: AnalysisResult, out: Union[str, "os.PathLike[str]"],
                  convention: str = "brats2021", figures: bool = True, dicom_seg: bool = False) -> List[Path]:
    """Write the contract files into ``out``; returns their paths.

    figures: embed figures in report.html. dicom_seg: also write ``segmentation.seg.dcm`` (DICOM SEG) referencing
    the source series when the inputs were DICOM, else a DICOM MR series of the reference image written into
    ``dicom_source/``.
    """
    out = Path(out)
    if dicom_seg and not sitk.GetArrayViewFromImage(result.labels).any():
        result.warnings.append("DICOM SEG not written: the segmentation is empty")
        dicom_seg = False
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".partial-", dir=out))
    try:
        sitk.WriteImage(result.label_image(convention), str(staging / "segmentation.nii.gz"), True)
        for name, image in result.probabilities.items():
            sitk.WriteImage(image, str(staging / f"prob_{name}.nii.gz"), True)
        sitk.WriteImage(result.uncertainty, str(staging / "uncertainty.nii.gz"), True)
        report = result.report(convention)
        (staging / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        (staging / "report.html").write_text(render_report(result, report, figures=figures))
        (staging / LOG_FILE).write_text("\n".join(result.log) + "\n")
        names = list(CONTRACT_FILES) + [LOG_FILE]
        if dicom_seg:
            names += _write_dicom(result, staging)
        written = []
        for name in names:
            if (out / name).is_dir():
                shutil.rmtree(out / name)
            os.replace(staging / name, out / name)
            written.append(out / name)
        return written
    finally:
        shutil.rmtree(staging, ignore_errors=True)



def _write_dicom(result: AnalysisResult, staging: Path) -> List[str]:
    from ..io.dicom_io import synthetic_source, write_dicom_seg

    names = [DICOM_SEG_FILE]
    sources = result.dicom_sources
    if not sources:
        sources = synthetic_source(result.images[result.reference], staging / DICOM_SOURCE_FOLDER,
                                   f"{result.reference.upper()} (GliomaAnalysis reference)")
        names.append(DICOM_SOURCE_FOLDER)
    write_dicom_seg(result.labels, sources, staging / DICOM_SEG_FILE)
    return names
