"""Two-stage semi-supervised segmentation (seed 001, section III.F), starting from the shipped weights.

    python -m training.advanced.semi_supervised --run-dir /root/glioma-runs/ssl [--config training/configs/semi_supervised.yaml]

Unlabelled data: synthetic phantoms written into the cache with ``write_cohort`` whose labels are withheld (read
only to report the pseudo-label accuracy afterwards), optionally the real training cases with their labels withheld
(``--unlabelled-real``, an ablation). Labelled data: the fixed training split (+ labelled phantoms), as in
``train_segmentation``.

Stage 1, pseudo-labels (``stage1_pseudo.safetensors``): the start model predicts every unlabelled case with
``--mc-passes`` MC-dropout passes; the mean probabilities are distribution-aligned (multiplied by the ratio of the
labelled class distribution to the model's mean predicted distribution over the unlabelled brains, renormalised);
a voxel keeps its pseudo-label (the argmax) only when its MC-dropout standard deviation (of the chosen class) is
below ``--uncertainty`` (0.1) AND its aligned confidence above ``--confidence`` (0.95); the others are ignored in
the loss. Fine-tuning: one labelled and one pseudo-labelled crop per step.

Stage 2, weak-to-strong consistency (``stage2_consistency.safetensors``, teacher ``stage2_teacher.safetensors``):
an EMA teacher predicts weakly augmented unlabelled crops (crop, flips, mild intensity); the student sees strong
versions (brightness/contrast jitter, Gaussian blur, CutMix between two crops, applied to the pseudo-labels alike)
in two streams whose bottleneck features get complementary channel-dropout masks (UniMatch V2); voxels with teacher
confidence below ``--confidence`` are ignored; plus the supervised loss on a labelled crop.
"""
from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from GliomaAnalysisLib.models.network import GliomaSegNet
from GliomaAnalysisLib.models.segment import dropout_masks
from GliomaAnalysisLib.synthetic.phantom import write_cohort

from ..common.config import parse_args
from ..common.datasets import discover_cases
from ..common.losses import dice_ce_loss, region_probabilities, region_targets
from ..common.run_record import finish_run_record, start_run_record
from ..segmentation.segmentation_data import TrainingCase, load_cached, sample_crop, tumor_protect_crop
from ..common.stages import (JsonLog, add_stage_arguments, prepare_stage, random_subsets, sample_batch, save_weights,
                     set_lr, start_model)

IGNORE = 255
"""Pseudo-label value of voxels left out of the loss."""
N_CLASSES = 4


# ---------------------------------------------------------------- stage 1: reliable pseudo-labels
def class_distribution(labels: Sequence[np.ndarray], brains: Sequence[np.ndarray]) -> np.ndarray:
    """Voxel frequency (4,) of the classes 0..3 over the brain voxels of labelled cases (sums to 1)."""
    counts = np.zeros(N_CLASSES, dtype=np.float64)
    for label, brain in zip(labels, brains):
        counts += np.bincount(label[brain].ravel().astype(np.int64), minlength=N_CLASSES)[:N_CLASSES]
    return counts / max(counts.sum(), 1.0)


def distribution_alignment(probabilities: np.ndarray, target: np.ndarray, predicted: np.ndarray,
                           axis: int = 0) -> np.ndarray:
    """Distribution alignment (ReMixMatch): p * target / predicted along the class ``axis``, renormalised.

    probabilities (..., C, ...) with the classes on ``axis``; target, predicted (C,) class distributions.
    """
    ratio = np.asarray(target, dtype=np.float64) / np.clip(np.asarray(predicted, dtype=np.float64), 1e-8, None)
    shape = [1] * probabilities.ndim
    shape[axis] = -1
    aligned = probabilities * ratio.reshape(shape)
    return (aligned / np.clip(aligned.sum(axis=axis, keepdims=True), 1e-12, None)).astype(np.float32)


def reliable_pseudo_labels(aligned: np.ndarray, std: np.ndarray, confidence: float = 0.95,
                           uncertainty: float = 0.1) -> Tuple[np.ndarray, np.ndarray]:
    """Dual thresholds: (pseudo-labels uint8 (Z, Y, X) with IGNORE where unreliable, kept mask bool (Z, Y, X)).

    aligned (4, Z, Y, X): aligned mean probabilities; std (4, Z, Y, X): MC-dropout standard deviations. A voxel is
    kept when the std of its argmax class < ``uncertainty`` AND its aligned probability > ``confidence``.
    """
    labels = aligned.argmax(axis=0)
    chosen = np.take_along_axis(aligned, labels[None], axis=0)[0]
    spread = np.take_along_axis(std, labels[None], axis=0)[0]
    kept = (spread < uncertainty) & (chosen > confidence)
    return np.where(kept, labels, IGNORE).astype(np.uint8), kept


def mc_dropout_statistics(model: GliomaSegNet, image: np.ndarray, passes: int = 8,
                          seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation (4, Z, Y, X) of the softmax over ``passes`` MC-dropout passes.

    image: float32 (4, Z, Y, X), all modalities; padded internally to the network divisor.
    """
    shape = image.shape[1:]
    pad = [(0, 0)] + [(0, (-n) % model.config.divisor) for n in shape]
    x = torch.from_numpy(np.pad(image, pad))[None]
    presence = torch.ones(1, 4)
    rng = np.random.default_rng(seed)  # the masks of the analysis's MC-dropout (models/segment.py)
    was_training = model.training
    model.eval()
    total = torch.zeros((N_CLASSES,) + x.shape[2:], dtype=torch.float64)
    squares = torch.zeros_like(total)
    with torch.inference_mode():
        for _ in range(passes):
            masks = [torch.from_numpy(m) for m in dropout_masks(model.config, x.shape[2:], rng)]
            p = torch.softmax(model(x, presence, masks), dim=1)[0].double()
            total += p
            squares += p * p
    model.train(was_training)
    mean = total / passes
    std = torch.sqrt(torch.clamp(squares / passes - mean * mean, min=0.0))
    crop = (slice(None),) + tuple(slice(0, n) for n in shape)
    return mean[crop].float().numpy(), std[crop].float().numpy()


def masked_dice_ce_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE,
                        smooth: float = 1.0) -> torch.Tensor:
    """``dice_ce_loss`` over the voxels whose label is not ``ignore_index`` only (0 with gradient when none is).

    logits (B, 4, ...), labels (B, ...) int64 in 0..3 or ``ignore_index``.
    """
    valid = labels != ignore_index
    if not bool(valid.any()):
        return logits.sum() * 0.0
    safe = torch.where(valid, labels, torch.zeros_like(labels))
    ce = F.cross_entropy(logits, labels, ignore_index=ignore_index)
    weight = valid.unsqueeze(1).float()
    regions = region_probabilities(torch.softmax(logits, dim=1)) * weight
    targets = region_targets(safe) * weight
    dims = (0,) + tuple(range(2, regions.ndim))
    dice = (2 * (regions * targets).sum(dims) + smooth) / (regions.sum(dims) + targets.sum(dims) + smooth)
    return ce + (1 - dice).mean()


@dataclass
class UnlabelledCase:
    """An unlabelled case on the working grid: image float32 (4, Z, Y, X); ``withheld`` labels only for reports."""

    case_id: str
    image: np.ndarray
    withheld: Optional[np.ndarray] = None
    pseudo: Optional[np.ndarray] = None


def sample_pseudo_crop(case: UnlabelledCase, size: int, rng: np.random.Generator, modality_dropout: float = 0.5,
                       ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A training crop of a pseudo-labelled case (IGNORE kept): crop placed around the reliable tumor voxels."""
    tumor = np.where(case.pseudo == IGNORE, 0, case.pseudo)
    where = tumor_protect_crop(tumor, size, rng)
    sub = TrainingCase(case.case_id, case.image[(slice(None),) + where], case.pseudo[where])
    return sample_crop(sub, size, rng, modality_dropout)


# ---------------------------------------------------------------- stage 2: weak-to-strong consistency
@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    """teacher <- decay * teacher + (1 - decay) * student (parameters; buffers copied)."""
    for t, s in zip(teacher.parameters(), student.parameters()):
        t.mul_(decay).add_(s.detach(), alpha=1.0 - decay)
    for t, s in zip(teacher.buffers(), student.buffers()):
        t.copy_(s)


def complementary_masks(batch: int, channels: int, generator: Optional[torch.Generator] = None,
                        ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Two channel masks (B, C) in {0, 1}: Bernoulli(0.5) and its complement (UniMatch V2)."""
    first = (torch.rand(batch, channels, generator=generator) < 0.5).float()
    return first, 1.0 - first


class ComplementaryDropout:
    """Forward hook on ``module`` (``with ComplementaryDropout(model.transformer):``) for a batch holding two copies
    of the same inputs: the first copy keeps the channels of a random mask, the second the complement, both x2."""

    def __init__(self, module: nn.Module, generator: Optional[torch.Generator] = None) -> None:
        self.module = module
        self.generator = generator
        self.handle = None
        self.last: Optional[Tuple[torch.Tensor, torch.Tensor]] = None

    def __enter__(self) -> "ComplementaryDropout":
        self.handle = self.module.register_forward_hook(self._hook)
        return self

    def _hook(self, module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
        half = output.shape[0] // 2
        if half * 2 != output.shape[0]:
            raise ValueError("complementary dropout needs a batch of two copies")
        first, second = complementary_masks(half, output.shape[1], self.generator)
        self.last = (first, second)
        view = (half, output.shape[1]) + (1,) * (output.ndim - 2)
        first, second = first.view(view).to(output), second.view(view).to(output)
        return torch.cat([output[:half] * first * 2.0, output[half:] * second * 2.0])

    def __exit__(self, *exc) -> None:
        if self.handle is not None:
            self.handle.remove()
            self.handle = None


def brightness_contrast(x: torch.Tensor, rng: np.random.Generator, brightness: float = 0.2,
                        contrast: float = 0.2) -> torch.Tensor:
    """Per sample and channel: x * U(1-contrast, 1+contrast) + U(-brightness, brightness) inside the brain (x != 0
    in any channel); outside stays 0. x (B, 4, ...) z-scored."""
    b, c = x.shape[:2]
    scale = torch.from_numpy(rng.uniform(1 - contrast, 1 + contrast, (b, c)).astype(np.float32))
    shift = torch.from_numpy(rng.uniform(-brightness, brightness, (b, c)).astype(np.float32))
    view = (b, c) + (1,) * (x.ndim - 2)
    brain = (x != 0).any(dim=1, keepdim=True)
    present = (x != 0).flatten(2).any(dim=2).float().view(view)  # absent modalities stay zero
    return torch.where(brain, x * scale.view(view) + shift.view(view) * present, x)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable 3D Gaussian blur of every channel of x (B, C, Z, Y, X), sigma in voxels (0: unchanged)."""
    if sigma <= 0:
        return x
    radius = max(1, int(math.ceil(2 * sigma)))
    grid = torch.arange(-radius, radius + 1, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (grid / sigma) ** 2)
    kernel = kernel / kernel.sum()
    b, c = x.shape[:2]
    out = x.reshape(b * c, 1, *x.shape[2:])
    for axis in range(3):
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = -1
        padding = [0, 0, 0]
        padding[axis] = radius
        out = F.conv3d(out, kernel.view(shape), padding=tuple(padding))
    return out.reshape(x.shape)


def cutmix_box(shape: Sequence[int], rng: np.random.Generator, fraction: Tuple[float, float] = (0.1, 0.4),
               ) -> np.ndarray:
    """Boolean box mask of ``shape`` (Z, Y, X) covering a random fraction of the volume."""
    volume = rng.uniform(*fraction)
    edges = [max(1, int(round(n * volume ** (1 / 3)))) for n in shape]
    starts = [int(rng.integers(0, n - e + 1)) for n, e in zip(shape, edges)]
    box = np.zeros(shape, dtype=bool)
    box[tuple(slice(s, s + e) for s, e in zip(starts, edges))] = True
    return box


def cutmix(x_a: torch.Tensor, y_a: torch.Tensor, x_b: torch.Tensor, y_b: torch.Tensor,
           box: np.ndarray) -> Tuple[torch.Tensor, torch.Tensor]:
    """Paste ``box`` (Z, Y, X) of (x_b, y_b) into (x_a, y_a): images (C, Z, Y, X), labels (Z, Y, X)."""
    mask = torch.from_numpy(box)
    return torch.where(mask[None], x_b, x_a), torch.where(mask, y_b, y_a)


def strong_augment(x: torch.Tensor, rng: np.random.Generator, blur_probability: float = 0.5) -> torch.Tensor:
    """Brightness/contrast jitter and, with ``blur_probability``, a Gaussian blur (sigma 0.5-1.0 voxel)."""
    x = brightness_contrast(x, rng)
    if rng.random() < blur_probability:
        x = gaussian_blur(x, float(rng.uniform(0.5, 1.0)))
    return x


def teacher_pseudo_labels(teacher: GliomaSegNet, x: torch.Tensor, presence: torch.Tensor,
                          confidence: float) -> torch.Tensor:
    """Teacher argmax (B, ...) int64 on weak crops, IGNORE where its softmax confidence <= ``confidence``."""
    teacher.eval()
    with torch.no_grad():
        probabilities = torch.softmax(teacher(x, presence), dim=1)
    value, labels = probabilities.max(dim=1)
    return torch.where(value > confidence, labels, torch.full_like(labels, IGNORE))


def consistency_loss(student: GliomaSegNet, teacher: GliomaSegNet, weak: torch.Tensor, presence: torch.Tensor,
                     rng: np.random.Generator, confidence: float = 0.95,
                     generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, float]:
    """Weak-to-strong loss on two weak crops weak (2, 4, S, S, S) sharing one presence (2, 4) (see ``weak_pair``).

    The teacher labels both weak crops; crop 0 gets strong augmentation and a CutMix box from crop 1 (strongly
    augmented too), the labels alike; the student runs the mixed crop twice with complementary feature dropout.
    Returns (mean masked loss of the two streams, fraction of voxels kept).
    """
    pseudo = teacher_pseudo_labels(teacher, weak, presence, confidence)
    strong = strong_augment(weak.clone(), rng)
    box = cutmix_box(weak.shape[2:], rng)
    mixed, mixed_labels = cutmix(strong[0], pseudo[0], strong[1], pseudo[1], box)
    pair = torch.stack([mixed, mixed])
    with ComplementaryDropout(student.transformer, generator):
        logits = student(pair, presence[:1].expand(2, -1))
    labels = mixed_labels.expand(2, *mixed_labels.shape)
    loss = 0.5 * (masked_dice_ce_loss(logits[:1], labels[:1]) + masked_dice_ce_loss(logits[1:], labels[1:]))
    return loss, float((mixed_labels != IGNORE).float().mean())


# ---------------------------------------------------------------- the two stages
def unlabelled_pool(args: argparse.Namespace, real_train: List[TrainingCase]) -> List[UnlabelledCase]:
    """Phantoms written into the cache (labels withheld) and, with ``--unlabelled-real``, the real training cases."""
    cache = Path(args.cache)
    pool: List[UnlabelledCase] = []
    if args.unlabelled_phantoms:
        root = cache / f"unlabelled-phantoms-{args.unlabelled_seed}-{args.unlabelled_phantoms}"
        if not (root / "labels.csv").is_file():
            write_cohort(root, args.unlabelled_phantoms, args.unlabelled_seed)
        for found in discover_cases(root):
            case = load_cached(found.folder, cache, (2.0, 2.0, 2.0), synthetic=True)
            pool.append(UnlabelledCase(case.case_id, case.image, withheld=case.labels))
    if args.unlabelled_real:
        pool += [UnlabelledCase(c.case_id, c.image, withheld=c.labels) for c in real_train]
    return pool


def make_pseudo_labels(model: GliomaSegNet, pool: List[UnlabelledCase], labelled: List[TrainingCase],
                       args: argparse.Namespace) -> List[Dict]:
    """Fill ``case.pseudo`` of every unlabelled case; returns per-case statistics (kept fraction, and the accuracy
    of the kept voxels against the withheld labels)."""
    target = class_distribution([c.labels for c in labelled], [np.any(c.image != 0, axis=0) for c in labelled])
    statistics = [mc_dropout_statistics(model, case.image, args.mc_passes, args.seed) for case in pool]
    brains = [np.any(case.image != 0, axis=0) for case in pool]
    predicted = np.sum([mean[:, brain].sum(axis=1) for (mean, _), brain in zip(statistics, brains)], axis=0)
    predicted = predicted / predicted.sum()
    rows = []
    for case, (mean, std), brain in zip(pool, statistics, brains):
        aligned = mean if args.no_alignment else distribution_alignment(mean, target, predicted)
        case.pseudo, kept = reliable_pseudo_labels(aligned, std, args.confidence, args.uncertainty)
        row = {"case": case.case_id, "kept_fraction_of_brain": float(kept[brain].mean()),
               "kept_tumor_voxels": int(((case.pseudo > 0) & (case.pseudo != IGNORE)).sum())}
        if case.withheld is not None and kept.any():
            row["kept_accuracy"] = float((case.pseudo[kept] == case.withheld[kept]).mean())
            row["tumor_voxels_withheld"] = int((case.withheld > 0).sum())
        rows.append(row)
    return [{"target_distribution": target.tolist(), "predicted_distribution": predicted.tolist()}] + rows


def run_stage1(model: GliomaSegNet, real: List[TrainingCase], synthetic: List[TrainingCase],
               pool: List[UnlabelledCase], args: argparse.Namespace, log: JsonLog) -> None:
    """Fine-tune on one labelled and one pseudo-labelled crop per step."""
    rng = np.random.default_rng([args.seed, 11])
    usable = [c for c in pool if c.pseudo is not None and (c.pseudo != IGNORE).any()]
    if not usable:
        raise RuntimeError("no unlabelled voxel passed the pseudo-label thresholds")
    optimizer = torch.optim.AdamW([{"params": list(model.parameters()), "lr": args.stage1_lr,
                                    "peak_lr": args.stage1_lr}], weight_decay=1e-5)
    model.train()
    for step in range(args.stage1_steps):
        set_lr(optimizer, step, args.stage1_steps)
        x, y, presence = sample_batch(real, synthetic, rng, 1, args.crop, 0.5, args.phantom_probability)
        supervised = dice_ce_loss(model(x, presence), y)
        u, pseudo, u_presence = sample_pseudo_crop(usable[rng.integers(len(usable))], args.crop, rng, 0.5)
        logits = model(torch.from_numpy(u)[None], torch.from_numpy(u_presence)[None])
        unsupervised = masked_dice_ce_loss(logits, torch.from_numpy(pseudo.astype(np.int64))[None])
        loss = supervised + args.unlabelled_weight * unsupervised
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 12.0)
        optimizer.step()
        log.write(stage="pseudo", step=step + 1, loss=round(loss.item(), 5), supervised=round(supervised.item(), 5),
                  unsupervised=round(unsupervised.item(), 5))


def weak_pair(pool: List[UnlabelledCase], size: int, rng: np.random.Generator,
              modality_dropout: float = 0.5) -> Tuple[torch.Tensor, torch.Tensor]:
    """Two weakly augmented crops (2, 4, S, S, S) of random unlabelled cases (placed around their reliable tumor
    when pseudo-labelled) sharing one presence (2, 4): all modalities, or with ``modality_dropout`` a random
    non-empty subset, so that CutMix never mixes different modality sets."""
    crops = []
    for index in rng.integers(len(pool), size=2):
        case = pool[index]
        if case.pseudo is not None:
            image = sample_pseudo_crop(case, size, rng, 0.0)[0]
        else:
            blank = TrainingCase(case.case_id, case.image, np.zeros(case.image.shape[1:], np.uint8))
            image = sample_crop(blank, size, rng, 0.0)[0]
        crops.append(image)
    presence = np.ones(4, dtype=np.float32)
    if rng.random() < modality_dropout:
        presence = random_subsets(1, rng)[0]
    x = torch.from_numpy(np.stack(crops)) * torch.from_numpy(presence)[None, :, None, None, None]
    return x, torch.from_numpy(presence)[None].expand(2, -1).contiguous()


def run_stage2(model: GliomaSegNet, real: List[TrainingCase], synthetic: List[TrainingCase],
               pool: List[UnlabelledCase], args: argparse.Namespace, log: JsonLog) -> GliomaSegNet:
    """Weak-to-strong consistency with an EMA teacher; returns the teacher."""
    rng = np.random.default_rng([args.seed, 12])
    generator = torch.Generator().manual_seed(args.seed)
    teacher = copy.deepcopy(model).eval()
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    optimizer = torch.optim.AdamW([{"params": list(model.parameters()), "lr": args.stage2_lr,
                                    "peak_lr": args.stage2_lr}], weight_decay=1e-5)
    model.train()
    for step in range(args.stage2_steps):
        set_lr(optimizer, step, args.stage2_steps)
        x, y, presence = sample_batch(real, synthetic, rng, 1, args.crop, 0.5, args.phantom_probability)
        supervised = dice_ce_loss(model(x, presence), y)
        u, u_presence = weak_pair(pool, args.unlabelled_crop, rng)
        unsupervised, kept = consistency_loss(model, teacher, u, u_presence, rng, args.confidence, generator)
        loss = supervised + args.unlabelled_weight * unsupervised
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 12.0)
        optimizer.step()
        ema_update(teacher, model, args.ema_decay)
        log.write(stage="consistency", step=step + 1, loss=round(loss.item(), 5),
                  supervised=round(supervised.item(), 5), unsupervised=round(unsupervised.item(), 5),
                  kept=round(kept, 4))
    return teacher


def build_parser() -> argparse.ArgumentParser:
    """Options (also the keys of ``training/configs/semi_supervised.yaml``)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_stage_arguments(parser)
    parser.add_argument("--phantoms", type=int, default=8, help="labelled phantoms (as in train_segmentation)")
    parser.add_argument("--phantom-probability", type=float, default=0.15)
    parser.add_argument("--unlabelled-phantoms", type=int, default=6)
    parser.add_argument("--unlabelled-seed", type=int, default=700)
    parser.add_argument("--unlabelled-real", action="store_true",
                        help="also use the real training cases with their labels withheld (ablation)")
    parser.add_argument("--mc-passes", type=int, default=8)
    parser.add_argument("--confidence", type=float, default=0.95)
    parser.add_argument("--uncertainty", type=float, default=0.1, help="MC-dropout std threshold")
    parser.add_argument("--no-alignment", action="store_true", help="skip distribution alignment (ablation)")
    parser.add_argument("--crop", type=int, default=64)
    parser.add_argument("--unlabelled-crop", type=int, default=48, help="stage-2 unlabelled crop edge (voxels)")
    parser.add_argument("--unlabelled-weight", type=float, default=1.0)
    parser.add_argument("--stage1-steps", type=int, default=40)
    parser.add_argument("--stage1-lr", type=float, default=2e-4)
    parser.add_argument("--stage2-steps", type=int, default=30)
    parser.add_argument("--stage2-lr", type=float, default=2e-4)
    parser.add_argument("--ema-decay", type=float, default=0.99)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true", help="skip the stages whose weights already exist")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    from GliomaAnalysisLib.models.model_store import load_state

    args = parse_args(build_parser(), argv)
    started = time.perf_counter()
    run, train_cases, validation = prepare_stage(args)
    real = [c for c in train_cases if not c.synthetic]
    synthetic = [c for c in train_cases if c.synthetic]
    if not real:
        print(f"error: no labelled cases found under {args.data}", file=sys.stderr)
        return 2
    pool = unlabelled_pool(args, real)
    if not pool:
        print("error: no unlabelled cases (--unlabelled-phantoms 0 and no --unlabelled-real)", file=sys.stderr)
        return 2
    start_run_record(run, {"args": vars(args)}, {"train_cases": [c.case_id for c in train_cases],
                                                 "validation_cases": [c.case_id for c in validation],
                                                 "unlabelled_cases": [c.case_id for c in pool]},
                     args.seed, "cpu", "training.advanced.semi_supervised", config_file=args.config)
    model = start_model(args.weights, args.model_dir, args.name, args.network)
    log = JsonLog(run / "log.jsonl")
    stage1 = run / "stage1_pseudo.safetensors"
    t0 = time.perf_counter()
    pseudo_stats = make_pseudo_labels(model, pool, real, args)
    print(f"pseudo-labels: {time.perf_counter() - t0:.0f} s {pseudo_stats}", file=sys.stderr, flush=True)
    if args.resume and stage1.is_file():
        load_state(model, stage1)
    else:
        t0 = time.perf_counter()
        run_stage1(model, real, synthetic, pool, args, log)
        save_weights(model, stage1)
        print(f"stage 1: {args.stage1_steps} steps in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    stage2, stage2_teacher = run / "stage2_consistency.safetensors", run / "stage2_teacher.safetensors"
    if not (args.resume and stage2.is_file()):
        t0 = time.perf_counter()
        teacher = run_stage2(model, real, synthetic, pool, args, log)
        save_weights(model, stage2)
        save_weights(teacher, stage2_teacher)
        print(f"stage 2: {args.stage2_steps} steps in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    losses = {s: [r["loss"] for r in log.records if r["stage"] == s] for s in ("pseudo", "consistency")}
    metrics = {"pseudo_labels": pseudo_stats,
               **{f"{s}_loss_first_last": [v[0], v[-1]] if v else None for s, v in losses.items()}}
    finish_run_record(run, metrics, [stage1, stage2, stage2_teacher], time.perf_counter() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
