"""Dice and HD95 per region (WT, TC, ET, and ED alone) of predicted segmentations against ground truth.

    python -m training.segmentation.evaluate PRED_DIR GT_DIR [--csv metrics.csv] [--labels brats2021|brats2023]

PRED_DIR holds, per case, ``<case>/segmentation.nii.gz`` (the CLI's output layout) or ``<case>.nii.gz``;
GT_DIR holds BraTS-style case folders with a ``*_seg`` file. Conventions (as in BraTS): a region empty in both
gives Dice 1 and HD95 0; empty in one only gives Dice 0 and HD95 373.13 mm. HD95 is the larger of the two
directed 95th-percentile surface distances (mm), as MONAI's ``compute_hausdorff_distance(percentile=95)``.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from GliomaAnalysisLib.errors import GliomaAnalysisError
from GliomaAnalysisLib.io.geometry import Geometry
from GliomaAnalysisLib.io.image_io import read_image
from GliomaAnalysisLib.io.labels import guess_convention, regions, to_contiguous
from GliomaAnalysisLib.pipeline.measures import dice

from ..common.datasets import discover_cases

REGIONS = ("wt", "tc", "et", "ed")
HD95_EMPTY_MM = 373.13


def _edges(mask: np.ndarray) -> np.ndarray:
    return mask ^ ndimage.binary_erosion(mask)


def hd95(prediction: np.ndarray, truth: np.ndarray, spacing_zyx: Sequence[float]) -> float:
    """95th-percentile symmetric Hausdorff distance in mm between two boolean masks (z, y, x)."""
    if not prediction.any() and not truth.any():
        return 0.0
    if not prediction.any() or not truth.any():
        return HD95_EMPTY_MM
    edges_p, edges_t = _edges(prediction), _edges(truth)
    to_truth = ndimage.distance_transform_edt(~edges_t, sampling=spacing_zyx)[edges_p]
    to_prediction = ndimage.distance_transform_edt(~edges_p, sampling=spacing_zyx)[edges_t]
    return float(max(np.percentile(to_truth, 95), np.percentile(to_prediction, 95)))


def evaluate_pair(prediction: np.ndarray, truth: np.ndarray, spacing_zyx: Sequence[float]) -> Dict[str, float]:
    """Dice and HD95 per region from two contiguous label arrays."""
    p, t = regions(prediction), regions(truth)
    metrics = {}
    for name in REGIONS:
        metrics[f"dice_{name}"] = dice(p[name], t[name])
        metrics[f"hd95_{name}"] = hd95(p[name], t[name], spacing_zyx)
    return metrics


def _prediction_file(pred_dir: Path, case_id: str) -> Optional[Path]:
    for candidate in (pred_dir / case_id / "segmentation.nii.gz", pred_dir / f"{case_id}.nii.gz"):
        if candidate.is_file():
            return candidate
    return None


def _read_labels(path: Path, convention: Optional[str]) -> sitk.Image:
    image = read_image(path)
    array = sitk.GetArrayFromImage(image)
    try:
        contiguous = to_contiguous(array, convention or guess_convention(array))
    except ValueError as exc:
        raise GliomaAnalysisError(f"{path}: {exc}") from None
    out = sitk.GetImageFromArray(contiguous)
    out.CopyInformation(image)
    return out


def evaluate_folders(pred_dir: Path, gt_dir: Path, convention: Optional[str] = None) -> List[Dict]:
    """One row per ground-truth case with a prediction: case id plus Dice/HD95 per region."""
    rows = []
    for case in discover_cases(gt_dir):
        found = _prediction_file(pred_dir, case.case_id)
        if found is None:
            continue
        truth = _read_labels(case.segmentation, None)
        prediction = _read_labels(found, convention)
        if Geometry.of(prediction).differences(Geometry.of(truth)):
            raise GliomaAnalysisError(f"{found}: geometry differs from the ground truth {case.segmentation}")
        spacing = tuple(reversed(truth.GetSpacing()))
        rows.append({"case": case.case_id, **evaluate_pair(sitk.GetArrayFromImage(prediction),
                                                           sitk.GetArrayFromImage(truth), spacing)})
    if not rows:
        raise GliomaAnalysisError(f"{pred_dir}: no predictions matching the cases of {gt_dir}")
    return rows


def summarise(rows: List[Dict]) -> Dict[str, float]:
    keys = [k for k in rows[0] if k != "case"]
    return {k: float(np.mean([r[k] for r in rows])) for k in keys}


def format_table(rows: List[Dict]) -> str:
    header = ["case"] + [f"{m}_{r}" for m in ("dice", "hd95") for r in REGIONS]
    lines = ["  ".join(f"{h:>10}" if i else f"{h:<24}" for i, h in enumerate(header))]
    for row in rows + [{"case": "mean", **summarise(rows)}]:
        lines.append("  ".join(f"{row[h]:>10.3f}" if i else f"{row[h]:<24}" for i, h in enumerate(header)))
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pred_dir")
    parser.add_argument("gt_dir")
    parser.add_argument("--csv", default=None, help="CSV path (default PRED_DIR/metrics.csv)")
    parser.add_argument("--labels", choices=("brats2021", "brats2023"), help="prediction convention (default: guess)")
    args = parser.parse_args(argv)
    try:
        rows = evaluate_folders(Path(args.pred_dir), Path(args.gt_dir), args.labels)
    except GliomaAnalysisError as exc:
        print(f"evaluate: error: {exc}", file=sys.stderr)
        return 2
    print(format_table(rows))
    out = Path(args.csv) if args.csv else Path(args.pred_dir) / "metrics.csv"
    with open(out, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows + [{"case": "mean", **summarise(rows)}])
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
