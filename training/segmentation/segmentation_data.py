"""Training data for the segmentation network: cached 2 mm arrays with area-averaged soft targets, class-balanced
augmented crops (``sample_training_crop``, the recipe of train_segmentation) and the older tumor-protect crops
(``sample_crop``, used by the adaptation and semi-supervised stages)."""
from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from GliomaAnalysisLib import __version__, load_case, preprocess
from GliomaAnalysisLib.synthetic.phantom import write_cohort

from ..common.datasets import TrainingDataError, discover_cases
from .augmentation import AugmentationConfig, intensity_augment, modality_presence, spatial_crop

TARGETS_VERSION = "area-averaged-1"
"""Part of the cache key: bump when the cached arrays change meaning."""

# A fixed split of ../shared/data/brats18: one validation case per contributing institution group
# (2013 challenge, CBICA x2, TCIA01, TCIA03) plus one of the two LGG cases; the other 18 cases train.
VALIDATION_CASES = (
    "Brats18_2013_20_1", "Brats18_CBICA_AME_1", "Brats18_CBICA_AQN_1",
    "Brats18_TCIA01_378_1", "Brats18_TCIA03_265_1", "Brats18_TCIA10_639_1",
)


@dataclass
class TrainingCase:
    """One case on the working grid: image float32 (4, Z, Y, X) z-scored, labels uint8 (Z, Y, X) contiguous."""

    case_id: str
    image: np.ndarray
    labels: np.ndarray
    synthetic: bool = False
    soft: Optional[np.ndarray] = None
    """uint8 (4, Z, Y, X): area-averaged class fractions x 255 (bg, NCR, ED, ET); None for old caches / phantoms."""
    _class_voxels: Optional[Dict[int, np.ndarray]] = None

    def soft_targets(self) -> np.ndarray:
        """float32 (4, Z, Y, X) class fractions summing to 1 (one-hot of ``labels`` when no soft targets)."""
        if self.soft is None:
            return np.stack([(self.labels == k).astype(np.float32) for k in range(4)])
        soft = self.soft.astype(np.float32)
        return soft / np.maximum(soft.sum(axis=0, keepdims=True), 1e-6)

    def class_voxels(self, label: int) -> np.ndarray:
        """Flat indices of the voxels labelled ``label`` (cached)."""
        if self._class_voxels is None:
            self._class_voxels = {}
        if label not in self._class_voxels:
            self._class_voxels[label] = np.flatnonzero(self.labels == label)
        return self._class_voxels[label]


def load_cached(folder: Path, cache: Path, spacing: Sequence[float], synthetic: bool = False) -> TrainingCase:
    """Preprocess a labelled case folder onto the working grid, cached as .npz keyed by path and spacing."""
    key = hashlib.sha1(json.dumps([str(folder.resolve()), list(spacing), __version__, TARGETS_VERSION]).encode()
                       ).hexdigest()[:12]
    path = cache / f"{folder.name}-{key}.npz"
    if path.is_file():
        data = np.load(path)
        return TrainingCase(folder.name, data["image"], data["labels"], synthetic, data["soft"])
    pre = preprocess(load_case(folder), spacing=spacing, divisible_by=1)
    soft = np.round(pre.soft_labels * 255).astype(np.uint8)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")  # one per process: train_folds' folds may fill the cache at once
    np.savez(tmp, image=pre.image, labels=pre.labels, soft=soft)
    tmp.replace(path)
    return TrainingCase(folder.name, pre.image, pre.labels, synthetic, soft)


def load_cases(roots: Sequence[Path], cache: Path, spacing: Sequence[float],
               progress=None) -> List[TrainingCase]:
    """Every labelled case under each of ``roots`` (sorted by id), preprocessed and cached once. A root that is a
    training pack (``pack_arrays.py``) gives its packed cases. A case id found twice (a pack given beside the roots
    it was made from) is a :class:`TrainingDataError`: it would be trained on twice, and could land in two folds."""
    from .pack_arrays import is_pack, read_pack

    packed = [c for root in roots if is_pack(root) for c in read_pack(Path(root), spacing)]
    found = sorted((c for root in roots if Path(root).is_dir() and not is_pack(root) for c in discover_cases(root)),
                   key=lambda c: c.case_id)
    counts = Counter([c.case_id for c in packed] + [c.case_id for c in found])
    twice = sorted(i for i, n in counts.items() if n > 1)
    if twice:
        raise TrainingDataError(f"case {twice[0]} is in more than one data root ({len(twice)} such case(s)); give "
                                "a training pack or the folders it was made from, not both")
    cases = packed
    for index, case in enumerate(found):
        if progress:
            progress(f"case {index + 1}/{len(found)}: {case.case_id}")
        cases.append(load_cached(case.folder, cache, spacing))
    return sorted(cases, key=lambda c: c.case_id)


def load_split(data_root: Path, cache: Path, spacing: Sequence[float], n_phantoms: int = 0,
               phantom_seed: int = 100) -> Tuple[List[TrainingCase], List[TrainingCase]]:
    """(train, validation) cases: the fixed split of ``data_root`` plus ``n_phantoms`` synthetic training cases."""
    train, validation = [], []
    for found in discover_cases(data_root):
        target = validation if found.case_id in VALIDATION_CASES else train
        target.append(load_cached(found.folder, cache, spacing))
    if n_phantoms:
        phantom_root = cache / f"phantoms-{phantom_seed}-{n_phantoms}"
        if not (phantom_root / "labels.csv").is_file():
            write_cohort(phantom_root, n_phantoms, phantom_seed)
        for found in discover_cases(phantom_root):
            train.append(load_cached(found.folder, cache, spacing, synthetic=True))
    return train, validation


def tumor_protect_crop(labels: np.ndarray, size: int, rng: np.random.Generator,
                       random_probability: float = 0.1) -> Tuple[slice, slice, slice]:
    """A crop of ``size``^3 that keeps the whole tumor when it fits (seed 001, Fig. A13), else lies within it.

    With ``random_probability`` the crop is placed anywhere (background examples). Axes shorter than ``size``
    give a crop starting at 0 (the caller pads).
    """
    tumor = np.argwhere(labels > 0)
    anywhere = tumor.size == 0 or rng.random() < random_probability  # one draw per crop, not per axis
    slices = []
    for axis, n in enumerate(labels.shape):
        if n <= size:
            slices.append(slice(0, size))
            continue
        if anywhere:
            start = int(rng.integers(0, n - size + 1))
        else:
            lo, hi = int(tumor[:, axis].min()), int(tumor[:, axis].max()) + 1
            if hi - lo <= size:
                first, last = max(0, hi - size), min(lo, n - size)
            else:
                first, last = lo, hi - size
            start = int(rng.integers(first, last + 1))
        slices.append(slice(start, start + size))
    return tuple(slices)


def sample_crop(case: TrainingCase, size: int, rng: np.random.Generator, modality_dropout: float = 0.5,
                ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One augmented training crop: image (4, S, S, S), labels (S, S, S), presence (4,).

    Augmentation: tumor-protect crop, random flips on each axis, per-channel intensity scale (0.9-1.1) and shift
    (+-0.1 SD), and modality dropout (with probability ``modality_dropout`` a random non-empty subset is kept).
    """
    where = tumor_protect_crop(case.labels, size, rng)
    image = case.image[(slice(None),) + where]
    labels = case.labels[where]
    pad = [(0, size - n) for n in labels.shape]
    if any(p[1] for p in pad):
        image = np.pad(image, [(0, 0)] + pad)
        labels = np.pad(labels, pad)
    image, labels, presence = augment_volume(image, labels, rng, modality_dropout)
    return np.ascontiguousarray(image, dtype=np.float32), np.ascontiguousarray(labels), presence


def augment_volume(image: np.ndarray, labels: np.ndarray, rng: np.random.Generator, modality_dropout: float,
                   ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random flips on each axis, modality dropout (with probability ``modality_dropout`` a random non-empty
    subset of the channels is kept; the others are zeroed) and per-channel intensity scale (0.9-1.1) and shift
    (+-0.1 SD) inside the brain. image (4, Z, Y, X), labels (Z, Y, X) -> (image float32 copy, labels, presence (4,))."""
    image = np.array(image, dtype=np.float32)
    for axis in (1, 2, 3):
        if rng.random() < 0.5:
            image = np.flip(image, axis)
            labels = np.flip(labels, axis - 1)
    presence = np.ones(4, dtype=np.float32)
    if rng.random() < modality_dropout:
        keep = rng.random(4) < 0.5
        if not keep.any():
            keep[rng.integers(4)] = True
        presence = keep.astype(np.float32)
    brain = np.any(image != 0, axis=0)
    image = np.ascontiguousarray(image)
    for channel in range(4):
        if presence[channel]:
            scale, shift = rng.uniform(0.9, 1.1), rng.uniform(-0.1, 0.1)
            image[channel] = np.where(brain, image[channel] * scale + shift, 0.0)
        else:
            image[channel] = 0.0
    return image, labels, presence


FOREGROUND_PROBABILITY = 0.33
"""Share of crops centred on a tumor voxel (of a tumor class drawn uniformly among those present), the rest on
a random voxel of the volume (background and false-positive examples). 0.67 (cross-validation run cv1, fold 0:
7 held-out cases) over-called the whole tumor 1.6x in volume (WT Dice 0.69): the crops' tumor prior leaks into
the whole-volume prediction. nnU-Net's 0.33 is the default."""


def sample_training_crop(case: TrainingCase, size: int, rng: np.random.Generator,
                         config: Optional[AugmentationConfig] = None,
                         foreground_probability: float = FOREGROUND_PROBABILITY,
                         ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One augmented crop of the shipped recipe: image float32 (4, S, S, S), soft targets float32 (4, S, S, S),
    presence float32 (4,).

    Centre: with ``foreground_probability`` a random voxel of a tumor class drawn uniformly among the classes the
    case has (so small NCR / ET regions are seen as often as edema), else anywhere; a random offset of up to a
    quarter crop keeps the tumor off the exact centre. Then rotation / scale / flips, modality dropout and
    per-channel intensity augmentation (``augmentation.py``).
    """
    config = config or AugmentationConfig()
    shape = case.labels.shape
    classes = [k for k in (1, 2, 3) if case.class_voxels(k).size]
    if classes and rng.random() < foreground_probability:
        voxels = case.class_voxels(classes[int(rng.integers(len(classes)))])
        centre = np.array(np.unravel_index(int(voxels[rng.integers(voxels.size)]), shape), dtype=float)
        centre += rng.uniform(-size / 4, size / 4, 3)
    else:
        centre = np.array([rng.uniform(0, n - 1) for n in shape])
    image, soft = spatial_crop(case.image, case.soft_targets(), centre, size, rng, config)
    presence = modality_presence(rng, np.ones(4, dtype=bool), config)
    image = intensity_augment(image, presence, rng, config)
    return np.ascontiguousarray(image), np.ascontiguousarray(soft), presence
