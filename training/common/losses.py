"""Training losses: segmentation (CE + soft region Dice), masked class-weighted task losses and the
aleatoric-uncertainty task weighting of seed 001 (eq. 7)."""
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


REGIONS = ("wt", "tc", "et")


def segmentation_loss(logits: torch.Tensor, soft: torch.Tensor, et_scored: torch.Tensor,
                      dice_weight: float = 0.5, smooth: float = 1.0,
                      dice_regions: "tuple[str, ...]" = REGIONS) -> torch.Tensor:
    """Soft-target cross-entropy + ``dice_weight`` x (1 - soft region Dice) over ``dice_regions`` (of WT, TC, ET),
    enhancement scored only with T1CE.

    logits (B, 4, Z, Y, X); soft (B, 4, Z, Y, X) class fractions (area-averaged 2 mm targets, rows sum to 1);
    et_scored (B,) 1 where T1CE was present in the crop. For a crop without T1CE, NCR and ET are one class in the
    cross-entropy (core = NCR + ET) and ET is left out of the Dice: the network is never asked to find enhancement
    it cannot see. Dice is pooled over the batch (stable for empty regions) and weighted below cross-entropy,
    so that it does not push uncertain small core / ET regions outwards (the over-calling of glioma_seg 0.1.0).
    """
    log_p = torch.log_softmax(logits, dim=1)
    core_log_p = torch.logsumexp(torch.stack([log_p[:, 1], log_p[:, 3]]), dim=0)
    scored = et_scored.float().view(-1, *([1] * (logits.ndim - 2)))
    ce_full = -(soft * log_p).sum(dim=1)
    ce_merged = -(soft[:, 0] * log_p[:, 0] + soft[:, 2] * log_p[:, 2] + (soft[:, 1] + soft[:, 3]) * core_log_p)
    ce = (scored * ce_full + (1 - scored) * ce_merged).mean()
    regions = region_probabilities(log_p.exp())
    targets = region_probabilities(soft)  # soft class targets -> soft region targets
    dims = tuple(range(2, regions.ndim))
    intersection = (regions * targets).sum(dims)          # (B, 3)
    denominator = (regions + targets).sum(dims)           # (B, 3)
    weight = torch.ones_like(intersection)
    weight[:, 2] = et_scored.float()
    dice = (2 * (weight * intersection).sum(0) + smooth) / ((weight * denominator).sum(0) + smooth)
    present = torch.tensor([float("wt" in dice_regions), float("tc" in dice_regions),
                            float("et" in dice_regions and bool(et_scored.float().sum() > 0))], device=logits.device)
    dice_term = ((1 - dice) * present).sum() / present.sum().clamp(min=1.0)
    return ce + dice_weight * dice_term


def masked_task_loss(logits: torch.Tensor, targets: torch.Tensor, known: torch.Tensor,
                     class_weights: torch.Tensor) -> torch.Tensor:
    """Class-weighted soft-target cross-entropy of one classification task over the samples that have its label.

    logits (B, 2); targets (B, 2) soft class probabilities (rows of unknown samples are ignored); known (B,) 0/1;
    class_weights (2,). Samples without the label contribute nothing (no loss, no gradient); a batch with no label
    for the task gives 0.
    """
    per_sample = -(targets * class_weights[None] * F.log_softmax(logits, dim=1)).sum(dim=1)
    known = known.float()
    return (per_sample * known).sum() / known.sum().clamp_min(1.0)


class UncertaintyWeighting(torch.nn.Module):
    """Aleatoric-uncertainty task weighting (seed 001, eq. 7): sum_i L_i / (2 sigma_i^2) + log sigma_i, with a
    learnable log sigma_i per task (initialised to 0, i.e. sigma = 1)."""

    def __init__(self, tasks) -> None:
        super().__init__()
        self.tasks = tuple(tasks)
        self.log_sigma = torch.nn.Parameter(torch.zeros(len(self.tasks)))

    def forward(self, losses: "dict[str, torch.Tensor]") -> torch.Tensor:
        total = self.log_sigma.new_zeros(())
        for index, task in enumerate(self.tasks):
            if task in losses:
                log_sigma = self.log_sigma[index]
                total = total + 0.5 * torch.exp(-2 * log_sigma) * losses[task] + log_sigma
        return total

    def sigmas(self) -> "dict[str, float]":
        return {task: float(torch.exp(s)) for task, s in zip(self.tasks, self.log_sigma.detach())}
