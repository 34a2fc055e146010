"""Networks on ONNX Runtime (CPU), exported once per weights file, so that a run whose graphs are cached never
imports torch (1.3 s of a run on a laptop CPU).

A stored model runs as named *parts*: the segmentation network; a classifier's feature extractor and its
MC-dropout head (dropout masks are inputs, drawn by NumPy, so a sampled pass is a plain function of its inputs).
Each part is a torch module whose ``forward`` takes float32 tensors in ``PartSpec.input_names`` order, described
by the model's ``parts_of(model)``. :func:`load_parts` returns callables for the parts of a stored model:

* ONNX Runtime sessions of graphs cached as ``<user cache>/onnx/<model>-<sha256[:32]>-<part>-v<ENGINE_VERSION>-
  opset<OPSET>.onnx`` (the weights' sha256 from the checked model card names the graph), exported from the torch
  model on first use; the segmentation network runs in 1.7x less CPU time than in eager torch;
* :class:`TorchPart` (torch itself) when ONNX Runtime is not installed or an export fails, with a warning; also
  for in-memory models (training, tests): :func:`torch_parts`.

    part(**inputs: np.ndarray) -> List[np.ndarray]   the outputs, in PartSpec.output_names order
    part(keep_memory=True, **inputs)                 the same; ONNX Runtime keeps its working memory for a next run
                                                     (another pass over the same volume) instead of giving it back
"""
from __future__ import annotations

import io
import os
import tempfile
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

ENGINE_VERSION = 5
"""Part of the cached file's name: bump it when an export changes, so stale graphs are never reused."""
OPSET = 17
_threads: Optional[int] = None


def set_threads(threads: Optional[int]) -> None:
    """Threads of the networks loaded from now on: ONNX Runtime sessions' intra-op threads and the OpenVINO
    segmentation network's (None: one per CPU core)."""
    global _threads
    _threads = threads


def threads() -> int:
    return max(1, _threads or os.cpu_count() or 1)


Part = Callable[..., List[np.ndarray]]


@dataclass
class PartSpec:
    """A part of a torch model: ``method(module, *inputs)`` (default: ``module(*inputs)``), inputs in
    ``input_names`` order, returning a tensor or a tuple of tensors; and what its export needs: example inputs
    (NumPy, float32), input and output names, and the dynamic axes."""

    module: Any
    example: Tuple[np.ndarray, ...]
    input_names: Tuple[str, ...]
    output_names: Tuple[str, ...]
    dynamic_axes: Mapping[str, Mapping[int, str]]
    method: Optional[Callable[..., Any]] = None

    def traceable(self) -> Any:
        """A torch module whose ``forward(*inputs)`` is the part (``module`` itself without ``method``)."""
        if self.method is None:
            return self.module
        from torch import nn

        module, method = self.module, self.method

        class Part(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = module

            def forward(self, *inputs: Any) -> Any:
                return method(self.model, *inputs)

        return Part()


def onnx_cache() -> Path:
    """Folder of the exported graphs: ``<user cache>/onnx`` (``$GLIOMA_ANALYSIS_CACHE/onnx`` when set)."""
    from .model_store import user_cache

    return user_cache() / "onnx"


def graph_path(model_name: str, weights_sha256: str, part: str) -> Path:
    return onnx_cache() / f"{model_name}-{weights_sha256[:32]}-{part}-v{ENGINE_VERSION}-opset{OPSET}.onnx"


def export_part(spec: PartSpec) -> bytes:
    """The ONNX graph (bytes) of the part ``spec`` (its module left unchanged)."""
    import torch

    module = spec.traceable()
    modes = [(m, m.training) for m in module.modules()]  # each: a part's fresh wrapper is in training mode
    module.eval()
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            # the tracer's notes on Python branches are for developers (every part is tested equal to torch);
            # gradients stay on while tracing: without them torch takes the transformer's fused inference kernel,
            # which has no ONNX export
            warnings.simplefilter("ignore")
            torch.onnx.export(module, tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in spec.example), buffer,
                              input_names=list(spec.input_names), output_names=list(spec.output_names),
                              dynamic_axes={k: dict(v) for k, v in spec.dynamic_axes.items()}, opset_version=OPSET,
                              dynamo=False)
    finally:
        for m, training in modes:
            m.training = training
    return buffer.getvalue()


class OnnxPart:
    """An ONNX Runtime session; ``part(**inputs)`` -> outputs (float32 NumPy arrays)."""

    def __init__(self, graph: bytes, intra_threads: Optional[int] = None) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = intra_threads or threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.enable_mem_pattern = False  # the planned block held ~200 MB more at the peak, at no speed gain
        self.session = onnxruntime.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
        self.run_options = onnxruntime.RunOptions()
        # give the arena's activations back after every run: it otherwise keeps the largest pass's ~400 MB
        self.run_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        # ... except between passes over one volume: fresh pages for the next pass cost 0.09 CPU-s of page faults
        self.keep_memory_options = onnxruntime.RunOptions()
        self.input_names = [i.name for i in self.session.get_inputs()]

    def __call__(self, keep_memory: bool = False, **inputs: np.ndarray) -> List[np.ndarray]:
        feed = {name: np.ascontiguousarray(inputs[name], dtype=np.float32) for name in self.input_names}
        return self.session.run(None, feed, self.keep_memory_options if keep_memory else self.run_options)


class TorchPart:
    """The same call as :class:`OnnxPart`, run by the torch module of ``spec`` (in eval mode, on its device)."""

    def __init__(self, spec: PartSpec) -> None:
        self.spec = spec

    def __call__(self, keep_memory: bool = False, **inputs: np.ndarray) -> List[np.ndarray]:
        import torch

        module = self.spec.traceable()
        device = next(module.parameters()).device
        module.eval()
        with torch.inference_mode():
            out = module(*[torch.from_numpy(np.ascontiguousarray(inputs[name], dtype=np.float32)).to(device)
                           for name in self.spec.input_names])
        return [t.float().cpu().numpy() for t in (out if isinstance(out, (tuple, list)) else (out,))]


def torch_parts(specs: Mapping[str, PartSpec]) -> Dict[str, Part]:
    """Parts run by torch, for a model in memory (training, tests)."""
    return {name: TorchPart(spec) for name, spec in specs.items()}


def onnxruntime_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None


def _store(path: Path, graph: bytes) -> None:
    """Write ``graph`` to the cache atomically, and delete the same part's graphs of other engine versions or
    opsets (never used again); a read-only cache only costs the export on every run."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".onnx", dir=path.parent)
        with os.fdopen(fd, "wb") as handle:
            handle.write(graph)
        os.replace(tmp, path)
        stem = path.name[:path.name.rindex(f"-v{ENGINE_VERSION}-")]  # <model>-<sha256[:32]>-<part>
        model_and_weights = stem[:stem.rindex("-")]  # engine version 3 named whole networks without a part
        for pattern in (f"{stem}-v*-opset*.onnx", f"{model_and_weights}-v*-opset*.onnx"):
            for stale in path.parent.glob(pattern):
                if stale != path:
                    stale.unlink()
    except OSError:
        pass


def _why(exc: Exception) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"


def compile_part(spec: PartSpec, path: Path, intra_threads: Optional[int] = None) -> Tuple[Part, str]:
    """(an ONNX Runtime session of ``spec`` exported to ``path``, with ``intra_threads`` (None: :func:`threads`),
    "") or (a TorchPart, why) when ONNX Runtime is missing or the export fails."""
    if not onnxruntime_available():
        return TorchPart(spec), "the onnxruntime package is not installed"
    try:
        graph = export_part(spec)
        part = OnnxPart(graph, intra_threads)
    except Exception as exc:  # an export or runtime limitation: torch runs the part instead
        return TorchPart(spec), _why(exc)
    _store(path, graph)
    return part, ""


@lru_cache(maxsize=16)
def load_parts(model_name: str, folder: Optional[str],
               parts: Union[Tuple[str, ...], Callable[[Dict], Tuple[str, ...]]],
               parts_of: Callable[[Any], Mapping[str, PartSpec]],
               build: Optional[Callable[[Dict], Any]] = None,
               intra_threads: Optional[int] = None,
               replica: int = 0) -> Tuple[Dict[str, Part], Dict, Tuple[str, ...]]:
    """(parts, model card, warnings) of stored model ``model_name`` (``model_store.model_paths``; the weights'
    sha256 is checked against the card); ``parts`` names the parts, or gives their names from the card. Cached
    graphs are loaded without torch; a missing one is exported from the torch model (``build(card)`` with the
    stored weights; ``parts_of(model)`` names its parts). ``intra_threads``: the sessions' intra-op threads (None:
    :func:`threads`); ``replica`` k > 0: other sessions of the same graphs, to run beside replica 0's (a session
    runs one call at a time well; two calls on one session share its threads). Cached per process; call
    ``load_parts.cache_clear()`` after replacing a model's files."""
    from .model_store import load_verified_card

    card = load_verified_card(model_name, folder)
    if callable(parts):
        parts = parts(card)
    paths = {part: graph_path(model_name, card["sha256"], part) for part in parts}
    loaded: Dict[str, Part] = {}
    if onnxruntime_available():
        for part, path in paths.items():
            if path.is_file():
                try:
                    loaded[part] = OnnxPart(path.read_bytes(), intra_threads)
                except Exception:  # a damaged cached graph: exported again below
                    pass
    warnings: List[str] = []
    missing = [part for part in parts if part not in loaded]
    if missing:
        from .model_store import load_model_cached

        model, _ = load_model_cached(model_name, folder, *(() if build is None else (build,)))
        specs = parts_of(model)
        for part in missing:
            loaded[part], why = compile_part(specs[part], paths[part], intra_threads)
            if why:
                warnings.append(f"ONNX Runtime not used for {model_name} ({why}); torch ran it")
    return loaded, card, tuple(dict.fromkeys(warnings))


def softmax(logits: np.ndarray, axis: int = 1) -> np.ndarray:
    """Softmax over ``axis``, in place (10x cheaper in NumPy than ONNX Runtime's over the class axis)."""
    logits -= logits.max(axis=axis, keepdims=True)
    np.exp(logits, out=logits)
    logits /= logits.sum(axis=axis, keepdims=True)
    return logits


def dropout_mask(rng: Optional[np.random.Generator], shape: Sequence[int], p: float) -> np.ndarray:
    """A float32 dropout mask of ``shape`` for a part's mask input: with ``rng`` each unit is 0 with probability
    ``p``, else 1 / (1 - p) (torch's dropout in training mode); without (or p <= 0), all ones (dropout off)."""
    if rng is None or p <= 0:
        return np.ones(shape, np.float32)
    mask = (rng.random(tuple(shape), dtype=np.float32) >= p).astype(np.float32)
    mask *= np.float32(1.0) / np.float32(1.0 - p)  # in place: attention masks hold millions of units
    return mask
