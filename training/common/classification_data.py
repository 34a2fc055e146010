"""Training data of the classifiers: cases on the 2 mm working grid with case-level targets.

A sample is a preprocessed case (the same arrays ``analyze`` feeds the networks) plus its targets, each 0, 1 or
None (unknown; left out of that task's loss and metrics):

    grade             1 = HGG, 0 = LGG
    idh               1 = mutant, 0 = wildtype
    codeletion_1p19q  1 = codeleted, 0 = intact
    mgmt              1 = methylated, 0 = unmethylated

Real cases (``../shared/data/brats18``, ``../shared/data/brats-extra``) carry grade for most and IDH for a few; phantoms carry all four (simulated).
The split is fixed: real cases follow the segmentation split (``VALIDATION_CASES``), phantoms are split by index
(train / validation for calibration and early stopping / test held out for the reported metrics).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from GliomaAnalysisLib.preprocessing.cropping import tumor_box  # noqa: F401  (re-exported for the training scripts)
from GliomaAnalysisLib.synthetic.phantom import write_cohort

from .datasets import discover_cases
from .label_tables import CaseTargets, read_labels
from ..segmentation.segmentation_data import VALIDATION_CASES, load_cached

TASKS = ("grade", "idh", "codeletion_1p19q", "mgmt")
WORKING_SPACING = (2.0, 2.0, 2.0)
PHANTOM_SIZE = (120, 120, 78)
"""Phantoms are generated directly on a 2 mm grid (same field of view as BraTS, 8x faster than at 1 mm)."""
PHANTOM_SPLIT = (0.6, 0.2, 0.2)


@dataclass
class ClassificationSample:
    """One case: image float32 (4, Z, Y, X) z-scored on the 2 mm grid, labels uint8 (Z, Y, X) contiguous
    (0 bg, 1 NCR, 2 ED, 3 ET), presence float32 (4,), targets per task (0, 1 or None)."""

    case_id: str
    source: str  # "real" | "phantom"
    image: np.ndarray
    labels: np.ndarray
    targets: Dict[str, Optional[int]]
    presence: np.ndarray = field(default_factory=lambda: np.ones(4, dtype=np.float32))

    def known(self, task: str) -> bool:
        return self.targets.get(task) is not None


@dataclass
class ClassificationSplit:
    """Fixed split; ``test`` holds phantoms never used for training, early stopping or calibration."""

    train: List[ClassificationSample]
    validation: List[ClassificationSample]
    test: List[ClassificationSample]

    def all(self) -> List[ClassificationSample]:
        return self.train + self.validation + self.test


def _sample(found, cache: Path, targets: CaseTargets, source: str) -> ClassificationSample:
    case = load_cached(found.folder, cache, WORKING_SPACING, synthetic=source == "phantom")
    return ClassificationSample(found.case_id, source, case.image, case.labels, targets.as_dict())


def phantom_cohort(cache: Path, n: int, seed: int = 500) -> Path:
    """Folder of ``n`` phantoms on the 2 mm grid (generated once, then reused)."""
    root = cache / f"class-phantoms-{seed}-{n}"
    if not (root / "labels.csv").is_file():
        write_cohort(root, n, seed, size=PHANTOM_SIZE, spacing=WORKING_SPACING)
    return root


def load_real_samples(roots: Sequence[Path], cache: Path) -> List[ClassificationSample]:
    """Every labelled real case of ``roots``, targets from each root's ``labels.csv`` (unknown for a case the table
    does not list; a missing table is an error)."""
    samples = []
    for root in roots:
        table = read_labels(Path(root) / "labels.csv")
        for found in discover_cases(root):
            samples.append(_sample(found, cache, table.get(found.case_id, CaseTargets()), "real"))
    return samples


def load_classification_split(real_root: "Optional[Path | Sequence[Path]]", cache: Path, n_phantoms: int = 240,
                              phantom_seed: int = 500, real_labels: Optional[Path] = None,
                              real_validation: Sequence[str] = tuple(VALIDATION_CASES)) -> ClassificationSplit:
    """Real cases of ``real_root`` (one folder or several; targets from ``real_labels``, default each root's
    ``labels.csv``) and ``n_phantoms`` phantoms, in the fixed split: real cases named in ``real_validation`` validate,
    the others train. ``real_root`` None: phantoms only."""
    split = ClassificationSplit([], [], [])
    if real_root is not None:
        if real_labels is not None:
            table = read_labels(real_labels)
            real = [_sample(found, cache, table.get(found.case_id, CaseTargets()), "real")
                    for found in discover_cases(real_root)]
        else:
            real = load_real_samples([real_root] if isinstance(real_root, (str, Path)) else real_root, cache)
        for sample in real:
            (split.validation if sample.case_id in real_validation else split.train).append(sample)
    if n_phantoms:
        train, validation, test = phantom_split(cache, n_phantoms, phantom_seed)
        split.train += train
        split.validation += validation
        split.test += test
    return split


def phantom_split(cache: Path, n_phantoms: int, phantom_seed: int = 500,
                  ) -> Tuple[List[ClassificationSample], List[ClassificationSample], List[ClassificationSample]]:
    """(train, validation, test) phantoms by index (``PHANTOM_SPLIT``), generated once into ``cache``."""
    root = phantom_cohort(cache, n_phantoms, phantom_seed)
    table = read_labels(root / "labels.csv")
    n_train = int(round(PHANTOM_SPLIT[0] * n_phantoms))
    n_val = int(round(PHANTOM_SPLIT[1] * n_phantoms))
    parts: Tuple[List[ClassificationSample], ...] = ([], [], [])
    for index, found in enumerate(discover_cases(root)):
        part = 0 if index < n_train else 1 if index < n_train + n_val else 2
        parts[part].append(_sample(found, cache, table[found.case_id], "phantom"))
    return parts


def class_weights(samples: Sequence[ClassificationSample], task: str,
                  draw: Optional[np.ndarray] = None) -> Tuple[float, float]:
    """Inverse-frequency weights (w0, w1) of a task over the samples that know it, normalised to mean 1; with
    ``draw`` (N,), each sample's probability of being drawn (:func:`draw_probabilities`), the frequencies are those
    of the draws."""
    known = [i for i, s in enumerate(samples) if s.known(task)]
    values = np.array([samples[i].targets[task] for i in known])
    if len(values) == 0 or values.min() == values.max():
        return 1.0, 1.0
    mass = np.ones(len(known)) if draw is None else np.asarray(draw, dtype=float)[known]
    counts = np.array([mass[values == 0].sum(), mass[values == 1].sum()], dtype=float)
    weights = counts.sum() / (2 * counts)
    return float(weights[0]), float(weights[1])


def draw_probabilities(samples: Sequence[ClassificationSample], real_share: Optional[float]) -> Optional[np.ndarray]:
    """Each sample's probability (N,) of being drawn for a training example when the real cases together make
    ``real_share`` of the draws and the phantoms the rest, each case alike within its source; ``None`` (every
    sample alike) when ``real_share`` is ``None`` or one source is absent."""
    if real_share is None:
        return None
    if not 0.0 < real_share < 1.0:
        raise ValueError(f"real_share must lie between 0 and 1, got {real_share}")
    real = np.array([s.source == "real" for s in samples])
    if real.all() or not real.any():
        return None
    return np.where(real, real_share / real.sum(), (1.0 - real_share) / (~real).sum())
