"""Paired comparison of two multi-task cross-validations on the real cases both predicted out of fold.

    python -m training.multitask.compare_cv runs/mtcv_new/cv_report.json training/results/multitask_cv/cv_report.json

Prints, per task with labelled cases in both reports, each report's AUC on those cases and the difference (new
minus base) with its standard error and 95 % percentile interval over 2,000 bootstrap resamples of the cases (both
classes kept in every resample, the same resample for both reports), then the cases whose probability moved by more
than 0.1. Meaningful only when both runs used the same folds (and, for a recipe screen, the same seeds and views):
a case held out in another fold is named on stderr; reports that disagree on a case's label are refused.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from GliomaAnalysisLib.models.multitask import TASKS

from ..common.metrics import BOOTSTRAP, class_kept_resamples, roc_auc


def load_cases(report: Path) -> Dict[str, Dict]:
    """case -> {targets, probability, ...} of a ``cross_validate`` report; a clear exit when it is not one."""
    try:
        return json.loads(report.read_text())["cases"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise SystemExit(f"error: {report}: not a multi-task cross-validation report ({error})")


def paired_auc(new: np.ndarray, base: np.ndarray, labels: np.ndarray, n: int = BOOTSTRAP, seed: int = 0,
               ) -> Optional[Dict[str, float]]:
    """AUCs of two sets of P(positive) (N,) for the same cases and their difference with its bootstrap SE and 95 %
    interval (cases resampled within each class); None when a class is missing."""
    new_auc, base_auc = roc_auc(new, labels), roc_auc(base, labels)
    if new_auc is None:
        return None
    differences = [roc_auc(new[pick], labels[pick]) - roc_auc(base[pick], labels[pick])
                   for pick in class_kept_resamples(labels, n, seed)]
    return {"cases": int(len(labels)), "positives": int(labels.sum()), "new": new_auc, "base": base_auc,
            "difference": new_auc - base_auc, "se": float(np.std(differences, ddof=1)),
            "low": float(np.percentile(differences, 2.5)), "high": float(np.percentile(differences, 97.5))}


def compare(new: Dict[str, Dict], base: Dict[str, Dict]) -> Dict[str, Dict]:
    """task -> :func:`paired_auc` over the cases both reports predicted with the task's label known; a
    ``ValueError`` naming the first case whose label the reports disagree on."""
    result = {}
    for task in TASKS:
        shared = sorted(set(new) & set(base))
        for case in shared:
            if new[case]["targets"].get(task) != base[case]["targets"].get(task):
                raise ValueError(f"{case}: the reports disagree on its {task} label")
        cases = [c for c in shared if new[c]["targets"].get(task) is not None]
        labels = np.array([new[c]["targets"][task] for c in cases], dtype=float)
        if cases:
            row = paired_auc(np.array([new[c]["probability"][task] for c in cases]),
                             np.array([base[c]["probability"][task] for c in cases]), labels)
            if row is not None:
                result[task] = row
    return result


def moved_cases(new: Dict[str, Dict], base: Dict[str, Dict], task: str, by: float = 0.1) -> List[str]:
    """One line per case whose P(positive) of ``task`` moved by more than ``by`` between the reports."""
    lines = []
    for case in sorted(set(new) & set(base)):
        before, after = base[case]["probability"][task], new[case]["probability"][task]
        if abs(after - before) > by:
            truth = new[case]["targets"].get(task)
            lines.append(f"  {case} (truth {'?' if truth is None else truth}): {before:.2f} -> {after:.2f}")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("new", type=Path, help="cv_report.json of the candidate")
    parser.add_argument("base", type=Path, help="cv_report.json it is compared with")
    args = parser.parse_args(argv)
    new, base = load_cases(args.new), load_cases(args.base)
    other_fold = sorted(c for c in set(new) & set(base) if new[c].get("fold") != base[c].get("fold"))
    if other_fold:
        print(f"warning: held out in another fold in the two reports: {', '.join(other_fold)}", file=sys.stderr)
    try:
        rows = compare(new, base)
    except ValueError as error:
        raise SystemExit(f"error: {args.new} against {args.base}: {error}") from None
    if not rows:
        raise SystemExit(f"error: {args.new} against {args.base}: no task has labelled cases of both classes in both")
    for task, row in rows.items():
        print(f"{task}: {row['cases']} cases ({row['positives']} positive): AUC {row['new']:.3f} against "
              f"{row['base']:.3f}, difference {row['difference']:+.3f} (SE {row['se']:.3f}, 95 % "
              f"{row['low']:+.3f} to {row['high']:+.3f})")
        for line in moved_cases(new, base, task):
            print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
