"""Whole-tumor threshold with one modality missing: mean Dice of a run's out-of-fold predictions by t_WT.

    python -m training.segmentation.missing_thresholds runs/cv6_concat [--modality flair] [--thresholds 0.2,0.3,0.5]

Without FLAIR the networks under-call edema (P(WT) stays below 0.5 over much of it), so the WT threshold that suits
all four modalities may not suit a missing one. Reads ``RUN/oof/<case>.npz`` (all four) and
``<case>-without_<modality>.npz`` (written by ``cross_validate --missing``), decodes each with the nested-region
thresholds (t_WT, 0.5, 0.2), the lesion filter and the 0.5 mL ET floor, and prints the mean WT / TC / ET Dice of both
sets for each t_WT over the cases that have both.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

from GliomaAnalysisLib import MODALITIES
from GliomaAnalysisLib.io.labels import regions
from GliomaAnalysisLib.pipeline.measures import dice

from .cross_validate import REGIONS, decode_region_variant

DEFAULT_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5)


def dice_by_threshold(path: Path, thresholds: Sequence[float]) -> Dict[float, Dict[str, float]]:
    """{t_WT: {region: Dice}} of one stored out-of-fold prediction decoded with (t_WT, 0.5, 0.2)."""
    data = np.load(path)
    probabilities = data["probabilities"].astype(np.float32)
    spacing = tuple(float(s) for s in data["spacing_zyx"])
    truth = regions(data["truth"])
    scores = {}
    for t_wt in thresholds:
        predicted = regions(decode_region_variant(probabilities, (t_wt, 0.5, 0.2), spacing))
        scores[t_wt] = {r: dice(predicted[r], truth[r]) for r in REGIONS}
    return scores


def summary(run: Path, modality: str, thresholds: Sequence[float]) -> Dict[str, Dict[float, Dict[str, float]]]:
    """{'all': {t_WT: mean Dice per region}, 'without': {...}, 'cases': n} over the cases with both predictions."""
    names = [p.name.split("-without_")[0] for p in sorted((run / "oof").glob(f"*-without_{modality}.npz"))]
    cases = [case for case in names if (run / "oof" / f"{case}.npz").is_file()]
    result: Dict = {"cases": len(cases)}
    for key, suffix in (("all", ""), ("without", f"-without_{modality}")):
        per_case: List[Dict[float, Dict[str, float]]] = [
            dice_by_threshold(run / "oof" / f"{case}{suffix}.npz", thresholds) for case in cases]
        result[key] = {t: {r: float(np.mean([s[t][r] for s in per_case])) for r in REGIONS} for t in thresholds} \
            if per_case else {}
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="a cross-validation run folder with out-of-fold predictions (--missing)")
    parser.add_argument("--modality", default="flair", choices=MODALITIES)
    parser.add_argument("--thresholds", default=",".join(f"{t:g}" for t in DEFAULT_THRESHOLDS))
    args = parser.parse_args(argv)
    try:
        thresholds = [float(t) for t in args.thresholds.split(",")]
    except ValueError:
        parser.error(f"--thresholds: not a comma-separated list of numbers: {args.thresholds}")
    result = summary(Path(args.run), args.modality, thresholds)
    if not result["cases"]:
        print(f"error: {args.run}: no case with both an all-four and a without_{args.modality} prediction",
              file=sys.stderr)
        return 2
    print(f"{result['cases']} cases; mean Dice WT / TC / ET decoded with (t_WT, 0.5, 0.2)")
    for t in thresholds:
        a, w = result["all"][t], result["without"][t]
        print(f"t_WT {t:g}: all four {a['wt']:.3f} / {a['tc']:.3f} / {a['et']:.3f}   "
              f"without {args.modality} {w['wt']:.3f} / {w['tc']:.3f} / {w['et']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
