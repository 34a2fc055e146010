"""Screen: the segmentation in two stages (coarse to fine, issue #13), cross-validated as ``analyze`` runs it.

    python -m training.segmentation.cross_validate --config training/configs/segmentation.yaml \
        --run-dir runs/coarse --folds 0 --cpu-bf16 --missing                       # the coarse fold models (2 mm)
    python -m training.segmentation.cross_validate --config training/configs/segmentation_fine.yaml \
        --run-dir runs/fine --folds 0 --cpu-bf16                                   # the fine fold models (1.25 mm)
    python -m training.segmentation.screen_fine_stage --coarse runs/coarse --fine runs/fine --out runs/two_stage
    python -m training.segmentation.cross_validate --run-dir runs/two_stage --report-only
    python -m training.segmentation.compare_runs runs/two_stage runs/coarse

For every fold with a final model in both runs (the same folds: the same seed and strata), ``OUT/fold<k>/model``
holds the two as a shipped pair: ``glioma_seg_fold<k>`` (the coarse weights, its card naming
``glioma_seg_fine_fold<k>`` as its ``fine_stage`` with ``--margin-mm``, default ``MARGIN_MM``, and ``--fine-passes``)
and ``glioma_seg_fine_fold<k>`` (the fine weights, its card giving its training crop as ``window_voxels``, and
``--window-max``). Each held-out case of the fold is then analysed by ``analyze`` with that pair at default settings
or in one pass of each network (``--fast``; pipeline/fine_stage.py: the fine network over the coarse whole tumor's box + the margin,
by a sliding window of its crop, replacing the coarse probabilities there) into
``OUT/oof`` in the cross-validation's format, with each single modality missing too when the coarse run predicted
those (``--missing``). ``cross_validate --report-only`` scores every post-processing variant on it; ``compare_runs``
pairs it with the coarse network alone. Resumable: stored predictions are kept.

``cross_validate`` on the fine recipe also predicts each held-out case with the fine network alone over the whole
brain at 1.25 mm (its own report: a single-stage baseline).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from GliomaAnalysisLib.models.model_store import ModelError
from GliomaAnalysisLib.pipeline.analysis import QUALITY_PASSES
from GliomaAnalysisLib.pipeline.fine_stage import MARGIN_MM, fine_model

from ..common.datasets import REAL_DATA_ROOTS, CaseFolder, case_folders
from .cross_validate import predict_held_out, store_fold_model


def folds_of(run: Path) -> List[int]:
    """The folds of a cross-validation run with final weights (``fold<k>/final.safetensors``)."""
    return sorted(int(p.parent.name[4:]) for p in run.glob("fold*/final.safetensors") if p.parent.name[4:].isdigit())


def compose(coarse: Path, fine: Path, out: Path, fold: int, passes: Optional[int] = None,
            window_max: Optional[int] = None, margin_mm: float = MARGIN_MM) -> Path:
    """``out/fold<k>/model`` with fold ``fold``'s coarse model naming its fine model as its fine stage (with at
    most ``passes`` passes and ``margin_mm`` around the coarse tumor; the fine card's longest window ``window_max``
    voxels, default its crop); a fine fold that holds out other cases than the coarse one, or a pair stored there
    before that is not this one (a retrained fold or other settings: its stored predictions would be stale), is a
    one-line error."""
    held_out = [json.loads((run / f"fold{fold}" / "config.json").read_text())["validation_cases"]
                for run in (coarse, fine)]
    if sorted(held_out[0]) != sorted(held_out[1]):
        raise SystemExit(f"error: {fine / f'fold{fold}'}: holds out other cases than {coarse / f'fold{fold}'} "
                         f"(another fold seed or data?)")
    folder = out / f"fold{fold}" / "model"
    fine_name = f"glioma_seg_fine_fold{fold}"
    crop = int(json.loads((fine / f"fold{fold}" / "config.json").read_text())["args"]["crop"])
    with tempfile.TemporaryDirectory() as tmp:  # the pair as it is now, to compare with one stored before
        fresh = Path(tmp) / "model"
        store_fold_model(fine, fold, fresh, fine_name, window_voxels=crop, window_max_voxels=window_max or crop)
        stage = {"model": fine_name, "margin_mm": margin_mm, **({"passes": passes} if passes else {})}
        store_fold_model(coarse, fold, fresh, f"glioma_seg_fold{fold}", fine_stage=stage)
        try:
            fine_model(stage, str(fresh))  # a pair analyze can run (--window-max, --fine-passes), before it is kept
        except ModelError as exc:
            raise SystemExit(f"error: {exc}") from None
        if not folder.is_dir():
            folder.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(fresh), str(folder))
            return folder
        for card in sorted(fresh.glob("*.json")):
            stored = folder / card.name
            if not stored.is_file() or _identity(stored) != _identity(card):
                raise SystemExit(f"error: {stored}: not the pair of {coarse / f'fold{fold}'} and "
                                 f"{fine / f'fold{fold}'} as they are now (retrained, or other settings?): remove "
                                 f"{out} to screen them again")
    return folder


def _identity(card: Path) -> tuple:
    """What makes a stored model card the same model: its weights' sha256, its fine stage and its windows."""
    fields = json.loads(card.read_text())
    return (fields["sha256"], fields.get("fine_stage"), fields.get("window_voxels"),
            fields.get("window_max_voxels", fields.get("window_voxels")))


def _check_stored_mode(out: Path, cases: List[str], fast: bool) -> None:
    """A one-line error where a case's stored prediction with all modalities was made with another number of coarse
    passes than this screen's (``fast``: one; else ``QUALITY_PASSES``): it would be kept, and mixed with these."""
    expected = 1 if fast else QUALITY_PASSES
    for case in cases:
        stored = out / "oof" / f"{case}.npz"
        if not stored.is_file():
            continue
        with np.load(stored) as data:
            passes = int(data["passes"]) if "passes" in data.files else expected
        if passes != expected:
            raise SystemExit(f"error: {stored}: predicted with {passes} coarse pass{'es' if passes > 1 else ''}, "
                             f"not this screen's {expected} ({'with' if fast else 'without'} --fast): remove {out} "
                             f"to screen it again")


def screen(coarse: Path, fine: Path, out: Path, folders: Dict[str, CaseFolder], passes: Optional[int] = None,
           window_max: Optional[int] = None, all_modalities_only: bool = False,
           margin_mm: float = MARGIN_MM, fast: bool = False) -> List[int]:
    """Every fold both runs have, composed (:func:`compose`) and its held-out cases predicted; returns those
    folds."""
    folds = sorted(set(folds_of(coarse)) & set(folds_of(fine)))
    missing = not all_modalities_only and any((coarse / "oof").glob("*-without_*.npz"))
    for fold in folds:
        fold_cases = json.loads((coarse / f"fold{fold}" / "config.json").read_text())["validation_cases"]
        absent = [c for c in fold_cases if c not in folders]
        if absent:
            raise SystemExit(f"error: {coarse / f'fold{fold}'}: case {absent[0]} is not under the data roots given")
        model_dir = compose(coarse, fine, out, fold, passes, window_max, margin_mm)
        _check_stored_mode(out, fold_cases, fast)
        predict_held_out(coarse, fold, folders, missing, model_dir=model_dir, out=out, fast=fast)
    return folds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--coarse", type=Path, required=True, help="a cross_validate run of the coarse fold models")
    parser.add_argument("--fine", type=Path, required=True, help="a cross_validate run of the fine fold models")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", nargs="+", default=REAL_DATA_ROOTS)
    parser.add_argument("--fine-passes", type=int, default=None,
                        help="the fine stage's passes at most (the card's fine_stage passes; default: the coarse's)")
    parser.add_argument("--window-max", type=int, default=None,
                        help="the fine card's window_max_voxels: an axis up to this long runs in one window "
                             "(default: the crop)")
    parser.add_argument("--margin-mm", type=float, default=MARGIN_MM,
                        help=f"mm around the coarse whole tumor's box the fine stage covers (default {MARGIN_MM:g})")
    parser.add_argument("--fast", action="store_true",
                        help="one pass of each network (analyze --fast itself skips the fine stage); the default runs "
                             "the coarse one's passes and the fine one's up to --fine-passes")
    parser.add_argument("--all-modalities-only", action="store_true",
                        help="predict with all four modalities only, not also each one missing")
    args = parser.parse_args(argv)
    if args.fine_passes is not None and args.fine_passes < 1:
        parser.error(f"--fine-passes must be a positive integer, not {args.fine_passes}")
    if not args.margin_mm >= 0:
        parser.error(f"--margin-mm must be a number of mm >= 0, not {args.margin_mm}")
    for run, what in ((args.coarse, "coarse"), (args.fine, "fine")):
        if not folds_of(run):
            print(f"error: {run}: no trained {what} fold models (fold<k>/final.safetensors)", file=sys.stderr)
            return 2
    folds = screen(args.coarse, args.fine, args.out, case_folders(args.data), args.fine_passes, args.window_max,
                   args.all_modalities_only, args.margin_mm, args.fast)
    if not folds:
        print(f"error: {args.fine}: no fold in common with {args.coarse}", file=sys.stderr)
        return 2
    left = sorted(set(folds_of(args.coarse)) ^ set(folds_of(args.fine)))
    if left:
        print(f"folds {', '.join(map(str, left))} have a model in one run only: not screened yet", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
