"""What the inference screens share: each fold model of a cross-validation run analyses the cases it held out, in
a screen's own way, and the predictions are stored in the cross-validation's format (``OUT/oof/<case><suffix>.npz``)
so that ``compare_runs`` pairs them with the run's own.

    run_screen(argv, __doc__, suffix, analyse)   # analyse(fold, model_dir, config, found, tmp) -> (case, result)
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence, Tuple

from ..common.datasets import REAL_DATA_ROOTS, case_folders
from .cross_validate import save_prediction

Analyse = Callable[[int, Path, dict, object, Path], tuple]
"""(fold, fold model folder, the fold's config.json, discovered case, a temporary folder) -> (Case, AnalysisResult)."""


def held_out_cases(cv: Path, data: Sequence[str]) -> Iterator[Tuple[int, Path, dict, object]]:
    """(fold, model folder, the fold's config.json, discovered case) for each case a fold model (``cv/foldK/model``)
    did not train on that is found under ``data``."""
    folders = case_folders(data)
    for model_dir in sorted(cv.glob("fold*/model")):
        config = json.loads((model_dir.parent / "config.json").read_text())
        for case_id in config["validation_cases"]:
            if case_id in folders:
                yield int(model_dir.parent.name[4:]), model_dir, config, folders[case_id]


def run_screen(argv: Optional[Sequence[str]], description: str, suffix: str, analyse: Analyse) -> int:
    """The screen's command line (``--cv RUN --out OUT [--data ROOT ...]``): every held-out case not yet stored is
    analysed by ``analyse`` and stored as ``OUT/oof/<case><suffix>.npz`` (resumable). Exit status 2 without fold
    models or cases."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cv", type=Path, required=True, help="a cross_validate run folder with its fold models")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", nargs="+", default=REAL_DATA_ROOTS)
    args = parser.parse_args(argv)
    cases = list(held_out_cases(args.cv, args.data))
    if not cases:
        print(f"error: {args.cv}: no fold models (foldK/model), or no labelled cases", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        for fold, model_dir, config, found in cases:
            out = args.out / "oof" / f"{found.case_id}{suffix}.npz"
            if out.is_file():
                continue
            started = time.perf_counter()
            case, result = analyse(fold, model_dir, config, found, Path(tmp))
            seconds = time.perf_counter() - started
            save_prediction(out, case, result, fold, seconds)
            print(f"fold {fold} {found.case_id}: {seconds:.1f} s", file=sys.stderr, flush=True)
    return 0
