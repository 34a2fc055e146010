"""Modality keys and recognition of modality files (and DICOM series descriptions) by name.

A name is split into lower-case tokens on every separator (``_ - . space ( ) /``). The modality token may stand
anywhere (prefix, middle, suffix), among any number of other tokens (case ids, processing steps such as ``bet``,
``brain``, ``reg``, ``n4``, ``mni``, ``sri24``, scanner words such as ``ax``, ``3d``, ``tse``), e.g.
``BraTS2021_00000_t1ce``, ``BraTS-GLI-00000-000-t2f``, ``<id>_fla_bet``, ``sub-01_ce-gd_T1w``, ``AX T1 POST GD 3mm``.

Names are never inputs when a token marks a label map, mask, probability map or prediction (``seg``, ``mask``,
``label``, ``prob``, ``pred``, ``pve``, ``aseg``, ``tumor``, ...), another contrast (``dwi``, ``adc``, ``swi``,
``t2*``, ``pd``, ...), or when the name names two modalities (``t1_t2_ratio``). :func:`describe_name` says why.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

MODALITIES = ("t1", "t1ce", "t2", "flair")
"""The four modality keys, in channel order."""

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
SEGMENTATION = "seg"
"""Kind of a ground-truth candidate (a tumor label map without a modality in its name)."""
LABEL = "label"
"""Kind of any other label map, mask, probability map or prediction: never an input."""

_MODALITY_TOKENS = {
    "t1": {"t1", "t1n", "t1w", "t1pre", "t1native", "t1nat", "t1weighted", "mprage", "t1mprage", "t1wi"},
    "t1ce": {"t1ce", "t1c", "t1gd", "t1post", "t1wce", "t1wc", "t1wgd", "cet1", "cet1w", "t1km", "t1contrast",
             "t1postcontrast", "t1gad", "t1cgd", "t1plusc", "t1wpost", "t1cm", "postt1", "t1cwi"},
    "t2": {"t2", "t2w", "t2weighted", "t2tse", "t2fse", "t2wtse", "t2wi"},
    "flair": {"flair", "fla", "t2f", "t2flair", "t2wflair", "flairt2", "tirm", "darkfluid", "t2fl"},
}
_TOKEN_MODALITY = {token: modality for modality, tokens in _MODALITY_TOKENS.items() for token in tokens}
_CONTRAST = {"ce", "gd", "gad", "gado", "gadolinium", "contrast", "postcontrast", "post", "km", "cm", "enhanced",
             "gdpost", "postgd", "mdc", "+"}
"""Tokens that make a T1 name post-contrast (anywhere in the name)."""
_ADJACENT_CONTRAST = {"c"}
"""Tokens that make a T1 name post-contrast only right after the T1 token (``T1 C``)."""
_NATIVE = {"pre", "precontrast", "native", "nativ", "noncontrast", "nc"}
_GROUND_TRUTH = {"seg", "segmentation", "segm", "gt", "truth", "groundtruth", "ground", "manual", "annotation",
                 "label", "labels", "labelmap"}
_NOT_GROUND_TRUTH = {
    # masks and other label maps
    "mask", "masks", "brainmask", "brain_mask", "roi", "voi", "aseg", "aparc", "wmparc", "parc", "parcellation",
    "lbl", "tumor", "tumour", "lesion", "lesions", "wt", "tc", "et", "ncr", "ed", "edema", "necrosis", "enhancing",
    "tissue", "csf", "gm", "wm",
    # probability / uncertainty maps
    "prob", "probs", "probability", "probabilities", "probmap", "pmap", "posterior", "posteriors", "pve",
    "pveseg", "softmax", "heatmap", "uncertainty", "entropy", "variance", "logits", "confidence",
    # other tools' predictions
    "pred", "preds", "prediction", "predictions", "predicted", "inference", "output", "result", "results",
    "nnunet", "deepmedic", "hdglio",
}
_OTHER_CONTRASTS = {"dwi", "adc", "swi", "t2star", "pd", "pdw", "dti", "bold", "perf", "perfusion", "asl", "dsc",
                    "dce", "mra", "tof", "localizer", "localiser", "scout", "survey", "fieldmap", "b0", "b1000",
                    "trace", "fa", "md", "cbv", "cbf", "mtt", "subtraction", "mip", "gre", "ktrans",
                    "t1map", "t2map", "map", "mapping", "ratio", "diff", "difference"}
_CONNECTORS = {"to", "in", "on", "into", "space"}
"""``flair_to_t1ce``, ``t2_in_t1_space``: the modality before the connector is the image's own."""
_SEPARATORS = re.compile(r"[\s_\-\.\(\)\[\]/\\,;:=#]+")


@dataclass(frozen=True)
class NameMatch:
    """What a name denotes: ``kind`` is a modality key, ``"seg"``, ``"label"`` or None; ``reason`` says why."""

    kind: Optional[str]
    reason: str


def strip_image_suffix(name: str) -> Optional[str]:
    """Return the file name without its image suffix, or None if it is not an image file name."""
    lower = name.lower()
    for suffix in IMAGE_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return None


def tokens_of(text: str) -> List[str]:
    """Lower-case tokens of a name: ``"AX T1+C (3mm)"`` -> ``['ax', 't1', '+', 'c', '3mm']``."""
    text = text.lower().replace("*", "star")
    text = re.sub(r"\+", " + ", text)
    tokens = [t for t in _SEPARATORS.split(text) if t]
    merged: List[str] = []
    for token in tokens:  # "t1 + c" / "t1c +": keep "+" as its own token; "t2 star" -> "t2star"
        if token == "star" and merged:
            merged[-1] += "star"
        else:
            merged.append(token)
    return merged


def classify_name(path: "str | Path") -> Optional[str]:
    """Classify a file by name: a modality key, ``"seg"`` (ground-truth candidate), ``"label"`` or None.

    >>> classify_name("BraTS-GLI-00000-000-t1c.nii.gz")
    't1ce'
    >>> classify_name("Brats18_2013_11_1_seg.nii.gz")
    'seg'
    >>> classify_name("UPENN-GBM-00001_11_FLAIR_bet.nii.gz")
    'flair'
    >>> classify_name("T1_brain_mask.nii.gz")
    'label'
    """
    return describe_name(path).kind


def describe_name(path: "str | Path", case_id: Optional[str] = None) -> NameMatch:
    """:class:`NameMatch` of a file name (None kind, with a reason, for non-image files).

    case_id: the case folder's name; a file name starting with it is judged on the rest (a case called
    ``label_study_01`` does not make its files labels).
    """
    stem = strip_image_suffix(Path(path).name)
    if stem is None:
        return NameMatch(None, "not an image file")
    if case_id and len(stem) > len(case_id) and stem.lower().startswith(case_id.lower()):
        stem = stem[len(case_id):]
    return describe_text(stem)


def classify_text(text: str) -> Optional[str]:
    """Classify a free-text name (a file stem, a DICOM SeriesDescription): modality key, ``"seg"``, ``"label"``
    or None."""
    return describe_text(text).kind


def describe_text(text: str) -> NameMatch:
    """:class:`NameMatch` of a free-text name (file stem or DICOM SeriesDescription)."""
    tokens = tokens_of(text)
    modality_tokens = [t for t in tokens if t in _TOKEN_MODALITY]
    label_tokens = [t for t in tokens if t in _NOT_GROUND_TRUTH]
    truth_tokens = [t for t in tokens if t in _GROUND_TRUTH]
    if label_tokens:
        return NameMatch(LABEL, f"a mask, label, probability map or prediction ('{label_tokens[0]}')")
    if truth_tokens:
        if modality_tokens:
            return NameMatch(LABEL, f"a label map ('{truth_tokens[0]}') of a modality, not tumor ground truth")
        return NameMatch(SEGMENTATION, f"a segmentation ('{truth_tokens[0]}')")
    other = [t for t in tokens if t in _OTHER_CONTRASTS]
    if other:
        return NameMatch(None, f"another kind of image ('{other[0]}')")
    own = _own_tokens(tokens)
    found = _modalities(own)
    if len(found) > 1:
        return NameMatch(None, f"names more than one modality ({', '.join(found)})")
    if found:
        return NameMatch(found[0], f"modality '{found[0]}'")
    if "gd" in own or "postcontrast" in own:
        return NameMatch("t1ce", "modality 't1ce' (contrast agent named)")
    return NameMatch(None, "no modality in the name")


def _own_tokens(tokens: Sequence[str]) -> List[str]:
    """The tokens before a connector (``flair_to_t1ce`` -> ``flair``) when a modality stands before it."""
    for index, token in enumerate(tokens):
        if token in _CONNECTORS and any(t in _TOKEN_MODALITY for t in tokens[:index]):
            return list(tokens[:index])
    return list(tokens)


def _modalities(tokens: Sequence[str]) -> List[str]:
    """Distinct modalities named by ``tokens``, after the combinations (T2 FLAIR, T1 FLAIR, T1 + contrast)."""
    hits = [(i, _TOKEN_MODALITY[t]) for i, t in enumerate(tokens) if t in _TOKEN_MODALITY]
    kinds = {kind for _, kind in hits}
    if "flair" in kinds and "t2" in kinds:  # T2 FLAIR
        kinds.discard("t2")
    if "flair" in kinds and "t1" in kinds and _adjacent(hits, "t1", "flair"):  # T1-weighted FLAIR (a T1 sequence)
        kinds.discard("flair")
    if "t1" in kinds and "t1ce" not in kinds and _post_contrast(tokens, hits):
        kinds = (kinds - {"t1"}) | {"t1ce"}
    if "t1ce" in kinds and any(t in _NATIVE for t in tokens):
        kinds = (kinds - {"t1ce"}) | {"t1"}
    return [m for m in MODALITIES if m in kinds]


def _adjacent(hits, first: str, second: str) -> bool:
    positions = {kind: [i for i, k in hits if k == kind] for kind in (first, second)}
    return any(abs(a - b) == 1 for a in positions[first] for b in positions[second])


def _post_contrast(tokens: Sequence[str], hits) -> bool:
    if any(t in _NATIVE for t in tokens):
        return False
    for index, token in enumerate(tokens):
        if token in _CONTRAST and not (token == "post" and tokens[index + 1: index + 2] == ["op"]):
            return True
    t1_positions = [i for i, kind in hits if kind == "t1"]
    return any(tokens[i + 1: i + 2] and tokens[i + 1] in _ADJACENT_CONTRAST for i in t1_positions)
