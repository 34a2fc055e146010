"""Multi-task classifier on the segmentation network's features (seed 001, III.C.3-4 and Fig. A12).

    local input  (B, 4, 64, 64, 64)   tumor-centred crop of the 2 mm working grid (128 mm box)
    global input (B, 4, Z/2, Y/2, X/2) the whole brain at 4 mm
      -> the segmentation network's encoder (the backbone; frozen by default)
      -> GAP + GMP of the local level-2 map (64 ch) and local bottleneck (128 ch), and of the global bottleneck
      -> channel-attention fusion of local and global vectors (sigmoid gates, then a linear map back to 256)
      -> "Summarize and Separate": a shared summary layer, then one branch per task
      -> logits (B, 2) per task: grade (LGG/HGG), IDH (wildtype/mutant), 1p/19q (intact/codeleted),
         MGMT (unmethylated/methylated)

Epistemic uncertainty is the standard deviation of the calibrated probability over MC-dropout passes of the
heads (seed 001, eq. 6); calibration is a temperature per task (from the model card) on the logit difference.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ..preprocessing.cropping import crop_padded, pad_to_multiple, tumor_box
from .network import GliomaSegNet, NetworkConfig

TASKS = ("grade", "idh", "codeletion_1p19q", "mgmt")
TASK_LABELS: Dict[str, Tuple[str, str]] = {
    "grade": ("LGG", "HGG"), "idh": ("wildtype", "mutant"),
    "codeletion_1p19q": ("intact", "codeleted"), "mgmt": ("unmethylated", "methylated")}
"""(negative, positive) label of each task; targets are 1 for the positive label."""
MC_SAMPLES = 20


@dataclass
class MultiTaskConfig:
    """Classifier layout (stored in the model card); ``backbone`` is the segmentation network's NetworkConfig."""

    local_crop: Tuple[int, int, int] = (64, 64, 64)
    global_downsample: int = 2
    fused_features: int = 256
    hidden: int = 128
    dropout: float = 0.3
    backbone: Dict = field(default_factory=lambda: NetworkConfig().to_dict())

    def __post_init__(self) -> None:
        self.local_crop = tuple(int(n) for n in self.local_crop)

    def to_dict(self) -> Dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Dict) -> "MultiTaskConfig":
        return cls(**data)


def pooled_dim(config: "MultiTaskConfig") -> int:
    """Length of the pooled feature vector: GAP + GMP of the local level-2 and bottleneck maps and the global
    bottleneck map."""
    widths = NetworkConfig.from_dict(config.backbone).widths
    return 2 * (widths[-2] + widths[-1]) + 2 * widths[-1]


def _pool(features: torch.Tensor) -> torch.Tensor:
    """GAP and GMP over the spatial axes: (B, C, Z, Y, X) -> (B, 2C)."""
    return torch.cat([features.mean(dim=(2, 3, 4)), features.amax(dim=(2, 3, 4))], dim=1)


class ChannelAttentionFusion(nn.Module):
    """Concatenated local and global vectors, re-weighted by learned sigmoid gates, mapped to ``out_features``."""

    def __init__(self, in_features: int, out_features: int, reduction: int = 4) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(in_features)
        self.gate = nn.Sequential(nn.Linear(in_features, in_features // reduction), nn.ReLU(inplace=True),
                                  nn.Linear(in_features // reduction, in_features), nn.Sigmoid())
        self.project = nn.Sequential(nn.Linear(in_features, out_features), nn.GELU())

    def forward(self, vector: torch.Tensor) -> torch.Tensor:
        vector = self.norm(vector)
        return self.project(vector * self.gate(vector))


class SummarizeSeparate(nn.Module):
    """A shared summary of the fused features, then one branch per task that sees the summary and the features."""

    def __init__(self, features: int, hidden: int, dropout: float, tasks: Sequence[str] = TASKS) -> None:
        super().__init__()
        self.summarize = nn.Sequential(nn.Linear(features, hidden), nn.LayerNorm(hidden), nn.GELU(),
                                       nn.Dropout(dropout))
        self.separate = nn.ModuleDict({
            task: nn.Sequential(nn.Linear(features + hidden, hidden // 2), nn.GELU(), nn.Dropout(dropout),
                                nn.Linear(hidden // 2, 2))
            for task in tasks})

    def forward(self, features: torch.Tensor) -> Dict[str, torch.Tensor]:
        summary = self.summarize(features)
        joint = torch.cat([features, summary], dim=1)
        return {task: branch(joint) for task, branch in self.separate.items()}


class MultiTaskNet(nn.Module):
    """Backbone (a GliomaSegNet) + fusion + heads; ``forward(local, global, presence) -> {task: logits (B, 2)}``."""

    def __init__(self, config: Optional[MultiTaskConfig] = None) -> None:
        super().__init__()
        self.config = config = config or MultiTaskConfig()
        self.backbone = GliomaSegNet(NetworkConfig.from_dict(config.backbone))
        self.fusion = ChannelAttentionFusion(pooled_dim(config), config.fused_features)
        self.heads = SummarizeSeparate(config.fused_features, config.hidden, config.dropout)

    def pooled_features(self, local: torch.Tensor, global_: torch.Tensor, presence: torch.Tensor) -> torch.Tensor:
        """Backbone features pooled into one vector per case: (B, 2 * (w[-2] + w[-1]) + 2 * w[-1])."""
        local_levels = self.backbone.encode(local, presence)
        global_levels = self.backbone.encode(global_, presence)
        return torch.cat([_pool(local_levels[-2]), _pool(local_levels[-1]), _pool(global_levels[-1])], dim=1)

    def classify(self, pooled: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Heads on pooled features (B, F) -> {task: logits (B, 2)}."""
        return self.heads(self.fusion(pooled))

    def forward(self, local: torch.Tensor, global_: torch.Tensor, presence: torch.Tensor) -> Dict[str, torch.Tensor]:
        return self.classify(self.pooled_features(local, global_, presence))

    def freeze_backbone(self) -> None:
        for parameter in self.backbone.parameters():
            parameter.requires_grad_(False)

    def heads_dropout(self, active: bool) -> None:
        """Switch dropout of the fusion and heads on (MC-dropout) or off; the backbone stays in eval mode."""
        self.eval()
        for module in list(self.fusion.modules()) + list(self.heads.modules()):
            if isinstance(module, nn.Dropout):
                module.train(active)


def network_inputs(image: np.ndarray, labels: np.ndarray, config: MultiTaskConfig, divisor: int = 8,
                   box: Optional[Tuple[slice, ...]] = None) -> Tuple[np.ndarray, np.ndarray]:
    """(local (4, *local_crop), global (4, Z', Y', X')) float32 from a working-grid image (4, Z, Y, X) and labels.

    local: the tumor-centred box (``box`` overrides it); global: the whole image average-pooled by
    ``global_downsample`` and zero-padded to multiples of ``divisor``.
    """
    box = box or tumor_box(labels, config.local_crop)
    local = crop_padded(image, box)
    f = config.global_downsample
    trimmed = pad_to_multiple(image, f)
    c, z, y, x = trimmed.shape
    pooled = trimmed.reshape(c, z // f, f, y // f, f, x // f, f).mean(axis=(2, 4, 6))
    return (np.ascontiguousarray(local, dtype=np.float32),
            np.ascontiguousarray(pad_to_multiple(pooled, divisor), dtype=np.float32))


def probability_of_positive(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Calibrated P(positive) from 2-class logits (B, 2): sigmoid((l1 - l0) / T)."""
    return torch.sigmoid((logits[:, 1] - logits[:, 0]) / temperature)


def predict_markers(model: MultiTaskNet, card: Dict, image: np.ndarray, presence: np.ndarray, labels: np.ndarray,
                    mc_samples: int = MC_SAMPLES, seed: int = 0) -> Dict[str, Dict]:
    """Predictions per task: ``{label, probability (of that label), uncertainty, probability_positive}``.

    image float32 (4, Z, Y, X) working grid; presence (4,); labels uint8 (Z, Y, X) (the predicted segmentation).
    probability is the mean of ``mc_samples`` MC-dropout passes of the heads over one backbone pass; uncertainty
    is their standard deviation (eq. 6). Deterministic for a given ``seed``.
    """
    local, global_ = network_inputs(image, labels, model.config, model.backbone.config.divisor)
    temperatures = {task: float(card.get("calibration", {}).get(task, {}).get("temperature", 1.0)) for task in TASKS}
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model.heads_dropout(False)
        with torch.inference_mode():
            p = torch.from_numpy(np.asarray(presence, dtype=np.float32))[None]
            pooled = model.pooled_features(torch.from_numpy(local)[None], torch.from_numpy(global_)[None], p)
            model.heads_dropout(mc_samples > 1)
            samples = {task: [] for task in TASKS}
            for _ in range(max(1, mc_samples)):
                logits = model.classify(pooled)
                for task in TASKS:
                    samples[task].append(float(probability_of_positive(logits[task], temperatures[task])[0]))
    finally:
        model.heads_dropout(False)
        torch.random.set_rng_state(generator_state)
    out = {}
    for task in TASKS:
        values = np.array(samples[task])
        positive = float(values.mean())
        label = TASK_LABELS[task][int(positive >= 0.5)]
        out[task] = {"label": label, "probability": round(positive if positive >= 0.5 else 1 - positive, 4),
                     "uncertainty": round(float(values.std()), 4), "probability_positive": round(positive, 4)}
    return out


def build_multitask(card: Dict) -> MultiTaskNet:
    """Model-store builder: the network described by a multi-task model card."""
    return MultiTaskNet(MultiTaskConfig.from_dict(card["network"]))
