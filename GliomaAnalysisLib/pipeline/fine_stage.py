"""The segmentation's second, finer stage (coarse to fine): a network trained at a finer spacing re-segments the
region around the tumor the coarse network found, by a sliding window of its training crop, and its NCR / ED / ET
probabilities replace the coarse ones there (``analyze``).

A coarse model's card names its fine stage: ``"fine_stage": {"model": NAME, "margin_mm": 10}``; the fine model's
card gives its spacing (``preprocessing.spacing_mm``) and window (``window_voxels``: its training crop, the field of
view its instance norms learned). Cross-validated by training/segmentation/screen_fine_stage.py
(training/results/segmentation_screening.md; the screen's first form, which refined stored predictions in torch,
measured WT +0.10, TC +0.09 over the coarse network alone on fold 0).

    run_fine_stage(model_case, coarse_pre, coarse_probabilities (4, Z, Y, X), ...) -> FineStage | None
"""
from __future__ import annotations

from typing import Callable, List, NamedTuple, Optional, Tuple

import numpy as np
import SimpleITK as sitk

from ..io.case import Case
from ..io.geometry import resample_to
from ..models.model_store import ModelError, load_verified_card
from ..models.network_config import NetworkConfig
from ..models.segment import segment
from ..preprocessing.preprocess import PreprocessedCase, preprocess

MARGIN_MM = 10.0
"""mm added around the coarse whole tumor's box on every side (a card's ``margin_mm`` overrides it)."""

Region = Tuple[slice, slice, slice]


class FineStage(NamedTuple):
    """What :func:`run_fine_stage` returns: the fine network's output over ``region`` of its working grid."""

    pre: PreprocessedCase
    """the case on the fine model's working grid"""
    region: Region
    """the slices (Z, Y, X) of ``pre``'s grid the fine network ran over"""
    probabilities: np.ndarray
    """float32 (4, z, y, x) on ``region``: background, NCR, ED, ET"""
    uncertainty: np.ndarray
    """float32 (z, y, x) on ``region`` in [0, 1]"""
    card: dict
    engine: str
    precision: str
    warnings: List[str]

    def on_grid(self, array: np.ndarray) -> np.ndarray:
        """``array`` (z, y, x) on the region, placed on the whole fine working grid (zeros elsewhere)."""
        full = np.zeros(tuple(reversed(self.pre.working.size)), np.float32)
        full[self.region] = array
        return full


def tumor_region(mask: np.ndarray, margin: int, minimum: int) -> Region:
    """Box (Z, Y, X slices) of the voxels of ``mask`` (bool (Z, Y, X), not empty) grown by ``margin`` voxels on each
    side and cut to the array, then widened about its centre to at least ``minimum`` voxels per axis (the array's
    size where that is smaller), moved inside the array."""
    box = []
    for axis, n in enumerate(mask.shape):
        where = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        lo, hi = max(0, int(where[0]) - margin), min(n, int(where[-1]) + 1 + margin)
        width = min(minimum, n)
        if hi - lo < width:
            lo = min(max(0, (lo + hi - width) // 2), n - width)
            hi = lo + width
        box.append(slice(lo, hi))
    return tuple(box)


def region_of(coarse_tumor: sitk.Image, fine: PreprocessedCase, margin: int, minimum: int) -> Optional[Region]:
    """The region (:func:`tumor_region`) on ``fine``'s working grid around the coarse whole tumor ``coarse_tumor``
    (a uint8 mask image on any grid of the same space); None where it covers no fine voxel's centre."""
    on_fine = sitk.GetArrayFromImage(resample_to(coarse_tumor, fine.working, sitk.sitkNearestNeighbor,
                                                 pixel_type=sitk.sitkUInt8)).astype(bool)
    return tumor_region(on_fine, margin, minimum) if on_fine.any() else None


def fine_model(stage: object, model_folder: Optional[str]) -> Tuple[dict, NetworkConfig, int]:
    """(card, network config, window in voxels) of the fine model a coarse card's ``fine_stage`` names; ModelError
    (one line) for a ``fine_stage`` without a model name, or a fine card without a window its network can run."""
    if not isinstance(stage, dict) or not stage.get("model"):
        raise ModelError(f"the model card's fine_stage must name a model ({{\"model\": NAME}}), not {stage!r}")
    card = load_verified_card(str(stage["model"]), model_folder)
    config = NetworkConfig.from_dict(card["network"])
    window = card.get("window_voxels")
    if not isinstance(window, int) or window <= 0 or window % config.divisor:
        raise ModelError(f"model card of '{stage['model']}': window_voxels must be a positive multiple of "
                         f"{config.divisor} (the fine stage's sliding window), not {window!r}")
    return card, config, window


def run_fine_stage(model_case: Case, coarse_pre: PreprocessedCase, coarse_probabilities: np.ndarray, stage: dict,
                   model_folder: Optional[str], device: str, passes: int, mc_dropout: bool,
                   progress: Optional[Callable[[str], None]] = None) -> Optional[FineStage]:
    """The fine model ``stage["model"]`` over the region around the coarse whole tumor (the argmax of
    ``coarse_probabilities`` (4, Z, Y, X) on ``coarse_pre``'s working grid, grown by ``stage["margin_mm"]``, at
    least one window per axis), with ``passes`` passes as the coarse network ran; None where the coarse network
    found no tumor."""
    card, config, window = fine_model(stage, model_folder)
    tumor = np.argmax(coarse_probabilities, axis=0) > 0
    if not tumor.any():
        return None
    name = card["name"]
    if progress:
        progress(f"fine stage: preprocessing at {card['preprocessing']['spacing_mm'][0]:g} mm")
    fine = preprocess(model_case, spacing=card["preprocessing"]["spacing_mm"], include_labels=False)
    margin = int(round(float(stage.get("margin_mm", MARGIN_MM)) / min(fine.working.spacing)))
    region = region_of(coarse_pre.working.image_from_array(tumor.astype(np.uint8)), fine, margin, window)
    if region is None:
        return None
    if progress:
        progress(f"fine stage: '{name}' over {'x'.join(str(s.stop - s.start) for s in region)} voxels")
    result = segment(name, model_folder, config, np.ascontiguousarray(fine.image[(slice(None),) + region]),
                     fine.presence, device, passes, mc_dropout, progress, window=window)
    return FineStage(fine, region, result.probabilities, result.uncertainty, card, result.engine, result.precision,
                     list(result.warnings))
