"""Refit the grade-from-volumes model on a new segmentation cross-validation, the multi-task heads untouched.

    python -m training.multitask.refit_volume_grade --seg-cv training/results/segmentation_cv15_tcet_long/cv_report.json

A new shipped segmentation model changes the volumes that ``analyze`` reads the grade from
(``GliomaAnalysisLib/models/volume_grade.py``). This fits the multi-task card's ``grade_from_volumes`` block again on
the new recipe's out-of-fold volumes of every graded real case, scores it out of fold again (fold k's model fitted
on the other folds' cases), and writes back the multi-task cross-validation report (``--mt-cv``: the heads' rows as
they were, the volume column and metrics new), the card's ``real_cross_validation`` and ``evidence`` and its
Markdown. The card's weights and their sha256 are not touched.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from GliomaAnalysisLib.models.model_store import write_card

from . import volume_grade
from .cross_validate import add_volume_grade, markdown
from .export_multitask import MODEL_NAME, cv_evidence, cv_summary, model_card_markdown

MULTITASK_CV = Path("training/results/multitask_cv")


def refit(seg_report: Path, mt_cv: Path, models: Path) -> dict:
    """Rewrite ``mt_cv``/cv_report.json and its Markdown and the multi-task card in ``models`` from the out-of-fold
    volumes of ``seg_report``; returns the new out-of-fold metrics of the grade from volumes."""
    report_path = mt_cv / "cv_report.json"
    result = json.loads(report_path.read_text())
    add_volume_grade(result, seg_report)
    block = volume_grade.fit_on_report(seg_report, {c: result["cases"][c]["targets"].get("grade")
                                                    for c in sorted(result["cases"])})
    card_path = models / f"{MODEL_NAME}.json"
    card = json.loads(card_path.read_text())
    card.update(grade_from_volumes=block, real_cross_validation=cv_summary(result, report_path),
                evidence=cv_evidence(result, report_path))
    report_path.write_text(json.dumps(result, indent=1))
    (mt_cv / "multitask_cv.md").write_text(markdown(result))
    write_card(card, card_path)
    (models / f"{MODEL_NAME}.md").write_text(model_card_markdown(card))
    return result["volume_grade"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seg-cv", type=Path, required=True,
                        help="cv_report.json of the segmentation cross-validation (or its run folder)")
    parser.add_argument("--mt-cv", type=Path, default=MULTITASK_CV,
                        help="folder of the multi-task cross-validation's cv_report.json and multitask_cv.md")
    parser.add_argument("--models", type=Path, default=Path("Resources/models"), help="folder of the multi-task card")
    args = parser.parse_args(argv)
    seg_report = args.seg_cv / "cv_report.json" if args.seg_cv.is_dir() else args.seg_cv
    for path, what in ((seg_report, "segmentation cross-validation report"),
                       (args.mt_cv / "cv_report.json", "multi-task cross-validation report"),
                       (args.models / f"{MODEL_NAME}.json", "multi-task model card")):
        if not path.is_file():
            print(f"error: {path}: no {what} there", file=sys.stderr)
            return 2
    metrics = refit(seg_report, args.mt_cv, args.models)
    low, high = metrics["auc_95"] or (None, None)
    print(f"grade from volumes, out of fold: AUC {metrics['auc']:.3f} (95 % {low:.2f}-{high:.2f}), "
          f"Brier {metrics['brier']:.3f}, {metrics['n']} cases")
    return 0


if __name__ == "__main__":
    sys.exit(main())
