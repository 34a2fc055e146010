"""The segmentation network on OpenVINO's CPU plugin, from the ONNX graph that :mod:`.onnx_engine` caches.

On the 2-core CPU the project is measured on, OpenVINO ran the default analysis's two passes over a BraTS case in
1.55-1.64 s (loading included) against 2.08-2.15 s for ONNX Runtime's two 1-thread sessions side by side
(README, Performance). Its compiled network is cached beside the ONNX graphs (``<user cache>/onnx/openvino``), so a
fresh process loads it in about 0.15 s, import included.

Which engine runs the segmentation network: ``$GLIOMA_ANALYSIS_ENGINE`` = ``auto`` (default: OpenVINO where the
``openvino`` package is installed, else ONNX Runtime) | ``openvino`` | ``onnxruntime``. The two engines' probabilities
differ by about 1e-3 (different convolution kernels); each is bit-identical from run to run. report.json names the
engine that ran (``settings.engine``).

    part(keep_memory=False, **inputs: np.ndarray) -> List[np.ndarray]   as an ONNX Runtime part (onnx_engine.Part)
"""
from __future__ import annotations

import importlib.util
import os
from functools import lru_cache
from pathlib import Path
from typing import List, Optional

import numpy as np

ENGINES = ("auto", "openvino", "onnxruntime")
ENGINE_VARIABLE = "GLIOMA_ANALYSIS_ENGINE"


def requested_engine() -> str:
    """The engine asked for by ``$GLIOMA_ANALYSIS_ENGINE`` (``auto`` when unset); ValueError for another value."""
    engine = os.environ.get(ENGINE_VARIABLE, "auto").strip().lower() or "auto"
    if engine not in ENGINES:
        raise ValueError(f"${ENGINE_VARIABLE} must be one of {', '.join(ENGINES)}, not {engine!r}")
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
    """An OpenVINO core that caches compiled networks in ``cache_dir`` ("": none, e.g. a read-only cache)."""
    import openvino

    core = openvino.Core()
    if cache_dir:
        core.set_property({"CACHE_DIR": cache_dir})
    return core


class OpenVinoPart:
    """A network compiled by OpenVINO for the CPU from the ONNX graph at ``graph``, with ``threads`` threads and one
    stream; ``part(**inputs)`` -> outputs in the graph's order (float32 copies: OpenVINO reuses its buffers)."""

    def __init__(self, graph: Path, threads: int) -> None:
        cache = graph.parent / "openvino"
        try:
            cache.mkdir(parents=True, exist_ok=True)
            writable = os.access(cache, os.W_OK)
        except OSError:
            writable = False
        self.compiled = _core(str(cache) if writable else "").compile_model(str(graph), "CPU", {
            "INFERENCE_NUM_THREADS": int(threads), "NUM_STREAMS": 1,
            # never bf16 / f16 on CPUs that have them: the same numbers on every CPU
            "INFERENCE_PRECISION_HINT": "f32",
            # unpinned: pinned, the two 1-thread workers of batch --jobs 2 shared one core (10 cases 24.8 -> 18.1 s)
            "ENABLE_CPU_PINNING": False})
        self.request = self.compiled.create_infer_request()
        self.input_names = [port.get_any_name() for port in self.compiled.inputs]

    def __call__(self, keep_memory: bool = False, **inputs: np.ndarray) -> List[np.ndarray]:
        feed = {name: np.ascontiguousarray(inputs[name], dtype=np.float32) for name in self.input_names}
        self.request.infer(feed)
        outputs = [np.array(self.request.get_output_tensor(k).data, dtype=np.float32, copy=True)
                   for k in range(len(self.compiled.outputs))]
        if not keep_memory:
            self.compiled.release_memory()  # the working memory of the last pass over a volume
        return outputs


def openvino_part(graph: Path, threads: int) -> Optional[OpenVinoPart]:
    """The network at ``graph`` on OpenVINO, or None where it cannot be compiled there (ONNX Runtime runs it)."""
    try:
        return OpenVinoPart(graph, threads)
    except Exception:  # noqa: BLE001 - an operator or version OpenVINO lacks: the caller keeps ONNX Runtime
        return None
