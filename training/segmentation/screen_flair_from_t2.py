"""Screen (not adopted): when FLAIR is missing, feed T2 in FLAIR's channel instead of leaving it empty.

    python -m training.segmentation.screen_flair_from_t2 --cv runs/cv3_ce --out runs/flair_from_t2
    python -m training.segmentation.compare_runs runs/flair_from_t2 runs/cv3_ce

Each real case is analysed (one fast pass, no post-processing, as ``cross_validate --missing``) by the fold model
of ``--cv`` that did not train on it, with the case's T2 file also given as its FLAIR; the predictions go to
``OUT/oof/<case>-without_flair.npz`` in the cross-validation's format, so ``compare_runs`` pairs them with the
run's own FLAIR-missing predictions. Result on cv3_ce (31 cases): WT 0.599 against 0.606 (README of
training/results/segmentation_screening.md).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from GliomaAnalysisLib import load_case

from ..common.datasets import REAL_DATA_ROOTS, discover_cases
from .cross_validate import save_prediction


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cv", type=Path, required=True, help="a cross_validate run folder with its fold models")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", nargs="+", default=REAL_DATA_ROOTS)
    args = parser.parse_args(argv)
    from GliomaAnalysisLib.pipeline.analysis import analyze

    folders = {c.case_id: c for root in args.data if Path(root).is_dir() for c in discover_cases(root)}
    folds = sorted(args.cv.glob("fold*/model"))
    if not folds or not folders:
        print(f"error: {args.cv}: no fold models (foldK/model), or no labelled cases", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        for model_dir in folds:
            fold = int(model_dir.parent.name[4:])
            config = json.loads((model_dir.parent / "config.json").read_text())
            for case_id in config["validation_cases"]:
                out = args.out / "oof" / f"{case_id}-without_flair.npz"
                if out.is_file() or case_id not in folders:
                    continue
                found = folders[case_id]
                copy = Path(tmp) / f"{case_id}_as_flair.nii.gz"  # the same file twice is refused as a mix-up
                shutil.copyfile(found.files["t2"], copy)
                case = load_case({**found.files, "flair": copy}, segmentation=found.segmentation, case_id=case_id)
                result = analyze(case, model=f"glioma_seg_fold{fold}", model_dir=model_dir, classify=False,
                                 postprocess=False, fast=True)
                save_prediction(out, case, result, fold)
                print(f"fold {fold} {case_id}", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
