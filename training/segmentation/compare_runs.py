"""Paired comparison of two cross-validation runs on the cases both predicted out of fold (recipe screens).

    python -m training.segmentation.compare_runs runs/cv4_wr runs/cv3_ce [--variant NAME]
    python -m training.segmentation.compare_runs runs/cv5_long training/results/segmentation_cv3_ce/cv_report.json
    python -m training.segmentation.compare_runs runs/cv16 runs/cv15_tcet_long --variant lesion_filter+et_gate_0.5sd

Reads the stored out-of-fold predictions (``RUN/oof/<case>.npz`` and ``<case>-without_<modality>.npz``, written by
``cross_validate``), scores both runs with the same post-processing variant (default: the shipped card's choice)
and prints, with all four modalities and with each single modality missing, the mean Dice (WT, TC, ET) of each run
and the mean paired difference with its standard error over the cases. The base may also be a published
``cv_report.json`` (its per-case Dice of each variant, all four modalities only): the run folders of a recipe
do not outlive the machine they were trained on, its report does. A signal-gate variant also reads each case's
T1CE, T1 and FLAIR from ``--data``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from GliomaAnalysisLib import MODALITIES

from ..common.datasets import REAL_DATA_ROOTS, CaseFolder, case_folders
from .cross_validate import REGIONS, gate_thresholds_of, region_variant, score_variants

DEFAULT_VARIANT = region_variant((0.5, 0.5, 0.2))


def paired(new: Path, base: Path, suffix: str, variant: str,
           folders: Optional[Dict[str, CaseFolder]] = None) -> Optional[Dict]:
    """{cases, new: {region: mean}, base: {...}, difference: {...}, se: {...}, per_case: {case: (new, base)}} over
    the predictions ``*<suffix>.npz`` both runs hold (suffix '' = all four modalities); None when there are none.
    ``folders`` (case id -> CaseFolder): the cases' images, needed by the signal-gate variants."""
    report = json.loads(base.read_text())["per_case"] if base.is_file() else None
    if report is not None and suffix:
        return None  # a report holds the all-four Dice per case only
    names = sorted(p.name for p in (new / "oof").glob(f"*{suffix}.npz")
                   if (suffix or "-without_" not in p.name)
                   and (p.stem in report if report is not None else (base / "oof" / p.name).is_file()))
    if not names:
        return None
    rows: List[List[float]] = []
    per_case = {}
    for name in names:
        a = score_variants(new / "oof" / name, folders)[variant]
        b = report[name[:-4]][variant] if report is not None else score_variants(base / "oof" / name, folders)[variant]
        rows.append([a[r] for r in REGIONS] + [b[r] for r in REGIONS])
        per_case[name[:-4]] = ([round(a[r], 4) for r in REGIONS], [round(b[r], 4) for r in REGIONS])
    return {**paired_statistics(np.array(rows)), "per_case": per_case}


def paired_statistics(values: np.ndarray) -> Dict:
    """values (cases, 6): the new run's WT, TC, ET then the base's, one row per case -> {cases, new, base,
    difference, se}: the means of each run, the mean paired difference and its standard error, per region."""
    difference = values[:, :3] - values[:, 3:]
    se = difference.std(axis=0, ddof=1) / np.sqrt(len(values)) if len(values) > 1 else np.zeros(3)
    return {"cases": len(values), "new": dict(zip(REGIONS, values[:, :3].mean(0).round(4))),
            "base": dict(zip(REGIONS, values[:, 3:].mean(0).round(4))),
            "difference": dict(zip(REGIONS, difference.mean(0).round(4))), "se": dict(zip(REGIONS, se.round(4)))}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("new", type=Path, help="the screened run folder")
    parser.add_argument("base", type=Path, help="the run it is compared with, or its cv_report.json")
    parser.add_argument("--variant", default=DEFAULT_VARIANT, help="post-processing variant (cross_validate's names)")
    parser.add_argument("--data", nargs="+", default=REAL_DATA_ROOTS,
                        help="data roots of the cases (read by the signal-gate variants only)")
    args = parser.parse_args(argv)
    if not (args.new / "oof").is_dir() or not (args.base.is_file() or (args.base / "oof").is_dir()):
        run = args.base if (args.new / "oof").is_dir() else args.new
        print(f"error: {run}: no out-of-fold predictions (oof/)", file=sys.stderr)
        return 2
    if args.base.is_file():
        try:
            valid = all(args.variant in row for row in json.loads(args.base.read_text())["per_case"].values())
        except (ValueError, KeyError, TypeError, AttributeError):
            valid = False
        if not valid:
            print(f"error: {args.base}: not a cv_report.json with per-case Dice of variant {args.variant}",
                  file=sys.stderr)
            return 2
    folders = case_folders(args.data) if any(t is not None for t in gate_thresholds_of(args.variant)) else None
    found = False
    for suffix in [""] + [f"-without_{m}" for m in MODALITIES]:
        result = paired(args.new, args.base, suffix, args.variant, folders)
        if result is None:
            continue
        if not found:  # per case: the first set of predictions both hold (all four, or a run without one)
            for case, (a, b) in result["per_case"].items():
                print(f"  {case:<24} new {a[0]:.3f} {a[1]:.3f} {a[2]:.3f}   base {b[0]:.3f} {b[1]:.3f} {b[2]:.3f}")
        found = True
        fmt = lambda d: " / ".join(f"{d[r]:.3f}" for r in REGIONS)  # noqa: E731
        print(f"{(suffix.lstrip('-') or 'all four'):<16} {result['cases']} cases: new {fmt(result['new'])}, "
              f"base {fmt(result['base'])}, paired difference {fmt(result['difference'])} (SE {fmt(result['se'])})")
    if not found:
        print(f"error: {args.new} and {args.base} share no out-of-fold prediction", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
