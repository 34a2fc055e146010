"""Paired comparison of two training runs by their final models' internal validation (recipe screens from the
training logs alone: a GPU machine sends back a few kB per fold instead of the weights).

    python -m training.segmentation.compare_validation RUN_NEW RUN_BASE

A run is a ``train_folds`` or ``cross_validate`` folder (``RUN/fold{k}/log.jsonl``) or one fold's folder. Each
fold's last log record holds ``val_cases``: the Dice (WT, TC, ET) of every case that fold held out, on the 2 mm
working grid, argmax of one plain pass with all four modalities (``train_segmentation.validation_dice``). Prints
each case both runs scored, then the mean of each run and the mean paired difference with its standard error.
These are screening figures: the published ones come from ``cross_validate`` at full resolution after the chosen
post-processing (``compare_runs`` pairs those).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from .compare_runs import paired_statistics
from .cross_validate import REGIONS


def final_validation(run: Path) -> Dict[str, Dict[str, float]]:
    """{case: {region: Dice}} from the last ``val_cases`` record of each ``log.jsonl`` in ``run`` or its fold
    folders (empty when there is none)."""
    scores: Dict[str, Dict[str, float]] = {}
    for log in sorted([run / "log.jsonl", *run.glob("*/log.jsonl")]):
        if not log.is_file():
            continue
        records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        finals = [r["val_cases"] for r in records if "val_cases" in r]
        if finals:
            scores.update(finals[-1])
    return scores


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("new", type=Path, help="the screened run folder")
    parser.add_argument("base", type=Path, help="the run it is compared with")
    args = parser.parse_args(argv)
    runs = {}
    for run in (args.new, args.base):
        runs[run] = final_validation(run)
        if not runs[run]:
            print(f"error: {run}: no finished run with per-case validation (log.jsonl records with val_cases)",
                  file=sys.stderr)
            return 2
    new, base = runs[args.new], runs[args.base]
    cases = sorted(set(new) & set(base))
    if not cases:
        print(f"error: {args.new} and {args.base} validated no case in common", file=sys.stderr)
        return 2
    for case in cases:
        a, b = new[case], base[case]
        print(f"  {case:<24} new " + " ".join(f"{a[r]:.3f}" for r in REGIONS)
              + "   base " + " ".join(f"{b[r]:.3f}" for r in REGIONS))
    result = paired_statistics(np.array([[new[c][r] for r in REGIONS] + [base[c][r] for r in REGIONS]
                                         for c in cases]))
    fmt = lambda d: " / ".join(f"{d[r]:.3f}" for r in REGIONS)  # noqa: E731
    print(f"{result['cases']} cases (2 mm, argmax, one pass, all four modalities): new {fmt(result['new'])}, "
          f"base {fmt(result['base'])}, paired difference {fmt(result['difference'])} (SE {fmt(result['se'])})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
