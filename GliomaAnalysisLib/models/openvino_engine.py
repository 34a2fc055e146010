"""The segmentation network on OpenVINO's CPU plugin, from the ONNX graph that :mod:`.onnx_engine` caches.

On the 2-core CPU the project is measured on, a fresh process loaded the network and ran the default analysis's two
passes over a BraTS case in 1.55-1.64 s on OpenVINO against 2.08-2.15 s on ONNX Runtime's two 1-thread sessions side
by side (README, Performance). Its compiled network is cached beside the ONNX graphs, a folder per precision
(``<user cache>/onnx/openvino/bf16``, ``.../f32``), so a fresh process loads it in about 0.15 s, import included.

Precision (``$GLIOMA_ANALYSIS_PRECISION``): ``auto`` (default) runs the network in bfloat16 where the CPU computes it
natively (AVX512-BF16, which AMX CPUs have: :func:`cpu_has_bf16`), else in float32; ``f32`` always in float32. On the
project's Xeon (AMX) a pass took 0.21 s in bfloat16 against 0.50 s in float32 (benchmarks/bench_network_pass.py);
over the 31 real cases the Dice of the default analysis moved by -0.0018 to +0.0048 a case (README, Performance).
OpenVINO's compiled-network cache does not tell the two precisions apart (a bfloat16 network loaded from a float32
blob gave NaN or crashed the process), so each precision caches in a folder of its own. report.json says which ran
(``settings.precision``).

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
PRECISIONS = ("auto", "f32")
PRECISION_VARIABLE = "GLIOMA_ANALYSIS_PRECISION"


class EngineChoiceError(GliomaAnalysisError):
    """``$GLIOMA_ANALYSIS_ENGINE`` names no engine or ``$GLIOMA_ANALYSIS_PRECISION`` no precision."""


def _setting(variable: str, choices: Tuple[str, ...]) -> str:
    value = os.environ.get(variable, choices[0]).strip().lower() or choices[0]
    if value not in choices:
        raise EngineChoiceError(f"${variable} must be one of {', '.join(choices)}, not {value!r}")
    return value


def requested_engine() -> str:
    """The engine asked for by ``$GLIOMA_ANALYSIS_ENGINE`` (``auto`` when unset); EngineChoiceError for another
    value."""
    return _setting(ENGINE_VARIABLE, ENGINES)


def requested_precision() -> str:
    """The precision asked for by ``$GLIOMA_ANALYSIS_PRECISION`` (``auto`` when unset); EngineChoiceError for another
    value."""
    return _setting(PRECISION_VARIABLE, PRECISIONS)


def check_engine_settings() -> None:
    """EngineChoiceError where ``$GLIOMA_ANALYSIS_ENGINE`` or ``$GLIOMA_ANALYSIS_PRECISION`` is misspelt: called
    before any work, so that a run stops with one line."""
    requested_engine()
    requested_precision()


def openvino_available() -> bool:
    return importlib.util.find_spec("openvino") is not None


def use_openvino() -> bool:
    """Whether the segmentation network runs on OpenVINO: asked for (or ``auto``) and installed."""
    return requested_engine() != "onnxruntime" and openvino_available()


def engine_version() -> str:
    """``openvino <version>``, for the report."""
    import openvino

    return f"openvino {openvino.__version__.split('-')[0]}"


@lru_cache(maxsize=4)
def _core(cache_dir: str):
    """An OpenVINO core that caches compiled networks in ``cache_dir`` ("": none, e.g. a read-only cache).
    OpenVINO names a cached network by its file's path and the compile options: safe here, since a graph's file name
    holds its weights' sha256 and the export's engine version."""
    import openvino

    core = openvino.Core()
    if cache_dir:
        core.set_property({"CACHE_DIR": cache_dir})
    return core


def _bf16():
    import openvino

    return openvino.Type.bf16


def cpu_has_bf16() -> bool:
    """Whether the CPU computes bfloat16 natively (AVX512-BF16, which AMX CPUs have too): OpenVINO's CPU plugin then
    defaults to bfloat16 (elsewhere to float32, or float16 on ARM). Its capability list and a bf16 hint are no test:
    both say yes on any AVX-512 or AVX2-VNNI-2 CPU, where bfloat16 is emulated."""
    return _core("").get_property("CPU", "INFERENCE_PRECISION_HINT") == _bf16()


def inference_precision(requested: str) -> str:
    """``bf16`` or ``f32``: what ``requested`` (``auto`` | ``f32``) runs in on this CPU."""
    return "bf16" if requested == "auto" and cpu_has_bf16() else "f32"


class OpenVinoPart:
    """A network compiled by OpenVINO for the CPU from the ONNX graph at ``graph``, with ``threads`` threads, one
    stream and ``precision`` (``auto`` | ``f32``, see the module's docstring); ``part(**inputs)`` -> outputs in the
    graph's order (float32 arrays of their own). Calls from several threads take turns: the part has one infer
    request, whose output buffers the next call overwrites. ``precision`` afterwards: ``bf16`` or ``f32``, what
    runs."""

    def __init__(self, graph: Path, threads: int, precision: str = "auto") -> None:
        wanted = inference_precision(precision)
        cache = graph.parent / "openvino" / wanted  # OpenVINO's cache key leaves the precision out
        try:
            cache.mkdir(parents=True, exist_ok=True)
            writable = os.access(cache, os.W_OK)
        except OSError:
            writable = False
        _remove_unfoldered_blobs(cache.parent)
        self.compiled = _core(str(cache) if writable else "").compile_model(str(graph), "CPU", {
            "INFERENCE_NUM_THREADS": int(threads), "NUM_STREAMS": 1,
            "INFERENCE_PRECISION_HINT": wanted,  # never f16: not measured
            # unpinned: pinned, the two 1-thread workers of batch --jobs 2 shared one core (10 cases 24.8 -> 18.1 s)
            "ENABLE_CPU_PINNING": False})
        # as the compiled network reports it (after a cache load it repeats the request: the folders keep the
        # precisions apart)
        self.precision = "bf16" if self.compiled.get_property("INFERENCE_PRECISION_HINT") == _bf16() else "f32"
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


def _remove_unfoldered_blobs(folder: Path) -> None:
    """Deletes the compiled networks cached straight in ``folder`` (before each precision had a folder of its own:
    never read again, and a bfloat16 network loaded from a float32 one gave NaN). One that cannot be deleted (held
    open elsewhere, another user's) stays; an older version sharing the cache writes its own again."""
    try:
        blobs = list(folder.glob("*.blob"))
    except OSError:
        return
    for blob in blobs:
        try:
            blob.unlink(missing_ok=True)
        except OSError:
            continue


def openvino_part(graph: Path, threads: int, precision: str) -> Tuple[Optional[OpenVinoPart], str]:
    """(the network at ``graph`` on OpenVINO in ``precision``, "") or (None, why) where OpenVINO cannot compile it."""
    try:
        return OpenVinoPart(graph, threads, precision), ""
    except Exception as exc:  # noqa: BLE001 - an operator or version OpenVINO lacks: the caller keeps ONNX Runtime
        text = str(exc).strip().splitlines()
        return None, f"{type(exc).__name__}: {text[0][:120] if text else ''}"
