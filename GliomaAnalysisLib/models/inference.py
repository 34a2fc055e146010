"""Running the segmentation network on a working-grid volume: device choice, whole-volume or sliding-window,
flip test-time augmentation, MC-dropout, and the voxel uncertainty of the resulting mean."""
from __future__ import annotations

import math
from typing import Callable, List, Optional, Tuple

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


def _forward(model: GliomaSegNet, x: torch.Tensor, presence: torch.Tensor) -> torch.Tensor:
    """Softmax probabilities (1, 4, Z, Y, X) of a padded input (1, 4, Z, Y, X)."""
    if x[0, 0].numel() <= MAX_WHOLE_VOLUME_VOXELS:
        return torch.softmax(model(x, presence), dim=1)
    from monai.inferers import sliding_window_inference

    def predictor(patch: torch.Tensor) -> torch.Tensor:
        return torch.softmax(model(patch, presence.expand(patch.shape[0], -1)), dim=1)

    return sliding_window_inference(x, SLIDING_WINDOW_ROI, 1, predictor, overlap=0.25, mode="gaussian")


def predict(model: GliomaSegNet, image: np.ndarray, presence: np.ndarray, device: torch.device,
            passes: int = 1, mc_dropout: bool = False, seed: int = 0,
            progress: Optional[Callable[[str], None]] = None) -> Tuple[np.ndarray, np.ndarray, List[str]]:
    """Mean softmax over ``passes`` flipped (and, with ``mc_dropout``, dropout-sampled) forward passes.

    image: float32 (4, Z, Y, X) with Z, Y, X multiples of the network divisor; presence: (4,).
    Returns (probabilities float32 (4, Z, Y, X), uncertainty float32 (Z, Y, X) in [0, 1], warnings), where the
    uncertainty is the predictive entropy of the mean divided by ln 4. A CUDA failure or out-of-memory falls
    back to the CPU with a warning. Deterministic on the CPU for a given ``seed``.
    """
    warnings: List[str] = []
    passes = max(1, min(passes, len(FLIP_SETS)))
    torch.manual_seed(seed)
    if mc_dropout:
        model.enable_mc_dropout()
    else:
        model.eval()
    total = None
    with torch.inference_mode():
        for index in range(passes):
            flips = FLIP_SETS[index]
            if progress:
                progress(f"network pass {index + 1}/{passes}")
            x = torch.from_numpy(np.ascontiguousarray(image))[None]
            x = torch.flip(x, flips) if flips else x
            try:
                out = _run_on(model, x, presence, device)
            except RuntimeError as exc:
                if device.type != "cuda":
                    raise
                warnings.append(f"CUDA failed ({str(exc).splitlines()[0][:120]}); fell back to the CPU")
                device = torch.device("cpu")
                model.to(device)
                out = _run_on(model, x, presence, device)
            out = torch.flip(out, flips) if flips else out
            total = out if total is None else total + out
    model.eval()
    mean = (total / passes)[0].numpy()
    entropy = -(mean * np.log(np.clip(mean, 1e-8, 1.0))).sum(axis=0) / math.log(mean.shape[0])
    return mean.astype(np.float32), np.clip(entropy, 0, 1).astype(np.float32), warnings


def _run_on(model: GliomaSegNet, x: torch.Tensor, presence: np.ndarray, device: torch.device) -> torch.Tensor:
    model.to(device)
    p = torch.from_numpy(np.asarray(presence, dtype=np.float32))[None].to(device)
    return _forward(model, x.to(device), p).float().cpu()

