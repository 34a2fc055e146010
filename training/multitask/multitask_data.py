"""Training inputs of the multi-task classifier: augmentation, Tumor-CutMix (seed 001, III.B step 3) and targets."""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import numpy as np

from GliomaAnalysisLib.preprocessing.cropping import pad_to_multiple, tumor_box, tumor_centre
from GliomaAnalysisLib.models.multitask import TASKS, MultiTaskConfig
from GliomaAnalysisLib.models.network_config import NetworkConfig

from ..common.classification_data import ClassificationSample
from ..segmentation.segmentation_data import augment_volume


def tumor_cutmix(image_a: np.ndarray, labels_a: np.ndarray, image_b: np.ndarray, labels_b: np.ndarray,
                 rng: Optional[np.random.Generator] = None, jitter: int = 3) -> Tuple[np.ndarray, np.ndarray, float]:
    """Paste the tumor of case B (its labelled voxels) into case A, centred on A's tumor (+- ``jitter`` voxels).

    images (4, Z, Y, X), labels (Z, Y, X), possibly of different sizes. Returns (image, labels, lam) where lam is
    the share of the composite's tumor volume that comes from B (the weight of B's targets in the mixed label).
    """
    tumor_b = labels_b > 0
    if not tumor_b.any():
        return image_a, labels_a, 0.0
    where = np.argwhere(tumor_b)
    lo, hi = where.min(axis=0), where.max(axis=0) + 1
    centre = tumor_centre(labels_a)
    if rng is not None and jitter:
        centre = centre + rng.integers(-jitter, jitter + 1, size=3)
    start = np.round(centre - (hi - lo) / 2).astype(int)
    source, target = [], []
    for axis in range(3):
        first, last = start[axis], start[axis] + hi[axis] - lo[axis]
        clip_lo, clip_hi = max(0, -first), max(0, last - labels_a.shape[axis])
        if first + clip_lo >= last - clip_hi:
            return image_a, labels_a, 0.0
        source.append(slice(lo[axis] + clip_lo, hi[axis] - clip_hi))
        target.append(slice(first + clip_lo, last - clip_hi))
    source, target = tuple(source), tuple(target)
    mask = tumor_b[source]
    image = image_a.copy()
    labels = labels_a.copy()
    image[(slice(None),) + target][:, mask] = image_b[(slice(None),) + source][:, mask]
    labels[target][mask] = labels_b[source][mask]
    lam = float(mask.sum() / max(1, int((labels > 0).sum())))
    return image, labels, lam


def mixed_targets(a: Dict[str, Optional[int]], b: Optional[Dict[str, Optional[int]]], lam: float,
                  ) -> Tuple[np.ndarray, np.ndarray]:
    """Soft targets (tasks, 2) and known mask (tasks,): A's one-hot labels mixed with B's in proportion ``lam``.

    A task is unknown (mask 0) when A lacks its label, or when B contributes (lam > 0) and lacks it.
    """
    targets = np.zeros((len(TASKS), 2), dtype=np.float32)
    known = np.zeros(len(TASKS), dtype=np.float32)
    for index, task in enumerate(TASKS):
        ya = a.get(task)
        yb = b.get(task) if b is not None and lam > 0 else None
        if ya is None or (lam > 0 and yb is None):
            continue
        targets[index, ya] += 1 - lam
        if lam > 0:
            targets[index, yb] += lam
        known[index] = 1
    return targets, known


def _example(image: np.ndarray, labels: np.ndarray, presence: np.ndarray, config: MultiTaskConfig,
             targets: np.ndarray, known: np.ndarray, rng: Optional[np.random.Generator] = None,
             ) -> Dict[str, np.ndarray]:
    """Image and labels padded as ``preprocess`` pads them for the network, the tumor box on that grid (jittered by
    +-6 voxels with ``rng``)."""
    divisor = NetworkConfig.from_dict(config.backbone).divisor
    labels = pad_to_multiple(np.ascontiguousarray(labels), divisor)
    return {"image": np.ascontiguousarray(pad_to_multiple(image, divisor), dtype=np.float32), "labels": labels,
            "box": tumor_box(labels, config.local_crop, jitter=6 if rng is not None else 0, rng=rng),
            "presence": np.asarray(presence, np.float32), "targets": targets, "known": known}


def training_example(sample: ClassificationSample, config: MultiTaskConfig, rng: np.random.Generator,
                     partner: Optional[ClassificationSample] = None, modality_dropout: float = 0.3,
                     ) -> Dict[str, np.ndarray]:
    """One augmented example: the image padded to the backbone's divisor (4, Z, Y, X), its labels, the tumor box,
    presence (4,), soft targets (tasks, 2), known (tasks,).

    Augmentation: Tumor-CutMix with ``partner`` when given, random flips, per-channel intensity scale (0.9-1.1)
    and shift (+-0.1 SD) inside the brain, modality dropout, box jitter of +-6 voxels (12 mm).
    """
    image, labels, lam = sample.image, sample.labels, 0.0
    if partner is not None:
        image, labels, lam = tumor_cutmix(image, labels, partner.image, partner.labels, rng)
    targets, known = mixed_targets(sample.targets, partner.targets if partner is not None else None, lam)
    image, labels, presence = augment_volume(image, labels, rng, modality_dropout)
    return _example(image, labels, presence, config, targets, known, rng)


def evaluation_example(sample: ClassificationSample, config: MultiTaskConfig) -> Dict[str, np.ndarray]:
    """The unaugmented inputs of a case, as at inference (ground-truth labels place the box)."""
    targets, known = mixed_targets(sample.targets, None, 0.0)
    return _example(sample.image, sample.labels, sample.presence, config, targets, known)
