"""GliomaAnalysis library: glioma subregion segmentation and marker prediction from multimodal MRI.

Research use only; not a medical device. Imports no slicer, qt, ctk or vtkMRML.
"""
from __future__ import annotations

__version__ = "0.1.0"

from .case import Case, load_case
from .errors import (GeometryError, GliomaAnalysisError, ImageReadError, InvalidImageError,
                     ModalityConflictError, NoModalityError, SegmentationAsImageError)
from .geometry import Geometry
from .modalities import MODALITIES, classify_name
from .preprocess import PreprocessedCase, preprocess



def __getattr__(name: str):
    """``analyze`` and ``AnalysisResult`` import torch: loaded on first use, so importing the package stays light."""
    if name == "analyze":
        from .analysis import analyze
        return analyze
    if name == "AnalysisResult":
        from .result import AnalysisResult
        return AnalysisResult
    raise AttributeError(f"module 'GliomaAnalysisLib' has no attribute {name!r}")


__all__ = [
    "analyze", "AnalysisResult", "Case", "load_case", "Geometry", "MODALITIES", "classify_name", "PreprocessedCase", "preprocess",
    "GliomaAnalysisError", "ImageReadError", "InvalidImageError", "SegmentationAsImageError",
    "ModalityConflictError", "NoModalityError", "GeometryError", "__version__",
]
