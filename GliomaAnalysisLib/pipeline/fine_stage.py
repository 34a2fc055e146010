"""The segmentation's second, finer stage (coarse to fine): a network trained at a finer spacing re-segments the
region around the tumor the coarse network found, by a sliding window of its training crop, and its NCR / ED / ET
probabilities replace the coarse ones there (``analyze``).

A coarse model's card names its fine stage: ``"fine_stage": {"model": NAME, "margin_mm": 10, "passes": 1}``
(``passes``: at most this many of the coarse network's passes; default all); the fine model's card gives its spacing
(``preprocessing.spacing_mm``) and window (``window_voxels``: its training crop, the field of view its instance norms
and attention learned; ``window_max_voxels``: an axis of the region up to this long runs in one window instead of
two overlapping crops, default the crop). Cross-validated by training/segmentation/screen_fine_stage.py
(training/results/segmentation_screening.md; the screen's first form, which refined stored predictions in torch,
measured WT +0.10, TC +0.09 over the coarse network alone on fold 0).

    run_fine_stage(model_case, coarse_pre, coarse_probabilities (4, Z, Y, X), ...) -> FineStage | None
"""
from __future__ import annotations

from typing import Callable, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from ..io.case import Case
from ..io.geometry import Geometry, resample_to, sub_grid
from ..models.model_store import ModelError, load_verified_card
from ..models.network_config import NetworkConfig
from ..models.segment import segment
from ..models.sliding_window import window_shape
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
    passes: int
    """the passes it ran"""

    def on_grid(self, array: np.ndarray) -> np.ndarray:
        """``array`` (z, y, x) on the region, placed on the whole fine working grid (zeros elsewhere)."""
        full = np.zeros(tuple(reversed(self.pre.working.size)), np.float32)
        full[self.region] = array
        return full

    def padded(self, array: np.ndarray) -> Tuple[np.ndarray, Geometry]:
        """``array`` (z, y, x) on the region with one voxel of zeros around it (where the working grid goes on), and
        the grid of that box: resampled linearly onto any grid it gives the values of :meth:`on_grid` (a point reads
        the voxels around it, and a point beyond the pad reads only zeros either way), without the whole grid."""
        shape = tuple(reversed(self.pre.working.size))
        lo = [max(0, s.start - 1) for s in self.region]
        hi = [min(n, s.stop + 1) for s, n in zip(self.region, shape)]
        out = np.zeros([h - l for l, h in zip(lo, hi)], np.float32)
        out[tuple(slice(s.start - l, s.stop - l) for s, l in zip(self.region, lo))] = array
        return out, sub_grid(self.pre.working, np.array(lo[::-1]), np.array(hi[::-1]))


def tumor_region(mask: np.ndarray, margin: int, minimum: int) -> Region:
    """Box (Z, Y, X slices) of the voxels of ``mask`` (bool (Z, Y, X), not empty) grown by ``margin`` voxels on each
    side and cut to the array, then widened about its centre to at least ``minimum`` voxels per axis (the array's
    size where that is smaller), moved inside the array."""
    box = []
    for axis, n in enumerate(mask.shape):
        where = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        lo, hi = max(0, int(where[0]) - margin), min(n, int(where[-1]) + 1 + margin)
        box.append(_widened(slice(lo, hi), minimum, n))
    return tuple(box)


def fitted_to_windows(region: Region, shape: Sequence[int], crop: int, longest: int, divisor: int) -> Region:
    """``region`` on an array of ``shape`` widened to its window (:func:`sliding_window.window_shape`) along each
    axis that runs in one window longer than the crop, as far as the array allows, so that the window sees the
    image there instead of zero padding."""
    size = [s.stop - s.start for s in region]
    return tuple(_widened(s, w, n) if crop < w else s
                 for s, w, n in zip(region, window_shape(size, crop, longest, divisor), shape))


def _widened(span: slice, width: int, n: int) -> slice:
    """``span`` on an axis of ``n`` voxels, widened about its centre to at least ``width`` voxels (``n`` where that
    is smaller) and moved inside the axis."""
    lo, hi = span.start, span.stop
    width = min(width, n)
    if hi - lo < width:
        lo = min(max(0, (lo + hi - width) // 2), n - width)
        hi = lo + width
    return slice(lo, hi)


def region_of(coarse_tumor: sitk.Image, fine: PreprocessedCase, margin: int, minimum: int) -> Optional[Region]:
    """The region (:func:`tumor_region`) on ``fine``'s working grid around the coarse whole tumor ``coarse_tumor``
    (a uint8 mask image on any grid of the same space); None where it covers no fine voxel's centre."""
    on_fine = sitk.GetArrayFromImage(resample_to(coarse_tumor, fine.working, sitk.sitkNearestNeighbor,
                                                 pixel_type=sitk.sitkUInt8)).astype(bool)
    return tumor_region(on_fine, margin, minimum) if on_fine.any() else None


class FineModel(NamedTuple):
    """The fine model a coarse card's ``fine_stage`` names, as its card describes it."""

    card: dict
    config: NetworkConfig
    crop: int
    """its window (``window_voxels``: its training crop, voxels per axis)"""
    longest: int
    """the longest axis it runs in one window (``window_max_voxels``, default the crop)"""


def fine_model(stage: object, model_folder: Optional[str]) -> FineModel:
    """The fine model a coarse card's ``fine_stage`` names; ModelError (one line) for a ``fine_stage`` without a
    model name or with a bad ``passes``, or a fine card without a window its network can run."""
    if not isinstance(stage, dict) or not stage.get("model"):
        raise ModelError(f"the model card's fine_stage must name a model ({{\"model\": NAME}}), not {stage!r}")
    passes = stage.get("passes", 1)
    if not isinstance(passes, int) or passes < 1:
        raise ModelError(f"the model card's fine_stage: passes must be a positive integer, not {passes!r}")
    card = load_verified_card(str(stage["model"]), model_folder)
    config = NetworkConfig.from_dict(card["network"])
    crop = card.get("window_voxels")
    if not isinstance(crop, int) or crop <= 0 or crop % config.divisor:
        raise ModelError(f"model card of '{stage['model']}': window_voxels must be a positive multiple of "
                         f"{config.divisor} (the fine stage's sliding window), not {crop!r}")
    longest = card.get("window_max_voxels", crop)
    if not isinstance(longest, int) or longest < crop or longest % config.divisor:
        raise ModelError(f"model card of '{stage['model']}': window_max_voxels must be a multiple of "
                         f"{config.divisor} no smaller than window_voxels ({crop}), not {longest!r}")
    return FineModel(card, config, crop, longest)


def run_fine_stage(model_case: Case, coarse_pre: PreprocessedCase, coarse_probabilities: np.ndarray, stage: dict,
                   model_folder: Optional[str], device: str, passes: int, mc_dropout: bool,
                   progress: Optional[Callable[[str], None]] = None,
                   network_ready: Optional[Callable[[], object]] = None) -> Optional[FineStage]:
    """The fine model ``stage["model"]`` over the region around the coarse whole tumor (the argmax of
    ``coarse_probabilities`` (4, Z, Y, X) on ``coarse_pre``'s working grid, grown by ``stage["margin_mm"]``, at
    least one window per axis, an axis up to the model's longest window widened to fill it) by windows
    (:func:`sliding_window.window_shape`), with ``passes`` passes as the coarse network ran, at most
    ``stage["passes"]`` (where that is 1, a plain pass: one dropout sample is no better an estimate); None where the
    coarse network found no tumor. ``network_ready``: waits for the fine network's load elsewhere (analyze's worker),
    called once there is a region to run it over."""
    model = fine_model(stage, model_folder)
    tumor = np.argmax(coarse_probabilities, axis=0) > 0
    if not tumor.any():
        return None
    name, spacing = model.card["name"], model.card["preprocessing"]["spacing_mm"]
    if progress:
        progress(f"fine stage: preprocessing at {spacing[0]:g} mm")
    fine = preprocess(model_case, spacing=spacing, include_labels=False)
    margin = int(round(float(stage.get("margin_mm", MARGIN_MM)) / min(fine.working.spacing)))
    region = region_of(coarse_pre.working.image_from_array(tumor.astype(np.uint8)), fine, margin, model.crop)
    if region is None:
        return None
    region = fitted_to_windows(region, fine.image.shape[1:], model.crop, model.longest, model.config.divisor)
    size = [s.stop - s.start for s in region]
    window = window_shape(size, model.crop, model.longest, model.config.divisor)
    passes = min(passes, stage.get("passes", passes))
    if network_ready:
        network_ready()
    if progress:
        progress(f"fine stage: '{name}' over {'x'.join(map(str, size))} voxels by windows of "
                 f"{'x'.join(map(str, window))}")
    result = segment(name, model_folder, model.config, np.ascontiguousarray(fine.image[(slice(None),) + region]),
                     fine.presence, device, passes, mc_dropout and passes > 1,
                     (lambda message: progress(f"fine stage: {message}")) if progress else None, window=window)
    return FineStage(fine, region, result.probabilities, result.uncertainty, model.card, result.engine,
                     result.precision, list(result.warnings), passes)
