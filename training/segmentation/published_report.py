"""A published cross-validation report (``cv_report.json``) standing in for the folds a new report cannot predict again.

    python -m training.segmentation.cross_validate --run-dir RUN --report-only \\
        --published training/results/segmentation_two_stages/cv_report.json

The run folders that hold the out-of-fold predictions do not outlive the machine they were made on; the report does.
Its per-case rows (the Dice of every post-processing variant, the fold, the passes) join the rows scored from
``RUN/oof`` for the folds ``RUN`` did not predict, so the variants, the choice, the nested choice and the worst cases
are computed over all of them, as if every fold had been predicted in ``RUN``. Both must have scored the same
variants (the same scoring code). The study without each modality joins per case where the report holds its rows
(``missing_per_case``, written since this module); an older report holds only its means, which join as one group of
its cases, weighted by their count, with the nested choices it made (``cross_validate.threshold_study``); a report
made with ``--published`` keeps those means (``missing_published_means``), so that it can stand in for all its folds
in turn, a fold at a time across machines.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Collection, Dict, Optional, Sequence, Tuple


def load_published(path: Path, without: Optional[str] = None) -> Dict:
    """The report at ``path``; a file that is not a segmentation ``cv_report.json`` of the same inputs (``without``)
    is a one-line error."""
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise SystemExit(f"error: {path}: cannot read the published report ({error.strerror})")
    try:
        report = json.loads(text)
    except ValueError:
        raise SystemExit(f"error: {path}: not a segmentation cross-validation report (not JSON)")
    if not isinstance(report, dict) or not isinstance(report.get("per_case"), dict) or "chosen" not in report:
        raise SystemExit(f"error: {path}: not a segmentation cross-validation report (no per_case rows)")
    if report.get("without") != without:
        raise SystemExit(f"error: {path}: a report of cases without {report.get('without') or 'nothing'}, this run "
                         f"is without {without or 'nothing'}")
    return report


def published_rows(report: Dict, predicted: Dict[str, Dict], variant_names: Sequence[str],
                   path: Path) -> Dict[str, Dict]:
    """The report's per-case rows of the folds absent from the ``predicted`` rows (case -> row with its fold); a case
    in another fold than there, or other variants than ``variant_names``, is a one-line error naming ``path``."""
    for case_id, row in predicted.items():
        if case_id in report["per_case"] and report["per_case"][case_id]["fold"] != row["fold"]:
            raise SystemExit(f"error: {path}: {case_id} is in fold {report['per_case'][case_id]['fold']} there, "
                             f"in fold {row['fold']} here (other folds: not one cross-validation)")
    folds = {row["fold"] for row in predicted.values()}
    rows = {c: r for c, r in report["per_case"].items() if r["fold"] not in folds}
    if rows:
        theirs = [k for k, v in next(iter(rows.values())).items() if isinstance(v, dict)]
        if theirs != list(variant_names):
            raise SystemExit(f"error: {path}: scored {len(theirs)} post-processing variants, this run "
                             f"{len(variant_names)}: the scoring changed since; it cannot stand in for its folds")
    return rows


def published_missing(report: Optional[Dict], modality: str, chosen: str,
                      predicted_folds: Collection[int]) -> Tuple[Dict[str, Dict], Optional[Dict]]:
    """The report's study without ``modality`` for the folds not in ``predicted_folds``: (per-case rows {case:
    {fold, chosen, readings}}, an older report's means as one group of ``threshold_study`` with its summary, or
    None). The means are an older report's own, or those a report made with ``--published`` carried from the older
    report it merged (``missing_published_means``). Nothing when the report chose another variant than ``chosen``
    (its readings were of that one) or, for the means, when one of their folds is predicted again (they cannot be
    taken apart)."""
    if not report or report.get("chosen") != chosen:
        return {}, None
    rows = {c: r for c, r in (report.get("missing_per_case") or {}).get(modality, {}).items()
            if r["fold"] not in predicted_folds}
    carried = (report.get("missing_published_means") or {}).get(modality)
    if carried:
        return rows, None if set(carried["folds"]) & set(predicted_folds) else carried
    summary = (report.get("missing_modality") or {}).get(modality)
    if report.get("missing_per_case") or not summary or set(report["folds_done"]) & set(predicted_folds):
        return rows, None
    study = summary["wt_threshold"]
    group = {"folds": list(report["folds_done"]), "n": summary["cases"], "dice": study["dice"],
             "nested": study["nested"], "nested_choices": study["nested_choices"], "summary": summary}
    return rows, group
