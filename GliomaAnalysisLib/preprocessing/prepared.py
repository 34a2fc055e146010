"""Types shared by the clinical pipeline (``clinical``) and its BrainLes backend (``brainles_backend``): the
detection result, the prepared model input with its way back to the native grid, and grid stamping. Both import
this module and not each other's internals, so the two stay one-way (clinical -> brainles_backend -> prepared)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import SimpleITK as sitk

from ..io.case import Case
from ..io.geometry import Geometry, resample_to

INSTALL_CLINICAL = 'pip install "glioma-analysis[clinical]"'

Progress = Optional[Callable[[str], None]]


@dataclass
class Detection:
    """Whether inputs look BraTS-preprocessed, with the measurements behind the answer."""

    aligned: bool
    """All series share the reference grid."""
    skull_stripped: bool
    """Zero background and a brain-sized non-zero region in every series."""
    zero_fraction: float
    """Smallest fraction of voxels that are exactly 0, over the series (each on its own grid)."""
    nonzero_volume_ml: float
    """Largest non-zero volume over the series (mL, each on its own grid)."""
    reasons: List[str] = field(default_factory=list)
    """Why the inputs do not look BraTS-preprocessed (empty when they do)."""

    @property
    def looks_brats(self) -> bool:
        return self.aligned and self.skull_stripped

    def as_dict(self) -> Dict[str, Any]:
        return {"looks_brats_preprocessed": self.looks_brats, "aligned": self.aligned,
                "skull_stripped": self.skull_stripped, "zero_fraction": round(self.zero_fraction, 4),
                "nonzero_volume_ml": round(self.nonzero_volume_ml, 1), "reasons": list(self.reasons)}


@dataclass
class PreparedInput:
    """A case made ready for the model, and the way back to the user's native reference grid.

    case:       what the model sees (co-registered; with BrainLes skull-stripped and in atlas space).
    native:     the user's case; outputs go onto ``native.geometry``.
    registered: every series co-registered onto the native reference grid (float32), for figures and
                ``--save-registered``.
    report:     ``settings.preprocessing`` of report.json.
    """

    case: Case
    native: Case
    registered: Dict[str, sitk.Image]
    report: Dict[str, Any]
    warnings: List[str]
    native_to_model: Optional[sitk.Transform] = None
    """Transform mapping native reference points (mm) to model-space points, when the model ran elsewhere."""

    def is_native(self, geometry: Geometry) -> bool:
        """Whether an image on ``geometry`` (the model case's grid) already lies on the native reference grid."""
        return self.native_to_model is None and geometry.matches(self.native.geometry)

    def to_native(self, image: sitk.Image, kind: str = "probability") -> sitk.Image:
        """An image on the model case's grid put exactly onto the native reference grid.

        kind: ``"probability"`` (linear, float32) or ``"label"`` (nearest, uint8).
        """
        if self.native_to_model is None:
            if Geometry.of(image).matches(self.native.geometry):
                return image
            transform = sitk.Transform()
        else:
            transform = self.native_to_model
        nearest = kind == "label"
        return sitk.Resample(image, self.native.geometry.empty_image(), transform,
                             sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear, 0.0,
                             sitk.sitkUInt8 if nearest else sitk.sitkFloat32)


def same_grid(image: sitk.Image, geometry: Geometry, pixel_type: int = sitk.sitkFloat32) -> sitk.Image:
    """``image`` stamped with ``geometry`` when it lies on it up to file precision, else resampled onto it."""
    if tuple(image.GetSize()) == geometry.size and np.allclose(image.GetOrigin(), geometry.origin, atol=1e-2) \
            and np.allclose(image.GetSpacing(), geometry.spacing, rtol=1e-4) \
            and np.allclose(image.GetDirection(), geometry.direction, atol=1e-4):
        image = sitk.Cast(image, pixel_type)
        return geometry.apply_to(image)
    return resample_to(image, geometry, sitk.sitkLinear, pixel_type=pixel_type)
