"""Running the segmentation network on a working-grid volume: device choice, whole-volume or sliding-window,
flip test-time augmentation, MC-dropout, and the voxel uncertainty of the resulting mean."""
from __future__ import annotations

import math
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .network import GliomaSegNet

MAX_WHOLE_VOLUME_VOXELS = 160 ** 3
"""Working grids larger than this run through MONAI's sliding window instead of one forward pass."""
SLIDING_WINDOW_ROI = (128, 128, 128)
FLIP_SETS: Tuple[Tuple[int, ...], ...] = ((), (4,), (3,), (2,), (3, 4), (2, 4), (2, 3), (2, 3, 4))
"""Tensor axes (of B, C, Z, Y, X) flipped in successive test-time passes; the first pass is unflipped."""


def select_device(requested: str = "auto") -> Tuple[torch.device, List[str]]:
    """``auto``: CUDA when available else CPU; ``cuda`` without CUDA falls back to CPU with a warning."""
    warnings: List[str] = []
    if requested not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, not {requested!r}")
    if requested == "cpu":
        return torch.device("cpu"), warnings
    if torch.cuda.is_available():
        return torch.device("cuda"), warnings
    if requested == "cuda":
        warnings.append("CUDA was requested but is not available; ran on the CPU")
    return torch.device("cpu"), warnings


def dropout_masks(model: GliomaSegNet, spatial_zyx: Sequence[int],
                  rng: Optional[np.random.Generator]) -> List[np.ndarray]:
    """One float32 mask per dropout layer of ``model`` (:meth:`GliomaSegNet.dropout_mask_shapes`, batch axis first)
    for an input of ``spatial_zyx`` voxels: with ``rng`` each unit is dropped with the network's dropout probability
    and the others scaled by 1 / (1 - p), as torch's dropout samples in training mode; without, all ones (a plain
    pass; shape (1, ..., 1), which broadcasts)."""
    p = model.config.dropout
    shapes = model.dropout_mask_shapes(spatial_zyx)
    if rng is None or p <= 0:
        return [np.ones((1,) * (len(shape) + 1), np.float32) for shape in shapes]
    return [((rng.random((1, *shape), dtype=np.float32) >= p) / np.float32(1.0 - p)).astype(np.float32)
            for shape in shapes]


MaskSampler = Callable[[Sequence[int]], List[torch.Tensor]]
"""spatial (Z, Y, X) of one forward call -> its dropout masks (see :func:`dropout_masks`)."""


def _forward(model: GliomaSegNet, x: torch.Tensor, presence: torch.Tensor, masks_for: MaskSampler) -> torch.Tensor:
    """Softmax probabilities (1, 4, Z, Y, X) of a padded input (1, 4, Z, Y, X); each forward call (the whole volume,
    or each window of the sliding window) draws its own masks."""
    if x[0, 0].numel() <= MAX_WHOLE_VOLUME_VOXELS:
        return torch.softmax(model(x, presence, masks_for(x.shape[2:])), dim=1)
    from monai.inferers import sliding_window_inference

    def predictor(patch: torch.Tensor) -> torch.Tensor:
        return torch.softmax(model(patch, presence.expand(patch.shape[0], -1), masks_for(patch.shape[2:])), dim=1)

    return sliding_window_inference(x, SLIDING_WINDOW_ROI, 1, predictor, overlap=0.25, mode="gaussian")


def predict(model: GliomaSegNet, image: np.ndarray, presence: np.ndarray, device: torch.device,
            passes: int = 1, mc_dropout: bool = False, seed: int = 0,
            progress: Optional[Callable[[str], None]] = None,
            weights_sha256: Optional[str] = None) -> Tuple[np.ndarray, np.ndarray, List[str]]:
    """Mean softmax over ``passes`` flipped (and, with ``mc_dropout``, dropout-sampled) forward passes.

    image: float32 (4, Z, Y, X) with Z, Y, X multiples of the network divisor; presence: (4,).
    Returns (probabilities float32 (4, Z, Y, X), uncertainty float32 (Z, Y, X) in [0, 1], warnings), where the
    uncertainty is the predictive entropy of the mean divided by ln 4. MC-dropout masks come from NumPy's generator
    seeded with ``seed`` (:func:`dropout_masks`), so every pass is reproducible. With ``weights_sha256`` (the model
    card's: a model whose weights no longer change) a CPU run goes through ONNX Runtime (models/onnx_engine.py),
    else torch. A CUDA failure or out-of-memory falls back to the CPU with a warning.
    """
    warnings: List[str] = []
    passes = max(1, min(passes, len(FLIP_SETS)))
    rng = np.random.default_rng(seed) if mc_dropout else None
    engine = None
    if weights_sha256 and device.type == "cpu" and int(np.prod(image.shape[1:])) <= MAX_WHOLE_VOLUME_VOXELS:
        from .onnx_engine import segmentation_engine

        engine, why = segmentation_engine(model, weights_sha256, torch.get_num_threads())
        if engine is None:
            warnings.append(f"ONNX Runtime not used ({why}); the network ran in torch")
    model.eval()
    total = None
    with torch.inference_mode():
        for index in range(passes):
            flips = FLIP_SETS[index]
            if progress:
                progress(f"network pass {index + 1}/{passes}")
            x = np.ascontiguousarray(np.flip(image[None], flips) if flips else image[None])
            if engine is not None:
                try:
                    masks = dropout_masks(model, image.shape[1:], rng)
                    out = torch.from_numpy(engine(x, np.asarray(presence, np.float32)[None], masks))
                except Exception as exc:  # e.g. a damaged cached graph: torch gives the same result
                    warnings.append(f"ONNX Runtime failed ({type(exc).__name__}); the network ran in torch")
                    engine = None
            if engine is None:
                try:
                    out = _run_on(model, x, presence, rng, device)
                except RuntimeError as exc:
                    if device.type != "cuda":
                        raise
                    warnings.append(f"CUDA failed ({str(exc).splitlines()[0][:120]}); fell back to the CPU")
                    device = torch.device("cpu")
                    model.to(device)
                    out = _run_on(model, x, presence, rng, device)
            out = torch.flip(out, flips) if flips else out
            total = out if total is None else total + out
    mean = (total / passes)[0].numpy()
    entropy = -(mean * np.log(np.clip(mean, 1e-8, 1.0))).sum(axis=0) / math.log(mean.shape[0])
    return mean.astype(np.float32), np.clip(entropy, 0, 1).astype(np.float32), warnings


def _run_on(model: GliomaSegNet, x: np.ndarray, presence: np.ndarray, rng: Optional[np.random.Generator],
            device: torch.device) -> torch.Tensor:
    """Probabilities (1, 4, Z, Y, X) on the CPU of x (1, 4, Z, Y, X) run in torch on ``device``; dropout masks from
    ``rng`` (None: a plain pass)."""
    model.to(device)
    p = torch.from_numpy(np.asarray(presence, dtype=np.float32))[None].to(device)

    def masks_for(spatial: Sequence[int]) -> List[torch.Tensor]:
        return [torch.from_numpy(m).to(device) for m in dropout_masks(model, spatial, rng)]

    return _forward(model, torch.from_numpy(x).to(device), p, masks_for).float().cpu()
