"""The segmentation network's layout (stored in its model card) and the shapes of its dropout masks, without torch:
a run whose networks are cached as ONNX graphs needs these but never the torch module (models/network.py)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, List, Sequence, Tuple

N_MODALITIES = 4
N_CLASSES = 4
FUSIONS = ("average", "concat")
T1, T1CE = 0, 1
"""Channels of T1 and T1CE in the network's input (the order of io/modalities.MODALITIES)."""


@dataclass
class NetworkConfig:
    """Width, depth and transformer of the network (stored in the model card)."""

    widths: Tuple[int, ...] = (16, 32, 64, 128)
    encoder_blocks: Tuple[int, ...] = (1, 1, 2, 2)
    transformer_layers: int = 2
    transformer_heads: int = 4
    transformer_mlp_ratio: float = 2.0
    dropout: float = 0.1
    fusion: str = "average"  # "average": one stem per modality, averaged (seed 001); "concat": one stem over all four
    t1ce_difference: bool = False  # "average" only: a fifth stem reads T1CE - T1 (enhancement), averaged in too

    def __post_init__(self) -> None:
        self.widths = tuple(int(w) for w in self.widths)
        self.encoder_blocks = tuple(int(b) for b in self.encoder_blocks)
        if len(self.widths) != len(self.encoder_blocks):
            raise ValueError("widths and encoder_blocks need one entry per level")
        if self.widths[-1] % self.transformer_heads:
            raise ValueError("the deepest width must be divisible by transformer_heads")
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, not {self.fusion!r}")
        if self.t1ce_difference and self.fusion != "average":
            raise ValueError("t1ce_difference needs fusion 'average' (the 'concat' stem already sees T1CE and T1)")

    @property
    def divisor(self) -> int:
        """Every spatial size must be a multiple of this."""
        return 2 ** (len(self.widths) - 1)

    def to_dict(self) -> Dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Dict) -> "NetworkConfig":
        return cls(**data)


TRANSFORMER_MASKS_PER_LAYER = 4
"""Dropout masks of one transformer layer, in order: attention weights (heads, N, N), attention output (N, C), MLP
hidden (N, M), MLP output (N, C); N tokens, C the deepest width, M the MLP width."""


def dropout_mask_shapes(config: NetworkConfig, spatial_zyx: Sequence[int]) -> List[Tuple[int, ...]]:
    """Per-sample shapes of ``GliomaSegNet.forward``'s ``dropout_masks`` for an input of ``spatial_zyx`` voxels, in
    order: the bottleneck's channels, each transformer layer's masks (``TRANSFORMER_MASKS_PER_LAYER``), then the
    channels of each decoder block from the deepest to the finest."""
    widths = config.widths
    tokens = 1
    for n in spatial_zyx:
        tokens *= n // config.divisor
    c, m = widths[-1], int(widths[-1] * config.transformer_mlp_ratio)
    transformer = [(config.transformer_heads, tokens, tokens), (tokens, c), (tokens, m), (tokens, c)]
    return ([(c,)] + transformer * config.transformer_layers
            + [(widths[level],) for level in range(len(widths) - 2, -1, -1)])
