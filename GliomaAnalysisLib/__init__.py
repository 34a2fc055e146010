"""GliomaAnalysis library: glioma subregion segmentation and marker prediction from multimodal MRI.

Research use only; not a medical device. Imports no slicer, qt, ctk or vtkMRML.

The public API (everything else is internal; see ARCHITECTURE.md)::

    from GliomaAnalysisLib import analyze, analyze_folder, load_case, write_outputs
    result = analyze("path/to/case")          # -> AnalysisResult (label map, probabilities, volumes, predictions)
    write_outputs(result, "out/")             # the output contract: NIfTI maps, report.json, report.html
    analyze_folder("cohort/", "results/")     # many cases, summary.csv, resumable
"""
from __future__ import annotations

from ._version import __version__
from .errors import (GeometryError, GliomaAnalysisError, ImageReadError, InvalidImageError,
                     ModalityConflictError, NoModalityError, SegmentationAsImageError)
from .io.case import Case, load_case
from .io.geometry import Geometry
from .io.modalities import MODALITIES, classify_name
from .preprocessing.preprocess import PreprocessedCase, preprocess

_LAZY = {
    "analyze": ("pipeline.analysis", "analyze"),
    "AnalysisResult": ("pipeline.result", "AnalysisResult"),
    "write_outputs": ("reporting.writers", "write_outputs"),
    "analyze_folder": ("batch", "analyze_folder"),
}
"""Names whose modules import torch, ONNX Runtime or VTK: loaded on first use, so importing the package stays light."""


def __getattr__(name: str):
    if name in _LAZY:
        import importlib
        module, attribute = _LAZY[name]
        return getattr(importlib.import_module(f".{module}", __name__), attribute)
    raise AttributeError(f"module 'GliomaAnalysisLib' has no attribute {name!r}")


__all__ = [
    "analyze", "analyze_folder", "write_outputs", "AnalysisResult", "Case", "load_case", "Geometry", "MODALITIES",
    "classify_name", "PreprocessedCase", "preprocess",
    "GliomaAnalysisError", "ImageReadError", "InvalidImageError", "SegmentationAsImageError",
    "ModalityConflictError", "NoModalityError", "GeometryError", "__version__",
]
