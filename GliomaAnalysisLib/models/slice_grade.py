"""Slice-based grade classifier (seed 002): a 2D CNN on stacked T1CE/T2/FLAIR axial slices through the tumor,
aggregated to one patient-level probability of high grade (HGG).

    image (4, Z, Y, X) z-scored working grid (2 mm), channels in ``MODALITIES`` order; labels (Z, Y, X), tumor > 0
      -> axial slices = axis 0 (Z) whose tumor area >= ``min_tumor_voxels`` (else every slice with tumor),
         at most ``max_slices`` of them, evenly spaced over that range
      -> per slice: T1CE, T2, FLAIR, a ``crop`` x ``crop`` in-plane box centred on the tumor's centre of mass
         (zero outside the volume), min-max scaled to [0, 1] per slice and channel over the brain pixels (0 outside)
      -> CNN backbone -> GAP -> Dense 128 ReLU -> Dropout 0.5 -> 1 logit per slice
      -> temperature (model card) -> sigmoid = P(HGG) per slice
      -> majority vote (tie -> HGG) | soft vote (mean) | attention fusion (softmax of the probabilities as weights)

A tumor-centred crop at a fixed physical size (128 mm at 2 mm voxels) rather than the whole brain slice resized:
the working grid is already isotropic, so every pixel has the same physical size in every case and the tumor fills
the input instead of a few percent of a resized brain; no interpolation is needed at inference.

The network (slice_grade_net.py, torch) runs as two parts (``SLICE_GRADE_PARTS``): ``features`` (the backbone and
GAP) and ``head``, whose dropout mask is an input; MC-dropout masks are drawn by NumPy, so the prediction runs on
ONNX Runtime parts (``onnx_engine.load_parts``) or on a torch model alike.

Missing T1CE, T2 or FLAIR: the channel is set to zero (what the network saw in training under channel dropout)
and a warning is returned; all three missing: no prediction (probabilities None and a reason). Nothing here
imports torch, slicer, qt or the ``training`` package.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .calibration import apply_temperature
from ..io.modalities import MODALITIES
from .onnx_engine import Part, PartSpec, dropout_mask, torch_parts

if TYPE_CHECKING:
    from .slice_grade_net import SliceGradeNet

SLICE_GRADE_MODEL = "slice_grade"
SLICE_CHANNELS = ("t1ce", "t2", "flair")
CHANNEL_INDEX = tuple(MODALITIES.index(m) for m in SLICE_CHANNELS)
"""Indices of T1CE, T2 and FLAIR in the (4, Z, Y, X) working-grid image."""
AGGREGATIONS = ("majority", "soft", "attention")
DEFAULT_AGGREGATION = "attention"
LABELS = ("LGG", "HGG")
MC_SAMPLES = 20
MC_SEED = 20240
SLICE_GRADE_PARTS = ("features", "head")
"""The backbone's pooled features, then the head with its dropout mask as an input (slice_grade_net.py)."""


@dataclass
class SliceGradeConfig:
    """Network and slice-selection settings (stored in the model card's ``network`` entry).

    backbone: "small_cnn" (default, ~0.1 M parameters) or "efficientnet" (MONAI's EfficientNet as ported in
    ``efficientnet.py``: B0 block layout with ``efficientnet_width`` / ``efficientnet_depth`` coefficients, random
    init). crop: in-plane box in voxels of the
    working grid (64 at 2 mm = 128 mm). max_slices: slices per patient at most. min_tumor_voxels: tumor pixels a
    slice needs to count (at 2 mm, 10 voxels = 40 mm^2).
    """

    backbone: str = "small_cnn"
    widths: Tuple[int, ...] = (16, 32, 64, 96)
    efficientnet_width: float = 0.25
    efficientnet_depth: float = 0.35
    hidden: int = 128
    dropout: float = 0.5
    crop: int = 64
    max_slices: int = 24
    min_tumor_voxels: int = 10

    def __post_init__(self) -> None:
        self.widths = tuple(int(w) for w in self.widths)
        if self.backbone not in ("small_cnn", "efficientnet"):
            raise ValueError(f"unknown backbone {self.backbone!r}; choose small_cnn or efficientnet")

    def to_dict(self) -> Dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "SliceGradeConfig":
        return cls(**data)


def build_slice_grade(card: Dict[str, Any]) -> "SliceGradeNet":
    """Model-store builder: the network described by a model card's ``network`` entry (imports torch)."""
    from .slice_grade_net import build_slice_grade as build

    return build(card)


def load_slice_grade(folder: Optional[str] = None) -> Tuple["SliceGradeNet", Dict[str, Any]]:
    """The stored slice-grade model (bundled ``Resources/models`` by default) in eval mode, and its card; the
    weights' sha256 is checked against the card (``ModelError`` otherwise). Imports torch."""
    from .slice_grade_net import load_slice_grade as load

    return load(folder)


def slice_grade_parts_of(model: "SliceGradeNet") -> Dict[str, PartSpec]:
    """The parts of a SliceGradeNet (imports torch: only called to export a graph or for a model in memory)."""
    from .slice_grade_net import slice_grade_parts

    return slice_grade_parts(model)


# ----------------------------------------------------------------------------------------------- slice preparation

def select_slices(labels: np.ndarray, max_slices: int, min_tumor_voxels: int = 1) -> np.ndarray:
    """Axial (axis 0) indices of the slices to classify, ascending int64 (N,).

    Slices with at least ``min_tumor_voxels`` tumor voxels (labels > 0); when none has that many, every slice with
    any tumor; none: empty. More than ``max_slices``: evenly spaced over the candidates (first and last kept).
    """
    area = (np.asarray(labels) > 0).reshape(labels.shape[0], -1).sum(axis=1)
    candidates = np.flatnonzero(area >= max(1, min_tumor_voxels))
    if len(candidates) == 0:
        candidates = np.flatnonzero(area > 0)
    if len(candidates) > max_slices > 0:
        candidates = candidates[np.round(np.linspace(0, len(candidates) - 1, max_slices)).astype(int)]
    return candidates.astype(np.int64)


def centred_crop(array: np.ndarray, centre_yx: Sequence[float], size: int) -> np.ndarray:
    """``size`` x ``size`` box of the last two axes of ``array`` centred on ``centre_yx`` (voxels), zero outside
    the array; shape (..., size, size), dtype of ``array``."""
    out = np.zeros(array.shape[:-2] + (size, size), dtype=array.dtype)
    starts = [int(round(c)) - size // 2 for c in centre_yx]
    src, dst = [], []
    for start, n in zip(starts, array.shape[-2:]):
        lo, hi = max(0, start), min(n, start + size)
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - start, hi - start))
    out[(..., dst[0], dst[1])] = array[(..., src[0], src[1])]
    return out


def minmax_normalise(slices: np.ndarray, brain: Optional[np.ndarray] = None) -> np.ndarray:
    """Min-max scaling to [0, 1] per slice and channel: ``slices`` (N, C, H, W), ``brain`` bool (N, H, W) or None
    (all pixels). Min and max are taken over the brain pixels; pixels outside the brain become 0, as does a slice
    channel without contrast (max == min). float32, same shape."""
    x = np.asarray(slices, dtype=np.float32)
    mask = np.ones((x.shape[0],) + x.shape[2:], dtype=bool) if brain is None else np.asarray(brain, dtype=bool)
    m = np.broadcast_to(mask[:, None], x.shape)
    low = np.where(m, x, np.inf).min(axis=(2, 3), keepdims=True)
    high = np.where(m, x, -np.inf).max(axis=(2, 3), keepdims=True)
    span = high - low
    valid = np.isfinite(span) & (span > 0)
    scaled = (x - np.where(valid, low, 0)) / np.where(valid, span, 1)
    return np.where(m & valid, scaled, 0).astype(np.float32)


def tumor_centre_yx(labels: np.ndarray) -> np.ndarray:
    """In-plane centre of mass (Y, X voxels) of the whole tumor (labels > 0); the slice centre when none."""
    tumor = np.argwhere(np.asarray(labels) > 0)
    return tumor[:, 1:].mean(axis=0) if len(tumor) else (np.array(labels.shape[1:], dtype=float) - 1) / 2


def slice_stack(image: np.ndarray, labels: np.ndarray, z: np.ndarray, crop: int,
                centre_yx: Optional[Sequence[float]] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Raw (z-scored) T1CE/T2/FLAIR crops float32 (N, 3, crop, crop) and the brain mask bool (N, crop, crop) of
    slices ``z``; the brain is where any of the four channels is non-zero (z-scoring leaves 0 outside it)."""
    centre = tumor_centre_yx(labels) if centre_yx is None else centre_yx
    selected = np.asarray(image, dtype=np.float32)[:, z]  # (4, N, Y, X)
    brain = centred_crop(np.any(selected != 0, axis=0), centre, crop)
    raw = centred_crop(selected[list(CHANNEL_INDEX)], centre, crop).transpose(1, 0, 2, 3)
    return np.ascontiguousarray(raw), brain


def prepare_slices(image: np.ndarray, presence: np.ndarray, labels: np.ndarray,
                   config: SliceGradeConfig) -> Tuple[np.ndarray, np.ndarray]:
    """Network input float32 (N, 3, crop, crop) in [0, 1] and the slice indices int64 (N,); missing channels
    (``presence`` (4,) == 0) are zero."""
    z = select_slices(labels, config.max_slices, config.min_tumor_voxels)
    if len(z) == 0:
        return np.zeros((0, 3, config.crop, config.crop), dtype=np.float32), z
    raw, brain = slice_stack(image, labels, z, config.crop)
    slices = minmax_normalise(raw, brain)
    for k, channel in enumerate(CHANNEL_INDEX):
        if not presence[channel]:
            slices[:, k] = 0.0
    return slices, z


# ----------------------------------------------------------------------------------------------------- aggregation

def _probabilities(p: Sequence[float]) -> np.ndarray:
    p = np.asarray(p, dtype=np.float64).reshape(-1)
    if p.size == 0:
        raise ValueError("no slice probabilities to aggregate")
    return p


def majority_vote(probabilities: Sequence[float], threshold: float = 0.5) -> float:
    """Fraction of slices voting HGG (P >= ``threshold``); the patient is HGG when it is >= 0.5 (a tie -> HGG)."""
    return float(np.mean(_probabilities(probabilities) >= threshold))


def soft_vote(probabilities: Sequence[float]) -> float:
    """Mean slice probability of HGG."""
    return float(np.mean(_probabilities(probabilities)))


def attention_weights(probabilities: Sequence[float]) -> np.ndarray:
    """Softmax over the slice probabilities, alpha_i = exp(p_i) / sum_j exp(p_j) (seed 002), float64 (N,)."""
    p = _probabilities(probabilities)
    e = np.exp(p - p.max())
    return e / e.sum()


def attention_fusion(probabilities: Sequence[float]) -> float:
    """Attention-weighted probability sum_i alpha_i p_i (weights from :func:`attention_weights`)."""
    p = _probabilities(probabilities)
    return float(np.dot(attention_weights(p), p))


def label_of(probability: Optional[float], threshold: float = 0.5) -> Optional[str]:
    """"HGG" at or above ``threshold`` (so a majority tie is HGG), "LGG" below, None for None."""
    return None if probability is None else LABELS[int(probability >= threshold)]


def aggregate(probabilities: Sequence[float]) -> Dict[str, Optional[float]]:
    """Patient-level P(HGG) of each aggregation (majority: fraction of HGG votes); None each for no slices."""
    if len(np.asarray(probabilities).reshape(-1)) == 0:
        return {name: None for name in AGGREGATIONS}
    return {"majority": majority_vote(probabilities), "soft": soft_vote(probabilities),
            "attention": attention_fusion(probabilities)}


# ------------------------------------------------------------------------------------------------------- inference

def _mc_masks(samples: int, n: int, hidden: int, rate: float) -> np.ndarray:
    """Inverted-dropout masks float32 (samples, n, hidden) from NumPy's generator seeded with ``MC_SEED``: 0 for a
    dropped unit (probability ``rate``), else 1 / (1 - rate); the same masks for the same case every run."""
    return dropout_mask(np.random.default_rng(MC_SEED), (samples, n, hidden), rate)


def empty_result(reason: str, warnings: Optional[List[str]] = None) -> Dict[str, Any]:
    """The result when no slice could be classified: n_slices 0, every probability and label None."""
    return {**{name: None for name in AGGREGATIONS}, "n_slices": 0,
            "labels": {name: None for name in AGGREGATIONS}, "default": DEFAULT_AGGREGATION, "label": None,
            "probability": None, "uncertainty": None, "slices": [], "slice_probabilities": [],
            "reason": reason, "warnings": list(warnings or [])}


def _parts_and_config(model_or_parts: Union["SliceGradeNet", Mapping[str, Part]],
                      config: Optional[SliceGradeConfig]) -> Tuple[Mapping[str, Part], SliceGradeConfig]:
    """A SliceGradeNet's parts (run by torch) and config, or the given parts and ``config``."""
    if not isinstance(model_or_parts, Mapping):
        return torch_parts(slice_grade_parts_of(model_or_parts)), model_or_parts.config
    if config is None:
        raise ValueError("slice-grade parts need the network's SliceGradeConfig (the model card's network entry)")
    return model_or_parts, config


def slice_probabilities(model_or_parts: Union["SliceGradeNet", Mapping[str, Part]], slices: np.ndarray,
                        temperature: float = 1.0, mc_samples: int = 0, config: Optional[SliceGradeConfig] = None
                        ) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Calibrated P(HGG) per slice float64 (N,) from ``slices`` (N, 3, crop, crop); with ``mc_samples`` > 0 also
    (mc_samples, N) MC-dropout probabilities of the head (seeded masks, one head call over mc_samples * N rows).

    model_or_parts: a SliceGradeNet (config: its own), or its parts (``SLICE_GRADE_PARTS``, e.g. from
    ``onnx_engine.load_parts``) with ``config``.
    """
    parts, config = _parts_and_config(model_or_parts, config)
    n, hidden = len(slices), config.hidden
    features = parts["features"](x=slices)[0]  # (N, F)
    plain = parts["head"](features=features, mask=np.ones((n, hidden), np.float32))[0]
    if mc_samples <= 0:
        return apply_temperature(plain, temperature), None
    masks = _mc_masks(mc_samples, n, hidden, config.dropout).reshape(mc_samples * n, hidden)
    sampled = parts["head"](features=np.tile(features, (mc_samples, 1)), mask=masks)[0].reshape(mc_samples, n)
    return apply_temperature(plain, temperature), apply_temperature(sampled, temperature)


def predict_slice_grade(model_or_parts: Union["SliceGradeNet", Mapping[str, Part]], card: Dict[str, Any],
                        image: np.ndarray, presence: np.ndarray, labels: np.ndarray,
                        mc_samples: int = MC_SAMPLES) -> Dict[str, Any]:
    """Patient-level grade from the axial tumor slices of one case.

    model_or_parts: a SliceGradeNet, or its parts (``SLICE_GRADE_PARTS``, e.g. from ``onnx_engine.load_parts``;
    the config then comes from ``card["network"]``). image float32 (4, Z, Y, X) z-scored working grid; presence
    (4,) 1/0 per modality; labels (Z, Y, X) predicted label map (tumor > 0). Returns (report.json ``slice_grade``):

    * ``majority`` (fraction of HGG slice votes), ``soft``, ``attention``: P(HGG) in [0, 1] or None;
    * ``labels``: "HGG"/"LGG" per aggregation (>= 0.5 is HGG, so a majority tie is HGG);
    * ``default`` ("attention"), ``label``, ``probability``: the default aggregation's;
    * ``uncertainty``: standard deviation of the default probability over ``mc_samples`` MC-dropout passes of the
      head (masks from NumPy's generator seeded with ``MC_SEED``: reruns are identical; None with ``mc_samples``
      0: not measured);
    * ``n_slices``, ``slices`` (Z indices), ``slice_probabilities``, ``temperature``, ``reason`` (why there is no
      prediction, else None), ``warnings``.
    """
    network = card.get("network")
    parts, config = _parts_and_config(model_or_parts, None if network is None else SliceGradeConfig.from_dict(network))
    presence = np.asarray(presence)
    missing = [m for m, c in zip(SLICE_CHANNELS, CHANNEL_INDEX) if not presence[c]]
    if len(missing) == len(SLICE_CHANNELS):
        return empty_result("T1CE, T2 and FLAIR are all missing; the slice-grade classifier needs at least one")
    warnings = []
    if missing:
        warnings.append(f"slice grade: {', '.join(missing)} missing, its channel set to zero; "
                        f"the grade estimate is less reliable")
    slices, z = prepare_slices(image, presence, labels, config)
    if len(z) == 0:
        return empty_result("no tumor slice in the segmentation", warnings)
    temperature = float(card.get("calibration", {}).get("temperature", 1.0))
    p, mc = slice_probabilities(parts, slices, temperature, mc_samples, config)
    result = aggregate(p)
    default = result[DEFAULT_AGGREGATION]
    spread = float(np.std([attention_fusion(row) for row in mc])) if mc is not None else None
    return {**result, "n_slices": int(len(z)), "labels": {k: label_of(v) for k, v in result.items()},
            "default": DEFAULT_AGGREGATION, "label": label_of(default), "probability": default,
            "uncertainty": spread, "slices": [int(i) for i in z],
            "slice_probabilities": [round(float(v), 4) for v in p], "temperature": temperature, "reason": None,
            "warnings": warnings}
