"""Cross-validation of the slice-grade classifier (seed 002) on the real cases.

    python -m training.slice_grade.cross_validate --config training/configs/slice_grade.yaml --run-dir runs/sgcv \\
        [--folds 0,1] [--report-only] [--table training/results/slice_grade_cv/slice_grade_cv.md]

Folds: those of the segmentation cross-validation (``training/common/folds.py``: ``--n-folds`` 5, ``--fold-seed`` 0,
stratified by grade and source over every real case of ``--real-roots``). Fold k trains the shipped recipe
(``train_slice_grade.train``) on the real cases of the other folds and the training phantoms, stops early and fits its
temperature on the validation phantoms, then predicts its own graded real cases (slices chosen from the expert
labels) into ``RUN/oof/fold{k}.json``. Every step resumes. The report (``RUN/cv_report.json``, ``--table``): per
aggregation the out-of-fold AUC with a bootstrap 95 % interval, accuracy and Brier score, and the per-case table.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from GliomaAnalysisLib.models.slice_grade import AGGREGATIONS, SliceGradeConfig

from ..common.classification_data import ClassificationSample, load_real_samples, phantom_split
from ..common.config import cross_validation_parser, parse_args
from ..common.folds import assign_folds, read_case_infos
from ..common.metrics import auc_table, binary_metrics
from .export_slice_grade import case_table, fit_case_temperature, logits_of, patient_probabilities
from .slice_grade_data import cut_cases
from .train_slice_grade import build_parser as train_parser, train

Phantoms = Tuple[List[ClassificationSample], List[ClassificationSample], List[ClassificationSample]]


def build_parser() -> argparse.ArgumentParser:
    parser = cross_validation_parser(train_parser(), __doc__)
    parser.add_argument("--n-folds", type=int, default=5)
    parser.add_argument("--fold-seed", type=int, default=0)
    parser.add_argument("--folds", default=None, help="comma-separated folds to run (default: all)")
    return parser


def network_config(args: argparse.Namespace) -> SliceGradeConfig:
    return SliceGradeConfig(backbone=args.backbone, widths=tuple(args.widths), crop=args.crop,
                            max_slices=args.max_slices)


def run_fold(args: argparse.Namespace, fold: int, real: Sequence[ClassificationSample], folds: Dict[str, int],
             phantoms: Phantoms) -> Path:
    """Train fold ``fold`` and predict its graded real cases into RUN/oof/fold{k}.json (skipped when present)."""
    out = args.run_dir / "oof" / f"fold{fold}.json"
    if out.is_file():
        return out
    config = network_config(args)
    fold_args = argparse.Namespace(**{**vars(args), "out": args.run_dir / f"fold{fold}", "resume": True})
    train_real = [s for s in real if folds[s.case_id] != fold]
    cases = {"train": cut_cases(train_real + list(phantoms[0]), config),
             "validation": cut_cases(phantoms[1], config)}
    model = train(fold_args, cases, config)
    temperature = 1.0
    if cases["validation"]:
        temperature = fit_case_temperature(logits_of(model, [c.eval for c in cases["validation"]]),
                                           np.array([c.target for c in cases["validation"]]), args.temperature_fit)
    held_out = cut_cases([s for s in real if folds[s.case_id] == fold], config)
    probabilities = patient_probabilities(logits_of(model, [c.eval for c in held_out]), temperature)
    predicted = {c.case_id: {"grade": c.target, "slices": int(len(c.eval)),
                             **{a: float(probabilities[a][k]) for a in AGGREGATIONS}}
                 for k, c in enumerate(held_out)}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"fold": fold, "temperature": temperature,
                               "train_real": sorted(c.case_id for c in cases["train"] if c.source == "real"),
                               "cases": predicted}, indent=1))
    return out


def report(run: Path, n_folds: int, fold_seed: int) -> Dict:
    """Out-of-fold metrics per aggregation over every predicted fold (of ``n_folds``), and the per-case table."""
    folds = [json.loads(p.read_text()) for p in sorted((run / "oof").glob("fold*.json"))]
    if not folds:
        raise SystemExit(f"error: {run / 'oof'}: no out-of-fold predictions yet")
    cases = {case_id: {**row, "fold": f["fold"]} for f in folds for case_id, row in f["cases"].items()}
    y = np.array([c["grade"] for c in cases.values()], dtype=float)
    return {"folds": sorted(f["fold"] for f in folds), "n_folds": n_folds, "fold_seed": fold_seed,
            "n_cases": len(cases),
            "aggregations": {a: binary_metrics(np.array([c[a] for c in cases.values()]), y) for a in AGGREGATIONS},
            "cases": cases}


def markdown(result: Dict) -> str:
    """The report as Markdown: one row per aggregation, then one row per case."""
    lines = [f"# Slice-grade classifier: folds {result['folds']} of a {result['n_folds']}-fold cross-validation on "
             f"{result['n_cases']} graded real cases", "",
             "P(HGG), calibrated as at inference (each fold's temperature from its validation phantoms); slices "
             "chosen from the expert labels. Produced by `python -m training.slice_grade.cross_validate --config "
             "training/configs/slice_grade.yaml --run-dir RUN --table "
             "training/results/slice_grade_cv/slice_grade_cv.md`.",
             "",
             *auc_table("aggregation", "HGG", result["aggregations"])]
    return "\n".join(lines + ["", *case_table(result["cases"])]) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parse_args(parser, argv)
    folds_to_run = list(range(args.n_folds)) if args.folds is None else [int(f) for f in args.folds.split(",")]
    if not all(0 <= f < args.n_folds for f in folds_to_run):
        parser.error(f"--folds {args.folds}: each fold must be between 0 and {args.n_folds - 1}")
    torch.set_num_threads(args.threads)
    args.run_dir.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        started = time.time()
        real = load_real_samples(args.real_roots, args.cache)
        if not real:
            print(f"error: no real cases found under {', '.join(map(str, args.real_roots))}", file=sys.stderr)
            return 2
        folds = assign_folds(read_case_infos(args.real_roots, [s.case_id for s in real]), args.n_folds,
                             args.fold_seed)
        phantoms = phantom_split(args.cache, args.n_phantoms) if args.n_phantoms else ([], [], [])
        print(f"{len(real)} real cases, {sum(map(len, phantoms))} phantoms loaded in {time.time() - started:.0f} s",
              file=sys.stderr)
        for fold in folds_to_run:
            run_fold(args, fold, real, folds, phantoms)
    result = report(args.run_dir, args.n_folds, args.fold_seed)
    (args.run_dir / "cv_report.json").write_text(json.dumps(result, indent=1))
    if args.table:
        args.table.parent.mkdir(parents=True, exist_ok=True)
        args.table.write_text(markdown(result))
    print(markdown(result).split("\n\n| case")[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
