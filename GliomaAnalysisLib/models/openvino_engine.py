"""The segmentation network on OpenVINO's CPU plugin, from the ONNX graph that :mod:`.onnx_engine` caches.

On the 2-core CPU the project is measured on, a fresh process loaded the network and ran the default analysis's two
passes over a BraTS case in 1.55-1.64 s on OpenVINO against 2.08-2.15 s on ONNX Runtime's two 1-thread sessions side
by side (README, Performance). Its compiled network is cached beside the ONNX graphs (``<user cache>/onnx/openvino``),
so a fresh process loads it in about 0.15 s, import included.

Which engine runs the segmentation network: ``$GLIOMA_ANALYSIS_ENGINE`` = ``auto`` (default: OpenVINO where the
``openvino`` package is installed, else ONNX Runtime) | ``openvino`` | ``onnxruntime``. The two engines' probabilities
differ by about 1e-3 (different convolution kernels); each is bit-identical from run to run. report.json names the
engine that ran (``settings.engine``).

    part(keep_memory=False, **inputs: np.ndarray) -> List[np.ndarray]   as an ONNX Runtime part (onnx_engine.Part)
"""
from __future__ import annotations

import importlib.util
import os
import threading
from functools import lru_cache
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from ..errors import GliomaAnalysisError

ENGINES = ("auto", "openvino", "onnxruntime")
ENGINE_VARIABLE = "GLIOMA_ANALYSIS_ENGINE"


class EngineChoiceError(GliomaAnalysisError):
    """``$GLIOMA_ANALYSIS_ENGINE`` names no engine."""


def requested_engine() -> str:
    """The engine asked for by ``$GLIOMA_ANALYSIS_ENGINE`` (``auto`` when unset); EngineChoiceError for another
    value."""
    engine = os.environ.get(ENGINE_VARIABLE, "auto").strip().lower() or "auto"
    if engine not in ENGINES:
        raise EngineChoiceError(f"${ENGINE_VARIABLE} must be one of {', '.join(ENGINES)}, not {engine!r}")
    return engine


def openvino_available() -> bool:
    return importlib.util.find_spec("openvino") is not None


def use_openvino() -> bool:
    """Whether the segmentation network runs on OpenVINO: asked for (or ``auto``) and installed."""
    return requested_engine() != "onnxruntime" and openvino_available()


def engine_version() -> str:
    """``openvino <version>``, for the report."""
    import openvino

    return f"openvino {openvino.__version__.split('-')[0]}"


@lru_cache(maxsize=2)
def _core(cache_dir: str):
    """An OpenVINO core that caches compiled networks in ``cache_dir`` ("": none, e.g. a read-only cache).
    OpenVINO names a cached network by its file's path and the compile options: safe here, since a graph's file name
    holds its weights' sha256 and the export's engine version."""
    import openvino

    core = openvino.Core()
    if cache_dir:
        core.set_property({"CACHE_DIR": cache_dir})
    return core


class OpenVinoPart:
    """A network compiled by OpenVINO for the CPU from the ONNX graph at ``graph``, with ``threads`` threads and one
    stream; ``part(**inputs)`` -> outputs in the graph's order (float32 arrays of their own). Calls from several
    threads take turns: the part has one infer request, whose output buffers the next call overwrites."""

    def __init__(self, graph: Path, threads: int) -> None:
        cache = graph.parent / "openvino"
        try:
            cache.mkdir(parents=True, exist_ok=True)
            writable = os.access(cache, os.W_OK)
        except OSError:
            writable = False
        self.compiled = _core(str(cache) if writable else "").compile_model(str(graph), "CPU", {
            "INFERENCE_NUM_THREADS": int(threads), "NUM_STREAMS": 1,
            # float32 everywhere: never bf16 / f16 on the CPUs that have them
            "INFERENCE_PRECISION_HINT": "f32",
            # unpinned: pinned, the two 1-thread workers of batch --jobs 2 shared one core (10 cases 24.8 -> 18.1 s)
            "ENABLE_CPU_PINNING": False})
        self.request = self.compiled.create_infer_request()
        self.input_names = [port.get_any_name() for port in self.compiled.inputs]
        self._turn = threading.Lock()

    def __call__(self, keep_memory: bool = False, **inputs: np.ndarray) -> List[np.ndarray]:
        feed = {name: np.ascontiguousarray(inputs[name], dtype=np.float32) for name in self.input_names}
        with self._turn:
            results = self.request.infer(feed, share_inputs=True)  # the outputs come back as copies
            outputs = [np.asarray(results[port], dtype=np.float32) for port in self.compiled.outputs]
            if not keep_memory:
                self.compiled.release_memory()  # the intermediate memory of the last pass over a volume
        return outputs


def openvino_part(graph: Path, threads: int) -> Tuple[Optional[OpenVinoPart], str]:
    """(the network at ``graph`` on OpenVINO, "") or (None, why) where OpenVINO cannot compile it."""
    try:
        return OpenVinoPart(graph, threads), ""
    except Exception as exc:  # noqa: BLE001 - an operator or version OpenVINO lacks: the caller keeps ONNX Runtime
        text = str(exc).strip().splitlines()
        return None, f"{type(exc).__name__}: {text[0][:120] if text else ''}"
