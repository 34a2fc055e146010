"""Cross-validation of the multi-task classifier on the real cases, over the segmentation cross-validation's folds.

    python -m training.multitask.cross_validate --config training/configs/multitask.yaml \\
        --seg-cv runs/cv3_ce --run-dir runs/mtcv [--folds 0,1] [--report-only] [--table results.md]
    python -m training.multitask.cross_validate --config training/configs/multitask.yaml \\
        --backbone glioma_seg --folds-from SEG_CV_REPORT.json --run-dir runs/mtcv

Fold k's heads sit on fold k's segmentation network (``SEG_CV/fold{k}``, trained without fold k's cases), or with
``--backbone`` on one stored network for every fold (the shipped one was trained on every real case: its encoder saw
each case's tumor labels, never its grade or IDH), the folds then read from a segmentation report's per-case
``fold``. The heads learn from the real cases of the other folds (and the training phantoms, unless ``--n-phantoms 0``), stop early on the
validation phantoms and take their temperatures from them (no phantoms: a fixed number of steps, temperature 1).
Fold k's real cases are then predicted once, with the MC-dropout heads as at inference, into ``RUN/oof/fold{k}.json``.
Every step resumes. The report (``RUN/cv_report.json``, ``--table``) gives per task the out-of-fold AUC with a
bootstrap 95 % interval, accuracy and Brier score, and the per-case table.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

from GliomaAnalysisLib.models.calibration import apply_temperature, fit_temperature
from GliomaAnalysisLib.models.model_store import load_model
from GliomaAnalysisLib.models.multitask import MC_SAMPLES, TASKS, composition_from_volumes

from ..common.classification_data import ClassificationSample, ClassificationSplit, load_real_samples, phantom_split
from ..common.config import cross_validation_parser, parse_args
from ..common.metrics import auc_table, binary_metrics
from ..segmentation.cross_validate import store_fold_model
from . import volume_grade
from .export_multitask import _task_arrays
from .train_multitask import build_multitask, fit_heads, mc_probabilities, pooled_features


def build_parser() -> argparse.ArgumentParser:
    from .train_multitask import build_parser as train_parser

    parser = cross_validation_parser(train_parser(), __doc__)
    parser.add_argument("--seg-cv", type=Path, default=None,
                        help="segmentation cross-validation run folder (fold{k}/ inside)")
    parser.add_argument("--backbone", default=None,
                        help="a stored segmentation model every fold's heads read instead of --seg-cv's fold networks")
    parser.add_argument("--folds-from", type=Path, default=None,
                        help="with --backbone: a segmentation cv_report.json whose per-case folds (and out-of-fold "
                             "volumes, for the grade from volumes) are used")
    parser.add_argument("--folds", default=None,
                        help="comma-separated folds to run (default: every fold of --seg-cv or --folds-from)")
    return parser


def fold_numbers(seg_cv: Optional[Path], folds: Optional[str], assigned: Optional[Dict[str, int]] = None,
                 ) -> List[int]:
    """The folds to run: ``folds`` (comma-separated), every fold of ``assigned`` (case -> fold) or every ``fold{k}``
    of the segmentation run."""
    if folds:
        return [int(f) for f in folds.split(",")]
    if assigned is not None:
        return sorted(set(assigned.values()))
    return sorted(int(p.name[4:]) for p in seg_cv.glob("fold[0-9]*") if (p / "config.json").is_file())


def report_folds(seg_report: Path) -> Dict[str, int]:
    """case -> fold of a segmentation cross-validation report (``per_case[case]["fold"]``)."""
    return {case: int(row["fold"]) for case, row in json.loads(seg_report.read_text())["per_case"].items()}


def fold_backbone(args: argparse.Namespace, fold: int, assigned: Optional[Dict[str, int]]):
    """(segmentation network, held-out case ids) of fold ``fold``."""
    if args.backbone:
        seg, _ = load_model(args.backbone)
        return seg, {case for case, k in assigned.items() if k == fold}
    seg_config = json.loads((args.seg_cv / f"fold{fold}" / "config.json").read_text())
    seg, _ = load_model(f"glioma_seg_fold{fold}", store_fold_model(args.seg_cv, fold))
    return seg, set(seg_config["validation_cases"])


def run_fold(args: argparse.Namespace, fold: int, real: List[ClassificationSample],
             phantoms: tuple, assigned: Optional[Dict[str, int]] = None) -> Path:
    """Train fold ``fold``'s heads and predict its real cases into RUN/oof/fold{k}.json (skipped when present)."""
    out = args.run_dir / "oof" / f"fold{fold}.json"
    if out.is_file():
        return out
    seg, held_out = fold_backbone(args, fold, assigned)
    fold_args = argparse.Namespace(**{**vars(args), "out": args.run_dir / f"fold{fold}", "resume": True,
                                      "finetune": False})
    fold_args.out.mkdir(parents=True, exist_ok=True)
    train = [s for s in real if s.case_id not in held_out] + list(phantoms[0])
    split = ClassificationSplit(train, list(phantoms[1]), [])
    log_path = fold_args.out / "log.jsonl"

    def log(**record) -> None:
        record.update(fold=fold, time=time.strftime("%Y-%m-%dT%H:%M:%S"))
        with open(log_path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        print(json.dumps(record), file=sys.stderr, flush=True)

    model = build_multitask(seg, fold_args)
    summary = fit_heads(model, split, fold_args, log)
    model.load_state_dict(torch.load(fold_args.out / "best.pt", weights_only=True))
    model.eval()
    temperatures = {task: 1.0 for task in TASKS}
    if split.validation:
        logits = mc_probabilities(model, pooled_features(model, split.validation), MC_SAMPLES)
        temperatures = {task: fit_temperature(*_task_arrays(split.validation, logits, task)) for task in TASKS}
    validation = [s for s in real if s.case_id in held_out]
    logits = mc_probabilities(model, held_out_features(model, validation, seg_report(args)), MC_SAMPLES)
    cases = {s.case_id: {"targets": s.targets,
                         "logit": {task: float(logits[task][i]) for task in TASKS},
                         "probability": {task: float(apply_temperature(logits[task][i:i + 1], temperatures[task])[0])
                                         for task in TASKS}}
             for i, s in enumerate(validation)}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"fold": fold, "backbone": args.backbone or f"{args.seg_cv}/fold{fold}",
                               "temperatures": temperatures, "steps": summary["step"],
                               "train_real": sorted(s.case_id for s in train if s.source == "real"),
                               "cases": cases}, indent=1))
    return out


def seg_report(args: argparse.Namespace) -> Path:
    """The segmentation cross-validation report of this run: ``--folds-from``, else ``SEG_CV/cv_report.json``."""
    return args.folds_from or (args.seg_cv / "cv_report.json")


def held_out_features(model, validation: List[ClassificationSample], seg_cv_report: Path) -> torch.Tensor:
    """The heads' input (N, ``pooled_dim``) of held-out real cases. Their composition, when the layout reads it,
    is that of their out-of-fold segmentation (``seg_cv_report``'s predicted volumes), as ``analyze`` reads it from a
    segmentation of a case the networks never saw, not that of the expert labels."""
    pooled = pooled_features(model, validation)
    if model.config.composition:
        predicted = volume_grade.case_volumes(seg_cv_report)
        missing = [s.case_id for s in validation if s.case_id not in predicted]
        if missing:
            raise SystemExit(f"error: {seg_cv_report}: no out-of-fold volumes of {', '.join(missing)}")
        composition = np.concatenate([composition_from_volumes(predicted[s.case_id][0]) for s in validation])
        pooled[:, -composition.shape[1]:] = torch.from_numpy(composition)
    return pooled


def report(run: Path, seg_report: Optional[Path] = None) -> Dict:
    """Out-of-fold metrics per task over every predicted fold, the per-case table and, given a segmentation
    cross-validation report ``seg_report``, the grade-from-volumes model's out-of-fold metrics (``volume_grade``)."""
    folds = [json.loads(p.read_text()) for p in sorted((run / "oof").glob("fold*.json"))]
    cases = {case_id: {**row, "fold": f["fold"]} for f in folds for case_id, row in f["cases"].items()}
    tasks = {}
    for task in TASKS:
        known = [c for c in cases.values() if c["targets"].get(task) is not None]
        if known:
            tasks[task] = binary_metrics(np.array([c["probability"][task] for c in known]),
                                         np.array([c["targets"][task] for c in known], dtype=float))
    result = {"folds": [f["fold"] for f in folds], "n_cases": len(cases), "tasks": tasks, "cases": cases,
              "backbones": sorted({str(f.get("backbone", "segmentation fold networks")) for f in folds})}
    if seg_report is not None and seg_report.is_file():
        add_volume_grade(result, seg_report)
    return result


def add_volume_grade(result: Dict, seg_report: Path) -> None:
    """Score the grade-from-volumes model out of fold on the volumes of the segmentation cross-validation report
    ``seg_report``: each case of ``result`` gets its ``volume_grade`` P(HGG) (replaced when present), ``result`` the
    metrics over the graded ones (``volume_grade``) and the report it read (``volume_grade_source``)."""
    cases = result["cases"]
    features = volume_grade.case_features(seg_report)
    grades = {c: row["targets"].get("grade") for c, row in cases.items()}
    volume_p = volume_grade.cross_validated_probabilities({c: v for c, v in features.items() if c in cases}, grades)
    for case_id, row in cases.items():
        row["volume_grade"] = volume_p.get(case_id)
    known = [c for c in volume_p if grades.get(c) is not None]
    result["volume_grade"] = binary_metrics(np.array([volume_p[c] for c in known]),
                                            np.array([grades[c] for c in known], dtype=float))
    result["volume_grade_source"] = str(seg_report)


def markdown(result: Dict) -> str:
    """The report as Markdown: the per-task table, then one row per case."""
    lines = [f"# Multi-task classifier: {len(result['folds'])}-fold cross-validation on {result['n_cases']} real cases",
             "", "Positive class: grade HGG, IDH mutant, 1p/19q codeleted, MGMT methylated. Probabilities calibrated "
             "as at inference (temperatures from the validation phantoms of each fold). Backbone: "
             + ", ".join(f"`{b}`" for b in result.get("backbones", [])) + ".", "",
             *auc_table("task", "positives", {f"{task} (heads)": m for task, m in result["tasks"].items()})]
    volume = result.get("volume_grade")
    if volume:
        lines += ["", "Grade from the segmentation's volumes (`GliomaAnalysisLib/models/volume_grade.py`: enhancing "
                  "volume and its share of the whole tumor, from each case's out-of-fold segmentation; fold k's "
                  "logistic model fitted on the other folds"
                  + (f"; volumes from `{result['volume_grade_source']}`" if result.get("volume_grade_source") else "")
                  + "):", "",
                  *auc_table("model", "HGG", {"grade from volumes": volume})]
    lines += ["", "| case | fold | grade (truth) | P(HGG) heads | P(HGG) volumes | IDH (truth) | P(IDH mutant) |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    names = {"grade": ("LGG", "HGG"), "idh": ("wildtype", "mutant")}
    for case_id, c in sorted(result["cases"].items()):
        truth = {t: "?" if c["targets"].get(t) is None else names[t][c["targets"][t]] for t in names}
        by_volume = "n/a" if c.get("volume_grade") is None else f"{c['volume_grade']:.2f}"
        lines.append(f"| {case_id} | {c['fold']} | {truth['grade']} | {c['probability']['grade']:.2f} | {by_volume} | "
                     f"{truth['idh']} | {c['probability']['idh']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = build_parser()
    args = parse_args(parser, argv)
    if bool(args.seg_cv) == bool(args.backbone) or bool(args.backbone) != bool(args.folds_from):
        parser.error("give --seg-cv, or --backbone with --folds-from")
    torch.set_num_threads(args.threads)
    args.run_dir.mkdir(parents=True, exist_ok=True)
    assigned = report_folds(args.folds_from) if args.folds_from else None
    if not args.report_only:
        real = load_real_samples(args.real_root, args.cache)
        phantoms = phantom_split(args.cache, args.n_phantoms) if args.n_phantoms else ([], [], [])
        for fold in fold_numbers(args.seg_cv, args.folds, assigned):
            run_fold(args, fold, real, phantoms, assigned)
    result = report(args.run_dir, seg_report(args))
    (args.run_dir / "cv_report.json").write_text(json.dumps(result, indent=1))
    text = markdown(result)
    if args.table:
        args.table.parent.mkdir(parents=True, exist_ok=True)
        args.table.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
