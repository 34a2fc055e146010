"""AnalysisResult: everything one analysis produced, on the reference geometry of the input."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

import SimpleITK as sitk

from .._version import __version__
from ..io.labels import from_contiguous
from .location import tumor_location

SCHEMA_VERSION = "1.4"  # minor: fields added (readers of 1.0 keep working); major: fields removed or changed
RESEARCH_USE = "Research use only; not a medical device. Results must not be used for clinical decisions."
PREDICTION_TASKS = ("grade", "idh", "codeletion_1p19q", "mgmt")


@dataclass
class AnalysisResult:
    """Result of :func:`GliomaAnalysisLib.analyze`.

    labels: uint8 contiguous labels (0 bg, 1 NCR, 2 ED, 3 ET) on the reference grid.
    probabilities: float32 maps ``ncr``, ``ed``, ``et`` in [0, 1] on the reference grid.
    uncertainty: float32 voxel uncertainty in [0, 1] (normalised predictive entropy of the MC-dropout/TTA mean).
    predictions: per task ``{label, probability, uncertainty, evidence, evidence_detail}`` or None where no
    classifier ran (evidence: the task's level on real data from the model card, models/evidence.py).
    """

    case_id: str
    inputs: Dict[str, str]
    missing: List[str]
    reference: str
    labels: sitk.Image
    probabilities: Dict[str, sitk.Image]
    uncertainty: sitk.Image
    volumes_ml: Dict[str, float]
    ratios: Dict[str, float]
    uncertainty_summary: Dict[str, float]
    models: List[Dict[str, str]]
    settings: Dict[str, Any]
    timings_s: Dict[str, float] = field(default_factory=dict)
    warnings: List[str] = field(default_factory=list)
    predictions: Dict[str, Optional[Dict[str, Any]]] = field(
        default_factory=lambda: {task: None for task in PREDICTION_TASKS})
    mgmt_late_fusion: Optional[Dict[str, Any]] = None
    slice_grade: Optional[Dict[str, Any]] = None
    images: Dict[str, sitk.Image] = field(default_factory=dict)
    """The input images on the reference grid (for figures); not written."""
    log: List[str] = field(default_factory=list)
    """Time-stamped progress messages and warnings of the run (written as analysis.log)."""
    dicom_sources: List[str] = field(default_factory=list)
    """DICOM files of the reference series when the inputs were DICOM (referenced by DICOM SEG)."""
    location: Optional[Dict[str, Any]] = None
    """Approximate hemisphere and lobe of the tumor (pipeline/location.py); computed from labels and images on the
    first call of :meth:`report` when not set."""
    brain_mask: Optional[Any] = field(default=None, repr=False, compare=False)
    """bool (Z, Y, X): the preprocessing's brain mask of exactly ``images`` (when the model saw them as they are),
    which the location reads instead of computing it again; None: computed from ``images``."""
    pending: Optional[Callable[["AnalysisResult"], None]] = field(default=None, repr=False, compare=False)
    """What completes the result: the classifiers' fields, still being computed (``analyze(wait=False)``)."""

    def finish(self) -> "AnalysisResult":
        """Wait for the classifiers and fill in their fields (``predictions``, ``mgmt_late_fusion``, ``slice_grade``,
        their ``models``, ``warnings`` and timings); nothing to do when they are in. Returns the result."""
        pending, self.pending = self.pending, None
        if pending is not None:
            pending(self)
        return self

    def label_image(self, convention: str = "brats2021") -> sitk.Image:
        """The label map in a file convention (``brats2021``: 0/1/2/4, ``brats2023``: 0/1/2/3)."""
        array = from_contiguous(sitk.GetArrayViewFromImage(self.labels), convention)
        image = sitk.GetImageFromArray(array)
        image.CopyInformation(self.labels)
        return image

    def report(self, convention: str = "brats2021") -> Dict[str, Any]:
        """The machine-readable report (``report.json``)."""
        self.finish()
        geometry = self.labels
        if self.location is None and self.images:
            self.location = tumor_location(self.labels, self.images, self.brain_mask)
        return {
            "schema_version": SCHEMA_VERSION,
            "software": {"name": "GliomaAnalysis", "version": __version__},
            "disclaimer": RESEARCH_USE,
            "case_id": self.case_id,
            "inputs": {
                "files": [{"modality": m, "path": p} for m, p in self.inputs.items()],
                "missing": list(self.missing),
                "reference": self.reference,
                "geometry": {"size": list(geometry.GetSize()), "spacing_mm": list(geometry.GetSpacing()),
                             "origin_mm": list(geometry.GetOrigin()), "direction": list(geometry.GetDirection())},
            },
            "label_convention": convention,
            "labels": {"ncr": 1, "ed": 2, "et": 4 if convention == "brats2021" else 3},
            "volumes_ml": dict(self.volumes_ml),
            "ratios": dict(self.ratios),
            "uncertainty": dict(self.uncertainty_summary),
            "location": self.location,
            "predictions": dict(self.predictions),
            "mgmt_late_fusion": self.mgmt_late_fusion,
            "slice_grade": self.slice_grade,
            "models": list(self.models),
            "settings": dict(self.settings),
            "timings_s": {k: round(v, 3) for k, v in self.timings_s.items()},
            "warnings": list(self.warnings),
        }

