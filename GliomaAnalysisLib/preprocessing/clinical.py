"""Clinical input: native-space series with skull -> what the segmentation model expects -> results back.

``preprocessing`` modes (``analyze(..., preprocessing=...)``, ``--preprocess``):

* ``none``: the inputs are used as they are (already BraTS-preprocessed: co-registered, skull-stripped); series on
  other grids are only resampled onto the reference grid through physical space, as before.
* ``brats``: the clinical pipeline always runs. Backend ``brainles`` (BrainLes preprocessing, extra ``[clinical]``):
  co-registration to the reference series, rigid registration to the SRI24 atlas, HD-BET brain extraction; the
  model runs in atlas space and its outputs are transformed back onto the native reference grid. Backend
  ``simpleitk`` (the light fallback, no extra install): rigid co-registration of every series to the reference
  (multi-resolution Mattes mutual information); no brain extraction (a warning says so when the input has a
  skull); the model runs on the native reference grid.
* ``auto`` (default): ``none`` when the inputs look BraTS-preprocessed (one common grid, zero background, a
  brain-sized non-zero region), else ``brats``.

Backend ``auto`` takes BrainLes when it is installed with its atlas and HD-BET weights, else SimpleITK with a
warning naming the missing install step; ``brainles`` asked for explicitly raises ClinicalBackendError instead.

Whatever ran, outputs lie exactly on the native grid of the reference series and volumes are measured there.
``report.json`` records it under ``settings.preprocessing``.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Union

import numpy as np
import SimpleITK as sitk

from ..io.case import Case
from ..errors import GliomaAnalysisError
from ..io.geometry import Geometry, resample_to
from .prepared import INSTALL_CLINICAL, Detection, PreparedInput, Progress, same_grid

PREPROCESS_MODES = ("auto", "none", "brats")
CLINICAL_BACKENDS = ("auto", "brainles", "simpleitk")
MIN_ZERO_FRACTION = 0.2
"""Skull-stripped scans are exactly 0 outside the brain: BraTS cases have 80-87 % zero voxels, clinical scans
(noisy air) almost none."""
MAX_BRAIN_ML = 2500.0
"""A skull-stripped brain (with tumor) is 1.1-1.8 L in BraTS 2018; a head with skull and scalp is 3-5 L."""
REGISTERED_FOLDER = "registered"



def detect(case: Case) -> Detection:
    """Measure whether ``case`` looks BraTS-preprocessed (co-registered on one grid, skull-stripped)."""
    reasons: List[str] = []
    moved = [m for m in case.present if m in case.originals]
    if moved:
        reasons.append(f"{', '.join(moved)} on other grids than the reference {case.reference}")
    fractions, volumes = {}, {}
    for modality in case.present:
        image = case.originals.get(modality, case.images[modality])
        array = sitk.GetArrayViewFromImage(image)
        zeros = int(np.count_nonzero(array == 0))
        fractions[modality] = zeros / array.size
        volumes[modality] = (array.size - zeros) * Geometry.of(image).voxel_volume_ml
    low = min(fractions, key=fractions.get)
    big = max(volumes, key=volumes.get)
    if fractions[low] < MIN_ZERO_FRACTION:
        reasons.append(f"{low}: only {100 * fractions[low]:.0f} % of the voxels are 0 (no zero background)")
    if volumes[big] > MAX_BRAIN_ML:
        reasons.append(f"{big}: non-zero region of {volumes[big]:.0f} mL is larger than a brain "
                       f"(skull-stripped: at most {MAX_BRAIN_ML:.0f} mL)")
    stripped = fractions[low] >= MIN_ZERO_FRACTION and volumes[big] <= MAX_BRAIN_ML
    return Detection(not moved, stripped, fractions[low], volumes[big], reasons)


def prepare(case: Case, mode: str = "auto", backend: str = "auto", device: str = "auto",
            progress: Progress = None) -> PreparedInput:
    """Run the preprocessing path ``mode`` asks for (see the module docstring) on ``case``."""
    if mode not in PREPROCESS_MODES:
        raise GliomaAnalysisError(f"unknown preprocessing mode {mode!r}; use one of {', '.join(PREPROCESS_MODES)}")
    if backend not in CLINICAL_BACKENDS:
        raise GliomaAnalysisError(f"unknown clinical backend {backend!r}; use one of {', '.join(CLINICAL_BACKENDS)}")
    start = time.perf_counter()
    detection = detect(case)
    run = mode == "brats" or (mode == "auto" and not detection.looks_brats)
    say = progress or (lambda message: None)
    if not run:
        warnings = list(case.warnings)
        if mode == "none" and not detection.looks_brats:
            warnings.append("the inputs do not look BraTS-preprocessed (" + "; ".join(detection.reasons)
                            + "); used as they are because --preprocess none was asked for")
        report = {"mode": mode, "path_ran": "none", "backend": None, "detection": detection.as_dict(),
                  "seconds": round(time.perf_counter() - start, 3)}
        return PreparedInput(case, case, dict(case.images), report, warnings)

    chosen, notes = _choose_backend(backend)
    say(f"clinical input: {'; '.join(detection.reasons) or 'clinical pipeline requested'}; "
        f"running the {chosen} pipeline")
    if chosen == "brainles":
        from .brainles_backend import run_brainles

        prepared = run_brainles(case, detection, device=device, progress=say)
    else:
        prepared = coregister_simpleitk(case, detection, progress=say)
    prepared.warnings[:0] = notes
    prepared.report = {"mode": mode, "path_ran": "brats", "backend": chosen, "detection": detection.as_dict(),
                       **prepared.report, "seconds": round(time.perf_counter() - start, 3)}
    return prepared


def brainles_installed() -> bool:
    """Whether the BrainLes preprocessing package can be imported (without importing it)."""
    return importlib.util.find_spec("brainles_preprocessing") is not None


def _choose_backend(backend: str) -> "tuple[str, List[str]]":
    """(backend to run, warnings). ``brainles`` asked for explicitly must be ready (else ClinicalBackendError);
    ``auto`` falls back to SimpleITK with a warning naming the missing install step."""
    if backend == "simpleitk":
        return "simpleitk", []
    if backend == "brainles":
        return "brainles", []
    fallback = "co-registration used the SimpleITK fallback, without atlas registration or brain extraction"
    if not brainles_installed():
        return "simpleitk", [f"BrainLes preprocessing is not installed ({INSTALL_CLINICAL}, Python 3.10+): "
                             f"{fallback}"]
    from .brainles_backend import check_ready
    from ..errors import ClinicalBackendError

    try:
        check_ready()
    except ClinicalBackendError as exc:
        return "simpleitk", [f"{exc}; {fallback}"]
    return "brainles", []


def coregister_simpleitk(case: Case, detection: Detection, progress: Progress = None) -> PreparedInput:
    """The light fallback: every series rigidly registered to the reference and resampled onto its native grid."""
    from .registration import apply_rigid, large_motion, register_rigid

    say = progress or (lambda message: None)
    reference = case.reference
    fixed = case.images[reference]
    registered: Dict[str, sitk.Image] = {reference: fixed}
    series: Dict[str, Dict[str, Any]] = {}
    warnings = [w.replace("; resampled onto", "; co-registered (rigid) and resampled onto") for w in case.warnings]
    # skull-stripped input: one brain mask for every series, the reference's (as BraTS does); without it the
    # partial-volume rims of thick, rotated slices widen the brain mask and shift the z-score normalisation
    brain = sitk.Cast(fixed != 0, sitk.sitkUInt8) if detection.skull_stripped else None
    for modality in case.present:
        if modality == reference:
            continue
        moving = case.originals.get(modality, case.images[modality])
        say(f"clinical input: co-registering {modality} to {reference} (rigid, Mattes mutual information)")
        result = register_rigid(fixed, moving, name=f"{case.sources.get(modality, modality)}", progress=say,
                                label=modality)
        registered[modality] = apply_rigid(moving, result.transform, case.geometry)
        if brain is not None:
            registered[modality] = sitk.Mask(registered[modality], brain)
        series[modality] = result.summary()
        say(f"clinical input: {modality} registered: rotation {result.rotation_deg:.1f} deg, "
            f"translation {result.translation_mm:.1f} mm in {result.seconds:.1f} s")
        if large_motion(result):
            warnings.append(f"{modality}: registration moved it by {result.rotation_deg:.0f} deg and "
                            f"{result.translation_mm:.0f} mm, more than patient motion usually does; check it "
                            f"(--save-registered)")
    if detection.skull_stripped:
        extraction = "not needed: the inputs are skull-stripped (zero background); the reference's mask applied"
    else:
        extraction = "not run: no brain extraction without BrainLes"
        warnings.append(f"skull stripping did not run ({INSTALL_CLINICAL} adds HD-BET): the model was trained on "
                        f"skull-stripped scans, so results on skull-on input are less reliable")
    model_case = Case(case.case_id, dict(registered), reference, case.geometry, dict(case.sources),
                      case.segmentation, case.segmentation_convention, list(warnings), dict(case.dicom_files))
    report = {"steps": {
        "coregistration": {"method": "SimpleITK rigid (Euler3D), Mattes mutual information, 3 resolution levels",
                           "reference": reference, "series": series},
        "atlas_registration": "not run: the model runs on the native reference grid",
        "brain_extraction": extraction}}
    return PreparedInput(model_case, case, registered, report, warnings)


def write_registered(images: Dict[str, sitk.Image], out: Union[str, "os.PathLike[str]"]) -> List[Path]:
    """Write ``images`` (modality -> image) as ``out/registered/<modality>.nii.gz``, atomically (staged, renamed)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".registered-", dir=out))
    try:
        for modality, image in images.items():
            sitk.WriteImage(image, str(staging / f"{modality}.nii.gz"), True)
        target = out / REGISTERED_FOLDER
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return sorted(target.iterdir())
