"""Slice data of the slice-grade classifier: tumor slices cut once per case, augmented batches on the fly.

Training slices are cut with a margin around the inference crop (``crop + 2 * MARGIN`` pixels) so that shifts and
rotations never reach past the cut; evaluation slices are exactly what :func:`prepare_slices` gives at inference.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from GliomaAnalysisLib.models.slice_grade import SliceGradeConfig, prepare_slices, select_slices, slice_stack

from ..common.classification_data import ClassificationSample

MARGIN = 12
"""Extra pixels cut on each side of the training crop (24 mm at 2 mm voxels)."""


@dataclass
class CaseSlices:
    """One case's slices. ``train``: float16 (N, 4, crop + 2 MARGIN, same): raw z-scored T1CE, T2, FLAIR and the
    brain mask, every slice with enough tumor; ``eval``: float32 (M, 3, crop, crop) in [0, 1], the inference
    input; ``target`` 1 = HGG, 0 = LGG."""

    case_id: str
    source: str
    target: int
    train: np.ndarray
    eval: np.ndarray


def cut_case(sample: ClassificationSample, config: SliceGradeConfig) -> Optional[CaseSlices]:
    """The slices of one sample (its ground-truth labels choose them); None without grade or tumor."""
    if not sample.known("grade"):
        return None
    z = select_slices(sample.labels, max_slices=10 ** 6, min_tumor_voxels=config.min_tumor_voxels)
    if len(z) == 0:
        return None
    raw, brain = slice_stack(sample.image, sample.labels, z, config.crop + 2 * MARGIN)
    train = np.concatenate([raw, brain[:, None].astype(np.float32)], axis=1).astype(np.float16)
    evaluation, _ = prepare_slices(sample.image, sample.presence, sample.labels, config)
    return CaseSlices(sample.case_id, sample.source, int(sample.targets["grade"]), train, evaluation)


def cut_cases(samples: Sequence[ClassificationSample], config: SliceGradeConfig) -> List[CaseSlices]:
    return [c for c in (cut_case(s, config) for s in samples) if c is not None]


def normalise_torch(raw: torch.Tensor, brain: torch.Tensor) -> torch.Tensor:
    """Torch twin of :func:`minmax_normalise`: (B, C, H, W) raw, (B, H, W) bool brain -> [0, 1], 0 outside."""
    m = brain[:, None].expand_as(raw)
    low = torch.where(m, raw, torch.full_like(raw, math.inf)).amin(dim=(2, 3), keepdim=True)
    high = torch.where(m, raw, torch.full_like(raw, -math.inf)).amax(dim=(2, 3), keepdim=True)
    span = high - low
    valid = torch.isfinite(span) & (span > 0)
    scaled = (raw - torch.where(valid, low, torch.zeros_like(low))) / torch.where(valid, span, torch.ones_like(span))
    return torch.where(m & valid, scaled, torch.zeros_like(scaled))


def augmented_batch(stacks: np.ndarray, crop: int, rng: np.random.Generator, augment: bool = True,
                    max_degrees: float = 15.0, max_shift: int = 6, gamma: float = 0.3, noise: float = 0.02,
                    channel_dropout: float = 0.1) -> torch.Tensor:
    """Network input (B, 3, crop, crop) from training stacks (B, 4, crop + 2 MARGIN, same).

    Augmentation: random left-right and front-back flips, rotation up to ``max_degrees``, shift up to ``max_shift``
    pixels (one affine resampling, bilinear; the brain mask is resampled too), then min-max per slice and channel,
    then per channel gamma exp(U(-gamma, gamma)) and Gaussian noise (SD ``noise``) inside the brain (intensity scale
    and shift before min-max would be undone by it), and channel dropout (a channel set to zero, never all three).
    Without ``augment``: the centre crop, identical to :func:`prepare_slices`.
    """
    x = torch.from_numpy(np.asarray(stacks, dtype=np.float32))
    b, _, size, _ = x.shape
    scale = crop / size
    theta = torch.zeros(b, 2, 3)
    if augment:
        angle = np.deg2rad(rng.uniform(-max_degrees, max_degrees, b))
        flips = np.where(rng.random((b, 2)) < 0.5, -1.0, 1.0)
        shift = rng.integers(-max_shift, max_shift + 1, (b, 2)) * 2.0 / size
    else:
        angle, flips, shift = np.zeros(b), np.ones((b, 2)), np.zeros((b, 2))
    cos, sin = np.cos(angle) * scale, np.sin(angle) * scale
    theta[:, 0, 0] = torch.from_numpy(cos * flips[:, 0])
    theta[:, 0, 1] = torch.from_numpy(-sin * flips[:, 1])
    theta[:, 1, 0] = torch.from_numpy(sin * flips[:, 0])
    theta[:, 1, 1] = torch.from_numpy(cos * flips[:, 1])
    theta[:, :, 2] = torch.from_numpy(shift)
    grid = F.affine_grid(theta, [b, 4, crop, crop], align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    brain = x[:, 3] > 0.5
    out = normalise_torch(x[:, :3], brain)
    if augment:
        exponent = torch.from_numpy(np.exp(rng.uniform(-gamma, gamma, (b, 3, 1, 1)))).float()
        out = out.clamp_min(0) ** exponent
        out = out + torch.from_numpy(rng.normal(0, noise, out.shape)).float() * brain[:, None]
        out = torch.where(brain[:, None], out.clamp(0, 1), torch.zeros_like(out))
        drop = rng.random((b, 3)) < channel_dropout
        drop[drop.all(axis=1)] = False
        out = out * torch.from_numpy(~drop).float()[:, :, None, None]
    return out.contiguous()
