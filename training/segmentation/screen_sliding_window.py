"""Screen: apply each fold model of a cross-validation run by a sliding window at its training crop size (the field
of view its instance norms learned) instead of one whole-volume pass.

    python -m training.segmentation.screen_sliding_window --cv runs/cv5_long --out runs/cv5_long_sw
    python -m training.segmentation.compare_runs runs/cv5_long_sw runs/cv5_long

Each held-out case of each fold is analysed as ``cross_validate`` does (default passes, no post-processing), but
the network runs in torch through MONAI's sliding window (the library's overlap 0.25, Gaussian weights) with
windows of the fold's ``crop`` (working-grid voxels); the predictions go to ``OUT/oof/<case>.npz`` in the
cross-validation's format, so ``compare_runs`` pairs them with the whole-volume predictions of the same models.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Iterator

from GliomaAnalysisLib import load_case

from ..common.datasets import REAL_DATA_ROOTS, discover_cases
from .cross_validate import save_prediction


@contextlib.contextmanager
def sliding_window(crop: int) -> Iterator[None]:
    """Within the block every analysis runs its network by a sliding window of ``crop`` voxels per axis (the
    library's whole-volume limit set to 0), restored afterwards."""
    from GliomaAnalysisLib.models import inference, segment

    saved = segment.MAX_WHOLE_VOLUME_VOXELS, inference.MAX_WHOLE_VOLUME_VOXELS, inference.SLIDING_WINDOW_ROI
    segment.MAX_WHOLE_VOLUME_VOXELS = inference.MAX_WHOLE_VOLUME_VOXELS = 0
    inference.SLIDING_WINDOW_ROI = (crop, crop, crop)
    try:
        yield
    finally:
        segment.MAX_WHOLE_VOLUME_VOXELS, inference.MAX_WHOLE_VOLUME_VOXELS, inference.SLIDING_WINDOW_ROI = saved


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
    for model_dir in folds:
        fold = int(model_dir.parent.name[4:])
        config = json.loads((model_dir.parent / "config.json").read_text())
        with sliding_window(int(config["args"]["crop"])):
            for case_id in config["validation_cases"]:
                out = args.out / "oof" / f"{case_id}.npz"
                if out.is_file() or case_id not in folders:
                    continue
                found = folders[case_id]
                case = load_case(found.files, segmentation=found.segmentation, case_id=case_id)
                started = time.perf_counter()
                result = analyze(case, model=f"glioma_seg_fold{fold}", model_dir=model_dir, device="cpu",
                                 classify=False, postprocess=False)
                seconds = time.perf_counter() - started
                save_prediction(out, case, result, fold, seconds)
                print(f"fold {fold} {case_id}: {seconds:.1f} s", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
