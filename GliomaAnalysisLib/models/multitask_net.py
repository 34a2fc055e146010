"""The multi-task classifier's torch modules (layout and prediction: models/multitask.py).

    local (B, 4, 64, 64, 64), global (B, 4, Z/2, Y/2, X/2), presence (B, 4)
      -> the segmentation network's encoder -> pooled features (B, F)        part "features"
      -> channel-attention fusion -> "Summarize and Separate" heads
      -> logits (B, T, 2) in TASKS order; dropout masks as inputs              part "heads"
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np
import torch
from torch import nn

from .multitask import TASKS, MultiTaskConfig, pooled_dim
from .network import GliomaSegNet, NetworkConfig
from .onnx_engine import PartSpec


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

    def forward(self, features: torch.Tensor,
                masks: Optional[Sequence[torch.Tensor]] = None) -> Dict[str, torch.Tensor]:
        """features (B, F) -> {task: logits (B, 2)}. ``masks`` (the summary's (B, hidden), then each task's
        (B, hidden // 2) in ``separate`` order) replace the dropout layers when given (MC-dropout with masks drawn
        outside the network)."""
        if masks is None:
            summary = self.summarize(features)
        else:
            summary = self.summarize[:-1](features) * masks[0]
        joint = torch.cat([features, summary], dim=1)
        if masks is None:
            return {task: branch(joint) for task, branch in self.separate.items()}
        return {task: branch[3](branch[:2](joint) * mask)
                for (task, branch), mask in zip(self.separate.items(), masks[1:])}


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

    def classify(self, pooled: torch.Tensor,
                 masks: Optional[Sequence[torch.Tensor]] = None) -> Dict[str, torch.Tensor]:
        """Heads on pooled features (B, F) -> {task: logits (B, 2)}; ``masks``: see ``SummarizeSeparate.forward``."""
        return self.heads(self.fusion(pooled), masks)

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


def build_multitask(card: Dict) -> MultiTaskNet:
    """Model-store builder: the network described by a multi-task model card."""
    return MultiTaskNet(MultiTaskConfig.from_dict(card["network"]))


def _stacked_logits(model: MultiTaskNet, pooled: torch.Tensor, *masks: torch.Tensor) -> torch.Tensor:
    """The heads with their dropout masks as inputs: pooled (B, F), masks -> logits (B, T, 2) in TASKS order."""
    logits = model.classify(pooled, list(masks))
    return torch.stack([logits[task] for task in TASKS], dim=1)


def multitask_parts(model: MultiTaskNet) -> Dict[str, PartSpec]:
    """The parts (models/onnx_engine.py): ``features`` local (1, 4, *local_crop), global (1, 4, Z', Y', X') dynamic,
    presence (1, 4) -> pooled (1, F); ``heads`` pooled (B, F), mask0 (B, hidden), mask1..mask4 (B, hidden // 2) ->
    logits (B, T, 2) in TASKS order."""
    config = model.config
    divisor = model.backbone.config.divisor
    local = np.zeros((1, 4, *config.local_crop), np.float32)
    global_ = np.zeros((1, 4, 2 * divisor, 2 * divisor, 2 * divisor), np.float32)
    masks = [np.ones((1, config.hidden), np.float32)] + [np.ones((1, config.hidden // 2), np.float32)] * len(TASKS)
    names = tuple(f"mask{k}" for k in range(len(masks)))
    pooled = np.zeros((1, pooled_dim(config)), np.float32)
    return {
        "features": PartSpec(model, (local, global_, np.ones((1, 4), np.float32)),
                             ("local", "global", "presence"), ("pooled",),
                             {"global": {2: "z", 3: "y", 4: "x"}}, MultiTaskNet.pooled_features),
        "heads": PartSpec(model, (pooled, *masks), ("pooled", *names), ("logits",),
                          {"pooled": {0: "batch"}, "logits": {0: "batch"}, **{n: {0: "batch"} for n in names}},
                          _stacked_logits),
    }
