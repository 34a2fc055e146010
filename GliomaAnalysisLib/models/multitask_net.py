"""The multi-task classifier's torch modules (layout and prediction: models/multitask.py).

    x (B, 4, Z, Y, X), presence (B, 4)
      -> the segmentation network's encoder -> fine, level, deep maps          part "encoder" (the segmentation
                                                                                pass outputs the same maps)
    fine, level, deep, masks (tumor box, tumor voxels)
      -> the backbone's transformer on deep -> masked / whole GAP + GMP (B, F)  part "features"
      -> channel-attention fusion -> "Summarize and Separate" heads
      -> logits (B, T, 2) in TASKS order; dropout masks as inputs              part "heads"
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from .multitask import MAP_NAMES, MASK_NAMES, TASKS, MultiTaskConfig, pooled_dim
from .network import GliomaSegNet, NetworkConfig
from .onnx_engine import PartSpec


def _pool(features: torch.Tensor) -> torch.Tensor:
    """GAP and GMP over the spatial axes: (B, C, Z, Y, X) -> (B, 2C)."""
    return torch.cat([features.mean(dim=(2, 3, 4)), features.amax(dim=(2, 3, 4))], dim=1)


def _masked_pool(features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """GAP and GMP over the voxels where ``mask`` (B, 1, Z, Y, X) is 1: (B, C, Z, Y, X) -> (B, 2C)."""
    mean = (features * mask).sum(dim=(2, 3, 4)) / mask.sum(dim=(2, 3, 4)).clamp_min(1.0)
    peak = (features * mask + (mask - 1.0) * 1e9).amax(dim=(2, 3, 4))
    return torch.cat([mean, peak], dim=1)


class ChannelAttentionFusion(nn.Module):
    """The concatenated pooled vectors, re-weighted by learned sigmoid gates, mapped to ``out_features``."""

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
    """Backbone (a GliomaSegNet) + fusion + heads; ``forward(x, presence, *masks) -> {task: logits (B, 2)}``."""

    def __init__(self, config: Optional[MultiTaskConfig] = None) -> None:
        super().__init__()
        self.config = config = config or MultiTaskConfig()
        self.backbone = GliomaSegNet(NetworkConfig.from_dict(config.backbone))
        self.fusion = ChannelAttentionFusion(pooled_dim(config), config.fused_features)
        self.heads = SummarizeSeparate(config.fused_features, config.hidden, config.dropout)

    def encoder_maps(self, x: torch.Tensor, presence: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """(fine, level, deep) of x (B, 4, Z, Y, X): the backbone's last three encoder maps
        (``GliomaSegNet.encoder_levels``; the segmentation pass outputs the same), at 1/2, 1/4 and 1/8 resolution."""
        return tuple(self.backbone.encoder_levels(x, presence)[-3:])

    def pooled_features(self, fine: torch.Tensor, level: torch.Tensor, deep: torch.Tensor, level_box: torch.Tensor,
                        deep_box: torch.Tensor, fine_tumor: torch.Tensor, level_tumor: torch.Tensor) -> torch.Tensor:
        """One vector per case (B, ``encoder_pooled_dim``): GAP + GMP of ``level`` and of the transformed ``deep`` map
        inside the tumor box, of the whole transformed deep map, and of ``fine`` and ``level`` over the tumor (masks
        (B, 1, ...) of 0 and 1, ``multitask.feature_masks``). The transformer is the backbone's (without dropout in
        eval mode, as at inference)."""
        transformed = self.backbone.transformer(deep)
        return torch.cat([_masked_pool(level, level_box), _masked_pool(transformed, deep_box), _pool(transformed),
                          _masked_pool(fine, fine_tumor), _masked_pool(level, level_tumor)], dim=1)

    def classify(self, pooled: torch.Tensor,
                 masks: Optional[Sequence[torch.Tensor]] = None) -> Dict[str, torch.Tensor]:
        """Heads on pooled features (B, ``pooled_dim``: the composition appended when the layout reads it) ->
        {task: logits (B, 2)}; ``masks``: see ``SummarizeSeparate.forward``."""
        return self.heads(self.fusion(pooled), masks)

    def forward(self, x: torch.Tensor, presence: torch.Tensor, *masks: torch.Tensor,
                composition: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """{task: logits (B, 2)} of x (B, 4, Z, Y, X), presence (B, 4), the masks (``MASK_NAMES`` order) and, when
        the layout reads it, the segmentation's composition (B, 3) (``multitask.composition_from_volumes``)."""
        pooled = self.pooled_features(*self.encoder_maps(x, presence), *masks)
        if self.config.composition:
            if composition is None:
                raise ValueError("this multi-task layout reads the segmentation's composition: pass composition")
            pooled = torch.cat([pooled, composition], dim=1)
        return self.classify(pooled)

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
    """The parts (models/onnx_engine.py): ``encoder`` x (1, 4, Z, Y, X), presence (1, 4) -> fine, level, deep;
    ``features`` fine, level, deep and the masks (``MASK_NAMES``; spatial axes dynamic) -> pooled (1, F); ``heads``
    pooled (B, F), mask0 (B, hidden), mask1..mask4 (B, hidden // 2) -> logits (B, T, 2) in TASKS order."""
    config = model.config
    backbone = model.backbone.config
    size = 2 * backbone.divisor
    x = np.zeros((1, 4, size, size, size), np.float32)
    levels = len(backbone.widths)
    maps = [np.zeros((1, backbone.widths[k], *(size // 2 ** k,) * 3), np.float32) for k in range(levels - 3, levels)]
    masks = {name: np.ones((1, 1, *maps[MAP_NAMES.index(name.split("_")[0])].shape[2:]), np.float32)
             for name in MASK_NAMES}
    head_masks = [np.ones((1, config.hidden), np.float32)] + [np.ones((1, config.hidden // 2), np.float32)] * len(TASKS)
    names = tuple(f"mask{k}" for k in range(len(head_masks)))
    pooled = np.zeros((1, pooled_dim(config)), np.float32)

    def spatial(prefix: str) -> Dict[int, str]:
        return {2: f"{prefix}_z", 3: f"{prefix}_y", 4: f"{prefix}_x"}

    map_axes = {name: spatial(name) for name in MAP_NAMES}
    return {
        "encoder": PartSpec(model, (x, np.ones((1, 4), np.float32)), ("x", "presence"), MAP_NAMES,
                            {"x": spatial("x"), **map_axes}, MultiTaskNet.encoder_maps),
        "features": PartSpec(model, (*maps, *masks.values()), (*MAP_NAMES, *MASK_NAMES), ("pooled",),
                             {**map_axes, **{name: spatial(name.split("_")[0]) for name in MASK_NAMES}},
                             MultiTaskNet.pooled_features),
        "heads": PartSpec(model, (pooled, *head_masks), ("pooled", *names), ("logits",),
                          {"pooled": {0: "batch"}, "logits": {0: "batch"}, **{n: {0: "batch"} for n in names}},
                          _stacked_logits),
    }
