"""Do the expert labels agree with the images? The mean contrast of each tumor label on the working grid, per case,
flagging enhancing-tumor labels that do not enhance.

    python -m training.segmentation.label_contrast [--data ROOTS_OR_PACK ...] [--min-enhancement 0.5]

For each labelled case: the volume (mL) of NCR, ED and ET, the mean z-scored T1CE in each, and the mean T1CE - T1
difference in ET (``enhancement``, in SD of each image's brain). Enhancing tumor is by definition brighter on T1CE
than on T1; an ET label whose ``enhancement`` is below ``--min-enhancement`` is flagged: no image-based model can
find it, so its ET Dice is near 0 whatever the recipe, and the cross-validation means should be read with it in
mind. Prints a Markdown table, flagged cases first.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from GliomaAnalysisLib import MODALITIES
from GliomaAnalysisLib.io.labels import ED, ET, NCR  # contiguous labels, as on the cached working grid

from ..common.datasets import DEFAULT_CACHE, REAL_DATA_ROOTS, TrainingDataError
from .segmentation_data import TrainingCase, load_cases

T1, T1CE = MODALITIES.index("t1"), MODALITIES.index("t1ce")


@dataclass
class LabelContrast:
    """One case: label volumes (mL) and mean z-scores inside each label; None where the label is empty."""

    case_id: str
    volume_ml: dict
    t1ce: dict
    enhancement: Optional[float]
    """mean T1CE - T1 (SD) inside ET."""

    def flagged(self, min_enhancement: float) -> bool:
        return self.enhancement is not None and self.enhancement < min_enhancement


def _mean(values: np.ndarray, mask: np.ndarray) -> Optional[float]:
    return float(values[mask].mean()) if mask.any() else None


def label_contrast(case: TrainingCase, voxel_ml: float) -> LabelContrast:
    """Contrast of ``case`` (image (4, Z, Y, X) z-scored, labels (Z, Y, X) contiguous) with voxels of ``voxel_ml``."""
    masks = {"ncr": case.labels == NCR, "ed": case.labels == ED, "et": case.labels == ET}
    return LabelContrast(
        case.case_id,
        {name: float(mask.sum() * voxel_ml) for name, mask in masks.items()},
        {name: _mean(case.image[T1CE], mask) for name, mask in masks.items()},
        _mean(case.image[T1CE] - case.image[T1], masks["et"]))


def _cell(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.2f}"


def markdown_table(rows: Sequence[LabelContrast], min_enhancement: float) -> str:
    """The table, flagged cases first, each group by case id."""
    ordered = sorted(rows, key=lambda r: (not r.flagged(min_enhancement), r.case_id))
    lines = ["| case | NCR / ED / ET mL | T1CE z in NCR / ED / ET | ET enhancement (T1CE - T1) | flag |",
             "| --- | --- | --- | --- | --- |"]
    for r in ordered:
        volumes = " / ".join(f"{r.volume_ml[k]:.1f}" for k in ("ncr", "ed", "et"))
        t1ce = " / ".join(_cell(r.t1ce[k]) for k in ("ncr", "ed", "et"))
        flag = "ET label does not enhance" if r.flagged(min_enhancement) else ""
        lines.append(f"| {r.case_id} | {volumes} | {t1ce} | {_cell(r.enhancement)} | {flag} |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", nargs="+", default=REAL_DATA_ROOTS, help="data roots or a training pack")
    parser.add_argument("--cache", default=DEFAULT_CACHE)
    parser.add_argument("--spacing", type=float, default=2.0, help="working-grid spacing in mm")
    parser.add_argument("--min-enhancement", type=float, default=0.5,
                        help="SD: an ET label whose mean T1CE - T1 is below this is flagged")
    args = parser.parse_args(argv)
    try:
        cases = load_cases([Path(d) for d in args.data], Path(args.cache), (args.spacing,) * 3)
    except TrainingDataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not cases:
        print(f"error: no labelled cases found under {', '.join(args.data)}", file=sys.stderr)
        return 2
    rows = [label_contrast(case, args.spacing ** 3 / 1000.0) for case in cases]
    print(markdown_table(rows, args.min_enhancement))
    flagged = [r.case_id for r in rows if r.flagged(args.min_enhancement)]
    with_et = sum(r.enhancement is not None for r in rows)
    print(f"\n{len(cases)} cases, {with_et} with an ET label; {len(flagged)} ET label(s) without enhancement "
          f"(< {args.min_enhancement} SD): {', '.join(flagged) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
