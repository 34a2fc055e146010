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
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np

from ..preprocessing.cropping import crop_padded, pad_to_multiple, tumor_box
from .network_config import NetworkConfig
from .onnx_engine import Part, PartSpec, dropout_mask, torch_parts

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


def probability_of_positive(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Calibrated P(positive) from 2-class logits (..., 2): sigmoid((l1 - l0) / T)."""
    return 1.0 / (1.0 + np.exp(-(logits[..., 1] - logits[..., 0]) / temperature))


MULTITASK_PARTS = ("features", "heads")
"""The backbone's pooled features, then the fusion and heads with dropout masks as inputs (multitask_net.py)."""


def multitask_parts_of(model) -> Dict[str, PartSpec]:
    """The parts of a MultiTaskNet (imports torch: only called to export a graph or for a model in memory)."""
    from .multitask_net import multitask_parts

    return multitask_parts(model)


def build_multitask(card: Dict):
    """Model-store builder: the MultiTaskNet described by a multi-task model card (imports torch)."""
    from .multitask_net import build_multitask as build

    return build(card)


def head_masks(config: MultiTaskConfig, samples: int, rng: Optional[np.random.Generator]) -> list:
    """Dropout masks of the heads for ``samples`` rows: the summary's (samples, hidden), then each task's
    (samples, hidden // 2); with ``rng`` inverted dropout (0 or 1 / (1 - p)), else all ones."""
    shapes = [(samples, config.hidden)] + [(samples, config.hidden // 2)] * len(TASKS)
    return [dropout_mask(rng, shape, config.dropout) for shape in shapes]


def predict_markers(model_or_parts: Any, card: Dict, image: np.ndarray, presence: np.ndarray, labels: np.ndarray,
                    mc_samples: int = MC_SAMPLES, seed: int = 0) -> Dict[str, Dict]:
    """Predictions per task: ``{label, probability (of that label), uncertainty, probability_positive}``.

    model_or_parts: a MultiTaskNet, or its parts (``MULTITASK_PARTS``, e.g. from ``onnx_engine.load_parts``; the
    layout then comes from ``card["network"]``). image float32 (4, Z, Y, X) working grid; presence (4,); labels
    uint8 (Z, Y, X) (the predicted segmentation). probability is the mean of ``mc_samples`` MC-dropout passes of
    the heads over one backbone pass (masks from NumPy's generator seeded with ``seed``: reruns are identical);
    uncertainty is their standard deviation (eq. 6).
    """
    parts: Mapping[str, Part]
    if isinstance(model_or_parts, Mapping):
        parts, config = model_or_parts, MultiTaskConfig.from_dict(card["network"])
    else:
        parts, config = torch_parts(multitask_parts_of(model_or_parts)), model_or_parts.config
    divisor = NetworkConfig.from_dict(config.backbone).divisor
    local, global_ = network_inputs(image, labels, config, divisor)
    temperatures = np.array([float(card.get("calibration", {}).get(task, {}).get("temperature", 1.0))
                             for task in TASKS])
    pooled = parts["features"](**{"local": local[None], "global": global_[None],
                                  "presence": np.asarray(presence, np.float32)[None]})[0]
    samples = max(1, mc_samples)
    rng = np.random.default_rng(seed) if mc_samples > 1 else None
    masks = head_masks(config, samples, rng)
    logits = parts["heads"](pooled=np.repeat(pooled, samples, axis=0),
                            **{f"mask{k}": m for k, m in enumerate(masks)})[0]  # (samples, T, 2)
    values = probability_of_positive(logits.astype(np.float64), temperatures)  # (samples, T)
    out = {}
    for t, task in enumerate(TASKS):
        positive = float(values[:, t].mean())
        label = TASK_LABELS[task][int(positive >= 0.5)]
        out[task] = {"label": label, "probability": round(positive if positive >= 0.5 else 1 - positive, 4),
                     "uncertainty": round(float(values[:, t].std()), 4), "probability_positive": round(positive, 4)}
    return out
