"""The torch modules of the MGMT late-fusion ensemble (architecture: models/mgmt_fusion.py, which runs them as
parts without importing torch) and their parts for models/onnx_engine.py.

Parts of an ensemble, two per modality m of its config (``mgmt_fusion.mgmt_parts``):

    features_<m>: slices (1, S, C, C) -> features (1, S, F)
    head_<m>:     features (B, S, F), mask_in (B, S, F), mask_out (B, H) -> logits (B,)

S and B are dynamic; the masks are the dropout masks, already scaled by 1 / (1 - p) (all ones: dropout off).
"""
from __future__ import annotations

import os
from typing import Dict, Mapping, Optional, Tuple, Union

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from .efficientnet import B0_BLOCKS, EfficientNet
from .mgmt_fusion import _NORMS, DEFAULT_MODEL_NAME, MGMTFusionConfig
from .model_store import load_model
from .onnx_engine import PartSpec


class SliceSequenceClassifier(nn.Module):
    """One modality's model: slices (B, S, C, C) float32 z-scored -> logit (B,)."""

    def __init__(self, config: MGMTFusionConfig) -> None:
        super().__init__()
        self.config = config
        self.to_rgb = nn.Conv2d(1, 3, kernel_size=3, padding=1)
        self.backbone = EfficientNet(B0_BLOCKS, in_channels=3, num_classes=config.feature_dim,
                                     width_coefficient=config.width_coefficient,
                                     depth_coefficient=config.depth_coefficient, dropout_rate=0.0,
                                     image_size=config.crop_size, norm=_NORMS[config.backbone_norm],
                                     drop_connect_rate=config.drop_connect)
        self.feature_norm = nn.LayerNorm(config.feature_dim)
        self.dropout_in = nn.Dropout(config.dropout)
        self.lstm = nn.LSTM(config.feature_dim, config.lstm_hidden, num_layers=config.lstm_layers, batch_first=True,
                            dropout=config.dropout if config.lstm_layers > 1 else 0.0)
        self.dropout_out = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(config.lstm_hidden, 1)

    def features(self, slices: torch.Tensor) -> torch.Tensor:
        """(B, S, C, C) -> normalised per-slice features (B, S, F)."""
        b, s, h, w = slices.shape
        x = self.backbone(self.to_rgb(slices.reshape(b * s, 1, h, w)))
        return self.feature_norm(x).reshape(b, s, -1)

    def head(self, features: torch.Tensor, lengths: Optional[torch.Tensor] = None,
             masks: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
        """Features (B, S, F), valid slice counts (B,) (default: all S) -> logits (B,).

        masks: the dropout masks (B, S, F) before the LSTM and (B, H) before the linear layer, scaled by 1 / (1 - p)
        (MC-dropout as a plain function of its inputs); None: the dropout layers (active in training mode only).
        """
        x = self.dropout_in(features) if masks is None else features * masks[0]
        if lengths is None:
            _, (hidden, _) = self.lstm(x)
        else:
            packed = pack_padded_sequence(x, lengths.to("cpu", torch.int64), batch_first=True, enforce_sorted=False)
            _, (hidden, _) = self.lstm(packed)
        last = self.dropout_out(hidden[-1]) if masks is None else hidden[-1] * masks[1]
        return self.classifier(last).squeeze(-1)

    def forward(self, slices: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Slices (B, S, C, C), optional lengths (B,) for right-padded sequences -> logits (B,)."""
        return self.head(self.features(slices), lengths)


class MGMTFusionEnsemble(nn.Module):
    """The per-modality models, ``models[modality]``; fusion weights and temperatures live in the model card."""

    def __init__(self, config: Optional[MGMTFusionConfig] = None) -> None:
        super().__init__()
        self.config = config or MGMTFusionConfig()
        self.models = nn.ModuleDict({m: SliceSequenceClassifier(self.config) for m in self.config.modalities})


def build_from_card(card: Mapping) -> MGMTFusionEnsemble:
    """The (untrained) ensemble described by a model card's ``network`` entry (``model_store.load_model`` build)."""
    return MGMTFusionEnsemble(MGMTFusionConfig.from_dict(card["network"]))


def load_mgmt_fusion(folder: Optional[Union[str, "os.PathLike[str]"]] = None,
                     name: str = DEFAULT_MODEL_NAME) -> Tuple[MGMTFusionEnsemble, Dict]:
    """Load the ensemble and its card (sha256 checked) from ``folder`` (default: bundled Resources/models, else the
    user cache); returns (ensemble in eval mode, card)."""
    return load_model(name, folder, build=build_from_card)


def _head_with_masks(model: SliceSequenceClassifier, features: torch.Tensor, mask_in: torch.Tensor,
                     mask_out: torch.Tensor) -> torch.Tensor:
    """A modality's LSTM head with its dropout masks as inputs."""
    return model.head(features, masks=(mask_in, mask_out))


def mgmt_fusion_parts(ensemble: MGMTFusionEnsemble) -> Dict[str, PartSpec]:
    """The parts ``features_<m>`` and ``head_<m>`` of every modality m of the ensemble (module docstring)."""
    config = ensemble.config
    c, f, h = config.crop_size, config.feature_dim, config.lstm_hidden
    sequence = {0: "batch", 1: "slices"}
    specs: Dict[str, PartSpec] = {}
    for m, model in ensemble.models.items():
        specs[f"features_{m}"] = PartSpec(model, (np.zeros((1, 2, c, c), np.float32),), ("slices",),
                                          ("features",), {"slices": {1: "slices"}, "features": {1: "slices"}},
                                          SliceSequenceClassifier.features)
        specs[f"head_{m}"] = PartSpec(model, (np.zeros((2, 2, f), np.float32), np.ones((2, 2, f), np.float32),
                                              np.ones((2, h), np.float32)),
                                      ("features", "mask_in", "mask_out"), ("logits",),
                                      {"features": sequence, "mask_in": sequence, "mask_out": {0: "batch"},
                                       "logits": {0: "batch"}}, _head_with_masks)
    return specs
