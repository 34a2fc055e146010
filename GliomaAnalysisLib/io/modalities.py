"""Modality keys and recognition of modality files by name.

Recognised naming styles (case-insensitive):

* BraTS 2018-2021: ``<case>_t1``, ``_t1ce``, ``_t2``, ``_flair``, ``_seg``
* BraTS 2023+: ``<case>-t1n``, ``-t1c``, ``-t2w``, ``-t2f``, ``-seg``
* clinical: ``T1Gd``, ``T1C``, ``T1_post``, ``T1+C``, ``T1_contrast``, ``MPRAGE``, ``T2W``, ``FLAIR``, ``fla``,
  ``T2_FLAIR``, ``T1W``, ``T1_pre`` ...
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

MODALITIES = ("t1", "t1ce", "t2", "flair")
"""The four modality keys, in channel order."""

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
SEGMENTATION = "seg"

# Tokens are matched against the file stem split on separators ("_", "-", ".", " ", "+").
# Multi-token patterns are checked first on the joined, separator-normalised stem.
_SEG_PATTERN = re.compile(r"(^|_)(seg|segmentation|label|labels|mask|gt|truth)$")
_PATTERNS = (
    # T1 post-contrast first: it contains "t1".
    ("t1ce", re.compile(
        r"(^|_)(t1ce|t1c|t1gd|t1_?gd|t1_?post(_?contrast)?|t1_?contrast|t1_?\+_?c|t1_?plus_?c|t1_?\+c|"
        r"t1w?_?ce|t1w?_?c|t1w?_?gd|ce_?t1w?|post_?t1|t1_?mprage_?gd|gd)$")),
    ("flair", re.compile(r"(^|_)(flair|fla|t2_?flair|t2w?_?flair|t2f|flair_?t2)$")),
    ("t2", re.compile(r"(^|_)(t2|t2w|t2_?weighted|t2_?tse|t2_?fse)$")),
    ("t1", re.compile(r"(^|_)(t1|t1n|t1w|t1_?pre|t1_?native|t1_?weighted|mprage|t1_?mprage)$")),
)


def strip_image_suffix(name: str) -> Optional[str]:
    """Return the file name without its image suffix, or None if it is not an image file name."""
    lower = name.lower()
    for suffix in IMAGE_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return None


def _normalise(stem: str) -> str:
    return re.sub(r"[\s\-\.]+", "_", stem.lower().replace("+", "_+_")).replace("__", "_").strip("_")


def classify_name(path: "str | Path") -> Optional[str]:
    """Classify a file by name: a modality key, ``"seg"`` for a segmentation, or None.

    >>> classify_name("BraTS-GLI-00000-000-t1c.nii.gz")
    't1ce'
    >>> classify_name("Brats18_2013_11_1_seg.nii.gz")
    'seg'
    """
    stem = strip_image_suffix(Path(path).name)
    if stem is None:
        return None
    return classify_text(stem)


def classify_text(text: str) -> Optional[str]:
    """Classify a free-text name (a file stem, a DICOM SeriesDescription): modality key, ``"seg"`` or None."""
    norm = _normalise(text)
    if _SEG_PATTERN.search(norm):
        return SEGMENTATION
    for modality, pattern in _PATTERNS:
        if pattern.search(norm):
            return modality
    return None
