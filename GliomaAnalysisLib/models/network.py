"""GMMAS-style segmentation network (seed 001, section III.C), compact enough for a laptop CPU.

    x (B, 4, Z, Y, X), presence (B, 4)
      -> one convolutional stem per modality, fused by a learnable weighted average over present modalities
         (``fusion="concat"``: one convolution over all four, absent ones zeroed, modulated by which are present;
         ``t1ce_difference``: a fifth stem over T1CE - T1 joins the average when both are present)
      -> residual 3D encoder (stride-2 downsampling, channels doubling)
      -> transformer bottleneck over the 3D tokens of the deepest feature map (convolutional position encoding,
         so any input size works)
      -> decoder: 1x1x1 channel reduction, trilinear x2 upsampling, additive skip connection, residual block
      -> logits (B, 4, Z, Y, X) over background, NCR, ED, ET (softmax, not sigmoid regions: sigmoid region
         outputs let ET collapse onto TC in an earlier run)

Differences from the paper, and why: instance norm instead of batch norm (batches of 1-2 crops on a CPU), a
transformer over bottleneck voxels (1x1x1 patches of a map already downsampled 8x) instead of 16^3 patches, widths
16-128 and two transformer layers instead of 512-wide embeddings (CPU speed). Spatial sizes must be divisible by
2**(levels-1) (8 by default); ``preprocess(divisible_by=8)`` pads for that. Dropout3d sits in the bottleneck and
every decoder block, so MC-dropout at inference samples the decoding of every scale.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .onnx_engine import PartSpec
from .network_config import (N_CLASSES, N_MODALITIES, T1, T1CE, TRANSFORMER_MASKS_PER_LAYER,  # noqa: F401
                             NetworkConfig, dropout_mask_shapes)


def _norm(channels: int) -> nn.Module:
    return nn.InstanceNorm3d(channels, affine=True)


class ResidualBlock(nn.Module):
    """Two 3x3x3 convolutions with instance norm and LeakyReLU, plus the identity."""

    def __init__(self, channels: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv3d(channels, channels, 3, padding=1, bias=False), _norm(channels), nn.LeakyReLU(0.01, inplace=True),
            nn.Dropout3d(dropout) if dropout > 0 else nn.Identity(),
            nn.Conv3d(channels, channels, 3, padding=1, bias=False), _norm(channels))
        self.act = nn.LeakyReLU(0.01, inplace=True)

    def forward(self, x: torch.Tensor, channel_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x (B, C, Z, Y, X); channel_mask (B, C) replaces the dropout layer when given (MC-dropout sampling with
        masks drawn outside the network, see :func:`GliomaSegNet.forward`)."""
        if channel_mask is None:
            return self.act(x + self.body(x))
        hidden = self.body[:3](x) * channel_mask[:, :, None, None, None]
        return self.act(x + self.body[4:](hidden))


class ModalityFusionStem(nn.Module):
    """One stem per modality; a learnable weighted average over the modalities present (seed 001, eq. 1).

    With ``t1ce_difference`` a fifth stem reads T1CE - T1 (both z-scored over the brain: enhancement in standard
    deviations, the quantity of the enhancement gate, pipeline/signal_gates.py) and joins the average when both are
    present. Per-modality stems cannot form this difference themselves: each normalises and rectifies its own
    modality before the average.
    """

    def __init__(self, width: int, t1ce_difference: bool = False) -> None:
        super().__init__()
        self.stems = nn.ModuleList(_stem(width) for _ in range(N_MODALITIES))
        self.difference_stem = _stem(width) if t1ce_difference else None
        self.weight_logits = nn.Parameter(torch.zeros(N_MODALITIES + int(t1ce_difference)))

    def forward(self, x: torch.Tensor, presence: torch.Tensor) -> torch.Tensor:
        """x (B, 4, Z, Y, X), presence (B, 4) in {0, 1} -> fused features (B, width, Z, Y, X)."""
        if self.difference_stem is not None:
            presence = torch.cat([presence, presence[:, T1:T1 + 1] * presence[:, T1CE:T1CE + 1]], dim=1)  # (B, 5)
        weights = F.softplus(self.weight_logits)[None, :] * presence  # (B, 4 or 5)
        weights = weights / weights.sum(dim=1, keepdim=True).clamp_min(1e-6)
        fused = None
        for m, stem in enumerate(self.stems):
            if not bool(presence[:, m].any()):
                continue  # absent in the whole batch: skip the work
            term = stem(x[:, m:m + 1]) * weights[:, m].view(-1, 1, 1, 1, 1)
            fused = term if fused is None else fused + term
        if fused is None:
            raise ValueError("at least one modality must be present")
        if self.difference_stem is not None and bool(presence[:, N_MODALITIES].any()):
            difference = x[:, T1CE:T1CE + 1] - x[:, T1:T1 + 1]
            fused = fused + self.difference_stem(difference) * weights[:, N_MODALITIES].view(-1, 1, 1, 1, 1)
        return fused


def _stem(width: int) -> nn.Module:
    """One input channel -> ``width`` features: 3x3x3 convolution, instance norm, LeakyReLU."""
    return nn.Sequential(nn.Conv3d(1, width, 3, padding=1, bias=False), _norm(width), nn.LeakyReLU(0.01, inplace=True))


class ConcatFusionStem(nn.Module):
    """Early fusion: one convolution over all four modalities (absent ones zeroed), so the first layer can already
    compare them (T1CE against T1 for enhancement), then a per-channel scale and shift set by which modalities are
    present (after the instance norm, which would erase constant presence channels)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(N_MODALITIES, width, 3, padding=1, bias=False)
        self.norm = _norm(width)
        self.presence_film = nn.Linear(N_MODALITIES, 2 * width)
        nn.init.zeros_(self.presence_film.weight)
        nn.init.zeros_(self.presence_film.bias)
        self.act = nn.LeakyReLU(0.01, inplace=True)

    def forward(self, x: torch.Tensor, presence: torch.Tensor) -> torch.Tensor:
        """x (B, 4, Z, Y, X), presence (B, 4) in {0, 1} -> features (B, width, Z, Y, X)."""
        features = self.norm(self.conv(x * presence[:, :, None, None, None]))
        scale, shift = self.presence_film(presence).chunk(2, dim=1)  # (B, width) each
        return self.act(features * (1 + scale[:, :, None, None, None]) + shift[:, :, None, None, None])


class TransformerBottleneck(nn.Module):
    """Self-attention over the voxels of the deepest feature map, with a depthwise-conv position encoding."""

    def __init__(self, channels: int, layers: int, heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        self.position = nn.Conv3d(channels, channels, 3, padding=1, groups=channels)
        layer = nn.TransformerEncoderLayer(channels, heads, int(channels * mlp_ratio), dropout=dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False) if layers > 0 else None
        self.norm = nn.LayerNorm(channels)

    MASKS_PER_LAYER = TRANSFORMER_MASKS_PER_LAYER

    def forward(self, x: torch.Tensor, masks: Optional[Sequence[torch.Tensor]] = None) -> torch.Tensor:
        """x (B, C, Z, Y, X); ``masks`` (``MASKS_PER_LAYER`` per layer) replace the dropout layers when given."""
        if self.encoder is None:
            return x
        tokens = (x + self.position(x)).flatten(2).transpose(1, 2)  # (B, N, C)
        per = self.MASKS_PER_LAYER
        for k, layer in enumerate(self.encoder.layers):
            tokens = self._layer(layer, tokens, None if masks is None else masks[per * k:per * (k + 1)])
        return x + self.norm(tokens).transpose(1, 2).reshape(x.shape)

    def _layer(self, layer: nn.TransformerEncoderLayer, tokens: torch.Tensor,
               masks: Optional[Sequence[torch.Tensor]]) -> torch.Tensor:
        """``layer``'s own computation (pre-norm, GELU) on tokens (B, N, C), written out with sizes left to -1 so
        that the ONNX export keeps the token count N dynamic (nn.MultiheadAttention's export fixes it). With
        ``masks`` the four dropouts multiply by them (MC-dropout with masks drawn outside the network)."""
        b, _, c = tokens.shape
        heads = layer.self_attn.num_heads
        q, k, v = F.linear(layer.norm1(tokens), layer.self_attn.in_proj_weight,
                           layer.self_attn.in_proj_bias).chunk(3, dim=-1)
        q, k, v = (t.reshape(b, -1, heads, c // heads).transpose(1, 2) for t in (q, k, v))  # (B, heads, N, C/heads)
        if masks is None:
            attention = F.scaled_dot_product_attention(q, k, v,
                                                       dropout_p=layer.self_attn.dropout if self.training else 0.0)
        else:
            weights = torch.softmax(q @ k.transpose(-2, -1) * (c // heads) ** -0.5, dim=-1)
            attention = (weights * masks[0]) @ v
        attention = layer.self_attn.out_proj(attention.transpose(1, 2).reshape(b, -1, c))
        tokens = tokens + (layer.dropout1(attention) if masks is None else attention * masks[1])
        hidden = F.gelu(layer.linear1(layer.norm2(tokens)))
        hidden = layer.dropout(hidden) if masks is None else hidden * masks[2]
        out = layer.linear2(hidden)
        return tokens + (layer.dropout2(out) if masks is None else out * masks[3])


class GliomaSegNet(nn.Module):
    """The segmentation network; ``forward(x, presence) -> logits (B, 4, Z, Y, X)``."""

    def __init__(self, config: Optional[NetworkConfig] = None) -> None:
        super().__init__()
        self.config = config = config or NetworkConfig()
        widths = config.widths
        self.stem = ConcatFusionStem(widths[0]) if config.fusion == "concat" else \
            ModalityFusionStem(widths[0], config.t1ce_difference)
        self.encoder = nn.ModuleList()
        self.down = nn.ModuleList()
        for level, (width, blocks) in enumerate(zip(widths, config.encoder_blocks)):
            if level > 0:
                self.down.append(nn.Sequential(nn.Conv3d(widths[level - 1], width, 3, stride=2, padding=1, bias=False),
                                               _norm(width), nn.LeakyReLU(0.01, inplace=True)))
            self.encoder.append(nn.Sequential(*[ResidualBlock(width) for _ in range(blocks)]))
        self.bottleneck_dropout = nn.Dropout3d(config.dropout)
        self.transformer = TransformerBottleneck(widths[-1], config.transformer_layers, config.transformer_heads,
                                                 config.transformer_mlp_ratio, config.dropout)
        self.reduce = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for level in range(len(widths) - 2, -1, -1):
            self.reduce.append(nn.Conv3d(widths[level + 1], widths[level], 1, bias=False))
            self.decoder.append(ResidualBlock(widths[level], dropout=config.dropout))
        self.head = nn.Conv3d(widths[0], N_CLASSES, 1)

    def encode(self, x: torch.Tensor, presence: torch.Tensor,
               bottleneck_masks: Optional[Sequence[torch.Tensor]] = None) -> List[torch.Tensor]:
        """Encoder features, one per level: (B, widths[l], Z/2^l, Y/2^l, X/2^l); the last one after the
        transformer bottleneck. bottleneck_masks: the bottleneck's channel mask (B, widths[-1]) then the
        transformer's masks; they replace those dropout layers when given."""
        levels = self.encoder_levels(x, presence)
        levels[-1] = self._bottleneck(levels[-1], bottleneck_masks)
        return levels

    def _bottleneck(self, deep: torch.Tensor, masks: Optional[Sequence[torch.Tensor]]) -> torch.Tensor:
        """The bottleneck's dropout and transformer on the deepest encoder map (masks replace the dropout)."""
        if masks is None:
            return self.transformer(self.bottleneck_dropout(deep))
        return self.transformer(deep * masks[0][:, :, None, None, None], masks[1:])

    def encoder_levels(self, x: torch.Tensor, presence: torch.Tensor) -> List[torch.Tensor]:
        """The convolutional encoder's output at every level, (B, widths[l], Z/2^l, Y/2^l, X/2^l), the deepest
        before the bottleneck's dropout and transformer: no dropout acts on any of them, so an MC-dropout pass
        computes the same maps as a plain one. The multi-task classifier reads the last three
        (models/multitask.py)."""
        divisor = self.config.divisor
        if any(n % divisor for n in x.shape[2:]):
            raise ValueError(f"spatial size {tuple(x.shape[2:])} must be divisible by {divisor}")
        features = self.stem(x, presence)
        levels: List[torch.Tensor] = []
        for level, block in enumerate(self.encoder):
            if level > 0:
                features = self.down[level - 1](features)
            features = block(features)
            levels.append(features)
        return levels

    def dropout_mask_shapes(self, spatial_zyx: Sequence[int]) -> List[Tuple[int, ...]]:
        """Per-sample shapes of ``forward``'s ``dropout_masks`` (see :func:`network_config.dropout_mask_shapes`)."""
        return dropout_mask_shapes(self.config, spatial_zyx)

    def forward(self, x: torch.Tensor, presence: torch.Tensor,
                dropout_masks: Optional[Sequence[torch.Tensor]] = None) -> torch.Tensor:
        """Logits (B, 4, Z, Y, X) of x (B, 4, Z, Y, X) and presence (B, 4).

        dropout_masks: one tensor per entry of :meth:`dropout_mask_shapes` (with the batch axis first; any shape that
        broadcasts, e.g. all ones of shape (1, 1)), 0 for a dropped unit, else 1 / (1 - dropout). When given they
        replace every dropout layer, so an MC-dropout pass is a plain function of its inputs: the same in torch and
        in the exported ONNX graph, reproducible from the masks' random generator.
        """
        return self._logits_and_levels(x, presence, dropout_masks)[0]

    def forward_with_features(self, x: torch.Tensor, presence: torch.Tensor,
                              dropout_masks: Optional[Sequence[torch.Tensor]] = None,
                              ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits, fine, level, deep): :meth:`forward`'s logits and the encoder's last three maps
        (:meth:`encoder_levels`; fine (B, widths[-3], Z/2^(L-3), ...), level (B, widths[-2], ...), deep
        (B, widths[-1], ...)), which no dropout touches. Needs at least three levels."""
        if len(self.encoder) < 3:
            raise ValueError(f"the encoder has {len(self.encoder)} levels; its maps for the multi-task heads need 3")
        logits, levels = self._logits_and_levels(x, presence, dropout_masks)
        return logits, levels[-3], levels[-2], levels[-1]

    def _logits_and_levels(self, x: torch.Tensor, presence: torch.Tensor,
                           dropout_masks: Optional[Sequence[torch.Tensor]]) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """(logits, the encoder's maps of the last three levels, as :meth:`encoder_levels` returns them)."""
        decoders = len(self.decoder)
        masks = list(dropout_masks) if dropout_masks is not None else None
        skips = self.encoder_levels(x, presence)
        kept = skips[-3:]  # not the full-resolution map, which goes once its decoder block has read it
        features = self._bottleneck(skips.pop(), None if masks is None else masks[:-decoders])
        for index, (reduce, block) in enumerate(zip(self.reduce, self.decoder)):
            features = F.interpolate(reduce(features), scale_factor=2, mode="trilinear", align_corners=False)
            mask = None if masks is None else masks[len(masks) - decoders + index]
            features = block(features + skips.pop(), mask)
        return self.head(features), kept


def _outputs_with_masks(net: GliomaSegNet, x: torch.Tensor, presence: torch.Tensor, *masks: torch.Tensor):
    """The network with its dropout masks as separate inputs: (logits, fine, level, deep), or logits alone for a
    network of fewer than three levels."""
    if len(net.encoder) < 3:
        return net(x, presence, list(masks))
    return net.forward_with_features(x, presence, list(masks))


def segmentation_parts(model: GliomaSegNet) -> Dict[str, PartSpec]:
    """The one part of the segmentation model (models/onnx_engine.py): inputs x (B, 4, Z, Y, X), presence (B, 4)
    and mask0..maskK (``dropout_mask_shapes``, every axis dynamic so all-ones masks may be (1, ..., 1)); outputs
    logits (B, 4, Z, Y, X) and, for a network of three levels or more, the encoder maps the multi-task classifier
    reads, fine, level and deep (:meth:`GliomaSegNet.forward_with_features`)."""
    import numpy as np

    size = 2 * model.config.divisor
    shapes = model.dropout_mask_shapes((size, size, size))
    names = [f"mask{k}" for k in range(len(shapes))]
    example = (np.zeros((1, 4, size, size, size), np.float32), np.ones((1, 4), np.float32),
               *[np.ones((1, *shape), np.float32) for shape in shapes])
    outputs = ("logits", "fine", "level", "deep") if len(model.encoder) >= 3 else ("logits",)
    dynamic = {"x": {0: "batch", 2: "z", 3: "y", 4: "x"}, "presence": {0: "batch"},
               **{name: {0: "batch", 2: f"{name}_z", 3: f"{name}_y", 4: f"{name}_x"} for name in outputs},
               **{name: {axis: f"{name}_{axis}" for axis in range(len(shape) + 1)} for name, shape in zip(names, shapes)}}
    dynamic["logits"] = {0: "batch", 2: "z", 3: "y", 4: "x"}
    return {"network": PartSpec(model, example, ("x", "presence", *names), outputs, dynamic, _outputs_with_masks)}
