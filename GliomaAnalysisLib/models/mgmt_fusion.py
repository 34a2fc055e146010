"""MGMT promoter methylation from a late-fusion ensemble of per-modality CNN+LSTM models (seed 000).

One model per modality (t1, t1ce, t2, flair), each trained alone:

    axial slices (B, S, C, C) of one modality, a tumor-centred C x C crop (voxels of the 2 mm working grid)
      -> 3x3 convolution 1 -> 3 channels (per slice)
      -> EfficientNet feature extractor (``models/efficientnet.py``, a port of MONAI's ``EfficientNet``, with the b0
         block layout, width / depth coefficients from the config, per-slice normalisation in every block, random
         init: nothing is downloaded) -> (B*S, F)
      -> instance norm of each slice's feature vector (``LayerNorm`` over F: zero mean, unit variance, affine)
      -> dropout -> LSTM over the S slices (any S >= 1; padded batches via ``lengths``) -> last hidden state
      -> dropout -> linear -> logit (B,); probability = sigmoid(logit / T_modality)

The fused probability is the weighted average of the per-modality probabilities, the weights renormalised over the
modalities present. Temperatures T and fusion weights come from the model card (``card["fusion"]``), fitted on
validation predictions by ``training/mgmt/train_mgmt.py``.

Normalisation: the paper normalises each slice independently of the others (instance norm) rather than across the
batch of slices. Inside the extractor this is done by default with one-group GroupNorm ("layer": mean and variance
over all channels and pixels of a slice): per-channel instance norm on the 2x2 maps of the last stages (a 64-pixel
crop is downsampled 32 times) would remove each channel's mean, i.e. most of what global average pooling passes on.
``backbone_norm="instance"`` gives the paper's literal choice.

MC-dropout (seed 001, eq. 6): the dropout layers sit after the feature extractor, so the extractor runs once per
modality and only the LSTM head is sampled, all samples in one batched call whose dropout masks are inputs drawn by
NumPy; ``uncertainty`` is the standard deviation of the fused probability over the stochastic passes. The reported
probabilities are those of the deterministic (dropout off) pass.

This module needs no torch: the torch modules live in ``models/mgmt_fusion_net.py``, and the prediction runs the
ensemble as parts (``models/onnx_engine.py``), two per modality m: ``features_<m>`` (slices (1, S, C, C) ->
features (1, S, F)) and ``head_<m>`` (features, mask_in (B, S, F), mask_out (B, H) -> logits (B,)), as ONNX Runtime
sessions of a stored model or torch for a model in memory.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import GliomaAnalysisError
from ..io.modalities import MODALITIES
from .onnx_engine import Part, PartSpec, dropout_mask

if TYPE_CHECKING:
    from .mgmt_fusion_net import MGMTFusionEnsemble

DEFAULT_MODEL_NAME = "mgmt_fusion"
_NORMS = {"layer": ("group", {"num_groups": 1}), "instance": ("instance", {"affine": True}),
          "batch": ("batch", {"eps": 1e-3, "momentum": 0.01})}


class MGMTFusionError(GliomaAnalysisError):
    """The MGMT ensemble cannot run on this input (e.g. no modality present)."""


@dataclass
class MGMTFusionConfig:
    """Architecture and slice selection of the ensemble (stored in the model card as ``network``).

    crop_size: in-plane crop, voxels of the 2 mm grid (64 = 128 mm). max_slices: most axial slices fed to an LSTM at
    inference. width/depth_coefficient: EfficientNet scaling (b0 = 1.0 / 1.0). feature_dim: size of the per-slice
    feature vector. lstm_hidden / lstm_layers: the sequence model. dropout: before the LSTM and before the linear
    layer (MC-dropout). drop_connect: EfficientNet stochastic depth during training. backbone_norm: "layer"
    (GroupNorm with one group, default), "instance" or "batch".
    """

    modalities: Tuple[str, ...] = MODALITIES
    crop_size: int = 64
    max_slices: int = 12
    width_coefficient: float = 0.5
    depth_coefficient: float = 0.5
    feature_dim: int = 64
    lstm_hidden: int = 64
    lstm_layers: int = 1
    dropout: float = 0.2
    drop_connect: float = 0.1
    backbone_norm: str = "layer"

    def __post_init__(self) -> None:
        self.modalities = tuple(str(m) for m in self.modalities)
        unknown = [m for m in self.modalities if m not in MODALITIES]
        if unknown or not self.modalities:
            raise ValueError(f"modalities must be a non-empty subset of {MODALITIES}, got {self.modalities}")
        if self.crop_size < 32 or self.max_slices < 1:
            raise ValueError("crop_size must be >= 32 voxels and max_slices >= 1")
        if self.backbone_norm not in _NORMS:
            raise ValueError(f"backbone_norm must be one of {sorted(_NORMS)}, got {self.backbone_norm!r}")

    def to_dict(self) -> Dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping) -> "MGMTFusionConfig":
        return cls(**dict(data))


# ----------------------------------------------------------------------------------------------------------------
# Slice selection


@dataclass
class SliceSelection:
    """Crops fed to the models: ``crops`` float32 (4, S, C, C) in MODALITIES order, ``z`` (S,) the axial indices
    (array axis 0), ``centre`` the in-plane (y, x) crop centre in voxels, ``source`` "tumor" or "brain_centre"
    (no tumor voxel in the label map: the brain's central slices are used instead)."""

    crops: np.ndarray
    z: np.ndarray
    centre: Tuple[int, int]
    source: str


def _even_subsample(indices: np.ndarray, max_slices: Optional[int]) -> np.ndarray:
    """At most ``max_slices`` of ``indices`` (sorted), evenly spread and including both ends."""
    if max_slices is None or len(indices) <= max_slices:
        return indices
    picks = np.round(np.linspace(0, len(indices) - 1, max_slices)).astype(int)
    return indices[picks]


def crop_slices(volume: np.ndarray, z: Sequence[int], centre: Tuple[int, int], size: int) -> np.ndarray:
    """``size`` x ``size`` in-plane crops of ``volume`` (Z, Y, X) at axial indices ``z``, centred on ``centre``
    (y, x); zero-padded (the background of a z-scored image) where the crop leaves the volume -> (S, size, size)."""
    _, ny, nx = volume.shape
    out = np.zeros((len(z), size, size), dtype=np.float32)
    y0, x0 = int(centre[0]) - size // 2, int(centre[1]) - size // 2
    ys, xs = slice(max(0, y0), min(ny, y0 + size)), slice(max(0, x0), min(nx, x0 + size))
    if ys.start < ys.stop and xs.start < xs.stop:
        out[:, ys.start - y0:ys.stop - y0, xs.start - x0:xs.stop - x0] = volume[np.asarray(z, dtype=int)][:, ys, xs]
    return out


def select_slices(image: np.ndarray, labels: np.ndarray, config: MGMTFusionConfig,
                  max_slices: Optional[int] = -1) -> SliceSelection:
    """Axial slices spanned by the tumor (labels > 0), evenly subsampled to ``max_slices`` (default
    ``config.max_slices``; None keeps all), cropped around the tumor's in-plane centre of mass.

    Without tumor voxels: the ``max_slices`` central axial slices of the brain (non-zero voxels of any channel), cropped
    around the brain's centre, ``source="brain_centre"``. image (4, Z, Y, X), labels (Z, Y, X).
    """
    if image.ndim != 4 or image.shape[1:] != labels.shape:
        raise MGMTFusionError(f"image {image.shape} and labels {labels.shape} do not match: need (4, Z, Y, X) "
                              "and (Z, Y, X)")
    limit = config.max_slices if max_slices == -1 else max_slices
    tumor = np.argwhere(labels > 0)
    if len(tumor):
        z = _even_subsample(np.arange(tumor[:, 0].min(), tumor[:, 0].max() + 1), limit)
        centre = tumor[:, 1:].mean(axis=0)
        source = "tumor"
    else:
        brain = np.argwhere(np.any(image != 0, axis=0))
        if not len(brain):
            brain = np.argwhere(np.ones(labels.shape, dtype=bool))
        n = labels.shape[0] if limit is None else min(limit, labels.shape[0])
        start = int(np.clip(round(brain[:, 0].mean()) - n // 2, 0, labels.shape[0] - n))
        z = np.arange(start, start + n)
        centre = brain[:, 1:].mean(axis=0)
        source = "brain_centre"
    centre_yx = (int(round(centre[0])), int(round(centre[1])))
    crops = np.stack([crop_slices(image[c], z, centre_yx, config.crop_size) for c in range(image.shape[0])])
    return SliceSelection(crops, z, centre_yx, source)


# ----------------------------------------------------------------------------------------------------------------
# Fusion


def fuse_probabilities(probabilities: Mapping[str, Optional[float]],
                       weights: Mapping[str, float]) -> Tuple[float, Dict[str, float]]:
    """Weighted average of the present (non-None) per-modality probabilities.

    Returns (fused, renormalised weights for every key of ``probabilities``: 0 for absent ones, summing to 1).
    Non-positive total weight over the present modalities falls back to equal weights. Raises
    :class:`MGMTFusionError` when no modality is present.
    """
    present = [m for m, p in probabilities.items() if p is not None]
    if not present:
        raise MGMTFusionError("MGMT late fusion: no modality present (need at least one of "
                              f"{', '.join(probabilities) or ', '.join(MODALITIES)})")
    raw = {m: max(0.0, float(weights.get(m, 0.0))) for m in present}
    total = sum(raw.values())
    share = {m: (raw[m] / total if total > 0 else 1.0 / len(present)) for m in present}
    renormalised = {m: share.get(m, 0.0) for m in probabilities}
    fused = float(sum(share[m] * float(probabilities[m]) for m in present))
    return fused, renormalised


def _temperatures(card: Mapping, modalities: Sequence[str]) -> Dict[str, float]:
    stored = card.get("fusion", {}).get("temperatures", {})
    return {m: float(stored.get(m, 1.0)) for m in modalities}


def _weights(card: Mapping, modalities: Sequence[str]) -> Dict[str, float]:
    stored = card.get("fusion", {}).get("weights", {})
    return {m: float(stored.get(m, 1.0)) for m in modalities}


# ----------------------------------------------------------------------------------------------------------------
# Prediction


def mgmt_parts(card: Mapping) -> Tuple[str, ...]:
    """Part names of the ensemble a model card's ``network`` entry describes: ``features_<m>``, ``head_<m>`` for each
    of its modalities m."""
    return tuple(f"{kind}_{m}" for m in MGMTFusionConfig.from_dict(card["network"]).modalities
                 for kind in ("features", "head"))


MGMT_PARTS: Tuple[str, ...] = mgmt_parts({"network": MGMTFusionConfig().to_dict()})
"""The parts of an ensemble of all four modalities (the default config)."""


def mgmt_parts_of(model: "MGMTFusionEnsemble") -> Dict[str, PartSpec]:
    """The parts of an MGMTFusionEnsemble (imports torch: only called to export a graph or for a model in memory)."""
    from .mgmt_fusion_net import mgmt_fusion_parts

    return mgmt_fusion_parts(model)


def build_from_card(card: Mapping) -> "MGMTFusionEnsemble":
    """Model-store builder: the (untrained) ensemble a model card describes (imports torch)."""
    from .mgmt_fusion_net import build_from_card as build

    return build(card)


def load_mgmt_fusion(folder: Optional[Union[str, "os.PathLike[str]"]] = None,
                     name: str = DEFAULT_MODEL_NAME) -> Tuple["MGMTFusionEnsemble", Dict]:
    """(ensemble in eval mode, card) of the stored model, sha256 checked (imports torch; see
    ``mgmt_fusion_net.load_mgmt_fusion``)."""
    from .mgmt_fusion_net import load_mgmt_fusion as load

    return load(folder, name)


def dropout_masks(config: MGMTFusionConfig, samples: int, n_slices: int,
                  rng: Optional[np.random.Generator]) -> Tuple[np.ndarray, np.ndarray]:
    """(mask_in (samples, S, F), mask_out (samples, H)) float32 for a head part: with ``rng`` each unit is dropped
    with the config's dropout probability p and the others scaled by 1 / (1 - p), as torch's dropout in training
    mode; without, all ones (dropout off)."""
    shapes = ((samples, n_slices, config.feature_dim), (samples, config.lstm_hidden))
    return tuple(dropout_mask(rng, shape, config.dropout) for shape in shapes)


def _probability(logits: np.ndarray, temperature: float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(logits, np.float64) / temperature))


def predict_mgmt_fusion(model_or_parts: Any, card: Mapping, image: np.ndarray, presence: np.ndarray,
                        labels: np.ndarray, mc_samples: int = 16, seed: int = 0,
                        weights: Optional[Mapping[str, float]] = None) -> Dict:
    """MGMT methylation probability of one case from the late-fusion ensemble.

    model_or_parts: an MGMTFusionEnsemble (run by torch), or its parts (``mgmt_parts(card)``, e.g. from
    ``onnx_engine.load_parts``; the config then comes from ``card["network"]``). image float32 (4, Z, Y, X) z-scored
    on the 2 mm working grid in MODALITIES order; presence (4,) of 0/1; labels uint8 (Z, Y, X) contiguous (0 bg,
    1 NCR, 2 ED, 3 ET), the predicted segmentation. ``weights`` overrides the card's fusion weights. Returns::

        {"per_modality": {"t1": p | None, ...}, "weights": {"t1": w, ...} (renormalised over present, 0 absent),
         "fused": p, "uncertainty": std of the fused probability over ``mc_samples`` MC-dropout passes (0 if none),
         "temperatures": {...}, "n_slices": S, "slices_from": "tumor" | "brain_centre", "mc_samples": M}

    The MC-dropout masks come from NumPy's generator seeded with ``seed``: reruns are identical (no global random
    state is used). Raises MGMTFusionError when no modality the ensemble knows is present.
    """
    parts: Mapping[str, Part]
    if isinstance(model_or_parts, Mapping):
        parts, config = model_or_parts, MGMTFusionConfig.from_dict(card["network"])
    else:
        from .onnx_engine import torch_parts

        parts, config = torch_parts(mgmt_parts_of(model_or_parts)), model_or_parts.config
    presence = np.asarray(presence, dtype=np.float32).reshape(-1)
    if presence.shape != (len(MODALITIES),):
        raise MGMTFusionError(f"presence must have {len(MODALITIES)} entries, got {presence.shape}")
    present = [m for i, m in enumerate(MODALITIES) if presence[i] > 0.5 and m in config.modalities]
    if not present:
        raise MGMTFusionError("MGMT late fusion: no modality present (need at least one of "
                              f"{', '.join(config.modalities)})")
    selection = select_slices(np.asarray(image, dtype=np.float32), np.asarray(labels), config)
    n_slices = len(selection.z)
    temperatures = _temperatures(card, config.modalities)
    fusion_weights = dict(weights) if weights is not None else _weights(card, config.modalities)

    features: Dict[str, np.ndarray] = {}
    probabilities: Dict[str, Optional[float]] = {m: None for m in MODALITIES}
    for m in present:
        features[m] = parts[f"features_{m}"](slices=selection.crops[MODALITIES.index(m)][None])[0]
        mask_in, mask_out = dropout_masks(config, 1, n_slices, None)
        logit = parts[f"head_{m}"](features=features[m], mask_in=mask_in, mask_out=mask_out)[0]
        probabilities[m] = float(_probability(logit, temperatures[m])[0])
    fused, renormalised = fuse_probabilities(probabilities, fusion_weights)

    uncertainty = 0.0
    if mc_samples > 0:
        rng = np.random.default_rng(seed)
        samples = np.zeros(mc_samples)
        for m in present:
            mask_in, mask_out = dropout_masks(config, mc_samples, n_slices, rng)
            logits = parts[f"head_{m}"](features=np.repeat(features[m], mc_samples, axis=0), mask_in=mask_in,
                                        mask_out=mask_out)[0]
            samples += renormalised[m] * _probability(logits, temperatures[m])
        uncertainty = float(np.std(samples))
    return {
        "per_modality": probabilities,
        "weights": renormalised,
        "fused": fused,
        "uncertainty": uncertainty,
        "temperatures": {m: temperatures[m] for m in present},
        "n_slices": int(n_slices),
        "slices_from": selection.source,
        "mc_samples": int(mc_samples),
    }
