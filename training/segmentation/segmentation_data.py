"""Training data for the segmentation network: cached 2 mm arrays, tumor-protect crops and augmentation."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import List, Sequence, Tuple

import numpy as np

from GliomaAnalysisLib import __version__, load_case, preprocess
from GliomaAnalysisLib.synthetic.phantom import write_cohort

from ..common.datasets import discover_cases

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


def load_cached(folder: Path, cache: Path, spacing: Sequence[float], synthetic: bool = False) -> TrainingCase:
    """Preprocess a labelled case folder onto the working grid, cached as .npz keyed by path and spacing."""
    key = hashlib.sha1(json.dumps([str(folder.resolve()), list(spacing), __version__]).encode()).hexdigest()[:12]
    path = cache / f"{folder.name}-{key}.npz"
    if path.is_file():
        data = np.load(path)
        return TrainingCase(folder.name, data["image"], data["labels"], synthetic)
    pre = preprocess(load_case(folder), spacing=spacing, divisible_by=1)
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, image=pre.image, labels=pre.labels)
    return TrainingCase(folder.name, pre.image, pre.labels, synthetic)


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
    slices = []
    for axis, n in enumerate(labels.shape):
        if n <= size:
            slices.append(slice(0, size))
            continue
        if tumor.size == 0 or rng.random() < random_probability:
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
