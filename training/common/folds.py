"""Cross-validation folds over the real cases, stratified by grade and source.

Every case is validated exactly once. Cases are grouped into strata (grade x source); rare grades and rare strata
are dealt first, each shuffled with a fixed seed, every case going to the fold with the fewest cases of its grade,
then of its stratum, then in all: grades spread evenly, sources nearly so, fold sizes differ by at most one.
"""
from __future__ import annotations

import csv
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np


@dataclass(frozen=True)
class CaseInfo:
    """What stratifies a case: its id, grade (``HGG``, ``LGG`` or ``unknown``) and source (institution group)."""

    case_id: str
    grade: str
    source: str


def case_source(case_id: str, cohort: Optional[str] = None) -> str:
    """The institution group of a BraTS / MSD case id (``Brats18_TCIA02_135_1`` -> ``TCIA``), or its cohort."""
    if cohort:
        return re.sub(r"[^A-Za-z0-9]+", "-", cohort).strip("-").lower()
    if case_id.startswith("Brats18_2013"):
        return "2013"
    match = re.match(r"Brats18_([A-Za-z]+)", case_id)
    if match:
        return match.group(1).upper()
    return case_id.split("_")[0].upper()


def read_case_infos(roots: Iterable["str | os.PathLike[str]"], case_ids: Sequence[str]) -> List[CaseInfo]:
    """CaseInfo of each of ``case_ids`` from the ``labels.csv`` of the data roots (grade ``unknown`` when absent)."""
    rows: Dict[str, Dict[str, str]] = {}
    for root in roots:
        table = Path(root) / "labels.csv"
        if table.is_file():
            with open(table, newline="") as handle:
                for row in csv.DictReader(handle):
                    rows[row["case_id"]] = row
    infos = []
    for case_id in case_ids:
        row = rows.get(case_id, {})
        grade = (row.get("grade") or "").strip().upper() or "unknown"
        infos.append(CaseInfo(case_id, grade, case_source(case_id, (row.get("cohort") or "").strip() or None)))
    return infos


def assign_folds(cases: Sequence[CaseInfo], n_folds: int = 5, seed: int = 0) -> Dict[str, int]:
    """case_id -> fold in [0, n_folds), stratified by (grade, source); deterministic for a seed."""
    if n_folds < 2:
        raise ValueError("cross-validation needs at least 2 folds")
    rng = np.random.default_rng(seed)
    strata: Dict[tuple, List[str]] = {}
    for case in sorted(cases, key=lambda c: c.case_id):
        strata.setdefault((case.grade, case.source), []).append(case.case_id)
    grade_total = Counter(case.grade for case in cases)
    folds: Dict[str, int] = {}
    sizes = np.zeros(n_folds, dtype=int)
    per_grade: Dict[str, np.ndarray] = {g: np.zeros(n_folds, dtype=int) for g in grade_total}
    # the rarest grade first, then the rarest strata, so that both spread over different folds
    for key in sorted(strata, key=lambda k: (grade_total[k[0]], len(strata[k]), k)):
        members = list(strata[key])
        rng.shuffle(members)
        in_stratum = np.zeros(n_folds, dtype=int)
        for case_id in members:
            fold = min(range(n_folds), key=lambda f: (per_grade[key[0]][f], in_stratum[f], sizes[f], f))
            folds[case_id] = fold
            sizes[fold] += 1
            in_stratum[fold] += 1
            per_grade[key[0]][fold] += 1
    return folds
