"""Semi-supervised training of the multi-task heads (seed 001, III.F) on the cached backbone features of a
``train_multitask`` run, with an ablation against supervision on the labelled part only.

    python -m training.advanced.semi_supervised_heads /root/glioma-runs/multitask --withhold 0.5

Unlabelled data: the labels of ``--withhold`` of the training phantoms are hidden, and the real training cases
lack IDH (but for 3), 1p/19q and MGMT. Three head sets are trained from the same initialisation and compared on the
held-out test phantoms (AUC) and the real validation cases (grade AUC):

    supervised   labelled rows only
    stage 1      + pseudo-labels: MC-dropout mean aligned to the labelled class distribution (distribution
                 alignment), kept when its standard deviation < 0.1 AND its confidence > 0.95 (dual thresholds)
    stage 2      weak-to-strong consistency from stage 1: an EMA teacher labels the clean features of unlabelled
                 rows; the student sees strongly perturbed features (noise, feature dropout) as two copies with
                 complementary channel masks on the fused features (UniMatch V2)

The backbone is frozen, so "strong augmentation" acts on features here; image-level strong augmentation is in
``training/advanced/semi_supervised.py`` (segmentation).
"""
from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import torch

from GliomaAnalysisLib.models.multitask import TASKS, MultiTaskConfig
from GliomaAnalysisLib.models.multitask_net import MultiTaskNet

from ..common.classification_data import load_classification_split
from ..multitask.export_multitask import _task_arrays
from ..common.losses import UncertaintyWeighting, masked_task_loss
from ..common.metrics import roc_auc
from .semi_supervised import complementary_masks, distribution_alignment, ema_update
from ..common.datasets import DEFAULT_CACHE
from ..multitask.train_multitask import known_targets, mc_probabilities, pooled_features

Rows = Dict[str, torch.Tensor]


def fit_heads(model: MultiTaskNet, rows: Rows, validation: Rows, steps: int, seed: int, batch: int = 32,
              lr: float = 5e-4, eval_every: int = 50, patience: int = 6) -> MultiTaskNet:
    """Train fusion + heads on feature rows (pooled (N, F), targets (N, tasks, 2), known (N, tasks)) with
    eq. 7 weighting; returns the model restored to its best validation loss."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    weighting = UncertaintyWeighting(TASKS)
    optimizer = torch.optim.AdamW(list(model.fusion.parameters()) + list(model.heads.parameters())
                                  + list(weighting.parameters()), lr=lr, weight_decay=1e-3)
    weights = _class_weights(rows)
    best, best_state, stale = float("inf"), copy.deepcopy(model.state_dict()), 0
    for step in range(1, steps + 1):
        model.heads_dropout(True)
        pick = torch.from_numpy(rng.integers(len(rows["pooled"]), size=batch))
        logits = model.classify(rows["pooled"][pick])
        loss = weighting({t: masked_task_loss(logits[t], rows["targets"][pick, i], rows["known"][pick, i], weights[t])
                          for i, t in enumerate(TASKS) if rows["known"][pick, i].any()})
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % eval_every == 0:
            value = validation_loss(model, validation, weights)
            best, stale = (value, 0) if value < best - 1e-4 else (best, stale + 1)
            if stale == 0:
                best_state = copy.deepcopy(model.state_dict())
            if stale >= patience:
                break
    model.load_state_dict(best_state)
    model.heads_dropout(False)
    return model


def _class_weights(rows: Rows) -> Dict[str, torch.Tensor]:
    out = {}
    for i, task in enumerate(TASKS):
        known = rows["known"][:, i] > 0
        counts = rows["targets"][known, i].sum(dim=0).clamp_min(1.0)
        out[task] = counts.sum() / (2 * counts)
    return out


def validation_loss(model: MultiTaskNet, rows: Rows, weights: Dict[str, torch.Tensor]) -> float:
    model.heads_dropout(False)
    with torch.no_grad():
        logits = model.classify(rows["pooled"])
        losses = [masked_task_loss(logits[t], rows["targets"][:, i], rows["known"][:, i], weights[t])
                  for i, t in enumerate(TASKS) if rows["known"][:, i].any()]
    return float(sum(losses) / len(losses))


def pseudo_label(teacher: MultiTaskNet, rows: Rows, unlabelled: torch.Tensor, labelled_prior: Dict[str, float],
                 confidence: float = 0.95, uncertainty: float = 0.1, passes: int = 20) -> Tuple[Rows, Dict]:
    """Rows with reliable pseudo-labels added where ``unlabelled`` (N, tasks) is 1; and per-task counts."""
    torch.manual_seed(0)
    teacher.heads_dropout(True)
    with torch.no_grad():
        samples = torch.stack([torch.stack([torch.softmax(teacher.classify(rows["pooled"])[t], dim=1)[:, 1]
                                            for t in TASKS], dim=1) for _ in range(passes)])  # (passes, N, tasks)
    teacher.heads_dropout(False)
    mean, std = samples.mean(0).numpy(), samples.std(0).numpy()
    targets, known = rows["targets"].clone(), rows["known"].clone()
    counts = {}
    for i, task in enumerate(TASKS):
        candidates = unlabelled[:, i] > 0
        if not candidates.any():
            counts[task] = 0
            continue
        probabilities = np.stack([1 - mean[:, i], mean[:, i]], axis=1)
        predicted = probabilities[candidates.numpy()].mean(axis=0)
        target = np.array([1 - labelled_prior[task], labelled_prior[task]])
        aligned = distribution_alignment(probabilities, target, predicted, axis=1)
        label = aligned.argmax(axis=1)
        keep = candidates.numpy() & (aligned.max(axis=1) > confidence) & (std[:, i] < uncertainty)
        targets[keep, i] = torch.nn.functional.one_hot(torch.from_numpy(label[keep]), 2).float()
        known[keep, i] = 1
        counts[task] = int(keep.sum())
    return {"pooled": rows["pooled"], "targets": targets, "known": known}, counts


def consistency_stage(student: MultiTaskNet, rows: Rows, unlabelled_rows: torch.Tensor, validation: Rows,
                      steps: int, seed: int, decay: float = 0.99, threshold: float = 0.95, batch: int = 32,
                      lr: float = 2e-4, noise: float = 0.1, drop: float = 0.2) -> MultiTaskNet:
    """Weak-to-strong consistency with an EMA teacher and complementary feature dropout; returns the teacher
    (the EMA weights, which the seed and UniMatch V2 keep for inference)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    teacher = copy.deepcopy(student)
    weighting = UncertaintyWeighting(TASKS)
    optimizer = torch.optim.AdamW(list(student.fusion.parameters()) + list(student.heads.parameters())
                                  + list(weighting.parameters()), lr=lr, weight_decay=1e-3)
    weights = _class_weights(rows)
    scale = rows["pooled"].std(dim=0, keepdim=True)
    pool = torch.nonzero(unlabelled_rows).flatten()
    for _ in range(steps):
        student.heads_dropout(True)
        pick = torch.from_numpy(rng.integers(len(rows["pooled"]), size=batch))
        logits = student.classify(rows["pooled"][pick])
        losses = {t: masked_task_loss(logits[t], rows["targets"][pick, i], rows["known"][pick, i], weights[t])
                  for i, t in enumerate(TASKS) if rows["known"][pick, i].any()}
        weak = rows["pooled"][pool[torch.from_numpy(rng.integers(len(pool), size=batch))]]
        teacher.heads_dropout(False)
        with torch.no_grad():
            teacher_p = {t: torch.softmax(v, dim=1) for t, v in teacher.classify(weak).items()}
        strong = weak + noise * scale * torch.randn(weak.shape, generator=generator)
        strong = strong * (torch.rand(weak.shape, generator=generator) > drop).float() / (1 - drop)
        fused = student.fusion(strong)
        first, second = complementary_masks(len(fused), fused.shape[1], generator)
        views = [student.heads(fused * first * 2.0), student.heads(fused * second * 2.0)]
        for t in TASKS:
            confident = (teacher_p[t].max(dim=1).values > threshold).float()
            target = torch.nn.functional.one_hot(teacher_p[t].argmax(dim=1), 2).float()
            consistency = sum(masked_task_loss(v[t], target, confident, weights[t]) for v in views) / 2
            losses[t] = losses.get(t, 0.0) + consistency
        loss = weighting(losses)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            ema_update(teacher, student, decay)
    teacher.heads_dropout(False)
    return teacher


def scores(model: MultiTaskNet, groups: Dict[str, Tuple[List, torch.Tensor]]) -> Dict[str, Dict[str, float]]:
    """AUC per task on each evaluation group (None where one class only)."""
    out = {}
    for group, (samples, pooled) in groups.items():
        logits = mc_probabilities(model, pooled, samples=20)
        out[group] = {t: roc_auc(*_task_arrays(samples, logits, t)) for t in TASKS}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a train_multitask run folder (views-*.npz, network.json, best.pt)")
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--withhold", type=float, default=0.5, help="share of training phantoms made unlabelled")
    parser.add_argument("--real-root", type=Path, default=Path("../shared/data/brats18"))
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--n-phantoms", type=int, default=240)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, help="results JSON (default RUN/semi_supervised_heads.json)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    split = load_classification_split(args.real_root, args.cache, args.n_phantoms)
    config = MultiTaskConfig.from_dict(json.loads((args.run / "network.json").read_text()))
    shipped = MultiTaskNet(config)
    shipped.load_state_dict(torch.load(args.run / "best.pt", weights_only=True))
    views = {k: torch.from_numpy(v) for k, v in np.load(args.run / f"views-{args.views}.npz").items() if k != "key"}

    phantom_rows = [i for i, s in enumerate(split.train) if s.source == "phantom"]
    n_hidden = int(args.withhold * len(phantom_rows))
    hidden_cases = set(np.random.default_rng(args.seed).permutation(phantom_rows)[:n_hidden])
    case_of_row = torch.arange(len(views["pooled"])) // args.views
    hidden = torch.tensor([int(c) in hidden_cases for c in case_of_row])
    labelled = {"pooled": views["pooled"], "targets": views["targets"],
                "known": views["known"] * (~hidden).float()[:, None]}
    unlabelled = (labelled["known"] == 0).float()
    prior = {t: float(labelled["targets"][labelled["known"][:, i] > 0, i, 1].mean()) for i, t in enumerate(TASKS)}

    evaluation = {"test_phantoms": (split.test, pooled_features(shipped, split.test)),
                  "real_validation": ([s for s in split.validation if s.source == "real"], None)}
    evaluation["real_validation"] = (evaluation["real_validation"][0],
                                     pooled_features(shipped, evaluation["real_validation"][0]))
    validation = {"pooled": pooled_features(shipped, split.validation), **known_targets(split.validation)}

    def fresh() -> MultiTaskNet:
        model = MultiTaskNet(config)
        model.load_state_dict(torch.load(args.run / "best.pt", weights_only=True))  # backbone (frozen) + shape
        torch.manual_seed(args.seed)
        for module in list(model.fusion.modules()) + list(model.heads.modules()):
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
        return model

    results = {"all_labels (shipped heads)": scores(shipped, evaluation)}
    supervised = fit_heads(fresh(), labelled, validation, args.steps, args.seed)
    results["supervised, labelled part only"] = scores(supervised, evaluation)
    with_pseudo, counts = pseudo_label(supervised, labelled, unlabelled, prior)
    stage1 = fit_heads(fresh(), with_pseudo, validation, args.steps, args.seed)
    results["+ stage 1 pseudo-labels"] = scores(stage1, evaluation)
    stage2 = consistency_stage(copy.deepcopy(stage1), with_pseudo, unlabelled.any(dim=1), validation,
                               args.steps // 3, args.seed)
    results["+ stage 2 EMA weak-to-strong"] = scores(stage2, evaluation)
    report = {"withheld_phantoms": len(hidden_cases), "pseudo_labels_kept": counts, "auc": results}
    out = args.out or args.run / "semi_supervised_heads.json"
    out.write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
