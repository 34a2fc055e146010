"""Calibrate, evaluate and export the slice-grade classifier (called at the end of ``train_slice_grade``).

Temperature: fitted on the validation phantoms (slice logits, or the attention-fused patient probability).
Evaluation, reported separately: held-out test phantoms (simulated grade) and, when the run keeps some, the real
validation cases (real grade; never used for early stopping or calibration). The real-case evidence of a model
trained on every real case (``--all-real``) is the cross-validation of ``training/slice_grade/cross_validate.py``
(``--cv-report``): it leads the card and sets its ``evidence`` block. Metrics per aggregation: AUC, accuracy, F1,
ECE (15 bins), Brier.
Also: each of T1CE/T2/FLAIR missing (test phantoms), optionally slices chosen by the shipped segmentation model
instead of the ground truth, and the inference time of ``predict_slice_grade`` on one real case.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from scipy.optimize import minimize_scalar

from GliomaAnalysisLib.models.calibration import TEMPERATURE_BOUNDS, apply_temperature, fit_temperature
from GliomaAnalysisLib.models.evidence import evidence_section
from GliomaAnalysisLib.models.model_store import RESOURCES, save_model
from GliomaAnalysisLib.models.slice_grade import (AGGREGATIONS, SLICE_CHANNELS, SLICE_GRADE_MODEL, aggregate,
                                           attention_fusion, load_slice_grade, predict_slice_grade, prepare_slices)
from GliomaAnalysisLib.models.slice_grade_net import SliceGradeNet

from ..common.classification_data import ClassificationSample, ClassificationSplit
from ..common.metrics import auc_evidence, auc_table, binary_report
from ..common.plots import calibration_plot, decision_curve_plot
from .slice_grade_data import CaseSlices

REPOSITORY = Path(__file__).resolve().parents[2]
VERSION = "1.1"
"""1.1: trained on every real case of both roots, evidence from the cross-validation (1.0: 18 BraTS 2018 cases)."""


@torch.no_grad()
def logits_of(model: SliceGradeNet, slices: Sequence[np.ndarray]) -> List[np.ndarray]:
    """Uncalibrated logits float64 (M,) per case from its inference slices (M, 3, crop, crop)."""
    model.eval()
    return [model(torch.from_numpy(np.ascontiguousarray(s))).double().numpy() for s in slices]


def fit_case_temperature(logits: Sequence[np.ndarray], targets: np.ndarray, how: str = "slice") -> float:
    """Temperature from validation logits: ``slice`` (every slice carries its patient's label) or ``attention``
    (patient-level BCE of the attention-fused probability)."""
    if how == "slice":
        return fit_temperature(np.concatenate(logits), np.concatenate([np.full(len(z), t) for z, t in
                                                                       zip(logits, targets)]))
    y = np.asarray(targets, dtype=float)
    if y.min() == y.max():
        return 1.0

    def nll(log_t: float) -> float:
        p = np.clip([attention_fusion(apply_temperature(z, np.exp(log_t))) for z in logits], 1e-6, 1 - 1e-6)
        return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))

    result = minimize_scalar(nll, bounds=tuple(np.log(TEMPERATURE_BOUNDS)), method="bounded")
    return float(np.exp(result.x))


def patient_probabilities(logits: Sequence[np.ndarray], temperature: float) -> Dict[str, np.ndarray]:
    """P(HGG) per case float64 (n,) for each aggregation."""
    rows = [aggregate(apply_temperature(z, temperature)) for z in logits]
    return {name: np.array([r[name] for r in rows]) for name in AGGREGATIONS}


def reports(logits: Sequence[np.ndarray], targets: np.ndarray, temperature: float) -> Dict[str, Dict]:
    """binary_report per aggregation, plus ``slice`` (every slice scored against its patient's label)."""
    out = {k: binary_report(v, targets) for k, v in patient_probabilities(logits, temperature).items()}
    if len(logits):
        out["slice"] = binary_report(apply_temperature(np.concatenate(logits), temperature),
                                     np.concatenate([np.full(len(z), t) for z, t in zip(logits, targets)]))
    return out


def missing_channel_reports(model: SliceGradeNet, cases: Sequence[CaseSlices], temperature: float) -> Dict:
    """Reports with each of T1CE, T2, FLAIR set to zero (what ``predict_slice_grade`` does when it is missing)."""
    targets = np.array([c.target for c in cases])
    out = {}
    for k, name in enumerate(SLICE_CHANNELS):
        slices = [c.eval.copy() for c in cases]
        for s in slices:
            s[:, k] = 0.0
        out[f"without_{name}"] = reports(logits_of(model, slices), targets, temperature)
    return out


def predicted_labels(samples: Sequence[ClassificationSample]) -> List[np.ndarray]:
    """Working-grid label maps from the shipped segmentation model (one plain pass, argmax), as ``analyze`` feeds
    the classifiers."""
    from GliomaAnalysisLib.preprocessing.cropping import pad_to_multiple
    from GliomaAnalysisLib.models.inference import predict
    from GliomaAnalysisLib.models.model_store import load_model

    net, _ = load_model()
    out = []
    for sample in samples:
        shape = sample.image.shape[1:]
        padded = pad_to_multiple(sample.image, net.config.divisor)
        probabilities, _, _ = predict(net, padded, sample.presence, torch.device("cpu"))
        out.append(probabilities.argmax(axis=0)[:shape[0], :shape[1], :shape[2]].astype(np.uint8))
    return out


def predicted_seg_reports(model: SliceGradeNet, samples: Sequence[ClassificationSample],
                          temperature: float) -> Dict:
    """Reports with the slices chosen from the segmentation model's labels instead of the ground truth."""
    samples = [s for s in samples if s.known("grade")]
    slices = [prepare_slices(s.image, s.presence, labels, model.config)[0]
              for s, labels in zip(samples, predicted_labels(samples))]
    keep = [k for k, s in enumerate(slices) if len(s)]
    targets = np.array([samples[k].targets["grade"] for k in keep])
    result = reports(logits_of(model, [slices[k] for k in keep]), targets, temperature)
    result["cases_without_tumor_slice"] = len(samples) - len(keep)
    return result


def time_inference(folder: Path, sample: ClassificationSample, repeats: int = 5) -> Dict[str, float]:
    """Seconds of ``load_slice_grade`` and of ``predict_slice_grade`` (median of ``repeats``, with MC-dropout) on
    one case at the current torch thread count."""
    start = time.perf_counter()
    model, card = load_slice_grade(str(folder))
    load_s = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        predict_slice_grade(model, card, sample.image, sample.presence, sample.labels)
        times.append(time.perf_counter() - start)
    return {"load_s": round(load_s, 3), "predict_s": round(float(np.median(times)), 3),
            "threads": torch.get_num_threads(), "case": sample.case_id}


def cv_evidence(report: Dict, path: Path, aggregation: str = "attention") -> Dict[str, Dict]:
    """The card's ``evidence`` block (``GliomaAnalysisLib/models/evidence.py``) from the out-of-fold AUC of the
    default ``aggregation`` in a complete ``training.slice_grade.cross_validate`` report (ValueError when a fold
    is missing)."""
    if report["folds"] != list(range(report["n_folds"])):
        raise ValueError(f"{path}: folds {report['folds']} of {report['n_folds']} only: finish the cross-validation")
    kind = (f"{report['n_folds']}-fold cross-validation over the project's real cases ({aggregation} "
            "aggregation; slices chosen from the expert labels)")
    return {"grade": auc_evidence(report["aggregations"][aggregation], kind, str(path))}


def _fmt(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def metrics_table(rows: Dict[str, Dict]) -> str:
    """Markdown table of binary reports keyed by aggregation."""
    lines = ["| aggregation | n (HGG) | AUC | accuracy | F1 (HGG) | ECE | Brier |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in rows.items():
        if isinstance(r, dict) and "auc" in r:
            lines.append(f"| {name} | {r['n']} ({r['positives']}) | {_fmt(r['auc'])} | {_fmt(r['accuracy'])} | "
                         f"{_fmt(r['f1'])} | {_fmt(r['ece'])} | {_fmt(r['brier'])} |")
    return "\n".join(lines)


def _cross_validation_lines(cv: Optional[Dict]) -> List[str]:
    """The card's cross-validation section (None: nothing)."""
    if not cv:
        return []
    lines = [f"## Cross-validation: {cv['n_cases']} graded real cases, folds {cv['folds']}", "",
             "The same recipe trained on the real cases of the other folds (and the training phantoms), each fold's "
             "graded cases predicted once (slices chosen from the expert labels, so a little optimistic against the "
             "predicted segmentation `analyze` uses); `python -m training.slice_grade.cross_validate --config "
             "training/configs/slice_grade.yaml --run-dir RUN`.", "",
             *auc_table("aggregation", "HGG", cv["aggregations"])]
    cases = cv.get("cases") or {}
    if cases:
        error = {c: abs(row["grade"] - row["attention"]) for c, row in cases.items()}
        worst = sorted(cases, key=lambda c: -error[c])[:3]
        lines += ["", "Worst cases (furthest from their true grade, attention): " + ", ".join(
            f"{c} ({'HGG' if cases[c]['grade'] else 'LGG'}, P(HGG) {cases[c]['attention']:.2f})" for c in worst) + ".",
            "", *case_table(cases)]
    return lines + [""]


def case_table(cases: Dict[str, Dict]) -> List[str]:
    """Markdown rows of out-of-fold P(HGG) per case and aggregation (``cross_validate`` report's ``cases``)."""
    lines = ["| case | fold | grade (truth) | slices | " + " | ".join(AGGREGATIONS) + " |",
             "| --- | --- | --- | --- |" + " --- |" * len(AGGREGATIONS)]
    return lines + [f"| {c} | {row['fold']} | {'HGG' if row['grade'] else 'LGG'} | {row['slices']} | "
                    + " | ".join(f"{row[a]:.2f}" for a in AGGREGATIONS) + " |" for c, row in sorted(cases.items())]


def write_model_card_md(path: Path, card: Dict) -> None:
    """The human-readable model card ``slice_grade.md``."""
    m = card["metrics"]
    data = card["training_data"]
    parts = [
        f"# Model card: {SLICE_GRADE_MODEL} (version {card['version']})",
        "",
        "**Research use only. Not a medical device.** A grade estimate from a few dozen training cases, most of "
        "them synthetic.",
        "",
        *([evidence_section(card, "The level comes from the cross-validation over the project's real cases (below). "
                                  "Reports show it beside the estimate.")] if card.get("evidence") else []),
        *_cross_validation_lines(card.get("cross_validation")),
        "## What it does",
        "Predicts the probability of a high-grade glioma (HGG vs LGG) from 2D axial slices through the tumor "
        "(seed 002): T1CE, T2 and FLAIR stacked as 3 channels, a tumor-centred "
        f"{card['network']['crop']} x {card['network']['crop']} pixel crop of the 2 mm working grid "
        f"({2 * card['network']['crop']} mm), min-max scaled per slice and channel over the brain; up to "
        f"{card['network']['max_slices']} slices with at least {card['network']['min_tumor_voxels']} tumor voxels "
        "(40 mm^2), chosen from the predicted segmentation; a "
        f"{card['network']['backbone']} backbone ({card['parameters']:,} parameters), GAP -> Dense 128 ReLU -> "
        "Dropout 0.5 -> sigmoid. Patient level: majority vote (fraction of HGG slices; a tie is HGG), soft vote "
        "(mean probability), attention fusion (softmax of the slice probabilities as weights; the default).",
        f"A missing T1CE/T2/FLAIR channel is set to zero with a warning (trained with channel dropout); all three "
        f"missing gives no prediction. Uncertainty: SD of the attention probability over {card['mc_samples']} "
        "MC-dropout passes of the head.",
        "",
        "## Training data and labels",
        f"- Real: {data['real_source']}. Training {data['real_train']} graded cases"
        + (f", validation {data['real_validation']} (the segmentation split)." if data["real_validation"] else
           " (all of them; the real-case figures come from the cross-validation)."),
        f"- Synthetic phantoms (`GliomaAnalysisLib.synthetic.phantom`, simulated grade: HGG with necrosis and ring "
        f"enhancement more often, LGG little or no enhancement): {data['phantom_train']} training, "
        f"{data['phantom_validation']} validation (early stopping, temperature), {data['phantom_test']} test.",
        f"- Slice-level BCE with inverse-frequency class weights {data['class_weights']}, AdamW, flips, rotations "
        f"up to 15 degrees, shifts, gamma, noise, channel dropout; {data['epochs_trained']} epochs, best epoch "
        f"{data['best_epoch']}.",
        f"- Temperature {card['calibration']['temperature']:.3f} on the slice logits, fitted on "
        f"{card['calibration']['fitted_on']}.",
        "",
        "## Measured",
        "Held-out test phantoms (simulated grade; slices chosen from the ground-truth segmentation):",
        "",
        metrics_table(m["phantom_test"]),
        "",
    ]
    if m["real_validation"].get("attention", {}).get("n"):
        parts += [
            "Real validation cases (real grade; never used for training, early stopping or calibration):",
            "",
            metrics_table(m["real_validation"]),
            "",
            "| real validation case | grade | majority | soft | attention |",
            "| --- | --- | --- | --- | --- |",
            *[f"| {case} | {r['grade']} | {r['majority']:.3f} | {r['soft']:.3f} | {r['attention']:.3f} |"
              for case, r in m.get("real_validation_cases", {}).items()],
            "",
            "Only a handful of real validation cases: these numbers show that the pipeline runs on real scans; the "
            "cross-validation is the figure to read. The phantom numbers measure the simulated tendencies only.",
            "",
        ]
    if "before_calibration" in m:
        parts += ["Test phantoms before temperature scaling (T = 1):", "", metrics_table(m["before_calibration"]), ""]
    if "missing_channel" in m:
        parts += ["Test phantoms, AUC with one channel missing (zeroed):", "",
                  "| missing | majority | soft | attention |", "| --- | --- | --- | --- |"]
        parts += [f"| {k.replace('without_', '')} | " + " | ".join(_fmt(v[a]["auc"]) for a in AGGREGATIONS) + " |"
                  for k, v in m["missing_channel"].items()]
        parts.append("")
    for key, title in (("phantom_test_predicted_seg", "Test phantoms"),
                       ("real_validation_predicted_seg", "Real validation cases")):
        if key in m and m[key].get("attention", {}).get("n"):
            parts += [f"{title}, slices chosen by the shipped segmentation model (one pass):", "",
                      metrics_table(m[key]), ""]
    if "inference" in card:
        t = card["inference"]
        parts += [f"Inference (`predict_slice_grade`, {t['threads']} thread, 20 MC-dropout head passes) on "
                  f"{t['case']}: {t['predict_s']:.2f} s, model load {t['load_s']:.2f} s.", ""]
    parts += ["## Limits",
              f"- Trained mostly on synthetic phantoms and {data['real_train']} graded real cases "
              f"({data.get('real_lgg', '?')} LGG)" + (": read the real-case grade with the cross-validated evidence "
                                                     "above." if card.get("cross_validation") else "."),
              "- The 2 mm working grid and 128 mm crop: very large tumors extend past the crop.",
              f"- Weights: `{card['weights_file']}` (float16, sha256 `{card['sha256']}`)."]
    path.write_text("\n".join(parts) + "\n")


def evaluate_and_export(model: SliceGradeNet, split: ClassificationSplit, cases: Dict[str, List[CaseSlices]],
                        args: argparse.Namespace) -> Dict:
    """Fit the temperature, evaluate, plot, and (unless ``--no-export``) write weights and model cards.
    ``cases``: :func:`training.slice_grade.train_slice_grade.cut_split` of ``split``."""
    run: Path = args.out
    val, test, real_val = cases["validation"], cases["test"], cases["real_validation"]
    val_logits = logits_of(model, [c.eval for c in val])
    temperature = fit_case_temperature(val_logits, np.array([c.target for c in val]), args.temperature_fit)
    print(f"temperature {temperature:.3f} ({args.temperature_fit} level)", file=sys.stderr)

    metrics: Dict[str, Dict] = {}
    curves = {}
    for key, group in (("phantom_test", test), ("real_validation", real_val), ("phantom_validation", val)):
        targets = np.array([c.target for c in group])
        logits = logits_of(model, [c.eval for c in group])
        metrics[key] = reports(logits, targets, temperature)
        if key == "real_validation":
            fused = patient_probabilities(logits, temperature)
            metrics["real_validation_cases"] = {
                c.case_id: {"grade": "HGG" if c.target else "LGG",
                            **{a: round(float(fused[a][k]), 3) for a in AGGREGATIONS}}
                for k, c in enumerate(group)}
        if key == "phantom_test":
            metrics["before_calibration"] = reports(logits, targets, 1.0)
            curves = {k: (v, targets) for k, v in patient_probabilities(logits, temperature).items()}
            curves["attention, T = 1"] = (patient_probabilities(logits, 1.0)["attention"], targets)
    metrics["missing_channel"] = missing_channel_reports(model, test, temperature)
    if getattr(args, "predicted_seg", False):
        test_ids = {c.case_id for c in test}
        real_ids = {c.case_id for c in real_val}
        metrics["phantom_test_predicted_seg"] = predicted_seg_reports(
            model, [s for s in split.test if s.case_id in test_ids], temperature)
        metrics["real_validation_predicted_seg"] = predicted_seg_reports(
            model, [s for s in split.validation if s.case_id in real_ids], temperature)
    if curves:
        calibration_plot(curves, run / "calibration_phantom_test.png", "Slice grade, test phantoms (HGG)")
        decision_curve_plot(curves, run / "decision_curve_phantom_test.png", "Slice grade, test phantoms (HGG)")
    (run / "metrics.json").write_text(json.dumps({"temperature": temperature, **metrics}, indent=2))
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]
    best = min(log, key=lambda r: r["val_bce"]) if log else {}
    train_cases = cases["train"]
    targets = np.array([c.target for c in train_cases])
    counts = np.array([(targets == 0).sum(), (targets == 1).sum()], dtype=float)
    weights = counts.sum() / (2 * np.maximum(counts, 1))
    is_real = np.array([c.source == "real" for c in train_cases], dtype=bool)
    cross_validation = json.loads(Path(args.cv_report).read_text()) if getattr(args, "cv_report", None) else None
    card = {
        "version": VERSION, "task": "grade (HGG vs LGG) from axial slices", "labels": ["LGG", "HGG"],
        "inputs": {"channels": list(SLICE_CHANNELS), "grid": "2 mm working grid (4, Z, Y, X) z-scored",
                   "slices": "axis 0 (Z), tumor slices of the predicted label map"},
        "preprocessing": {"spacing_mm": [2.0, 2.0, 2.0], "crop_voxels": model.config.crop,
                          "normalisation": "min-max per slice and channel over brain pixels, 0 outside"},
        "calibration": {"temperature": temperature, "fitted_on": f"the validation phantoms ({args.temperature_fit}"
                        f"{'-fused patient probability' if args.temperature_fit == 'attention' else ' logits'})"},
        "aggregations": list(AGGREGATIONS), "default_aggregation": "attention", "mc_samples": 20,
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "training_data": {
            "real_source": "none" if getattr(args, "no_real", False) else
                           ", ".join(f"`{os.path.relpath(Path(root) / 'labels.csv', REPOSITORY)}`"
                                     for root in getattr(args, "real_roots", [])) +
                           f" (real grade: {int(targets[is_real].sum())} HGG, {int((targets[is_real] == 0).sum())} "
                           "LGG in training)",
            "real_lgg": int((targets[is_real] == 0).sum()),
            "phantom_source": "GliomaAnalysisLib.synthetic.phantom (simulated grade)",
            "real_train": sum(c.source == "real" for c in train_cases), "real_validation": len(real_val),
            "phantom_train": sum(c.source == "phantom" for c in train_cases), "phantom_validation": len(val),
            "phantom_test": len(test), "class_weights": {"LGG": round(float(weights[0]), 3),
                                                        "HGG": round(float(weights[1]), 3)},
            "epochs_trained": len(log), "best_epoch": best.get("epoch")},
        "metrics": metrics,
    }
    if cross_validation:
        card["cross_validation"] = {k: cross_validation[k] for k in ("folds", "n_folds", "n_cases", "aggregations",
                                                                      "cases")}
        card["evidence"] = cv_evidence(cross_validation, Path(args.cv_report))
    if not args.no_export:
        folder = Path(args.export_dir) if args.export_dir else RESOURCES
        save_model(model, card, folder, SLICE_GRADE_MODEL)
        sample = next((s for s in split.validation + split.train if s.source == "real"), None) or \
            next((s for s in split.test), None)
        if sample is not None:
            card["inference"] = time_inference(folder, sample)
            card_path = folder / f"{SLICE_GRADE_MODEL}.json"
            stored = json.loads(card_path.read_text())
            stored["inference"] = card["inference"]
            card_path.write_text(json.dumps(stored, indent=2) + "\n")
        card = json.loads((folder / f"{SLICE_GRADE_MODEL}.json").read_text())
        write_model_card_md(folder / f"{SLICE_GRADE_MODEL}.md", card)
        print(f"exported to {folder}", file=sys.stderr)
    for key in ("phantom_test", "real_validation"):
        for name in AGGREGATIONS:
            r = metrics[key][name]
            print(f"{key:16s} {name:9s} AUC {_fmt(r['auc'])} acc {_fmt(r['accuracy'])} F1 {_fmt(r['f1'])} "
                  f"ECE {_fmt(r['ece'])} Brier {_fmt(r['brier'])}", file=sys.stderr)
    return {"temperature": temperature, "metrics": metrics, "card": card}
