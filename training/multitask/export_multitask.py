"""Calibrate, evaluate and export a trained multi-task classifier with its model card.

    python -m training.multitask.export_multitask /root/glioma-runs/multitask --out Resources/models

Temperatures are fitted per task on the validation split (phantoms + real validation cases); metrics are then
computed with the calibrated MC-dropout probabilities (as at inference) on the held-out test phantoms and the real
validation cases, separately. Calibration and decision-curve plots go to the run folder.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

from GliomaAnalysisLib.models.evidence import evidence_section
from GliomaAnalysisLib.models.calibration import apply_temperature, fit_temperature
from GliomaAnalysisLib.models.model_store import load_model, save_model
from GliomaAnalysisLib.models.multitask import MC_SAMPLES, TASK_LABELS, TASKS, MultiTaskConfig
from GliomaAnalysisLib.models.multitask_net import MultiTaskNet

from ..common.classification_data import ClassificationSample, load_classification_split
from ..segmentation.segmentation_data import VALIDATION_CASES
from ..common.metrics import auc_evidence, auc_table, binary_report
from ..common.plots import calibration_plot, decision_curve_plot
from . import volume_grade
from ..common.datasets import DEFAULT_CACHE
from .train_multitask import mc_probabilities, pooled_features
from ..common.run_record import git_commit

MODEL_NAME = "glioma_multitask"


def _task_arrays(samples: List[ClassificationSample], logits: Dict[str, np.ndarray], task: str):
    keep = np.array([s.targets.get(task) is not None for s in samples], dtype=bool)
    labels = np.array([s.targets[task] for s in samples if s.targets.get(task) is not None], dtype=float)
    return logits[task][keep], labels


def evaluate(logits: Dict[str, Dict[str, np.ndarray]], groups: Dict[str, List[ClassificationSample]],
             temperatures: Dict[str, float]) -> Dict[str, Dict[str, Dict]]:
    """{group: {task: binary_report}} with calibrated probabilities (and uncalibrated ECE for comparison)."""
    out: Dict[str, Dict[str, Dict]] = {}
    for group, samples in groups.items():
        out[group] = {}
        for task in TASKS:
            z, y = _task_arrays(samples, logits[group], task)
            report = binary_report(apply_temperature(z, temperatures[task]), y)
            report["ece_uncalibrated"] = binary_report(apply_temperature(z, 1.0), y)["ece"]
            out[group][task] = report
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--out", type=Path, default=Path("Resources/models"))
    parser.add_argument("--real-root", type=Path, nargs="+", default=[Path("../shared/data/brats18")])
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--n-phantoms", type=int, default=240)
    parser.add_argument("--seg-model", default="glioma_seg")
    parser.add_argument("--seg-model-dir", type=Path, default=None, help="folder of --seg-model (default: shipped)")
    parser.add_argument("--all-real-train", action="store_true", help="the run trained on every real case")
    parser.add_argument("--cv-report", type=Path, default=None,
                        help="cv_report.json of training.multitask.cross_validate: the card's real-case evidence")
    parser.add_argument("--seg-cv", type=Path, default=None,
                        help="segmentation cross-validation folder: fit the grade-from-volumes model on its "
                             "out-of-fold volumes of every graded real case (card block grade_from_volumes)")
    parser.add_argument("--version", default="0.1.0")
    parser.add_argument("--threads", type=int, default=1)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    split = load_classification_split(args.real_root, args.cache, args.n_phantoms,
                                      real_validation=() if args.all_real_train else VALIDATION_CASES)
    seg, seg_card = load_model(args.seg_model, args.seg_model_dir)
    model = MultiTaskNet(MultiTaskConfig.from_dict(json.loads((args.run / "network.json").read_text())))
    model.load_state_dict(torch.load(args.run / "best.pt", weights_only=True))
    model.eval()
    if not same_weights(model.backbone, seg):  # fine-tuned: the segmentation pass's maps are not the backbone's
        if not fine_tuned(args.run):
            raise SystemExit(f"{args.run}: its backbone is not the weights of --seg-model {args.seg_model}, and the "
                             "run did not fine-tune it; export with the segmentation model it was trained on")
        seg_card = {**seg_card, "sha256": None}

    temperatures = calibrate(model, split.validation)
    groups = {"test_phantoms": split.test}
    if any(s.source == "real" for s in split.validation):
        groups["real_validation"] = [s for s in split.validation if s.source == "real"]
    logits = {group: mc_probabilities(model, pooled_features(model, samples), MC_SAMPLES)
              for group, samples in groups.items()}
    metrics = evaluate(logits, groups, temperatures)
    write_plots(logits, groups, temperatures, args.run)
    volume_block = fit_volume_grade(args.seg_cv, split) if args.seg_cv else None
    card = build_card(args, split, seg_card, temperatures, metrics, volume_block)
    path = save_model(model, card, args.out, MODEL_NAME)
    card = json.loads(path.read_text())
    (args.out / f"{MODEL_NAME}.md").write_text(model_card_markdown(card))
    print(json.dumps(metrics, indent=1))
    return 0


def same_weights(backbone: torch.nn.Module, seg: torch.nn.Module) -> bool:
    """Whether the multi-task backbone still has the segmentation network's weights (not so after --finetune); only
    then may ``analyze`` hand the heads the segmentation pass's maps (the card's ``backbone.sha256``)."""
    theirs = seg.state_dict()
    return all(k in theirs and torch.equal(v, theirs[k].to(v.dtype)) for k, v in backbone.state_dict().items())


def fine_tuned(run: Path) -> bool:
    """Whether the training run of folder ``run`` trained its backbone (``--finetune``, from its log)."""
    for line in (run / "log.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record.get("event") == "start":
            return str(record.get("args", {}).get("finetune")) == "True"
    return False


def calibrate(model: MultiTaskNet, validation: List[ClassificationSample]) -> Dict[str, float]:
    """One temperature per task, fitted on the validation samples' MC-dropout logits."""
    logits = mc_probabilities(model, pooled_features(model, validation), MC_SAMPLES)
    return {task: fit_temperature(*_task_arrays(validation, logits, task)) for task in TASKS}


def write_plots(logits: Dict[str, Dict[str, np.ndarray]], groups: Dict[str, List[ClassificationSample]],
                temperatures: Dict[str, float], run: Path) -> None:
    """Reliability and decision-curve plots per task (groups with both classes) into the run folder."""
    for task in TASKS:
        curves = {}
        for group, samples in groups.items():
            z, y = _task_arrays(samples, logits[group], task)
            if len(y) and 0 < y.sum() < len(y):
                curves[group.replace("_", " ")] = (apply_temperature(z, temperatures[task]), y)
        if curves:
            calibration_plot(curves, run / f"calibration_{task}.png", f"{task}: reliability (calibrated)")
            decision_curve_plot(curves, run / f"decision_curve_{task}.png", f"{task}: decision curve")


def fit_volume_grade(seg_cv: Path, split) -> Dict:
    """The card's ``grade_from_volumes`` block, fitted on the out-of-fold volumes of every graded real case."""
    return volume_grade.fit_on_report(seg_cv / "cv_report.json", {s.case_id: s.targets["grade"] for s in split.all()
                                                                  if s.source == "real" and s.known("grade")})


def build_card(args: argparse.Namespace, split, seg_card: Dict, temperatures: Dict[str, float], metrics: Dict,
               volume_block: Optional[Dict]) -> Dict:
    """The model card (before ``save_model`` adds the weights' name and hash)."""
    log = [json.loads(line) for line in (args.run / "log.jsonl").read_text().splitlines()]
    done = [r for r in log if r.get("event") == "done"]
    started = [r for r in log if r.get("event") == "start"]
    real_share = started[-1].get("real_share_applied") if started else None
    cross_validation = json.loads(args.cv_report.read_text()) if args.cv_report else None
    return {
        "version": args.version,
        "task": "grade (LGG/HGG), IDH (wildtype/mutant), 1p/19q (intact/codeleted), MGMT (unmethylated/methylated)",
        "architecture": "multitask",
        "disclaimer": "Research use only; not a medical device.",
        "labels": {task: {"0": neg, "1": pos} for task, (neg, pos) in TASK_LABELS.items()},
        "backbone": {"model": seg_card["name"], "sha256": seg_card["sha256"], "frozen": seg_card["sha256"] is not None},
        "calibration": {task: {"temperature": round(t, 4), "fitted_on": "validation split"}
                        for task, t in temperatures.items()},
        "training_data": {
            "real_cases": [s.case_id for s in split.train if s.source == "real"],
            "real_label_source": ", ".join(f"{root}/labels.csv" for root in args.real_root),
            "phantoms": {"train": sum(s.source == "phantom" for s in split.train),
                         "validation": sum(s.source == "phantom" for s in split.validation),
                         "test": len(split.test),
                         "label_source": "simulated markers of GliomaAnalysis phantoms (not real biology)"},
            "real_share_of_draws": real_share,
        },
        "validation_split": [s.case_id for s in split.validation],
        "metrics": metrics,
        **({"grade_from_volumes": volume_block} if volume_block else {}),
        **({"real_cross_validation": cv_summary(cross_validation, args.cv_report)} if cross_validation else {}),
        **({"evidence": cv_evidence(cross_validation, args.cv_report)} if cross_validation else {}),
        "uncertainty_sigmas": done[-1]["sigmas"] if done else None,
        "training": {"steps": done[-1]["step"] if done else None, "seconds": done[-1]["seconds"] if done else None,
                     "log": "log.jsonl"},
        "git_commit_at_export": git_commit(),
        "exported": time.strftime("%Y-%m-%d"),
    }


def cv_summary(report: Dict, path: Path) -> Dict:
    """The card's ``real_cross_validation``: per task n, positives, AUC and its bootstrap interval, Brier."""
    keys = ("n", "positives", "auc", "auc_95", "accuracy", "brier")
    out = {"source": str(path), "folds": report["folds"], "n_cases": report["n_cases"], "heads": heads_backbone(report),
           "tasks": {task: {k: m[k] for k in keys} for task, m in report["tasks"].items()}}
    if report.get("volume_grade"):
        out["grade_from_volumes"] = {k: report["volume_grade"][k] for k in keys}
    out["worst_grade"] = worst_grade_cases(report)
    return out


def worst_grade_cases(report: Dict, n: int = 5) -> List[Dict]:
    """The ``n`` graded cases whose heads' out-of-fold P(HGG) lies furthest from their grade: {case, grade (1 HGG),
    p_hgg, p_hgg_volumes}, worst first."""
    graded = [(case, row) for case, row in report.get("cases", {}).items() if row["targets"].get("grade") is not None]
    graded.sort(key=lambda item: -abs(item[1]["targets"]["grade"] - item[1]["probability"]["grade"]))
    return [{"case": case, "grade": row["targets"]["grade"], "p_hgg": round(row["probability"]["grade"], 3),
             "p_hgg_volumes": None if row.get("volume_grade") is None else round(row["volume_grade"], 3)}
            for case, row in graded[:n]]


def cv_evidence(report: Dict, path: Path) -> Dict[str, Dict]:
    """The card's ``evidence`` block (``GliomaAnalysisLib/models/evidence.py``) from the out-of-fold AUCs; tasks
    without a real label say so."""
    evidence = {}
    for task in TASKS:
        m = report["tasks"].get(task)
        by_volume = task == "grade" and bool(report.get("volume_grade"))
        if by_volume:
            m = report["volume_grade"]
        kind = (f"{len(report['folds'])}-fold cross-validation over the project's real cases "
                + ("(grade from the out-of-fold segmentation's volumes)" if by_volume else heads_backbone(report)))
        evidence[task] = auc_evidence(m, kind, str(path))
    return evidence


def heads_backbone(report: Dict) -> str:
    """How a multi-task cross-validation's heads met their backbone, in words for the card."""
    stored = [b for b in report.get("backbones", []) if "/" not in b and b != "segmentation fold networks"]
    if stored:
        return (f"(every fold's heads on the stored network {', '.join(stored)}, which was trained on every real "
                "case's tumor labels, never on its grade or IDH)")
    return "(each fold's heads on that fold's segmentation network)"


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def model_card_markdown(card: Dict) -> str:
    """Human-readable model card."""
    lines = [f"# Model card: {card['name']} (multi-task classifier)", "",
             "> Research use only. Not a medical device.", ""]
    if card.get("evidence"):
        lines += [evidence_section(card, "Levels from the cross-validation over the project's real cases (below); "
                                         "1p/19q and MGMT were never validated on a real label. Reports show every "
                                         "prediction with its level.")]
    backbone = card["backbone"]
    where = (f"the frozen encoder of the segmentation model `{backbone['model']}` (sha256 {backbone['sha256'][:12]}...), "
             "read from the segmentation pass itself" if backbone.get("sha256") else
             f"an encoder fine-tuned from `{backbone['model']}` (a copy in this model, run on every case)")
    lines += [f"Heads for grade, IDH, 1p/19q and MGMT on {where}: "
              "GAP+GMP of its level-2 map (8 mm) and of its transformed deepest map (16 mm) inside a "
              "tumor-centred 128 mm box, of the whole transformed deepest map, and of its level-1 (4 mm) and level-2 "
              "maps over the tumor's voxels"
              + ("; then the segmentation's composition: log(1 + enhancing volume in mL) and the enhancing share of "
                 "the whole tumor of the final volumes, and whether T1CE was there (without it all three read 0)"
                 if card.get("network", {}).get("composition") else "") + "; channel-attention fusion, "
              "\"Summarize and Separate\" heads (seed 001, Fig. A12). Class-weighted cross-entropy per task, labels "
              "masked where unknown, aleatoric-uncertainty task weighting (eq. 7), Tumor-CutMix"
              + (f"; the real cases made {card['training_data']['real_share_of_draws']:.0%} of the training draws, "
                 "the phantoms the rest, and the class weights follow the draws"
                 if card["training_data"].get("real_share_of_draws") else "") + ". Uncertainty: "
              "standard deviation over 20 MC-dropout passes of the heads (eq. 6). Temperatures per task fitted on "
              "the validation split.", "",
              "## Where the labels come from", "",
              f"- Real cases: {card['training_data']['real_label_source']}. No real 1p/19q or MGMT label exists here.",
              f"- Phantoms: {card['training_data']['phantoms']['label_source']}. Phantom metrics say the heads can "
              "read the imaging tendencies built into the phantoms; they say nothing about real tumors.", ""]
    block = card.get("grade_from_volumes")
    if block:
        lines += ["## The reported grade comes from the segmentation's volumes", "",
                  "`analyze` replaces the grade head's answer by a logistic model on two numbers of the final "
                  "segmentation: log(1 + enhancing volume in mL) and the enhancing share of the whole tumor "
                  "(`GliomaAnalysisLib/models/volume_grade.py`), fitted on the out-of-fold segmentations of "
                  f"{block['n']} graded real cases ({block['hgg']} HGG, {block['lgg']} LGG; L2 {block['l2']}). "
                  f"Standardised weights {block['weights'][0]:.2f} and {block['weights'][1]:.2f}, intercept "
                  f"{block['intercept']:.2f}. Uncertainty: the standard deviation of P(HGG) over "
                  f"{len(block['bootstrap'])} bootstrap refits. A non-enhancing high-grade tumor (or an enhancing "
                  "low-grade one) will be called wrongly, and the answer inherits every error of the ET volume "
                  "(e.g. without T1CE).", ""]
    cv = card.get("real_cross_validation")
    if cv:
        rows = dict(cv["tasks"])
        if cv.get("grade_from_volumes"):
            rows["grade from volumes (reported)"] = cv["grade_from_volumes"]
        lines += [f"## Real cases: {len(cv['folds'])}-fold cross-validation ({cv['n_cases']} cases)", "",
                  "What to expect on real scans. Fold k's heads never saw fold k's cases "
                  + cv.get("heads", "(each fold's heads on that fold's segmentation network)")
                  + (", and read each held-out case's composition from its out-of-fold segmentation"
                     if card.get("network", {}).get("composition") else "")
                  + f" (`{cv['source']}`). Positive class: HGG, IDH mutant.", "",
                  *auc_table("task", "positives", rows)]
        lines += ["", "With so few cases of the minority class the interval is wide: read the AUC as a range, not a "
                  "number. 1p/19q and MGMT have no real label here.", ""]
        if cv.get("worst_grade"):
            lines += [f"The heads' worst grade calls out of fold (every case: `{cv['source']}` and its Markdown):", "",
                      "| case | grade | P(HGG) heads | P(HGG) volumes (reported) |", "| --- | --- | --- | --- |"]
            lines += [f"| {w['case']} | {('LGG', 'HGG')[w['grade']]} | {w['p_hgg']:.2f} | {_fmt(w['p_hgg_volumes'])} |"
                      for w in cv["worst_grade"]]
            lines.append("")
    lines += ["## Measured (calibrated probabilities, as at inference)", ""]
    for group, tasks in card["metrics"].items():
        lines += [f"### {group.replace('_', ' ')}", "",
                  "| task | n | positives | AUC | accuracy | F1 | ECE | ECE before T | Brier | temperature |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for task, m in tasks.items():
            lines.append(f"| {task} | {m['n']} | {m['positives']} | {_fmt(m['auc'])} | {_fmt(m['accuracy'])} | "
                         f"{_fmt(m['f1'])} | {_fmt(m['ece'])} | {_fmt(m['ece_uncalibrated'])} | {_fmt(m['brier'])} | "
                         f"{card['calibration'][task]['temperature']} |")
        lines.append("")
    if "real_validation" in card["metrics"]:
        lines += ["The real validation set holds 6 cases (5 HGG, 1 LGG; IDH known for 1): its grade AUC rests on one "
                  "LGG case and is anecdotal; AUC is n/a where only one class is present.", ""]
    lines += [f"Training: {card['training']['steps']} steps; exported {card['exported']} from commit "
              f"{card['git_commit_at_export']}; sha256 {card['sha256']}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
