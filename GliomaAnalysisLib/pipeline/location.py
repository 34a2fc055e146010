"""Approximate tumor location (hemisphere, lobe) from the brain's own geometry; no atlas is shipped.

The tumor centroid is placed in the bounding box of the brain mask on the LPS working orientation (x to the
patient's left, y posterior, z superior) as fractions in [0, 1]; coarse rules on those fractions name a hemisphere
and a lobe (:data:`LOBE_RULES`). It is a position within the brain's extent, not an anatomical label: a head tilted
in the scanner or a strongly asymmetric brain moves it. Midline shift is not measured (it needs the falx or the
septum pellucidum, which the segmentation does not give).
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional

import numpy as np
import SimpleITK as sitk

from ..io.geometry import lps_array
from ..preprocessing.preprocess import brain_mask as preprocessing_brain_mask

METHOD = ("approximate: tumor centroid within the brain mask's bounding box on the LPS orientation, coarse "
          "rules per lobe, no atlas")
LOBE_RULES = (
    ("posterior fossa (cerebellum / brainstem)", lambda lr, ap, si: si < 0.30 and ap > 0.60),
    ("deep central (basal ganglia / thalamus)",
     lambda lr, ap, si: abs(lr - 0.5) < 0.12 and 0.35 < ap < 0.65 and 0.30 < si < 0.60),
    ("temporal lobe", lambda lr, ap, si: si < 0.45 and 0.25 <= ap <= 0.75),
    ("frontal lobe", lambda lr, ap, si: ap < 0.40),
    ("occipital lobe", lambda lr, ap, si: ap > 0.75),
    ("parietal lobe", lambda lr, ap, si: True),
)
"""(region, rule on the centroid fractions: lr 0 right -> 1 left, ap 0 anterior -> 1 posterior, si 0 inferior ->
1 superior), first match wins."""


def brain_mask(images: Mapping[str, sitk.Image]) -> Optional[np.ndarray]:
    """The preprocessing's brain mask (``preprocess.brain_mask``: voxels non-zero in any image, or Otsu on their mean
    for skull-on input) of ``images``, in their own index order; None without images."""
    if not images:
        return None
    return preprocessing_brain_mask([sitk.GetArrayViewFromImage(image) for image in images.values()])


def _lps(array: np.ndarray, like: sitk.Image) -> np.ndarray:
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.CopyInformation(like)
    return lps_array(image)[0] > 0  # (z: S, y: P, x: L) increasing


def tumor_location(labels: sitk.Image, images: Mapping[str, sitk.Image],
                   brain: Optional[np.ndarray] = None) -> Optional[Dict]:
    """``{hemisphere, region, left_fraction, position: {left_right, anterior_posterior, inferior_superior}, method}``
    of the whole tumor in ``labels`` (contiguous, > 0 tumor), or None without tumor or brain mask. ``brain``: the
    brain mask of ``images`` already computed (else :func:`brain_mask`)."""
    tumor = sitk.GetArrayViewFromImage(labels) > 0
    if not tumor.any():
        return None
    mask = brain_mask(images) if brain is None else brain
    if mask is None or mask.shape != tumor.shape:
        return None
    brain, tumor = _lps(mask | tumor, labels), _lps(tumor, labels)
    position = {}
    tumor_zyx = np.nonzero(tumor)
    for axis, name in ((2, "left_right"), (1, "anterior_posterior"), (0, "inferior_superior")):
        extent = np.flatnonzero(brain.any(axis=tuple(a for a in range(3) if a != axis)))
        low, high = int(extent[0]), int(extent[-1])
        centroid = float(tumor_zyx[axis].mean())
        position[name] = round((centroid - low) / max(high - low, 1), 4)
    x = tumor_zyx[2]
    extent_x = np.flatnonzero(brain.any(axis=(0, 1)))
    middle = 0.5 * (extent_x[0] + extent_x[-1])
    left_fraction = round(float((x > middle).mean()), 4)
    lr, ap, si = position["left_right"], position["anterior_posterior"], position["inferior_superior"]
    side = "left" if lr > 0.5 else "right"
    hemisphere = side if abs(lr - 0.5) >= 0.05 else "midline"
    if 0.1 < left_fraction < 0.9:
        hemisphere = f"both hemispheres, centred {'on the midline' if hemisphere == 'midline' else side}"
    region = next(name for name, rule in LOBE_RULES if rule(lr, ap, si))
    return {"hemisphere": hemisphere, "region": region, "left_fraction": left_fraction, "position": position,
            "method": METHOD}
