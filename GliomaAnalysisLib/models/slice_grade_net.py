"""The slice-grade classifier's torch modules (slice preparation, aggregation and prediction: models/slice_grade.py).

    x (N, 3, crop, crop) slices in [0, 1]
      -> CNN backbone -> GAP -> features (N, F)                                  part "features"
      -> Dense(hidden) ReLU -> dropout (a mask input in the part) -> Dense(1)
      -> logits (N,)                                                              part "head"
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from .efficientnet import B0_BLOCKS, EfficientNet
from .model_store import load_model
from .onnx_engine import PartSpec
from .slice_grade import SLICE_GRADE_MODEL, SliceGradeConfig


def _small_cnn(widths: Sequence[int], in_channels: int = 3) -> Tuple[nn.Module, int]:
    """Blocks of two 3x3 conv-BN-ReLU, 2x2 max-pooling between blocks; returns (module, output channels)."""
    layers: List[nn.Module] = []
    previous = in_channels
    for index, width in enumerate(widths):
        if index:
            layers.append(nn.MaxPool2d(2))
        for _ in range(2):
            layers += [nn.Conv2d(previous, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                       nn.ReLU(inplace=True)]
            previous = width
    return nn.Sequential(*layers), previous


class _EfficientNetFeatures(nn.Module):
    """EfficientNet (port of MONAI's, B0 block layout, scaled) without its classifier: (B, 3, H, W) -> (B, F) after
    GAP."""

    def __init__(self, config: SliceGradeConfig) -> None:
        super().__init__()
        self.net = EfficientNet(B0_BLOCKS, in_channels=3, num_classes=1, width_coefficient=config.efficientnet_width,
                                depth_coefficient=config.efficientnet_depth, dropout_rate=0.0,
                                image_size=config.crop)
        self.out_features = self.net._fc.in_features
        self.net._fc = nn.Identity()
        self.net._dropout = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SliceGradeNet(nn.Module):
    """(B, 3, crop, crop) slices in [0, 1] -> (B,) logits of HGG. Head: GAP -> Linear(hidden) ReLU -> Dropout ->
    Linear(1) (seed 002)."""

    def __init__(self, config: Optional[SliceGradeConfig] = None) -> None:
        super().__init__()
        self.config = config or SliceGradeConfig()
        if self.config.backbone == "efficientnet":
            self.backbone = _EfficientNetFeatures(self.config)
            features = self.backbone.out_features
        else:
            self.backbone, features = _small_cnn(self.config.widths)
        self.fc1 = nn.Linear(features, self.config.hidden)
        self.fc2 = nn.Linear(self.config.hidden, 1)
        self.dropout = nn.Dropout(self.config.dropout)
        for layer in (self.fc1, self.fc2):  # He normal, as the seed's head
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            nn.init.zeros_(layer.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, F) globally average-pooled backbone features."""
        out = self.backbone(x)
        return out.mean(dim=(2, 3)) if out.dim() == 4 else out

    def head(self, features: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B, F) -> (B,) logits. ``mask`` (B, hidden) replaces the dropout layer (MC-dropout with fixed masks)."""
        hidden = torch.relu(self.fc1(features))
        hidden = hidden * mask if mask is not None else self.dropout(hidden)
        return self.fc2(hidden).squeeze(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def build_slice_grade(card: Dict[str, Any]) -> SliceGradeNet:
    """The network described by a model card's ``network`` entry."""
    return SliceGradeNet(SliceGradeConfig.from_dict(card["network"]))


def load_slice_grade(folder: Optional[str] = None) -> Tuple[SliceGradeNet, Dict[str, Any]]:
    """The stored slice-grade model (bundled ``Resources/models`` by default) in eval mode, and its card; the
    weights' sha256 is checked against the card (``ModelError`` otherwise)."""
    return load_model(SLICE_GRADE_MODEL, folder, build=build_slice_grade)


def slice_grade_parts(model: SliceGradeNet) -> Dict[str, PartSpec]:
    """The parts (models/onnx_engine.py): ``features`` x (N, 3, crop, crop) -> features (N, F); ``head`` features
    (B, F) and mask (B, hidden) -> logits (B,); N and B dynamic."""
    config = model.config
    batch = {0: "batch"}
    x = np.zeros((2, 3, config.crop, config.crop), np.float32)
    features = np.zeros((2, model.fc1.in_features), np.float32)
    mask = np.ones((2, config.hidden), np.float32)
    return {
        "features": PartSpec(model, (x,), ("x",), ("features",), {"x": batch, "features": batch},
                             SliceGradeNet.features),
        "head": PartSpec(model, (features, mask), ("features", "mask"), ("logits",),
                         {"features": batch, "mask": batch, "logits": batch}, SliceGradeNet.head),
    }
