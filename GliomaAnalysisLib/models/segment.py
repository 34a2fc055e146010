"""Test-time passes of the segmentation network, in NumPy: flips, MC-dropout masks, the mean probabilities and
their voxel uncertainty. The network itself is a callable (the stored model's cached ONNX graph compiled by
OpenVINO, models/openvino_engine.py, or run by ONNX Runtime, models/onnx_engine.py; or torch in models/inference.py),
so a run from cached graphs never imports torch.

    run_pass(x (1, 4, Z, Y, X), presence (1, 4), rng, last) -> probabilities (1, 4, Z, Y, X), all float32; the pass
    draws its dropout masks from rng (None: a plain pass); last: no further pass over this volume follows
"""
from __future__ import annotations

import math
import os
import sys
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from .network_config import NetworkConfig, dropout_mask_shapes
from .onnx_engine import Part, PartSpec, dropout_mask, softmax

if TYPE_CHECKING:
    from .sliding_window import Window

SEGMENTATION_PARTS = ("network",)
"""The segmentation model's one part: the whole network with its dropout masks as inputs."""
MAX_WHOLE_VOLUME_VOXELS = 160 ** 3
"""Working grids larger than this run by a sliding window of ``LARGE_GRID_WINDOW`` instead of one whole-volume
pass."""
LARGE_GRID_WINDOW = (128, 128, 128)
"""Window (Z, Y, X voxels) of a working grid above ``MAX_WHOLE_VOLUME_VOXELS`` (:mod:`.sliding_window`)."""
FLIP_SETS: Tuple[Tuple[int, ...], ...] = ((), (4,), (3,), (2,), (3, 4), (2, 4), (2, 3), (2, 3, 4))
"""Array axes (of B, C, Z, Y, X) flipped in successive test-time passes; the first pass is unflipped."""

RunPass = Callable[[np.ndarray, np.ndarray, Optional[np.random.Generator], bool], np.ndarray]


def segmentation_parts_of(model) -> Dict[str, PartSpec]:
    """The parts of a GliomaSegNet (imports torch: only called to export a graph)."""
    from .network import segmentation_parts

    return segmentation_parts(model)


def dropout_masks(config: NetworkConfig, spatial_zyx: Sequence[int],
                  rng: Optional[np.random.Generator]) -> List[np.ndarray]:
    """One float32 mask per dropout layer of the network (:func:`network_config.dropout_mask_shapes`, batch axis
    first) for an input of ``spatial_zyx`` voxels: with ``rng`` each unit is dropped with the network's dropout
    probability and the others scaled by 1 / (1 - p), as torch's dropout samples in training mode; without, all
    ones (a plain pass; shape (1, ..., 1), which broadcasts)."""
    shapes = dropout_mask_shapes(config, spatial_zyx)
    if rng is None:
        return [np.ones((1,) * (len(shape) + 1), np.float32) for shape in shapes]
    return [dropout_mask(rng, (1, *shape), config.dropout) for shape in shapes]


def part_pass(network: Part, config: NetworkConfig,
              encoder_maps: Optional[List[Tuple[np.ndarray, ...]]] = None) -> RunPass:
    """``run_pass`` of the segmentation model's ``network`` part (logits -> softmax in NumPy); the part keeps its
    working memory until the last pass. ``encoder_maps``, when given, receives the first pass's (fine, level,
    deep) encoder maps (the part's other outputs; the first pass is unflipped, and no dropout acts on them)."""

    def run(x: np.ndarray, presence: np.ndarray, rng: Optional[np.random.Generator], last: bool = True) -> np.ndarray:
        logits, *maps = network(keep_memory=not last, **_network_feed(config, x, presence, rng))
        _keep_first_maps(encoder_maps, maps)
        return softmax(logits)

    return run


def _network_feed(config: NetworkConfig, x: np.ndarray, presence: np.ndarray,
                  rng: Optional[np.random.Generator]) -> Dict[str, np.ndarray]:
    """The ``network`` part's inputs for x (1, 4, Z, Y, X) and presence (1, 4): its dropout masks drawn from ``rng``
    (None: a plain pass)."""
    masks = dropout_masks(config, x.shape[2:], rng)
    return {"x": x, "presence": presence, **{f"mask{k}": m for k, m in enumerate(masks)}}


def _keep_first_maps(encoder_maps: Optional[List[Tuple[np.ndarray, ...]]], maps: Sequence[np.ndarray]) -> None:
    """Copies of a pass's encoder maps into ``encoder_maps`` while it is still empty (the first pass's; copies, so
    that nothing of ONNX Runtime's stays held)."""
    if encoder_maps is not None and not encoder_maps and maps:
        encoder_maps.append(tuple(np.array(m) for m in maps))


def mean_over_passes(run_pass: RunPass, image: np.ndarray, presence: np.ndarray,
                     passes: int = 1, mc_dropout: bool = False, seed: int = 0,
                     progress: Optional[Callable[[str], None]] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Mean softmax over ``passes`` flipped (and, with ``mc_dropout``, dropout-sampled) passes.

    image float32 (4, Z, Y, X) with Z, Y, X multiples of the network divisor (any size where ``run_pass`` runs by
    windows: :func:`.sliding_window.windowed`); presence (4,). Returns (probabilities
    float32 (4, Z, Y, X), uncertainty float32 (Z, Y, X) in [0, 1]): the predictive entropy of the mean divided by
    ln 4. MC-dropout masks come from NumPy's generator seeded with ``seed``, so every pass is reproducible.
    """
    passes = max(1, min(passes, len(FLIP_SETS)))
    rng = np.random.default_rng(seed) if mc_dropout else None
    p = np.asarray(presence, np.float32)[None]
    total = None
    for index in range(passes):
        if progress:
            progress(f"network pass {index + 1}/{passes}")
        out = _unflipped(run_pass(_flipped(image, index), p, rng, index == passes - 1), index)
        total = out.copy() if total is None else total + out
    return _mean_and_uncertainty(total, passes)


def part_passes(networks: Sequence[Part], config: NetworkConfig, image: np.ndarray, presence: np.ndarray,
                passes: int = 1, mc_dropout: bool = False, seed: int = 0,
                progress: Optional[Callable[[str], None]] = None,
                encoder_maps: Optional[List[Tuple[np.ndarray, ...]]] = None) -> Tuple[np.ndarray, np.ndarray]:
    """:func:`mean_over_passes` of the segmentation model's ``network`` part, given as one or more sessions.

    With one, the passes run one after another. With n > 1 (separate ONNX Runtime sessions of the same thread count,
    which release the GIL; :func:`load_segmentation_networks`) pass k runs on ``networks[k % n]``, n passes at a
    time: on 2 cores two 1-thread sessions ran two passes in 2.0 s against 2.2-2.3 s one after another with 2 threads
    (the second thread of a convolution gains 1.7x, not 2x). The masks are drawn from the one generator in pass order
    and the passes summed in order, so the result is the same bit for bit as in turn on one of those sessions
    (tested). ``encoder_maps`` receives the first (unflipped) pass's encoder maps, as in :func:`part_pass`."""
    passes = max(1, min(passes, len(FLIP_SETS)))
    lanes = min(len(networks), passes)
    if lanes == 1:
        return mean_over_passes(part_pass(networks[0], config, encoder_maps), image, presence, passes, mc_dropout,
                                seed, progress)
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(seed) if mc_dropout else None
    p = np.asarray(presence, np.float32)[None]
    total = None
    with ThreadPoolExecutor(max_workers=lanes) as pool:
        for first in range(0, passes, lanes):
            indices = range(first, min(first + lanes, passes))
            if progress:
                progress(f"network passes {first + 1}-{indices[-1] + 1}/{passes} side by side")
            futures = []
            for index in indices:  # inputs and masks drawn here, in pass order
                feed = _network_feed(config, _flipped(image, index), p, rng)
                keep = index + lanes < passes  # this session runs another pass over the volume
                futures.append(pool.submit(networks[index % lanes], keep, **feed))
            for index, future in zip(indices, futures):
                logits, *maps = future.result()
                _keep_first_maps(encoder_maps, maps)  # pass 0's: the results are read in pass order
                out = _unflipped(softmax(logits), index)
                total = out.copy() if total is None else total + out
    return _mean_and_uncertainty(total, passes)


def _flipped(image: np.ndarray, index: int) -> np.ndarray:
    """The network input of pass ``index``: float32 (1, 4, Z, Y, X), flipped along ``FLIP_SETS[index]``."""
    flips = FLIP_SETS[index]
    return np.ascontiguousarray(np.flip(image[None], flips) if flips else image[None], dtype=np.float32)


def _unflipped(out: np.ndarray, index: int) -> np.ndarray:
    """Pass ``index``'s output (1, C, Z, Y, X) back in the image's orientation (a view)."""
    flips = FLIP_SETS[index]
    return np.flip(out, flips) if flips else out


def _mean_and_uncertainty(total: np.ndarray, passes: int) -> Tuple[np.ndarray, np.ndarray]:
    """(mean probabilities (4, Z, Y, X), entropy of the mean / ln 4 (Z, Y, X)), float32, of the passes' sum."""
    mean = total[0] / passes
    entropy = -(mean * np.log(np.clip(mean, 1e-8, 1.0))).sum(axis=0) / math.log(mean.shape[0])
    return mean.astype(np.float32), np.clip(entropy, 0, 1).astype(np.float32)


def resolve_device(requested: str = "auto") -> Tuple[str, List[str]]:
    """("cpu" | "cuda", warnings) for ``auto`` | ``cpu`` | ``cuda``: CUDA when available. On Linux without an NVIDIA
    driver CUDA cannot be, and torch is not imported to ask."""
    if requested not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, not {requested!r}")
    no_driver = sys.platform.startswith("linux") and not os.path.exists("/proc/driver/nvidia/version")
    if requested == "cpu" or (requested == "auto" and no_driver):
        return "cpu", []
    from .inference import select_device

    device, warnings = select_device(requested)
    return device.type, warnings


def side_by_side_lanes(passes: int) -> int:
    """How many of ``passes`` passes run at once: on ONNX Runtime one per pass up to the threads
    (:func:`onnx_engine.threads`), where the threads share out evenly between them (so that every pass runs with the
    same thread count, in turn or side by side), else 1; on OpenVINO 1 (its passes in turn with every thread were
    faster than ONNX Runtime's side by side)."""
    from .onnx_engine import threads
    from .openvino_engine import use_openvino

    if use_openvino():
        return 1
    lanes = max(1, min(passes, len(FLIP_SETS), threads()))
    return lanes if threads() % lanes == 0 else 1


def load_segmentation_networks(model_name: str, model_dir: Optional[str], passes: int = 1):
    """(networks, card, warnings): the stored segmentation model's ``network`` part for ``passes`` passes (cached
    per process). On OpenVINO (:func:`openvino_engine.use_openvino`) one network compiled from the cached ONNX graph
    with every thread. Else ONNX Runtime sessions: :func:`side_by_side_lanes` of them with an equal share of the
    threads each (:func:`part_passes`); the other sessions read the graph the first one cached; where it could not be
    stored (a read-only cache) or torch runs the part, there is one session. Where OpenVINO was asked for or chosen
    but did not run, a warning says why and what ran instead."""
    from .onnx_engine import OnnxPart, graph_path, load_parts, threads
    from .openvino_engine import requested_engine, use_openvino

    why = ""
    if use_openvino():
        network, card, why = _openvino_network(model_name, model_dir, threads())
        if network is not None:
            return [network], card, ()
    elif requested_engine() == "openvino":
        why = "the openvino package is not installed"
    lanes = side_by_side_lanes(passes)
    each = threads() // lanes
    parts, card, warnings = load_parts(model_name, model_dir, SEGMENTATION_PARTS, segmentation_parts_of,
                                       intra_threads=each)
    networks = [parts["network"]]
    if why:
        ran = "ONNX Runtime" if isinstance(networks[0], OnnxPart) else "torch"
        warnings += (f"OpenVINO did not run {model_name} ({why}); {ran} ran it",)
    if (lanes > 1 and isinstance(networks[0], OnnxPart)
            and graph_path(model_name, card["sha256"], "network").is_file()):  # never a second export
        networks += [load_parts(model_name, model_dir, SEGMENTATION_PARTS, segmentation_parts_of,
                                intra_threads=each, replica=k)[0]["network"] for k in range(1, lanes)]
    return networks, card, warnings


def _openvino_network(model_name: str, model_dir: Optional[str], threads: int):
    """(the ``network`` part on OpenVINO or None, card, why not): compiled from the model's cached ONNX graph,
    exported first if missing (by :func:`onnx_engine.load_parts`, whose session then stays unused)."""
    from .model_store import load_verified_card
    from .onnx_engine import graph_path, load_parts

    card = load_verified_card(model_name, model_dir)
    path = graph_path(model_name, card["sha256"], "network")
    if not path.is_file():
        load_parts(model_name, model_dir, SEGMENTATION_PARTS, segmentation_parts_of, intra_threads=threads)
    if not path.is_file():
        return None, card, "no cached ONNX graph to compile: the model cache is read-only"
    from .openvino_engine import requested_precision

    network, why = _compiled_network(path, threads, requested_precision())
    return network, card, why


@lru_cache(maxsize=4)
def _compiled_network(graph: Path, threads: int, precision: str):
    """(OpenVinoPart or None, why not) of the graph file ``graph``, cached per process. The file's name holds the
    weights' sha256, so replaced weights get a network of their own."""
    from .openvino_engine import openvino_part

    return openvino_part(graph, threads, precision)


class Segmentation(NamedTuple):
    """What :func:`segment` returns."""

    probabilities: np.ndarray
    """float32 (4, Z, Y, X): mean softmax over the passes"""
    uncertainty: np.ndarray
    """float32 (Z, Y, X) in [0, 1]: predictive entropy / ln 4"""
    warnings: List[str]
    encoder_maps: Optional[Tuple[np.ndarray, ...]]
    """(fine, level, deep): the encoder's last three maps of the unflipped image (``GliomaSegNet.forward_with_features``),
    which the multi-task classifier reads; None for a sliding window or a network of fewer than three levels."""
    engine: str
    """what ran the network: ``openvino <version>``, ``onnxruntime <version>`` or ``torch <version>``"""
    precision: str = "f32"
    """what it computed in: ``bf16`` (OpenVINO on a CPU with native bfloat16) or ``f32``"""


def segment(model_name: str, model_dir: Optional[str], config: NetworkConfig, image: np.ndarray,
            presence: np.ndarray, device: str = "cpu", passes: int = 1, mc_dropout: bool = False,
            progress: Optional[Callable[[str], None]] = None, side_by_side: bool = True,
            window: Optional[Window] = None) -> Segmentation:
    """The passes of stored model ``model_name`` (config from its card) over ``image`` (4, Z, Y, X) with
    ``presence`` (4,). On the CPU the network runs from its cached ONNX graph (exported on first use): on OpenVINO
    its passes in turn (:func:`load_segmentation_networks`); on ONNX Runtime side by side (:func:`part_passes`), or
    with ``side_by_side`` False in turn on the first of the same sessions (the same thread count: the same result
    bit for bit, more slowly). On CUDA torch runs it. A working grid above ``MAX_WHOLE_VOLUME_VOXELS`` runs by
    windows of ``LARGE_GRID_WINDOW``. ``window`` (voxels): every pass runs over windows of that size per axis
    (:mod:`.sliding_window`, passes in turn, no encoder maps), on any device; Z, Y, X then need not be multiples of
    the network divisor; (Z, Y, X): windows of that shape."""
    if window is None and int(np.prod(image.shape[1:])) > MAX_WHOLE_VOLUME_VOXELS:
        window = LARGE_GRID_WINDOW
    if window is not None:
        return _windowed_segment(model_name, model_dir, config, image, presence, device, passes, mc_dropout,
                                 progress, window)
    if device == "cpu":
        networks, _, warnings = load_segmentation_networks(model_name, model_dir, passes)
        networks = networks if side_by_side else networks[:1]
        maps: List[Tuple[np.ndarray, ...]] = []
        mean, entropy = part_passes(networks, config, image, presence, passes, mc_dropout, progress=progress,
                                    encoder_maps=maps)
        return Segmentation(mean, entropy, list(warnings), maps[0] if maps else None, engine_of(networks[0]),
                            getattr(networks[0], "precision", "f32"))
    import torch

    from .inference import predict
    from .model_store import load_model_cached

    net, _ = load_model_cached(model_name, model_dir)
    maps: List[Tuple[np.ndarray, ...]] = []
    mean, entropy, warnings = predict(net, image, presence, torch.device(device), passes, mc_dropout,
                                      progress=progress, encoder_maps=maps)
    return Segmentation(mean, entropy, warnings, maps[0] if maps else None, engine_of(net))


def _windowed_segment(model_name: str, model_dir: Optional[str], config: NetworkConfig, image: np.ndarray,
                      presence: np.ndarray, device: str, passes: int, mc_dropout: bool,
                      progress: Optional[Callable[[str], None]], window: Window) -> Segmentation:
    """:func:`segment` by a sliding window of ``window`` voxels: the stored model's first network on the CPU, torch
    on CUDA. ValueError for a window the network cannot run (not a multiple of its divisor)."""
    from .sliding_window import window_size, windowed

    if any(n <= 0 or n % config.divisor for n in window_size(window)):
        raise ValueError(f"window {window} voxels: the network needs positive multiples of {config.divisor}")

    if device != "cpu":
        import torch

        from .inference import predict
        from .model_store import load_model_cached

        net, _ = load_model_cached(model_name, model_dir)
        mean, entropy, warnings = predict(net, image, presence, torch.device(device), passes, mc_dropout,
                                          progress=progress, window=window)
        return Segmentation(mean, entropy, warnings, None, engine_of(net))
    networks, _, warnings = load_segmentation_networks(model_name, model_dir, 1)
    mean, entropy = mean_over_passes(windowed(part_pass(networks[0], config), window), image, presence, passes,
                                     mc_dropout, progress=progress)
    return Segmentation(mean, entropy, list(warnings), None, engine_of(networks[0]),
                        getattr(networks[0], "precision", "f32"))


def engine_of(network: Part) -> str:
    """``openvino <version>`` | ``onnxruntime <version>`` | ``torch <version>``: what runs ``network``."""
    from .onnx_engine import OnnxPart
    from .openvino_engine import OpenVinoPart, engine_version

    if isinstance(network, OpenVinoPart):
        return engine_version()
    if isinstance(network, OnnxPart):
        import onnxruntime

        return f"onnxruntime {onnxruntime.__version__}"
    import torch

    return f"torch {torch.__version__}"
