"""The segmentation network in torch: device choice, whole-volume or sliding-window forward passes, and the
test-time passes of models/segment.py (flips, MC-dropout masks, mean and uncertainty). Training and GPU runs use
this; a stored model on the CPU runs from its ONNX graph without torch (pipeline/analysis.py)."""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .network import GliomaSegNet
from .segment import LARGE_GRID_WINDOW, MAX_WHOLE_VOLUME_VOXELS, dropout_masks, mean_over_passes
from .sliding_window import Window, windowed

SLIDING_WINDOW_ROI = LARGE_GRID_WINDOW
"""Window (Z, Y, X voxels) of a working grid above ``MAX_WHOLE_VOLUME_VOXELS`` in :func:`predict`."""


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


MaskSampler = Callable[[Sequence[int]], List[torch.Tensor]]
"""spatial (Z, Y, X) of one forward call -> its dropout masks (see :func:`dropout_masks`)."""


def _forward(model: GliomaSegNet, x: torch.Tensor, presence: torch.Tensor, masks_for: MaskSampler,
             encoder_maps: Optional[list] = None) -> torch.Tensor:
    """Softmax probabilities (1, 4, Z, Y, X) of an input (1, 4, Z, Y, X) whose sizes are multiples of the network
    divisor, with the masks ``masks_for`` draws for it. ``encoder_maps``, when given and still empty, receives the
    pass's (fine, level, deep) maps as NumPy arrays (``forward_with_features``)."""
    if encoder_maps is not None and not encoder_maps and len(model.encoder) >= 3:
        logits, *maps = model.forward_with_features(x, presence, masks_for(x.shape[2:]))
        encoder_maps.append(tuple(m.float().cpu().numpy() for m in maps))
        return torch.softmax(logits, dim=1)
    return torch.softmax(model(x, presence, masks_for(x.shape[2:])), dim=1)


def predict(model: GliomaSegNet, image: np.ndarray, presence: np.ndarray, device: torch.device,
            passes: int = 1, mc_dropout: bool = False, seed: int = 0,
            progress: Optional[Callable[[str], None]] = None,
            encoder_maps: Optional[list] = None, window: Optional[Window] = None
            ) -> Tuple[np.ndarray, np.ndarray, List[str]]:
    """Mean softmax over ``passes`` flipped (and, with ``mc_dropout``, dropout-sampled) forward passes in torch
    (:func:`segment.mean_over_passes`).

    image: float32 (4, Z, Y, X) with Z, Y, X multiples of the network divisor; presence: (4,).
    Returns (probabilities float32 (4, Z, Y, X), uncertainty float32 (Z, Y, X) in [0, 1], warnings). A CUDA failure
    or out-of-memory falls back to the CPU with a warning. ``encoder_maps`` (a list) receives the first pass's
    encoder maps when it runs on the whole volume (see :func:`_forward`). ``window`` (voxels): each pass runs
    over windows of that size (:func:`.sliding_window.windowed`); the image's size need not be a multiple of the
    divisor then, and ``encoder_maps`` receives nothing. An image above ``MAX_WHOLE_VOLUME_VOXELS`` runs by
    windows of ``SLIDING_WINDOW_ROI`` where no window is given.
    """
    warnings: List[str] = []
    state = {"device": device}
    model.eval()

    def run_pass(x: np.ndarray, p: np.ndarray, rng: Optional[np.random.Generator], last: bool = True) -> np.ndarray:
        try:
            return _run_on(model, x, p, rng, state["device"], encoder_maps).numpy()
        except RuntimeError as exc:
            if state["device"].type != "cuda":
                raise
            warnings.append(f"CUDA failed ({str(exc).splitlines()[0][:120]}); fell back to the CPU")
            state["device"] = torch.device("cpu")
            return _run_on(model, x, p, rng, state["device"], encoder_maps).numpy()

    if window is None and int(np.prod(image.shape[1:])) > MAX_WHOLE_VOLUME_VOXELS:
        window = SLIDING_WINDOW_ROI
    if window is not None:
        run_pass = windowed(run_pass, window)
        encoder_maps = None  # a window's maps are not the volume's
    with torch.inference_mode():
        mean, entropy = mean_over_passes(run_pass, image, presence, passes, mc_dropout, seed, progress)
    return mean, entropy, warnings


def _run_on(model: GliomaSegNet, x: np.ndarray, presence: np.ndarray, rng: Optional[np.random.Generator],
            device: torch.device, encoder_maps: Optional[list] = None) -> torch.Tensor:
    """Probabilities (1, 4, Z, Y, X) on the CPU of x (1, 4, Z, Y, X) and presence (1, 4) run in torch on
    ``device``; dropout masks from ``rng`` (None: a plain pass)."""
    model.to(device)
    p = torch.from_numpy(np.asarray(presence, dtype=np.float32)).to(device)

    def masks_for(spatial: Sequence[int]) -> List[torch.Tensor]:
        return [torch.from_numpy(m).to(device) for m in dropout_masks(model.config, spatial, rng)]

    return _forward(model, torch.from_numpy(x).to(device), p, masks_for, encoder_maps).float().cpu()
