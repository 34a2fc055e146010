"""How well the automatic QC flags (``GliomaAnalysisLib.pipeline.quality``) find the low-Dice cases among
out-of-fold predictions of a cross-validation run.

    python -m training.segmentation.qc_eval --run-dir runs/cv1 [--low-wt 0.7]

Each held-out case of every finished fold is analysed with its fold's model at default settings (post-processing
on, as users get it); its flags are compared with its WT Dice against the expert labels.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Sequence

import SimpleITK as sitk

from GliomaAnalysisLib import load_case
from GliomaAnalysisLib.io.labels import regions, to_contiguous
from GliomaAnalysisLib.pipeline.analysis import analyze
from GliomaAnalysisLib.pipeline.measures import dice
from GliomaAnalysisLib.pipeline.quality import qc_flags

from ..common.datasets import REAL_DATA_ROOTS, case_folders
from .cross_validate import store_fold_model


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--data", nargs="+", default=REAL_DATA_ROOTS)
    parser.add_argument("--low-wt", type=float, default=0.7, help="WT Dice below which a case counts as failed")
    args = parser.parse_args(argv)
    print(json.dumps(evaluate_flags(Path(args.run_dir), args.data, args.low_wt), indent=2))
    return 0


def evaluate_flags(run: Path, data: Sequence["str | Path"], low_wt: float = 0.7) -> Dict:
    """Flags and WT Dice of every held-out case of the finished folds of ``run``, and how they agree."""
    folders = case_folders(data)
    rows: List[Dict] = []
    for fold_dir in sorted(run.glob("fold*")):
        if not (fold_dir / "final.safetensors").is_file():
            continue
        fold = int(fold_dir.name[4:])
        model_dir = store_fold_model(run, fold)
        for case_id in json.loads((fold_dir / "config.json").read_text())["validation_cases"]:
            found = folders[case_id]
            case = load_case(found.files, segmentation=found.segmentation, case_id=case_id)
            result = analyze(case, model=f"glioma_seg_fold{fold}", model_dir=model_dir, classify=False)
            truth = regions(to_contiguous(sitk.GetArrayFromImage(case.segmentation), case.segmentation_convention))
            predicted = regions(sitk.GetArrayFromImage(result.labels))  # contiguous inside the result
            rows.append({"case": case_id, "fold": fold, "wt_dice": round(dice(predicted["wt"], truth["wt"]), 3),
                         "flags": [f["flag"] for f in qc_flags(result)]})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    low = [r for r in rows if r["wt_dice"] < low_wt]
    flagged = [r for r in rows if r["flags"]]
    return {"cases": len(rows), "low_wt_cases": len(low), "flagged": len(flagged),
            "low_and_flagged": sum(1 for r in low if r["flags"]),
            "flagged_but_fine": sum(1 for r in flagged if r["wt_dice"] >= low_wt), "rows": rows}


if __name__ == "__main__":
    sys.exit(main())
