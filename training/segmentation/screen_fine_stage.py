"""Screen: a second network at a finer spacing over the tumor region the first one found (coarse to fine, issue #13).

    python -m training.segmentation.cross_validate --config training/configs/segmentation_fine.yaml \
        --run-dir runs/fine --folds 0 --cpu-bf16                     # the fine fold models (1.25 mm)
    python -m training.segmentation.screen_fine_stage --coarse runs/diff --fine runs/fine --out runs/fine_on_diff
    python -m training.segmentation.cross_validate ... --run-dir runs/fine_on_diff/split --report-only
    python -m training.segmentation.compare_runs runs/fine_on_diff/split runs/diff

For every stored out-of-fold prediction of the coarse run (``COARSE/oof/<case>.npz``, all four modalities) whose fold
has a fine model (``FINE/fold<k>/final.safetensors``, the same folds): the case is preprocessed at the fine run's
spacing; the region of interest is the box of the coarse whole tumor (argmax) grown by ``MARGIN_MM``, at least one
training crop per axis; the fine network runs over it by a sliding window of its training crop (the field of view it
was trained on), with the analysis' default passes (flip TTA and MC-dropout); its NCR / ED / ET probabilities go back
onto the coarse prediction's box of the native grid, and are combined with the coarse ones inside the region
(``COMBINATIONS``). Each combination is stored as ``OUT/<combination>/oof/<case>.npz`` in the cross-validation's
format (truth, uncertainty, box and fold as the coarse prediction's), so ``cross_validate --report-only`` scores
every post-processing variant on it and ``compare_runs`` pairs it with the coarse run case by case.
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

from ..common.datasets import REAL_DATA_ROOTS, case_folders
from .cross_validate import decode

MARGIN_MM = 10.0
"""mm added around the coarse whole tumor's box on every side."""
COMBINATIONS = ("replace", "split", "mean")
"""How the fine probabilities join the coarse ones inside the region: ``replace`` (the fine network decides there),
``split`` (the coarse P(tumor) per voxel, shared among NCR / ED / ET as the fine network shares its own: the whole
tumor stays the coarse network's, the core and enhancement become the fine one's), ``mean`` (an average of the two)."""


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
    else:  # split: where the fine network sees (almost) no tumor, the coarse split stays
        fine_tumor, coarse_tumor = f.sum(axis=0), c.sum(axis=0)
        share = np.where(fine_tumor > 1e-3, f / np.maximum(fine_tumor, 1e-3), c / np.maximum(coarse_tumor, 1e-6))
        out[:, inside] = coarse_tumor * share
    return out


def fine_model(run: Path, fold: int):
    """(GliomaSegNet in eval mode, the fold's config.json) of ``run/fold<fold>``'s final weights."""
    from safetensors.torch import load_file

    from GliomaAnalysisLib.models.network import GliomaSegNet, NetworkConfig

    config = json.loads((run / f"fold{fold}" / "config.json").read_text())
    model = GliomaSegNet(NetworkConfig.from_dict(config["network"]))
    model.load_state_dict(load_file(str(run / f"fold{fold}" / "final.safetensors")))
    return model.eval(), config


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
    from GliomaAnalysisLib.pipeline.analysis import QUALITY_PASSES
    from GliomaAnalysisLib.preprocessing.preprocess import preprocess

    from .screen_sliding_window import sliding_window

    spacing = float(config["args"]["spacing"])
    crop = int(config["args"]["crop"])
    pre = preprocess(case, spacing=(spacing,) * 3, include_labels=False)
    region = region_on_working(pre, coarse_wt, box, int(round(MARGIN_MM / spacing)), crop)
    if region is None:  # a whole tumor thinner than a fine voxel: nothing to refine
        return np.zeros((3,) + coarse_wt.shape, np.float32), np.zeros(coarse_wt.shape, bool)
    with sliding_window(crop), torch.inference_mode():
        probabilities, _, _ = predict(model, np.ascontiguousarray(pre.image[(slice(None),) + region]), pre.presence,
                                      torch.device("cpu"), passes=QUALITY_PASSES, mc_dropout=True)
    return region_to_native(pre, probabilities[1:], region, box)


def screen(coarse: Path, fine: Path, out: Path, data: Sequence[str]) -> int:
    """Every coarse out-of-fold prediction with a fine model for its fold, refined and stored once per combination
    (resumable); returns how many cases were refined."""
    folders = case_folders(data)
    models: Dict[int, Optional[tuple]] = {}
    done = 0
    for path in sorted((coarse / "oof").glob("*.npz")):
        if "-without_" in path.stem:
            continue
        targets = [out / how / "oof" / path.name for how in COMBINATIONS]
        stored = np.load(path)
        fold = int(stored["fold"])
        if fold not in models:
            models[fold] = fine_model(fine, fold) if (fine / f"fold{fold}" / "final.safetensors").is_file() else None
        if models[fold] is None or all(t.is_file() for t in targets):
            continue
        model, config = models[fold]
        if path.stem not in config["validation_cases"]:
            raise SystemExit(f"error: {path}: case {path.stem} is not held out by {fine / f'fold{fold}'} (other "
                             f"folds?)")
        if path.stem not in folders:
            raise SystemExit(f"error: {path}: case {path.stem} is not under the data roots given")
        started = time.perf_counter()
        case = load_case(folders[path.stem].files, case_id=path.stem)
        box = tuple(slice(int(a), int(b)) for a, b in stored["box"])
        coarse_probabilities = stored["probabilities"].astype(np.float32)
        fine_maps, inside = fine_probabilities(case, decode(coarse_probabilities) > 0, box, model, config)
        seconds = time.perf_counter() - started
        for how, target in zip(COMBINATIONS, targets):
            fields = {k: stored[k] for k in stored.files}
            fields["probabilities"] = combine(coarse_probabilities, fine_maps, inside, how).astype(np.float16)
            fields["seconds"] = float(stored["seconds"]) + seconds
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_suffix(".tmp.npz")
            np.savez_compressed(tmp, **fields)
            tmp.replace(target)
        done += 1
        print(f"fold {fold} {path.stem}: refined over {int(inside.sum())} voxels in {seconds:.1f} s", file=sys.stderr,
              flush=True)
    return done


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
    screen(args.coarse, args.fine, args.out, args.data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
