"""Segmentation loss: cross-entropy over the 4 classes plus soft Dice over the BraTS regions (WT, TC, ET)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def region_probabilities(probabilities: torch.Tensor) -> torch.Tensor:
    """Softmax (B, 4, ...) over bg, NCR, ED, ET -> region probabilities (B, 3, ...) for WT, TC, ET."""
    ncr, ed, et = probabilities[:, 1], probabilities[:, 2], probabilities[:, 3]
    return torch.stack([ncr + ed + et, ncr + et, et], dim=1)


def region_targets(labels: torch.Tensor) -> torch.Tensor:
    """Contiguous labels (B, ...) -> float region masks (B, 3, ...) for WT, TC, ET."""
    return torch.stack([labels > 0, (labels == 1) | (labels == 3), labels == 3], dim=1).float()


def dice_ce_loss(logits: torch.Tensor, labels: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """CE over classes + (1 - soft Dice) averaged over regions, Dice pooled over the batch (stable for empty ET)."""
    ce = F.cross_entropy(logits, labels.long())
    regions = region_probabilities(torch.softmax(logits, dim=1))
    targets = region_targets(labels)
    dims = (0,) + tuple(range(2, regions.ndim))
    intersection = (regions * targets).sum(dims)
    denominator = regions.sum(dims) + targets.sum(dims)
    dice = (2 * intersection + smooth) / (denominator + smooth)
    return ce + (1 - dice).mean()
