"""Train the MGMT late-fusion ensemble (seed 000): one CNN+LSTM per modality, then fusion weights and temperatures.

    python -m training.mgmt.train_mgmt --out /root/glioma-runs/mgmt [--epochs 20] [--patience 6] [--resume]
                                  [--export-dir Resources/models] [--train-config training/configs/mgmt_fusion.yaml]

Each modality's model is trained alone with binary cross-entropy and AdamW on the cases that carry an MGMT label
(only the phantoms: their status is simulated; real cases have none and drop out). Early stopping on the
validation loss (``--patience`` epochs without improvement, not before ``--min-epochs``); the best weights are
kept. Augmentation: left-right
flip, intensity scale 0.9-1.1 and shift +-0.1 SD inside the brain, in-plane crop jitter, and slice-subset sampling
(a random, sorted subset of 1/2 .. all of ``max_slices`` slices of the tumor's axial span).

Auxiliary loss (training only, ``--aux-weight``): a linear layer on each slice's features regresses the square roots
of the NCR, ED and ET area fractions of that slice's crop (from the label map), to steer the features towards the
tumor extent that the phantoms' weak MGMT signal lives in. Evidence so far is thin: at lr 1e-3 the from-scratch
EfficientNet learned neither task (hence lr 3e-4); at lr 3e-4 the best FLAIR validation loss within 14 epochs was
0.619 and 0.647 in two runs with it and 0.653 in one without (noise level). On the tests' easy synthetic signal it
slows a tiny model down, so the tests use ``--aux-weight 0``. The auxiliary layer is not exported.

Then, on the validation predictions: a temperature per modality (``calibration.fit_temperature``) and the fusion
weights: non-negative, summing to 1, maximising the validation log-likelihood of the fused (weighted-mean)
probability under a symmetric Dirichlet prior (``--weight-prior``; MAP, keeps every weight above 0 and pulls
towards equal weights when 48 validation cases say little). Finally the held-out test phantoms are evaluated (AUC,
accuracy, F1, ECE with 15 bins, Brier; per modality and fused; the fused also with each modality missing), the
reliability and decision-curve plots are drawn into ``--out``, the test cases are evaluated a second time with
their slices chosen by the shipped segmentation network (as ``analyze`` does; ``--no-predicted-seg-eval`` skips it),
and the weights, JSON card and Markdown card are exported into ``--export-dir`` (default: ``--out``/export).

RUN_DIR receives: config.json, log.jsonl (one JSON line per epoch and a final one), <modality>/checkpoint.pt (every
epoch, atomic), <modality>/best.safetensors, <modality>/done.json, predictions.json, metrics.json, the plots.
``--resume`` continues an interrupted run: finished modalities are skipped, an unfinished one restarts from its
last checkpoint.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from scipy.optimize import minimize

from GliomaAnalysisLib.models.calibration import apply_temperature, fit_temperature
from GliomaAnalysisLib.models.evidence import evidence_section
from GliomaAnalysisLib.models.mgmt_fusion import (DEFAULT_MODEL_NAME, MGMTFusionConfig, crop_slices,
                                                  fuse_probabilities, select_slices)
from GliomaAnalysisLib.models.mgmt_fusion_net import MGMTFusionEnsemble, SliceSequenceClassifier
from GliomaAnalysisLib.models.inference import predict
from GliomaAnalysisLib.models.model_store import load_model, save_model
from GliomaAnalysisLib.io.modalities import MODALITIES

from ..common.classification_data import ClassificationSample, load_classification_split
from ..common.config import parse_args as parse_with_config
from ..common.datasets import DEFAULT_CACHE
from ..common.metrics import binary_report
from ..common.plots import calibration_plot, decision_curve_plot
from ..common.run_record import classification_split_ids, start_run_record

REPO = Path(__file__).resolve().parents[2]
LABEL_SOURCE = ("simulated: MGMT status of synthetic phantoms (GliomaAnalysisLib.synthetic.phantom; methylation drawn from a "
                "prior that depends on IDH, methylated tumors get slightly less edema). No real MGMT label exists "
                "in this repository's data; real cases carry none and are not used by this model.")

EVIDENCE = {"mgmt": {
    "metric": "auc", "value": None, "n": 0, "positives": None, "negatives": None, "ci95": None, "ci_method": None,
    "kind": None, "source": "no real MGMT label exists in this project's data (../shared/data carries none)",
    "reason": "never validated on a real MGMT label",
    "literature": "MGMT from MRI is at chance in the literature: the RSNA-MICCAI 2021 radiogenomic challenge winner "
                  "reached AUC 0.56 on external data"}}
"""The card's real-data evidence: none (``GliomaAnalysisLib/models/evidence.py`` reads it as not assessable)."""
EVIDENCE_SUMMARY = ("No real MGMT label was available; MGMT from MRI is at chance in the literature. Reports say "
                    "\"not assessable from this MRI\".")


@dataclass
class PreparedCase:
    """One case ready for training: ``crops`` float32 (4, S_span, C + 2j, C + 2j) of every axial slice of the
    tumor span (j = crop jitter) and their ``label_crops`` uint8 (S_span, C + 2j, C + 2j); ``eval_crops``
    (4, S, C, C) exactly as inference selects them; target 0/1."""

    case_id: str
    crops: np.ndarray
    label_crops: np.ndarray
    eval_crops: np.ndarray
    target: int


def prepare(samples: Sequence[ClassificationSample], config: MGMTFusionConfig, jitter: int) -> List[PreparedCase]:
    """Cases with an MGMT label, their slices cropped once (training span with margin, inference selection)."""
    wide = MGMTFusionConfig.from_dict(dict(config.to_dict(), crop_size=config.crop_size + 2 * jitter))
    out = []
    for s in samples:
        if not s.known("mgmt"):
            continue
        span = select_slices(s.image, s.labels, wide, max_slices=None)
        labels = crop_slices(s.labels.astype(np.float32), span.z, span.centre, wide.crop_size).astype(np.uint8)
        chosen = select_slices(s.image, s.labels, config).crops
        out.append(PreparedCase(s.case_id, span.crops.astype(np.float32), labels, chosen.astype(np.float32),
                                int(s.targets["mgmt"])))
    return out


def training_batch(cases: Sequence[PreparedCase], channel: int, config: MGMTFusionConfig, jitter: int,
                   rng: np.random.Generator) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Augmented batch of one modality: slices (B, S_max, C, C) right-padded, lengths (B,), targets (B,) and the
    auxiliary per-slice targets (B, S_max, 3): square roots of the NCR, ED and ET area fractions of each crop."""
    c = config.crop_size
    items, areas = [], []
    for case in cases:
        span = case.crops[channel]
        n = span.shape[0]
        k = min(n, int(rng.integers(max(1, config.max_slices // 2), config.max_slices + 1)))
        if rng.random() < 0.5:  # evenly spread over the span, as at inference
            z = np.unique(np.round(np.linspace(0, n - 1, k)).astype(int))
        else:  # a random sorted subset
            z = np.sort(rng.choice(n, size=k, replace=False))
        dy, dx = (int(v) for v in rng.integers(0, 2 * jitter + 1, size=2))
        x = span[z, dy:dy + c, dx:dx + c].copy()
        if rng.random() < 0.5:
            x = x[:, :, ::-1]
        brain = x != 0
        x[brain] = x[brain] * rng.uniform(0.9, 1.1) + rng.uniform(-0.1, 0.1)
        items.append(np.ascontiguousarray(x))
        lab = case.label_crops[z, dy:dy + c, dx:dx + c]
        areas.append(np.sqrt(np.stack([(lab == cls).mean(axis=(1, 2)) for cls in (1, 2, 3)], axis=1)))  # flip-invariant
    lengths = torch.tensor([len(x) for x in items])
    batch = np.zeros((len(items), int(lengths.max()), c, c), dtype=np.float32)
    aux = np.zeros((len(items), int(lengths.max()), 3), dtype=np.float32)
    for i, (x, a) in enumerate(zip(items, areas)):
        batch[i, :len(x)] = x
        aux[i, :len(a)] = a
    targets = torch.tensor([case.target for case in cases], dtype=torch.float32)
    return torch.from_numpy(batch), lengths, targets, torch.from_numpy(aux)


@torch.no_grad()
def predict_logits(model: SliceSequenceClassifier, cases: Sequence[PreparedCase], channel: int) -> np.ndarray:
    """Deterministic logits (N,) of one modality's model on the inference slice selection of each case."""
    model.eval()
    out = [float(model(torch.from_numpy(case.eval_crops[channel][None]))[0]) for case in cases]
    return np.array(out, dtype=np.float64)


def bce(logits: np.ndarray, targets: np.ndarray) -> float:
    return float(np.mean(np.logaddexp(0.0, logits) - targets * logits))


def fit_fusion_weights(probabilities: Dict[str, np.ndarray], targets: np.ndarray,
                       prior: float = 1.0) -> Dict[str, float]:
    """Fusion weights on the simplex: MAP of the fused log-likelihood sum_i log Bernoulli(y_i | sum_m w_m p_mi) under a
    symmetric Dirichlet(1 + prior) prior on w. probabilities: modality -> calibrated P(methylated) (N,)."""
    names = list(probabilities)
    p = np.stack([np.clip(probabilities[m], 1e-6, 1 - 1e-6) for m in names])  # (M, N)
    y = np.asarray(targets, dtype=np.float64)

    def objective(theta: np.ndarray) -> float:
        w = np.exp(theta - theta.max())
        w /= w.sum()
        fused = np.clip(w @ p, 1e-6, 1 - 1e-6)
        nll = -np.sum(y * np.log(fused) + (1 - y) * np.log1p(-fused))
        return float(nll - prior * np.sum(np.log(w)))

    theta = minimize(objective, np.zeros(len(names)), method="Nelder-Mead",
                     options={"xatol": 1e-6, "fatol": 1e-9, "maxiter": 4000}).x
    w = np.exp(theta - theta.max())
    return {m: float(v) for m, v in zip(names, w / w.sum())}


def _atomic_torch_save(obj: Dict, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def train_modality(modality: str, train: Sequence[PreparedCase], validation: Sequence[PreparedCase],
                   config: MGMTFusionConfig, args: argparse.Namespace, log: Callable[[Dict], None]) -> Dict:
    """Train one modality's model with early stopping; returns its done record (best epoch and validation loss).
    Writes <out>/<modality>/{checkpoint.pt, best.safetensors, done.json}."""
    folder = Path(args.out) / modality
    folder.mkdir(parents=True, exist_ok=True)
    done_path = folder / "done.json"
    if args.resume and done_path.is_file():
        print(f"[{modality}] already trained, skipped", flush=True)
        return json.loads(done_path.read_text())
    channel = MODALITIES.index(modality)
    torch.manual_seed(args.seed + channel)
    model = SliceSequenceClassifier(config)
    aux_head = torch.nn.Linear(config.feature_dim, 3)  # training only: per-slice subregion areas
    optimizer = torch.optim.AdamW(list(model.parameters()) + list(aux_head.parameters()), lr=args.lr,
                                  weight_decay=args.weight_decay)
    rng = np.random.default_rng([args.seed, channel])
    state = {"epoch": 0, "best_loss": float("inf"), "best_epoch": -1, "bad_epochs": 0, "seconds": 0.0}
    checkpoint = folder / "checkpoint.pt"
    if args.resume and checkpoint.is_file():
        saved = torch.load(checkpoint, weights_only=False)
        model.load_state_dict(saved["model"])
        aux_head.load_state_dict(saved["aux_head"])
        optimizer.load_state_dict(saved["optimizer"])
        rng.bit_generator.state = saved["rng"]
        torch.set_rng_state(saved["torch_rng"])
        state = dict({"seconds": 0.0}, **saved["state"])
        print(f"[{modality}] resumed after epoch {state['epoch']}", flush=True)
    targets_val = np.array([c.target for c in validation], dtype=np.float64)
    def keep_going() -> bool:
        return state["epoch"] < args.epochs and (state["bad_epochs"] < args.patience or
                                                 state["epoch"] < args.min_epochs)

    while keep_going():
        start = time.time()
        model.train()
        order = rng.permutation(len(train))
        losses = []
        for i in range(0, len(order), args.batch):
            slices, lengths, targets, areas = training_batch([train[j] for j in order[i:i + args.batch]], channel,
                                                             config, args.jitter, rng)
            features = model.features(slices)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model.head(features, lengths), targets)
            losses.append(float(loss.detach()))
            if args.aux_weight > 0:
                valid = (torch.arange(slices.shape[1])[None] < lengths[:, None]).float()[..., None]
                squared = (aux_head(features) - areas) ** 2 * valid
                loss = loss + args.aux_weight * squared.sum() / (3 * valid.sum())
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimizer.step()
        logits = predict_logits(model, validation, channel)
        val_loss = bce(logits, targets_val)
        state["epoch"] += 1
        state["seconds"] += time.time() - start
        improved = val_loss < state["best_loss"] - 1e-4
        if improved:
            state.update(best_loss=val_loss, best_epoch=state["epoch"], bad_epochs=0)
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "best.safetensors"))
        else:
            state["bad_epochs"] += 1
        _atomic_torch_save({"model": model.state_dict(), "aux_head": aux_head.state_dict(),
                            "optimizer": optimizer.state_dict(), "rng": rng.bit_generator.state,
                            "torch_rng": torch.get_rng_state(), "state": state}, checkpoint)
        record = {"modality": modality, "epoch": state["epoch"], "train_bce": float(np.mean(losses)),
                  "val_loss": val_loss, "val_auc": binary_report(1 / (1 + np.exp(-logits)), targets_val)["auc"],
                  "best_epoch": state["best_epoch"], "seconds": round(time.time() - start, 1)}
        log(record)
        print(f"[{modality}] epoch {state['epoch']:3d}/{args.epochs} train bce {record['train_bce']:.4f} "
              f"val {val_loss:.4f} auc {record['val_auc'] or float('nan'):.3f}{' *' if improved else ''} "
              f"({record['seconds']} s)", flush=True)
    done = {"modality": modality, "epochs": state["epoch"], "best_epoch": state["best_epoch"],
            "best_val_loss": state["best_loss"], "stopped_early": state["epoch"] < args.epochs,
            "train_seconds": round(state["seconds"], 1)}
    done_path.write_text(json.dumps(done, indent=2))
    return done


def _subset_reports(probabilities: Dict[str, np.ndarray], weights: Dict[str, float],
                    targets: np.ndarray) -> Dict[str, Dict]:
    """Per-modality and fused reports, plus the fused one with each modality left out."""
    reports = {m: binary_report(p, targets) for m, p in probabilities.items()}
    reports["fused"] = binary_report(fused_array(probabilities, weights), targets)
    for left_out in probabilities:
        if len(probabilities) > 1:
            rest = {m: p for m, p in probabilities.items() if m != left_out}
            reports[f"fused_without_{left_out}"] = binary_report(fused_array(rest, weights), targets)
    return reports


def fused_array(probabilities: Dict[str, np.ndarray], weights: Dict[str, float]) -> np.ndarray:
    """Fused probability (N,) of every case through the library's ``fuse_probabilities``."""
    n = len(next(iter(probabilities.values())))
    return np.array([fuse_probabilities({m: float(p[i]) for m, p in probabilities.items()}, weights)[0]
                     for i in range(n)])


def _table(reports: Dict[str, Dict]) -> List[str]:
    """Markdown rows of AUC, accuracy, F1, ECE and Brier per model."""
    rows = ["| model | AUC | accuracy | F1 | ECE (15 bins) | Brier |", "| --- | --- | --- | --- | --- | --- |"]
    for name, r in reports.items():
        auc = "n/a" if r["auc"] is None else f"{r['auc']:.3f}"
        rows.append(f"| {name} | {auc} | {r['accuracy']:.3f} | {r['f1']:.3f} | {r['ece']:.3f} | {r['brier']:.3f} |")
    return rows


def _verdict(metrics: Dict) -> str:
    """One honest sentence on what the test numbers mean."""
    truth = metrics["test_phantoms"]["fused"]["auc"]
    predicted = metrics.get("test_phantoms_predicted_segmentation", {}).get("fused", {}).get("auc")
    worst = min(a for a in (truth, predicted) if a is not None) if truth is not None else None
    text = f"fused test AUC {truth:.2f} with ground-truth slices" if truth is not None else "no test AUC"
    if predicted is not None:
        text += f", {predicted:.2f} with slices from the predicted segmentation"
    if worst is None or worst < 0.6:
        return text + (". In practice this is not better than chance on the phantoms: treat `mgmt_late_fusion` as a "
                       "demonstration of the seed-000 pipeline, not as a predictor.")
    return text + ". A weak predictor of the phantoms' simulated MGMT status."


def markdown_card(card: Dict) -> str:
    """Human-readable model card (mgmt_fusion.md) from the JSON card."""
    cfg, fusion, metrics = card["network"], card["fusion"], card["metrics"]
    rows = _table(metrics["test_phantoms"])
    predicted = metrics.get("test_phantoms_predicted_segmentation")
    seg_model = metrics.get("predicted_segmentation_model", "version not recorded")
    predicted_section = "" if not predicted else f"""
With the slices chosen by the shipped segmentation network ({seg_model}) instead of the ground truth (one plain pass,
argmax, as `analyze --fast` chooses them), on the same test phantoms:

{chr(10).join(_table(predicted))}
"""
    verdict = _verdict(metrics)
    evidence = evidence_section(card, EVIDENCE_SUMMARY) if card.get("evidence") else ""
    weights = ", ".join(f"{m} {w:.3f}" for m, w in fusion["weights"].items())
    temps = ", ".join(f"{m} {t:.2f}" for m, t in fusion["temperatures"].items())
    training = card["training"]
    return f"""# mgmt_fusion: MGMT promoter methylation, per-modality CNN+LSTM late fusion

**Research use only. Not a medical device.** Trained and tested on synthetic phantoms only.

{evidence}
**Bottom line**: {verdict}

- **Task**: P(MGMT promoter methylated) from the axial slices spanned by the (predicted) tumor, one model per
  modality (T1, T1CE, T2, FLAIR), fused by a weighted average renormalised over the modalities present (seed 000).
- **Labels**: {card['label_source']}
- **Architecture** (per modality): tumor-centred {cfg['crop_size']}x{cfg['crop_size']} crop of the 2 mm grid
  ({2 * cfg['crop_size']} mm), at most {cfg['max_slices']} slices evenly spread over the tumor's axial span -> 3x3 conv
  to 3 channels -> MONAI EfficientNet (b0 blocks, width {cfg['width_coefficient']}, depth {cfg['depth_coefficient']},
  {cfg['backbone_norm']} norm, random init) -> {cfg['feature_dim']} features, instance-normalised -> dropout
  {cfg['dropout']} -> LSTM ({cfg['lstm_hidden']} hidden) -> linear -> sigmoid(logit / T). No tumor in the label map:
  the brain's central slices are used (``slices_from: brain_centre``).
- **Fusion weights**: {weights} ({fusion['weight_method']}).
- **Temperatures** (validation NLL): {temps}.
- **Uncertainty**: standard deviation of the fused probability over MC-dropout passes of the LSTM heads.
- **Training**: {training['n_train']} training / {training['n_validation']} validation / {training['n_test']} test
  phantoms (fixed split of `training/common/classification_data.py`, cohort seed {training['phantom_seed']}); BCE, AdamW
  (lr {training['lr']}, weight decay {training['weight_decay']}), batch {training['batch']} cases, early stopping on
  validation loss (patience {training['patience']}, not before epoch {training['min_epochs']}); epochs per modality
  (best epoch): {training['epochs']}.
  Augmentation: left-right flip, intensity scale/shift, crop jitter +-{training['jitter']} voxels, slice subsets.
  Auxiliary training loss (not exported): per-slice NCR/ED/ET area regression, weight {training['aux_weight']}.
  Training time {training['wall_clock_min']:.1f} min on {training['threads']} CPU thread(s) (data loading and
  evaluation excluded).
  Command: `{training['command']}`.

## Held-out test phantoms

{metrics['n_test']} cases, {metrics['test_positives']} methylated; the ground-truth label maps select the slices;
threshold 0.5 for accuracy and F1, at which the fused model calls {metrics['test_called_methylated']:.0%} of the test
cases methylated (prevalence {metrics['test_positives'] / metrics['n_test']:.0%}).

{chr(10).join(rows)}

{predicted_section}
Per-modality rows are temperature-scaled; `fused_without_X` is the fused prediction with modality X missing.
With {metrics['n_test']} test cases an AUC has a standard error of roughly 0.07-0.08. MGMT in the phantoms is only
weakly visible (a tendency to less edema, plus its correlation with IDH), so moderate numbers are expected. These are
synthetic-data numbers: they say nothing about real MGMT status, for which no labels were available.

Weights: `mgmt_fusion.safetensors` (float16), sha256 `{card['sha256']}`.
"""


def predicted_segmentation_cases(samples: Sequence[ClassificationSample], config: MGMTFusionConfig,
                                 seg_model: str = "glioma_seg") -> Tuple[List[PreparedCase], str]:
    """(MGMT-labelled cases whose slices are selected by the shipped segmentation network's labels (one plain pass,
    argmax, no post-processing) instead of the ground truth, "<name> <version>" of that network): what ``analyze``
    feeds the ensemble. Only ``eval_crops`` is filled."""
    model, seg_card = load_model(seg_model)
    out = []
    for s in samples:
        if not s.known("mgmt"):
            continue
        shape = s.labels.shape
        pad = [(0, 0)] + [(0, (-n) % model.config.divisor) for n in shape]
        probabilities, _, _ = predict(model, np.pad(s.image, pad), s.presence, torch.device("cpu"))
        labels = probabilities[:, :shape[0], :shape[1], :shape[2]].argmax(0).astype(np.uint8)
        crops = select_slices(s.image, labels, config).crops
        out.append(PreparedCase(s.case_id, crops[:, :0], labels[:0], crops, int(s.targets["mgmt"])))
    return out, f"{seg_card['name']} {seg_card['version']}"


def predicted_segmentation_report(ensemble: MGMTFusionEnsemble, cases: Sequence[PreparedCase],
                                  temperatures: Dict[str, float], weights: Dict[str, float]) -> Dict[str, Dict]:
    """Per-modality (temperature-scaled) and fused reports of ``ensemble`` on ``cases`` (their ``eval_crops``)."""
    targets = np.array([c.target for c in cases], dtype=np.float64)
    probabilities = {m: apply_temperature(predict_logits(ensemble.models[m], cases, MODALITIES.index(m)),
                                          temperatures[m]) for m in ensemble.config.modalities}
    report = {m: binary_report(p, targets) for m, p in probabilities.items()}
    report["fused"] = binary_report(fused_array(probabilities, weights), targets)
    return report


def evaluate_and_export(ensemble: MGMTFusionEnsemble, validation: Sequence[PreparedCase], test: Sequence[PreparedCase],
                        args: argparse.Namespace, counts: Dict[str, int], done: Dict[str, Dict],
                        wall_clock_s: float,
                        test_predicted: Optional[Tuple[Sequence[PreparedCase], str]] = None) -> Dict:
    """Temperatures and fusion weights on validation, metrics and plots on test (and on ``test_predicted``, the test
    cases with slices chosen by a segmentation network and its "<name> <version>", when given), export; returns the
    card."""
    out = Path(args.out)
    y_val = np.array([c.target for c in validation], dtype=np.float64)
    y_test = np.array([c.target for c in test], dtype=np.float64)
    modalities = list(ensemble.config.modalities)
    logits = {split: {m: predict_logits(ensemble.models[m], cases, MODALITIES.index(m)) for m in modalities}
              for split, cases in (("validation", validation), ("test", test))}
    temperatures = {m: fit_temperature(logits["validation"][m], y_val) for m in modalities}
    calibrated = {split: {m: apply_temperature(v[m], temperatures[m]) for m in modalities}
                  for split, v in logits.items()}
    weights = fit_fusion_weights(calibrated["validation"], y_val, args.weight_prior)
    metrics = {"test_phantoms": _subset_reports(calibrated["test"], weights, y_test),
               "validation_phantoms": _subset_reports(calibrated["validation"], weights, y_val),
               "test_uncalibrated": {m: binary_report(1 / (1 + np.exp(-logits["test"][m])), y_test)
                                     for m in modalities},
               "n_test": int(len(test)), "test_positives": int(y_test.sum())}
    fused_test = fused_array(calibrated["test"], weights)
    metrics["test_called_methylated"] = float(np.mean(fused_test >= 0.5))
    if test_predicted and test_predicted[0]:
        cases, seg_model = test_predicted
        metrics["test_phantoms_predicted_segmentation"] = predicted_segmentation_report(ensemble, cases, temperatures,
                                                                                        weights)
        metrics["predicted_segmentation_model"] = seg_model
    (out / "predictions.json").write_text(json.dumps(
        {split: {"case_id": [c.case_id for c in cases], "target": [c.target for c in cases],
                 "logits": {m: logits[split][m].tolist() for m in modalities}}
         for split, cases in (("validation", validation), ("test", test))}, indent=1))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    curves = {m: (calibrated["test"][m], y_test) for m in modalities}
    curves["fused"] = (fused_test, y_test)
    calibration_plot(curves, out / "mgmt_calibration.png", "MGMT late fusion, test phantoms")
    decision_curve_plot(curves, out / "mgmt_decision_curve.png", "MGMT late fusion, test phantoms")

    command = "python -m training.mgmt.train_mgmt " + " ".join(sys.argv[1:]) if args.command is None else args.command
    card = {
        "version": args.version,
        "task": "mgmt_late_fusion",
        "output": "P(MGMT promoter methylated)",
        "label_source": LABEL_SOURCE,
        "research_use_only": True,
        "inputs": {"image": "float32 (4, Z, Y, X) z-scored on the 2 mm working grid, MODALITIES order",
                   "presence": "float32 (4,) of 0/1", "labels": "uint8 (Z, Y, X) contiguous 0 bg/1 NCR/2 ED/3 ET",
                   "modalities": modalities},
        "preprocessing": {"spacing_mm": [2.0, 2.0, 2.0]},
        "fusion": {"weights": weights, "temperatures": temperatures,
                   "weight_method": f"MAP on validation phantoms: non-negative weights summing to 1 maximising the "
                                    f"log-likelihood of the fused probability, symmetric Dirichlet prior "
                                    f"(concentration {1 + args.weight_prior:g})",
                   "temperature_method": "per-modality temperature scaling, validation NLL"},
        "training": {"n_train": counts["train"], "n_validation": counts["validation"], "n_test": counts["test"],
                     "phantom_seed": args.phantom_seed, "n_phantoms": args.n_phantoms, "lr": args.lr,
                     "weight_decay": args.weight_decay, "batch": args.batch, "patience": args.patience,
                     "max_epochs": args.epochs, "jitter": args.jitter, "aux_weight": args.aux_weight,
                     "seed": args.seed, "threads": args.threads,
                     "epochs": {m: f"{d['epochs']} ({d['best_epoch']})" for m, d in done.items()},
                     "best_val_loss": {m: d["best_val_loss"] for m, d in done.items()},
                     "min_epochs": args.min_epochs, "wall_clock_min": wall_clock_s / 60, "command": command},
        "metrics": metrics,
        "evidence": EVIDENCE,
    }
    export = Path(args.export_dir) if args.export_dir else out / "export"
    card_path = save_model(ensemble, card, export, args.name)
    card = json.loads(card_path.read_text())
    (export / f"{args.name}.md").write_text(markdown_card(card))
    return card


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training.mgmt.train_mgmt", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="run folder (checkpoints, logs, plots); outside the repository")
    parser.add_argument("--export-dir", default=None, help="where the weights and cards go (default OUT/export); "
                                                            "Resources/models for the shipped model")
    parser.add_argument("--name", default=DEFAULT_MODEL_NAME)
    parser.add_argument("--version", default="1.0")
    parser.add_argument("--real-root", default=None, help="real cases too (they carry no MGMT label: not used)")
    parser.add_argument("--cache", default=DEFAULT_CACHE)
    parser.add_argument("--n-phantoms", type=int, default=240)
    parser.add_argument("--phantom-seed", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=20, help="most epochs per modality")
    parser.add_argument("--patience", type=int, default=6, help="epochs without validation-loss improvement")
    parser.add_argument("--min-epochs", type=int, default=10, help="no early stop before this epoch (the models "
                        "start to learn late; the validation loss of the first epochs is noise)")
    parser.add_argument("--batch", type=int, default=8, help="cases per step")
    parser.add_argument("--lr", type=float, default=3e-4,
                        help="AdamW learning rate (1e-3 did not train the EfficientNet from scratch)")
    parser.add_argument("--weight-decay", type=float, default=1e-2)
    parser.add_argument("--jitter", type=int, default=4, help="in-plane crop jitter, voxels")
    parser.add_argument("--aux-weight", type=float, default=1.0,
                        help="weight of the auxiliary per-slice NCR/ED/ET area loss (0: BCE only)")
    parser.add_argument("--weight-prior", type=float, default=1.0, help="Dirichlet prior strength of fusion weights")
    parser.add_argument("--modalities", default=",".join(MODALITIES))
    parser.add_argument("--config", default=None, help="JSON of MGMTFusionConfig fields overriding the defaults")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--no-predicted-seg-eval", dest="predicted_seg_eval", action="store_false",
                        help="skip the test evaluation with slices chosen by the shipped segmentation model")
    parser.add_argument("--command", default=None, help=argparse.SUPPRESS)
    # --config already takes the MGMTFusionConfig JSON, so the YAML run configuration comes with --train-config.
    return parse_with_config(parser, argv, flag="--train-config")


def run(args: argparse.Namespace, split=None) -> Dict:
    """The whole pipeline; ``split`` (a ClassificationSplit) replaces the cohort loading (tests). Returns the card."""
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    overrides = json.loads(args.config) if args.config else {}
    config = MGMTFusionConfig.from_dict(dict(MGMTFusionConfig().to_dict(), modalities=args.modalities.split(","),
                                             **overrides))
    config_path = out / "config.json"
    if args.resume and config_path.is_file():
        stored = json.loads(config_path.read_text())["network"]
        if stored != config.to_dict():
            raise SystemExit(f"{config_path}: the run was started with another configuration; use a new --out")
    config_path.write_text(json.dumps({"network": config.to_dict(), "args": vars(args)}, indent=2))
    if split is None:
        print("loading the classification split ...", flush=True)
        split = load_classification_split(Path(args.real_root) if args.real_root else None, Path(args.cache),
                                          args.n_phantoms, args.phantom_seed)
    start_run_record(out, {"args": vars(args), "network": config.to_dict()}, classification_split_ids(split),
                     args.seed, "cpu", "training.mgmt.train_mgmt", config_file=getattr(args, "train_config", None))
    train, validation, test = (prepare(part, config, args.jitter) for part in (split.train, split.validation,
                                                                               split.test))
    counts = {"train": len(train), "validation": len(validation), "test": len(test)}
    print(f"MGMT-labelled cases: {counts}", flush=True)
    log_path = out / "log.jsonl"

    def log(record: Dict) -> None:
        with open(log_path, "a") as handle:
            handle.write(json.dumps(dict(record, time=time.strftime("%Y-%m-%dT%H:%M:%S"))) + "\n")

    done = {m: train_modality(m, train, validation, config, args, log) for m in config.modalities}
    evaluation_started = time.time()
    ensemble = MGMTFusionEnsemble(config)
    for m in config.modalities:
        ensemble.models[m].load_state_dict(load_file(str(out / m / "best.safetensors")))
    ensemble.eval()
    seconds = sum(d.get("train_seconds", 0.0) for d in done.values()) + (time.time() - evaluation_started)
    test_predicted = None
    if args.predicted_seg_eval:
        print("segmenting the test cases with the shipped segmentation model ...", flush=True)
        test_predicted = predicted_segmentation_cases(split.test, config)
    card = evaluate_and_export(ensemble, validation, test, args, counts, done, seconds, test_predicted)
    summary = {m: card["metrics"]["test_phantoms"][m]["auc"] for m in list(config.modalities) + ["fused"]}
    log({"final": True, "test_auc": summary, "weights": card["fusion"]["weights"],
         "temperatures": card["fusion"]["temperatures"]})
    print(f"test AUC: {json.dumps(summary)}; weights {json.dumps(card['fusion']['weights'])}", flush=True)
    return card


def main(argv: Optional[Sequence[str]] = None) -> None:
    run(parse_args(argv))


if __name__ == "__main__":
    main()
