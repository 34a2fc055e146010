"""The classifiers of one case, run on the working-grid arrays the segmentation network saw.

    image (4, Z, Y, X) z-scored, presence (4,), labels (Z, Y, X) = argmax of the network's mean probabilities
      -> multi-task heads       grade, IDH, 1p/19q, MGMT with MC-dropout uncertainty   (report "predictions")
      -> MGMT late fusion       per-modality CNN + LSTM, fused                           ("mgmt_late_fusion")
      -> slice-grade classifier majority / soft / attention over tumor slices           ("slice_grade")

Every prediction carries the evidence level of its task from the model card (``evidence``, ``evidence_detail``;
models/evidence.py). A classifier whose model is not installed is skipped with a warning; the segmentation result
stands either way.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from ..errors import GliomaAnalysisError
from ..models.evidence import task_evidence
from ..models.mgmt_fusion import DEFAULT_MODEL_NAME as MGMT_FUSION_MODEL
from ..models.mgmt_fusion import build_from_card as build_mgmt_fusion
from ..models.mgmt_fusion import predict_mgmt_fusion
from ..models.model_store import ModelError, load_model_cached
from ..models.multitask import MC_SAMPLES, MULTITASK_PARTS, build_multitask, multitask_parts_of, predict_markers
from .result import PREDICTION_TASKS
from ..models.slice_grade import SLICE_GRADE_MODEL, build_slice_grade, predict_slice_grade

MULTITASK_MODEL = "glioma_multitask"


@dataclass
class Classification:
    """Outputs of :func:`classify_case` in the report's layout."""

    predictions: Dict[str, Optional[Dict[str, Any]]] = field(
        default_factory=lambda: {task: None for task in PREDICTION_TASKS})
    mgmt_late_fusion: Optional[Dict[str, Any]] = None
    slice_grade: Optional[Dict[str, Any]] = None
    models: List[Dict[str, str]] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)


def _model_entry(card: Dict, task: str) -> Dict[str, str]:
    return {"name": card["name"], "version": card["version"], "sha256": card["sha256"], "task": task}


Say = Callable[[str], None]


def _multitask(model, card: Dict, out: Classification, image: np.ndarray, presence: np.ndarray,
               labels: np.ndarray, uncertainty: bool, say: Say) -> None:
    say("classifying grade, IDH, 1p/19q and MGMT (multi-task heads)")
    predictions = predict_markers(model, card, image, presence, labels, mc_samples=MC_SAMPLES if uncertainty else 1)
    out.predictions.update({task: {**p, **task_evidence(card, task)} for task, p in predictions.items()})


def _mgmt_fusion(model, card: Dict, out: Classification, image: np.ndarray, presence: np.ndarray,
                 labels: np.ndarray, uncertainty: bool, say: Say) -> None:
    say("classifying MGMT (per-modality late fusion)")
    out.mgmt_late_fusion = predict_mgmt_fusion(model, card, image, presence, labels,
                                               mc_samples=16 if uncertainty else 0)
    out.mgmt_late_fusion.update(task_evidence(card, "mgmt"))


def _slice_grade(model, card: Dict, out: Classification, image: np.ndarray, presence: np.ndarray,
                 labels: np.ndarray, uncertainty: bool, say: Say) -> None:
    say("classifying grade from tumor slices")
    out.slice_grade = predict_slice_grade(model, card, image, presence, labels, mc_samples=20 if uncertainty else 0)
    out.slice_grade.update(task_evidence(card, "grade"))
    out.warnings += out.slice_grade.pop("warnings", [])
    if out.slice_grade.get("reason"):
        out.warnings.append(f"slice grade: {out.slice_grade['reason']}")


CLASSIFIERS = (
    (MULTITASK_MODEL, build_multitask, "multi-task classifier", "grade, IDH, 1p/19q, MGMT", _multitask),
    (MGMT_FUSION_MODEL, build_mgmt_fusion, "MGMT late-fusion ensemble", "MGMT (late fusion)", _mgmt_fusion),
    (SLICE_GRADE_MODEL, build_slice_grade, "slice-grade classifier", "grade (2D slices)", _slice_grade),
)
"""(model name, builder, title in warnings, task in report.models, runner) of each classifier, in run order."""


def classify_case(image: np.ndarray, presence: np.ndarray, labels: np.ndarray, model_dir: Optional[str] = None,
                  uncertainty: bool = True, progress: Optional[Say] = None) -> Classification:
    """Run every installed classifier on one case (see the module docstring for the arrays)."""
    out = Classification()
    say = progress or (lambda message: None)
    if not (labels > 0).any():
        out.warnings.append("no tumor was segmented; classifiers read a crop at the brain's centre")
    for name, build, title, task, run in CLASSIFIERS:
        try:
            model, card = load_model_cached(name, model_dir, build)
        except ModelError as exc:
            out.warnings.append(f"{title} skipped: {exc}")
            continue
        try:
            run(model, card, out, image, presence, labels, uncertainty, say)
        except GliomaAnalysisError as exc:  # e.g. no modality the MGMT ensemble knows is present
            out.warnings.append(str(exc))
            continue
        out.models.append(_model_entry(card, task))
    return out
