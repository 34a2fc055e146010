"""Screen: a second network at a finer spacing over the tumor region the first one found (coarse to fine, issue #13).

    python -m training.segmentation.cross_validate --config training/configs/segmentation_fine.yaml \
        --run-dir runs/fine --folds 0 --cpu-bf16                     # the fine fold models (1.25 mm)
    python -m training.segmentation.screen_fine_stage --coarse runs/diff --fine runs/fine --out runs/fine_on_diff
    python -m training.segmentation.cross_validate ... --run-dir runs/fine_on_diff/split --report-only
    python -m training.segmentation.compare_runs runs/fine_on_diff/split runs/diff

``cross_validate`` on the fine recipe also predicts each held-out case with the fine network alone over the whole
brain at 1.25 mm (its own report: a single-stage baseline); ``train_segmentation --fold K --run-dir runs/fine/foldK``
trains a fold model without that.

For every stored out-of-fold prediction of the coarse run (``COARSE/oof/<case>.npz``, all four modalities) whose fold
has a fine model (``FINE/fold<k>/final.safetensors``, the same folds): the case is preprocessed at the fine run's
spacing (``preprocess`` alone: the BraTS-preprocessed real cases, no co-registration); the region of interest is the
box of the coarse whole tumor (argmax) grown by ``MARGIN_MM``, at least one training crop per axis; the fine network
runs over it in torch (float32) by a sliding window of its training crop (the field of view it was trained on), with
the analysis' default passes (flip TTA and MC-dropout); its NCR / ED / ET probabilities go back onto the coarse
prediction's box of the native grid, and are combined with the coarse ones inside the region (``COMBINATIONS``).
Each combination is stored as ``OUT/<combination>/oof/<case>.npz`` in the cross-validation's format: truth,
uncertainty, box, fold, passes, engine and precision are the coarse prediction's; ``fine_spacing`` and
``fine_passes`` are added, and ``seconds`` includes the fine stage. ``cross_validate --report-only`` scores every
post-processing variant on it and ``compare_runs`` pairs it with the coarse run case by case.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from GliomaAnalysisLib import load_case
from GliomaAnalysisLib.io.geometry import resample_to, sub_grid
from GliomaAnalysisLib.pipeline.analysis import QUALITY_PASSES

from ..common.datasets import REAL_DATA_ROOTS, case_folders
from .cross_validate import decode, fold_network, write_prediction

MARGIN_MM = 10.0
"""mm added around the coarse whole tumor's box on every side."""
COMBINATIONS = ("replace", "split", "mean")
"""How the fine probabilities join the coarse ones inside the region: ``replace`` (the fine network decides there),
``split`` (P(tumor) per voxel stays the coarse network's, shared among NCR / ED / ET in the fine network's
proportions where it sees tumor: ``SPLIT_CONFIDENT``), ``mean`` (an average of the two)."""
SPLIT_CONFIDENT = 0.5
"""Fine P(tumor) from which ``split`` takes the fine proportions alone; below it they blend linearly into the
coarse ones (at 0: the coarse proportions), so a voxel the fine network calls background keeps the coarse split."""


def tumor_region(mask: np.ndarray, margin: int, minimum: int) -> Tuple[slice, slice, slice]:
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


def combine(coarse: np.ndarray, fine: np.ndarray, inside: np.ndarray, how: str) -> np.ndarray:
    """NCR / ED / ET probabilities (3, z, y, x): ``coarse`` outside ``inside`` (bool (z, y, x)); inside it
    ``fine`` combined with ``coarse`` as ``how`` says (``COMBINATIONS``)."""
    if how not in COMBINATIONS:
        raise ValueError(f"combination must be one of {', '.join(COMBINATIONS)}, not {how!r}")
    out = coarse.copy()
    c, f = coarse[:, inside], fine[:, inside]  # (3, voxels inside)
    if how == "replace":
        out[:, inside] = f
    elif how == "mean":
        out[:, inside] = 0.5 * (c + f)
    else:  # split
        fine_tumor, coarse_tumor = f.sum(axis=0), c.sum(axis=0)
        weight = np.clip(fine_tumor / SPLIT_CONFIDENT, 0.0, 1.0)
        share = weight * f / np.maximum(fine_tumor, 1e-6) + (1 - weight) * c / np.maximum(coarse_tumor, 1e-6)
        out[:, inside] = coarse_tumor * share
    return out


def region_on_working(pre, coarse_wt: np.ndarray, box: Tuple[slice, ...], margin: int, minimum: int
                      ) -> Optional[Tuple[slice, slice, slice]]:
    """The region (``tumor_region``) on ``pre``'s working grid around the coarse whole tumor ``coarse_wt`` (bool
    (z, y, x) on the native slices ``box``); None where none of it covers a working voxel's centre."""
    start = np.array([box[2].start, box[1].start, box[0].start])
    stop = np.array([box[2].stop, box[1].stop, box[0].stop])
    mask = sub_grid(pre.reference, start, stop).image_from_array(coarse_wt.astype(np.uint8))
    on_working = sitk.GetArrayFromImage(resample_to(mask, pre.working, sitk.sitkNearestNeighbor,
                                                    pixel_type=sitk.sitkUInt8)).astype(bool)
    return tumor_region(on_working, margin, minimum) if on_working.any() else None


def region_to_native(pre, probabilities: np.ndarray, region: Tuple[slice, ...], box: Tuple[slice, ...]
                     ) -> Tuple[np.ndarray, np.ndarray]:
    """NCR / ED / ET maps (3, Z', Y', X') on ``region`` of the working grid, linearly resampled onto the native
    slices ``box``: (3, z, y, x) float32, and the part of the box inside the region (bool (z, y, x))."""
    shape = tuple(reversed(pre.working.size))
    native = []
    for k in range(4):
        full = np.zeros(shape, np.float32)
        full[region] = probabilities[k] if k < 3 else 1.0  # the last: the region indicator
        native.append(pre.to_reference_box(full, box))
    return np.stack(native[:3]), native[3] >= 0.999


def fine_probabilities(case, coarse_wt: np.ndarray, box: Tuple[slice, ...], model, config: dict
                       ) -> Tuple[np.ndarray, np.ndarray]:
    """The fine network's NCR / ED / ET probabilities (3, z, y, x) on the native slices ``box`` and the part of the
    box inside the region it ran over (bool (z, y, x)). ``coarse_wt``: bool (z, y, x) on ``box``."""
    import torch

    from GliomaAnalysisLib.models.inference import predict
    from GliomaAnalysisLib.preprocessing.preprocess import preprocess

    from .screen_sliding_window import sliding_window

    spacing = float(config["args"]["spacing"])
    crop = int(config["args"]["crop"])
    pre = preprocess(case, spacing=(spacing,) * 3, include_labels=False)
    region = region_on_working(pre, coarse_wt, box, int(round(MARGIN_MM / spacing)), crop)
    if region is None:  # a whole tumor thinner than a fine voxel: nothing to refine
        return np.zeros((3,) + coarse_wt.shape, np.float32), np.zeros(coarse_wt.shape, bool)
    with sliding_window(crop):
        probabilities, _, _ = predict(model, np.ascontiguousarray(pre.image[(slice(None),) + region]), pre.presence,
                                      torch.device("cpu"), passes=QUALITY_PASSES, mc_dropout=True)
    return region_to_native(pre, probabilities[1:], region, box)


def screen(coarse: Path, fine: Path, out: Path, data: Sequence[str]) -> Tuple[int, int]:
    """Every coarse out-of-fold prediction with a fine model for its fold, refined and stored once per combination
    (resumable). Returns (cases refined now or before, cases without a fine model for their fold); a case the fine
    fold trained on, or one not under ``data``, is a one-line error."""
    folders = case_folders(data)
    models: Dict[int, Optional[tuple]] = {}
    refined = skipped = 0
    for path in sorted((coarse / "oof").glob("*.npz")):
        if "-without_" in path.stem or path.stem.endswith(".tmp"):
            continue
        targets = [out / how / "oof" / path.name for how in COMBINATIONS]
        with np.load(path) as stored:
            fields = dict(stored)
        fold = int(fields["fold"])
        if fold not in models:
            models[fold] = fold_network(fine, fold) if (fine / f"fold{fold}" / "final.safetensors").is_file() else None
        if models[fold] is None:
            skipped += 1
            continue
        refined += 1
        if all(t.is_file() for t in targets):
            continue
        model, config = models[fold]
        if path.stem not in config["validation_cases"]:
            raise SystemExit(f"error: {path}: case {path.stem} is not held out by {fine / f'fold{fold}'} (other "
                             f"folds?)")
        if path.stem not in folders:
            raise SystemExit(f"error: {path}: case {path.stem} is not under the data roots given")
        started = time.perf_counter()
        case = load_case(folders[path.stem].files, case_id=path.stem)
        box = tuple(slice(int(a), int(b)) for a, b in fields["box"])
        coarse_probabilities = fields["probabilities"].astype(np.float32)
        fine_maps, inside = fine_probabilities(case, decode(coarse_probabilities) > 0, box, model, config)
        seconds = time.perf_counter() - started
        fields.update(seconds=float(fields["seconds"]) + seconds, fine_spacing=float(config["args"]["spacing"]),
                      fine_passes=QUALITY_PASSES)
        for how, target in zip(COMBINATIONS, targets):
            fields["probabilities"] = combine(coarse_probabilities, fine_maps, inside, how).astype(np.float16)
            write_prediction(target, **fields)
        print(f"fold {fold} {path.stem}: refined over {int(inside.sum())} voxels in {seconds:.1f} s", file=sys.stderr,
              flush=True)
    return refined, skipped


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--coarse", type=Path, required=True, help="a cross_validate run with out-of-fold predictions")
    parser.add_argument("--fine", type=Path, required=True, help="a cross_validate run of the fine fold models")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", nargs="+", default=REAL_DATA_ROOTS)
    args = parser.parse_args(argv)
    if not any((args.coarse / "oof").glob("*.npz")):
        print(f"error: {args.coarse / 'oof'}: no out-of-fold predictions", file=sys.stderr)
        return 2
    if not any(args.fine.glob("fold*/final.safetensors")):
        print(f"error: {args.fine}: no trained fold models (fold<k>/final.safetensors)", file=sys.stderr)
        return 2
    refined, skipped = screen(args.coarse, args.fine, args.out, args.data)
    if skipped:
        print(f"{skipped} case(s) skipped: their fold has no fine model in {args.fine} yet", file=sys.stderr)
    if not refined:
        print(f"error: {args.fine}: no fine model for the folds of {args.coarse}'s predictions", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
