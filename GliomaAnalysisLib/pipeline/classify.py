"""The classifiers of one case, run on the working-grid arrays the segmentation network saw.

    image (4, Z, Y, X) z-scored, presence (4,), labels (Z, Y, X) = argmax of the network's mean probabilities,
    the segmentation pass's encoder maps
      -> multi-task heads       grade, IDH, 1p/19q, MGMT with MC-dropout uncertainty   (report "predictions"),
                                on the encoder maps when the segmenting network is their backbone; heads that
                                also read the segmentation's composition run once the final volumes are known
                                (``Classification.apply_final_volumes``)
         grade from volumes     when the multi-task card holds ``grade_from_volumes``, the grade is replaced once
                                the final volumes are known (``Classification.apply_final_volumes``)
      -> MGMT late fusion       per-modality CNN + LSTM, fused                           ("mgmt_late_fusion")
      -> slice-grade classifier majority / soft / attention over tumor slices           ("slice_grade")

Every prediction carries the evidence level of its task from the model card (``evidence``, ``evidence_detail``;
models/evidence.py). A classifier whose model is not installed is skipped with a warning; the segmentation result
stands either way.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from ..errors import GliomaAnalysisError
from ..models.evidence import NOT_ASSESSABLE, task_evidence
from ..models.mgmt_fusion import DEFAULT_MODEL_NAME as MGMT_FUSION_MODEL
from ..models.mgmt_fusion import build_from_card as build_mgmt_fusion
from ..models.mgmt_fusion import mgmt_parts, mgmt_parts_of, predict_mgmt_fusion
from ..models.model_store import ModelError
from ..models.multitask import (ENCODER_PART, MC_SAMPLES, MULTITASK_PARTS, build_multitask, composition_from_volumes,
                                marker_features, markers_from_features, multitask_parts_of)
from ..models.onnx_engine import load_parts
from ..models.slice_grade import (SLICE_GRADE_MODEL, SLICE_GRADE_PARTS, build_slice_grade, predict_slice_grade,
                                  slice_grade_parts_of)
from ..models.volume_grade import predict_grade
from .result import PREDICTION_TASKS

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
    volume_grade: Optional[Dict[str, Any]] = None
    """The multi-task card's ``grade_from_volumes`` block (and the grade evidence), applied by
    :meth:`apply_final_volumes` once the final volumes are known."""
    pending_markers: Optional[Callable[[np.ndarray], None]] = None
    """The multi-task heads of a layout that reads the segmentation's composition: called by
    :meth:`apply_final_volumes` with the composition (1, 3) of the final volumes, it fills ``predictions``."""

    def apply_final_volumes(self, volumes_ml: Dict[str, Any], et_assessable: bool = True) -> List[str]:
        """Run the multi-task heads that read the composition of the final volumes (mL), then replace the heads'
        grade by the card's grade-from-volumes model read on the same volumes. Without T1CE (``et_assessable``
        False) the enhancing volume is unknown: the heads read it as 0 (as they were trained to when T1CE was
        dropped) and their grade stays, marked not assessable. Returns the warnings to add to the report."""
        if self.pending_markers is not None:
            self.pending_markers(composition_from_volumes(volumes_ml, et_assessable))
            self.pending_markers = None
        grade = self.predictions.get("grade")
        if self.volume_grade is None or grade is None:
            return []
        if et_assessable:
            block, evidence = self.volume_grade["block"], self.volume_grade["evidence"]
            self.predictions["grade"] = {**predict_grade(block, volumes_ml), **evidence}
            return []
        reason = ("T1CE is missing: the grade model reads the enhancing volume; this is the multi-task head's "
                  "answer, which is not validated on real cases")
        grade["evidence"] = NOT_ASSESSABLE
        grade["evidence_detail"] = {**grade["evidence_detail"], "reason": reason}
        return [f"grade: {reason}"]


@dataclass(frozen=True)
class EncoderMaps:
    """The segmentation pass's encoder maps (fine, level, deep) (``models/segment.Segmentation``) and the sha256 of
    the weights that computed them: the multi-task classifier reads them when its backbone has those weights."""

    weights_sha256: str
    maps: Tuple[np.ndarray, ...]


@dataclass(frozen=True)
class CaseArrays:
    """What the classifiers read of one case (see the module docstring)."""

    image: np.ndarray
    presence: np.ndarray
    labels: np.ndarray
    encoder_maps: Optional[EncoderMaps] = None
    model_dir: Optional[str] = None


def _model_entry(card: Dict, task: str) -> Dict[str, str]:
    return {"name": card["name"], "version": card["version"], "sha256": card["sha256"], "task": task}


Say = Callable[[str], None]


def _multitask(parts, card: Dict, out: Classification, case: CaseArrays, uncertainty: bool, say: Say) -> None:
    say("classifying grade, IDH, 1p/19q and MGMT (multi-task heads)")
    given = case.encoder_maps
    maps = given.maps if given and given.weights_sha256 == card.get("backbone", {}).get("sha256") else None

    def encoder():
        parts, _, warnings = load_parts(MULTITASK_MODEL, case.model_dir, (ENCODER_PART,), multitask_parts_of,
                                        build_multitask, CLASSIFIER_THREADS)
        out.warnings.extend(w for w in warnings if w not in out.warnings)
        return parts[ENCODER_PART]

    parts, config, pooled = marker_features(parts, card, case.image, case.presence, case.labels, maps=maps,
                                            encoder=encoder)

    def heads(composition: Optional[np.ndarray]) -> None:
        predictions = markers_from_features(parts, config, card, pooled, composition,
                                            mc_samples=MC_SAMPLES if uncertainty else 1)
        out.predictions.update({task: {**p, **task_evidence(card, task)} for task, p in predictions.items()})

    if config.composition:
        out.pending_markers = heads
    else:
        heads(None)
    if card.get("grade_from_volumes"):
        out.volume_grade = {"block": card["grade_from_volumes"], "evidence": task_evidence(card, "grade")}


def _mgmt_fusion(parts, card: Dict, out: Classification, case: CaseArrays, uncertainty: bool, say: Say) -> None:
    say("classifying MGMT (per-modality late fusion)")
    out.mgmt_late_fusion = predict_mgmt_fusion(parts, card, case.image, case.presence, case.labels,
                                               mc_samples=16 if uncertainty else 0)
    out.mgmt_late_fusion.update(task_evidence(card, "mgmt"))


def _slice_grade(parts, card: Dict, out: Classification, case: CaseArrays, uncertainty: bool, say: Say) -> None:
    say("classifying grade from tumor slices")
    out.slice_grade = predict_slice_grade(parts, card, case.image, case.presence, case.labels,
                                          mc_samples=20 if uncertainty else 0)
    out.slice_grade.update(task_evidence(card, "grade"))
    out.warnings += out.slice_grade.pop("warnings", [])
    if out.slice_grade.get("reason"):
        out.warnings.append(f"slice grade: {out.slice_grade['reason']}")


@dataclass(frozen=True)
class Classifier:
    """One classifier: its stored model, its parts (names from the card; ``parts_of(model)`` and ``build(card)``
    import torch and run only to export a graph, models/onnx_engine.py), its title in warnings, its task in
    report.models, and the function that fills its report fields."""

    model: str
    part_names: Callable[[Dict], Tuple[str, ...]]
    parts_of: Callable
    build: Callable
    title: str
    task: str
    run: Callable


CLASSIFIERS = (
    Classifier(MULTITASK_MODEL, lambda card: MULTITASK_PARTS, multitask_parts_of, build_multitask,
               "multi-task classifier", "grade, IDH, 1p/19q, MGMT", _multitask),
    Classifier(MGMT_FUSION_MODEL, mgmt_parts, mgmt_parts_of, build_mgmt_fusion, "MGMT late-fusion ensemble",
               "MGMT (late fusion)", _mgmt_fusion),
    Classifier(SLICE_GRADE_MODEL, lambda card: SLICE_GRADE_PARTS, slice_grade_parts_of, build_slice_grade,
               "slice-grade classifier", "grade (2D slices)", _slice_grade),
)
"""The classifiers, in run order."""

CLASSIFIER_THREADS = 1
"""Intra-op threads of the classifiers' sessions. ``analyze`` runs them in a worker thread beside the main path
(mapping back, post-processing, writing the maps), which keeps one core busy: with two threads of their own on a
2-core CPU the three compete, and the whole process took 0.34 s longer with --fast and 0.54 s longer by default
(Brats18_CBICA_AME_1, medians of the paired differences of 8 and 6 interleaved runs, 2026-12-05)."""


def load_classifier(classifier: Classifier, model_dir: Optional[str]):
    """(parts, card, warnings) of one classifier's stored model (cached per process)."""
    return load_parts(classifier.model, model_dir, classifier.part_names, classifier.parts_of, classifier.build,
                      CLASSIFIER_THREADS)


def classify_case(image: np.ndarray, presence: np.ndarray, labels: np.ndarray, model_dir: Optional[str] = None,
                  uncertainty: bool = True, progress: Optional[Say] = None,
                  encoder_maps: Optional[EncoderMaps] = None) -> Classification:
    """Run every installed classifier on one case (see the module docstring for the arrays)."""
    out = Classification()
    say = progress or (lambda message: None)
    if not (labels > 0).any():
        out.warnings.append("no tumor was segmented; classifiers read a crop at the brain's centre")
    case = CaseArrays(image, presence, labels, encoder_maps, model_dir)
    for classifier in CLASSIFIERS:
        try:
            parts, card, warnings = load_classifier(classifier, model_dir)
        except ModelError as exc:
            out.warnings.append(f"{classifier.title} skipped: {exc}")
            continue
        out.warnings += warnings
        try:
            classifier.run(parts, card, out, case, uncertainty, say)
        except ModelError as exc:
            out.warnings.append(f"{classifier.title} skipped: {exc}")
            continue
        except GliomaAnalysisError as exc:  # e.g. no modality the MGMT ensemble knows is present
            out.warnings.append(str(exc))
            continue
        out.models.append(_model_entry(card, classifier.task))
    return out
