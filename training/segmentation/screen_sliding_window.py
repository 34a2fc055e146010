"""Screen: apply each fold model of a cross-validation run by a sliding window at its training crop size (the field
of view its instance norms learned) instead of one whole-volume pass.

    python -m training.segmentation.screen_sliding_window --cv runs/cv5_long --out runs/cv5_long_sw
    python -m training.segmentation.compare_runs runs/cv5_long_sw runs/cv5_long

Each held-out case of each fold is analysed as ``cross_validate`` does (default passes, no post-processing), but
the network runs on the CPU engine by the library's sliding window (MONAI's: overlap 0.25, Gaussian weights) with
windows of the fold's ``crop`` (working-grid voxels); the predictions go to ``OUT/oof/<case>.npz`` in the
cross-validation's format, so ``compare_runs`` pairs them with the whole-volume predictions of the same models.
"""
from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Iterator

from GliomaAnalysisLib import load_case

from .screening import run_screen


@contextlib.contextmanager
def sliding_window(crop: int) -> Iterator[None]:
    """Within the block every analysis runs its network by a sliding window of ``crop`` voxels per axis (the
    library's whole-volume limit set to 0), restored afterwards."""
    from GliomaAnalysisLib.models import segment

    saved = segment.MAX_WHOLE_VOLUME_VOXELS, segment.LARGE_GRID_WINDOW
    segment.MAX_WHOLE_VOLUME_VOXELS, segment.LARGE_GRID_WINDOW = 0, (crop, crop, crop)
    try:
        yield
    finally:
        segment.MAX_WHOLE_VOLUME_VOXELS, segment.LARGE_GRID_WINDOW = saved


def analyse_windowed(fold: int, model_dir: Path, config: dict, found, tmp: Path):
    """(case, result) of ``found`` analysed by its fold model through a sliding window of the fold's crop size."""
    from GliomaAnalysisLib.pipeline.analysis import analyze

    case = load_case(found.files, segmentation=found.segmentation, case_id=found.case_id)
    with sliding_window(int(config["args"]["crop"])):
        return case, analyze(case, model=f"glioma_seg_fold{fold}", model_dir=model_dir, device="cpu",
                             classify=False, postprocess=False)


def main(argv=None) -> int:
    return run_screen(argv, __doc__, "", analyse_windowed)


if __name__ == "__main__":
    sys.exit(main())
