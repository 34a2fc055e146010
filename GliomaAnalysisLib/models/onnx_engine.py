"""The segmentation network on ONNX Runtime (CPU).

The network is exported once per weights file (named by its sha256) into ``<user cache>/onnx/`` and run by ONNX
Runtime afterwards: the same function as the torch module (MC-dropout through explicit dropout masks, see
:meth:`GliomaSegNet.forward`; the softmax in NumPy, 10x cheaper than ONNX Runtime's over the class axis) at about
1.7x less CPU time per pass on a BraTS case (``benchmarks/bench_analyze.py`` prints the network's share). Without the ``onnxruntime`` package, or when the export
fails, :func:`segmentation_engine` returns None and the caller runs torch.

    inputs   x (B, 4, Z, Y, X) float32, presence (B, 4) float32, mask0..maskK float32 (one per dropout layer,
             GliomaSegNet.dropout_mask_shapes; every axis dynamic, so all-ones masks may be (1, ..., 1))
    output   logits (B, 4, Z, Y, X) float32 (background, NCR, ED, ET); the engine returns their softmax
"""
from __future__ import annotations

import io
import os
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np

ENGINE_VERSION = 3
"""Part of the cached file's name: bump it when the export changes, so stale graphs are never reused."""
OPSET = 17


def onnx_cache() -> Path:
    """Folder of the exported graphs: ``<user cache>/onnx`` (``$GLIOMA_ANALYSIS_CACHE/onnx`` when set)."""
    from .model_store import user_cache

    return user_cache() / "onnx"


def export_onnx(model) -> bytes:
    """The ONNX graph (bytes) of ``model`` (a GliomaSegNet, left unchanged) with the mask inputs."""
    import torch

    class Exported(torch.nn.Module):
        def __init__(self, net: torch.nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor, presence: torch.Tensor, *masks: torch.Tensor) -> torch.Tensor:
            return self.net(x, presence, list(masks))

    size = 2 * model.config.divisor
    shapes = model.dropout_mask_shapes((size, size, size))
    example = (torch.zeros(1, 4, size, size, size), torch.ones(1, 4), *[torch.ones(1, *shape) for shape in shapes])
    mask_names = [f"mask{k}" for k in range(len(shapes))]
    dynamic = {"x": {0: "batch", 2: "z", 3: "y", 4: "x"}, "presence": {0: "batch"},
               "logits": {0: "batch", 2: "z", 3: "y", 4: "x"},
               **{name: {axis: f"{name}_{axis}" for axis in range(len(shape) + 1)}
                  for name, shape in zip(mask_names, shapes)}}
    was_training = model.training
    model.eval()
    buffer = io.BytesIO()
    try:
        # gradients on while tracing: without them torch takes the transformer's fused inference kernel, which
        # has no ONNX export
        torch.onnx.export(Exported(model), example, buffer, input_names=["x", "presence", *mask_names],
                          output_names=["logits"], dynamic_axes=dynamic, opset_version=OPSET, dynamo=False)
    finally:
        model.train(was_training)
    return buffer.getvalue()


class OnnxSegmentation:
    """An ONNX Runtime session of the segmentation network; call it like the torch module's softmax."""

    def __init__(self, graph: bytes, threads: int) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = max(1, threads)
        options.inter_op_num_threads = 1
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.enable_mem_pattern = False  # the planned block held ~200 MB more at the peak, at no speed gain
        self.session = onnxruntime.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
        self.run_options = onnxruntime.RunOptions()
        # give the arena's activations back after every pass: it otherwise keeps the largest pass's ~400 MB
        self.run_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        self.mask_names = [i.name for i in self.session.get_inputs() if i.name.startswith("mask")]

    def __call__(self, x: np.ndarray, presence: np.ndarray, masks: Sequence[np.ndarray]) -> np.ndarray:
        """x (B, 4, Z, Y, X), presence (B, 4), dropout masks -> probabilities (B, 4, Z, Y, X), all float32."""
        feed = {"x": np.ascontiguousarray(x, dtype=np.float32),
                "presence": np.ascontiguousarray(presence, dtype=np.float32),
                **{name: np.ascontiguousarray(m, dtype=np.float32) for name, m in zip(self.mask_names, masks)}}
        logits = self.session.run(None, feed, self.run_options)[0]
        logits -= logits.max(axis=1, keepdims=True)
        np.exp(logits, out=logits)
        logits /= logits.sum(axis=1, keepdims=True)
        return logits


def _cached_graph(model, weights_sha256: str) -> bytes:
    """The exported graph from the cache, exporting (and caching, when the folder is writable) on first use."""
    path = onnx_cache() / f"glioma_seg-{weights_sha256[:32]}-v{ENGINE_VERSION}-opset{OPSET}.onnx"
    if path.is_file():
        return path.read_bytes()
    graph = export_onnx(model)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".onnx", dir=path.parent)
        with os.fdopen(fd, "wb") as handle:
            handle.write(graph)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache only costs the export on every run
    return graph


@lru_cache(maxsize=4)
def segmentation_engine(model, weights_sha256: str, threads: int) -> Tuple[Optional[OnnxSegmentation], str]:
    """(engine, "") for ``model`` whose weights file has ``weights_sha256`` (the model card's), with ``threads``
    intra-op threads; (None, why) when ONNX Runtime is not installed or the export failed, and torch must run the
    network. Cached per process; only for a model whose weights no longer change (a loaded, shipped model), since
    the sha256 names the cached graph."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return None, "the onnxruntime package is not installed"
    try:
        return OnnxSegmentation(_cached_graph(model, weights_sha256), threads), ""
    except Exception as exc:  # an export or runtime limitation: torch runs the network instead
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
