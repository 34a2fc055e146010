"""What an analysis on this machine would run: version, CPU, the segmentation network's engine and precision, threads,
the shipped models and the cache folder (``glioma-analysis info``). Results depend on the engine, the precision and
the thread count (README, Inference); this tells a user which ones apply before a run, as report.json does after it.
Nothing is compiled or loaded: a fraction of a second."""
from __future__ import annotations

import importlib.metadata
import json
import platform
from pathlib import Path
from typing import Any, Dict, Optional

from ._version import __version__
from .models.model_store import RESOURCES, user_cache
from .models.onnx_engine import onnx_cache, threads
from .models.openvino_engine import (ENGINE_VARIABLE, PRECISION_VARIABLE, engine_version, inference_precision,
                                     requested_engine, requested_precision, use_openvino)


def describe_environment() -> Dict[str, Any]:
    """{version, python, cpu, segmentation_network: {engine, precision, threads, requested}, models, caches}.
    EngineChoiceError where ``$GLIOMA_ANALYSIS_ENGINE`` or ``$GLIOMA_ANALYSIS_PRECISION`` is misspelt."""
    engine, precision = requested_engine(), requested_precision()
    on_openvino = use_openvino()
    return {
        "version": __version__,
        "python": platform.python_version(),
        "cpu": _cpu_name(),
        "segmentation_network": {
            "engine": engine_version() if on_openvino else _fallback_engine(),
            "precision": inference_precision(precision) if on_openvino else "f32",
            "threads": threads(),
            "requested": {ENGINE_VARIABLE: engine, PRECISION_VARIABLE: precision},
        },
        "models": {path.stem: _card_summary(path) for path in sorted(RESOURCES.glob("*.json"))},
        "caches": {"models": str(user_cache()), "graphs": str(onnx_cache())},
    }


def environment_text() -> str:
    return json.dumps(describe_environment(), indent=2)


def _card_summary(card_path: Path) -> Dict[str, Optional[str]]:
    card = json.loads(card_path.read_text())
    return {"version": card.get("version"), "sha256": card.get("sha256")}


def _fallback_engine() -> str:
    """ONNX Runtime where installed, else torch (segment.py's order without OpenVINO)."""
    for package in ("onnxruntime", "torch"):
        try:
            return f"{package} {importlib.metadata.version(package)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    return "none installed"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
