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

import shutil
import sys
from pathlib import Path

from GliomaAnalysisLib import load_case

from .screening import run_screen


def analyse_t2_as_flair(fold: int, model_dir: Path, config: dict, found, tmp: Path):
    """(case, result) of ``found`` without its FLAIR, its T2 given in FLAIR's place (one fast pass)."""
    from GliomaAnalysisLib.pipeline.analysis import analyze

    copy = tmp / f"{found.case_id}_as_flair.nii.gz"  # the same file twice is refused as a mix-up
    shutil.copyfile(found.files["t2"], copy)
    case = load_case({**found.files, "flair": copy}, segmentation=found.segmentation, case_id=found.case_id)
    return case, analyze(case, model=f"glioma_seg_fold{fold}", model_dir=model_dir, classify=False,
                         postprocess=False, fast=True)


def main(argv=None) -> int:
    return run_screen(argv, __doc__, "-without_flair", analyse_t2_as_flair)


if __name__ == "__main__":
    sys.exit(main())
