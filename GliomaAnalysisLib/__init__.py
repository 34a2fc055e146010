"""GliomaAnalysis library: glioma subregion segmentation and marker prediction from multimodal MRI.

Research use only; not a medical device. Imports no slicer, qt, ctk or vtkMRML.
"""
from __future__ import annotations

from ._version import __version__

from .io.case import Case, load_case
from .errors import (GeometryError, GliomaAnalysisError, ImageReadError, InvalidImageError,
                     ModalityConflictError, NoModalityError, SegmentationAsImageError)
from .io.geometry import Geometry
from .io.modalities import MODALITIES, classify_name
from .preprocessing.preprocess import PreprocessedCase, preprocess



def __getattr__(name: str):
    """``analyze`` and ``AnalysisResult`` import torch: loaded on first use, so importing the package stays light."""
    if name == "analyze":
        from .pipeline.analysis import analyze
        return analyze
    if name == "AnalysisResult":
        from .pipeline.result import AnalysisResult
        return AnalysisResult
    raise AttributeError(f"module 'GliomaAnalysisLib' has no attribute {name!r}")


__all__ = [
    "analyze", "AnalysisResult", "Case", "load_case", "Geometry", "MODALITIES", "classify_name", "PreprocessedCase", "preprocess",
    "GliomaAnalysisError", "ImageReadError", "InvalidImageError", "SegmentationAsImageError",
    "ModalityConflictError", "NoModalityError", "GeometryError", "__version__",
]
