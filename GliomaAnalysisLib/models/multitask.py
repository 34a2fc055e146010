"""Multi-task classifier on the segmentation network's features (seed 001, III.C.3-4 and Fig. A12).

    fine  (1, w[-3], Z/2, Y/2, X/2)  the segmentation encoder's level-1 map of the whole 2 mm working grid (4 mm)
    level (1, w[-2], Z/4, Y/4, X/4)  its level-2 map (8 mm)
    deep  (1, w[-1], Z/8, Y/8, X/8)  its deepest map, before the bottleneck's dropout and transformer (16 mm)
      (from the segmentation pass itself when the segmenting network is the backbone; no dropout acts on them, so a
       quality-mode MC-dropout pass gives the same maps as a plain one; otherwise the backbone's ``encoder`` part
       computes them)
      -> the backbone's transformer over the whole deep map
      -> GAP + GMP of: the level map and the transformed deep map inside the tumor-centred box (128 mm); the whole
         transformed deep map; the fine and level maps over the tumor itself (its voxels on each map)
      -> with ``composition`` (cards since 0.5.0): the segmentation's composition appended (``COMPOSITION``:
         log(1 + enhancing mL) and the enhancing share of the whole tumor of the final volumes, and whether
         enhancement was assessable, i.e. T1CE present)
      -> channel-attention fusion of the vectors (sigmoid gates, then a linear map back to 256)
      -> "Summarize and Separate": a shared summary layer, then one branch per task
      -> logits (B, 2) per task: grade (LGG/HGG), IDH (wildtype/mutant), 1p/19q (intact/codeleted),
         MGMT (unmethylated/methylated)

Until 0.3.0 the classifier encoded a 64^3 crop and the brain at 4 mm a second time (0.46 CPU seconds a case);
reading the segmentation pass's maps costs the transformer alone. Epistemic uncertainty is the standard deviation
of the calibrated probability over MC-dropout passes of the heads (seed 001, eq. 6); calibration is a temperature
per task (from the model card) on the logit difference.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..preprocessing.cropping import pad_to_multiple, tumor_box
from .model_store import ModelError
from .volume_grade import FEATURES as VOLUME_FEATURES, volume_features
from .network_config import NetworkConfig
from .onnx_engine import Part, PartSpec, dropout_mask, torch_parts

TASKS = ("grade", "idh", "codeletion_1p19q", "mgmt")
TASK_LABELS: Dict[str, Tuple[str, str]] = {
    "grade": ("LGG", "HGG"), "idh": ("wildtype", "mutant"),
    "codeletion_1p19q": ("intact", "codeleted"), "mgmt": ("unmethylated", "methylated")}
"""(negative, positive) label of each task; targets are 1 for the positive label."""
MC_SAMPLES = 20
FEATURES = "segmentation encoder maps"
"""The ``features`` field of a card this code can run: the heads read the segmentation encoder's fine, level and
deep maps of the whole working grid."""
MAP_NAMES = ("fine", "level", "deep")
"""The encoder maps the heads read, in the order the segmentation pass and the ``encoder`` part output them."""
MASK_NAMES = ("level_box", "deep_box", "fine_tumor", "level_tumor")
"""The ``features`` part's masks (:func:`feature_masks`)."""
COMPOSITION = (*VOLUME_FEATURES, "et_assessable")
"""What heads with ``composition`` read besides the encoder maps (:func:`composition_from_volumes`)."""


@dataclass
class MultiTaskConfig:
    """Classifier layout (stored in the model card); ``backbone`` is the segmentation network's NetworkConfig."""

    local_crop: Tuple[int, int, int] = (64, 64, 64)
    fused_features: int = 256
    hidden: int = 128
    dropout: float = 0.3
    backbone: Dict = field(default_factory=lambda: NetworkConfig().to_dict())
    features: str = FEATURES
    composition: bool = False
    """The heads also read the segmentation's composition (:func:`composition_features`); cards before 0.5.0 lack
    the field and read the encoder maps alone."""

    def __post_init__(self) -> None:
        self.local_crop = tuple(int(n) for n in self.local_crop)

    def to_dict(self) -> Dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Dict) -> "MultiTaskConfig":
        """The layout of a card's ``network`` block; a card whose classifier encodes image crops itself (before
        0.4.0) is refused with a :class:`ModelError`: its heads cannot read the segmentation encoder's maps."""
        if data.get("features") != FEATURES:
            raise ModelError("multi-task model card: its heads read image crops encoded a second time (cards "
                             "before 0.4.0), not the segmentation encoder's maps; retrain with "
                             "training.multitask.train_multitask")
        return cls(**data)


def encoder_pooled_dim(config: "MultiTaskConfig") -> int:
    """Length of the ``features`` part's vector: GAP + GMP of the level and transformed deep maps in the box, of the
    whole transformed deep map, and of the fine and level maps over the tumor."""
    widths = NetworkConfig.from_dict(config.backbone).widths
    return 2 * (widths[-2] + widths[-1]) + 2 * widths[-1] + 2 * (widths[-3] + widths[-2])


def pooled_dim(config: "MultiTaskConfig") -> int:
    """Length of the vector the heads read: the encoder's pooled features, then the composition when the layout
    has it."""
    return encoder_pooled_dim(config) + (len(COMPOSITION) if config.composition else 0)


def composition_from_volumes(volumes_ml: Mapping[str, Any], et_assessable: bool = True) -> np.ndarray:
    """(1, 3) float32 ``COMPOSITION`` of volumes in mL (keys ``et``, ``wt``): log(1 + enhancing volume) and the
    enhancing share of the whole tumor (0 without tumor), the two numbers the grade-from-volumes model reads, then 1.
    Without T1CE (``et_assessable`` False) the pipeline calls no voxel enhancing: (0, 0, 0), so the heads can tell
    an unknown enhancing volume from an absent one."""
    if not et_assessable:
        return np.zeros((1, len(COMPOSITION)), np.float32)
    features = volume_features({"et": float(volumes_ml["et"] or 0.0), "wt": float(volumes_ml["wt"])})
    return np.append(features, 1.0).astype(np.float32)[None]


def composition_features(labels: np.ndarray, voxel_ml: float, et_assessable: bool = True) -> np.ndarray:
    """:func:`composition_from_volumes` of a label map (Z, Y, X) (contiguous: 3 is enhancing) whose voxels hold
    ``voxel_ml`` mL each."""
    volumes = {"et": float((labels == 3).sum()) * voxel_ml, "wt": float((labels > 0).sum()) * voxel_ml}
    return composition_from_volumes(volumes, et_assessable)


def with_composition(pooled: np.ndarray, config: "MultiTaskConfig", composition: Optional[np.ndarray]) -> np.ndarray:
    """The heads' input (B, ``pooled_dim``): the encoder's pooled features (B, F), then ``composition`` (B, 3) when
    the layout reads it."""
    if not config.composition:
        return pooled
    if composition is None:
        raise ValueError("this multi-task layout reads the segmentation's composition: none was given")
    return np.concatenate([pooled, composition], axis=1)


def feature_masks(labels: np.ndarray, config: MultiTaskConfig, shapes: Sequence[Sequence[int]],
                  box: Optional[Tuple[slice, ...]] = None) -> Dict[str, np.ndarray]:
    """The ``features`` part's masks, float32 (1, 1, *map shape) of 0 and 1, for the fine, level and deep maps of
    ``shapes``: ``level_box`` / ``deep_box`` the map voxels that overlap the tumor-centred ``config.local_crop`` box
    (``box`` overrides it), ``fine_tumor`` / ``level_tumor`` those holding a tumor voxel (the box's where there is no
    tumor). labels (Z, Y, X): on the grid the network saw, which each map divides by an integer stride."""
    box = box or tumor_box(labels, config.local_crop)
    tumor = labels > 0
    out: Dict[str, np.ndarray] = {}
    for name, shape in zip(MAP_NAMES, shapes):
        if len(shape) != 3 or any(n_grid % n_map for n_grid, n_map in zip(labels.shape, shape)):
            raise ValueError(f"labels {labels.shape} are not on the grid of a feature map {tuple(shape)}")
        strides = [n_grid // n_map for n_grid, n_map in zip(labels.shape, shape)]
        in_box = np.zeros((1, 1, *shape), np.float32)
        region = []
        for s, stride, n_map in zip(box, strides, shape):
            lo = min(max(0, s.start // stride), n_map - 1)
            region.append(slice(lo, max(lo + 1, min(n_map, -(-s.stop // stride)))))
        in_box[(0, 0, *region)] = 1
        blocks = tumor.reshape(shape[0], strides[0], shape[1], strides[1], shape[2], strides[2]).any(axis=(1, 3, 5))
        out[f"{name}_box"] = in_box
        out[f"{name}_tumor"] = blocks[None, None].astype(np.float32) if blocks.any() else in_box
    return {name: out[name] for name in MASK_NAMES}


def probability_of_positive(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Calibrated P(positive) from 2-class logits (..., 2): sigmoid((l1 - l0) / T)."""
    return 1.0 / (1.0 + np.exp(-(logits[..., 1] - logits[..., 0]) / temperature))


MULTITASK_PARTS = ("features", "heads")
"""The pooled features of the encoder maps, then the fusion and heads with dropout masks as inputs
(multitask_net.py); ``encoder`` (the backbone's maps of an image) is loaded only for a case another network
segmented (:func:`predict_markers`)."""
ENCODER_PART = "encoder"


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


def marker_features(model_or_parts: Any, card: Dict, image: np.ndarray, presence: np.ndarray, labels: np.ndarray,
                    maps: Optional[Tuple[np.ndarray, ...]] = None,
                    encoder: Optional[Callable[[], Part]] = None) -> Tuple[Mapping[str, Part], MultiTaskConfig,
                                                                           np.ndarray]:
    """(parts, layout, the encoder's pooled features (1, ``encoder_pooled_dim``)) of one case, for
    :func:`markers_from_features`; the arguments are :func:`predict_markers`'."""
    parts: Mapping[str, Part]
    if isinstance(model_or_parts, Mapping):
        parts, config = model_or_parts, MultiTaskConfig.from_dict(card["network"])
    else:
        parts, config = torch_parts(multitask_parts_of(model_or_parts)), model_or_parts.config
        encoder = encoder or (lambda: parts[ENCODER_PART])  # the model's own parts include its encoder
    if maps is None:
        if encoder is None:
            raise ValueError("predict_markers needs the encoder maps or the encoder part")
        divisor = NetworkConfig.from_dict(config.backbone).divisor  # another segmenting network may pad less
        image, labels = pad_to_multiple(image, divisor), pad_to_multiple(labels, divisor)
        maps = tuple(encoder()(x=np.ascontiguousarray(image[None], np.float32),
                               presence=np.asarray(presence, np.float32)[None]))
    masks = feature_masks(labels, config, [m.shape[2:] for m in maps])
    return parts, config, parts["features"](**dict(zip(MAP_NAMES, maps)), **masks)[0]


def markers_from_features(parts: Mapping[str, Part], config: MultiTaskConfig, card: Dict, pooled: np.ndarray,
                          composition: Optional[np.ndarray], mc_samples: int = MC_SAMPLES, seed: int = 0,
                          ) -> Dict[str, Dict]:
    """:func:`predict_markers`' predictions from the pooled features (1, F) of :func:`marker_features` and the
    composition (1, 3) (read only by a layout with ``composition``, which needs it)."""
    temperatures = np.array([float(card.get("calibration", {}).get(task, {}).get("temperature", 1.0))
                             for task in TASKS])
    pooled = with_composition(pooled, config, composition)
    samples = max(1, mc_samples)
    rng = np.random.default_rng(seed) if mc_samples > 1 else None
    dropout = head_masks(config, samples, rng)
    logits = parts["heads"](pooled=np.repeat(pooled, samples, axis=0),
                            **{f"mask{k}": m for k, m in enumerate(dropout)})[0]  # (samples, T, 2)
    values = probability_of_positive(logits.astype(np.float64), temperatures)  # (samples, T)
    out = {}
    for t, task in enumerate(TASKS):
        positive = float(values[:, t].mean())
        label = TASK_LABELS[task][int(positive >= 0.5)]
        out[task] = {"label": label, "probability": round(positive if positive >= 0.5 else 1 - positive, 4),
                     "uncertainty": round(float(values[:, t].std()), 4), "probability_positive": round(positive, 4)}
    return out


def predict_markers(model_or_parts: Any, card: Dict, image: np.ndarray, presence: np.ndarray, labels: np.ndarray,
                    mc_samples: int = MC_SAMPLES, seed: int = 0,
                    maps: Optional[Tuple[np.ndarray, ...]] = None,
                    encoder: Optional[Callable[[], Part]] = None,
                    composition: Optional[np.ndarray] = None, voxel_ml: float = 8e-3) -> Dict[str, Dict]:
    """Predictions per task: ``{label, probability (of that label), uncertainty, probability_positive}``.

    model_or_parts: a MultiTaskNet, or its parts (``MULTITASK_PARTS``, e.g. from ``onnx_engine.load_parts``; the
    layout then comes from ``card["network"]``). image float32 (4, Z, Y, X) working grid; presence (4,); labels
    uint8 (Z, Y, X) (the predicted segmentation, which places the tumor box and masks). maps: the backbone's
    (fine, level, deep) maps of this image (``MAP_NAMES``), from the segmentation pass; without them ``encoder()`` (the
    ``encoder`` part; for a MultiTaskNet its own backbone) computes them. probability is the mean of ``mc_samples``
    MC-dropout passes of the heads over one feature pass (masks from NumPy's generator seeded with ``seed``: reruns
    are identical); uncertainty is their standard deviation (eq. 6). composition (1, 3): what the heads of a layout
    with ``composition`` read (:func:`composition_from_volumes` of the final volumes, as ``analyze`` passes it);
    default: that of ``labels``, whose voxels hold ``voxel_ml`` mL (2 mm: 0.008).
    """
    parts, config, pooled = marker_features(model_or_parts, card, image, presence, labels, maps, encoder)
    if composition is None:
        composition = composition_features(labels, voxel_ml)
    return markers_from_features(parts, config, card, pooled, composition, mc_samples, seed)
