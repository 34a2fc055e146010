"""The BrainLes backend of the clinical pipeline (optional extra ``[clinical]``; imported only when used).

BrainLes ``AtlasCentricPreprocessor`` (https://github.com/BrainLesion/preprocessing): every series rigidly
co-registered to the reference (center) series with ANTs, the reference registered to the BraTS SRI24 atlas,
atlas correction, HD-BET brain extraction in atlas space. The model then runs on the skull-stripped atlas-space
images, and its outputs go back onto the native reference grid through the inverse of the reference's atlas
transform (rigid, read from BrainLes' saved ANTs transform with SimpleITK).

Nothing is downloaded during an analysis: the SRI24 atlas and the HD-BET weights must be installed beforehand
(``glioma-analysis fetch-clinical-models`` once; or ``GLIOMA_ANALYSIS_ATLAS=/path/atlas.nii.gz`` for an atlas of
one's own); otherwise the run stops with a one-line error that names that step.
"""
from __future__ import annotations

import os
import tempfile
import time
import warnings as python_warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import SimpleITK as sitk

from ..io.case import Case, load_case
from .prepared import INSTALL_CLINICAL, Detection, PreparedInput, same_grid
from ..errors import ClinicalBackendError, GliomaAnalysisError

FETCH_STEP = "glioma-analysis fetch-clinical-models"
ATLAS_ENV = "GLIOMA_ANALYSIS_ATLAS"
HD_BET_FOLDS = range(5)
"""HD-BET 'accurate' mode (BrainLes' default) uses five models."""

Progress = Optional[Callable[[str], None]]


def _brainles() -> Dict[str, Any]:
    """The BrainLes names we use, imported lazily; ClinicalBackendError naming the install step when missing."""
    try:
        with python_warnings.catch_warnings():  # it warns about optional registration backends we do not use
            python_warnings.simplefilter("ignore")
            from brainles_preprocessing.brain_extraction import HDBetExtractor
            from brainles_preprocessing.modality import CenterModality, Modality
            from brainles_preprocessing.preprocessor import AtlasCentricPreprocessor
    except ImportError as exc:
        raise ClinicalBackendError(f"BrainLes preprocessing is not installed or incomplete ({exc.name or exc}): "
                                   f"{INSTALL_CLINICAL} (Python 3.10+), or use --clinical-backend simpleitk") \
            from None
    return {"HDBetExtractor": HDBetExtractor, "CenterModality": CenterModality, "Modality": Modality,
            "AtlasCentricPreprocessor": AtlasCentricPreprocessor}


def atlas_path() -> Path:
    """The installed BraTS SRI24 atlas (or ``$GLIOMA_ANALYSIS_ATLAS``), found without any network access."""
    custom = os.environ.get(ATLAS_ENV)
    if custom:
        if not Path(custom).is_file():
            raise ClinicalBackendError(f"{custom}: atlas given by {ATLAS_ENV} not found")
        return Path(custom)
    _brainles()
    try:
        from brainles_preprocessing.constants import Atlas
        from brainles_preprocessing.utils.zenodo import ATLASES_FOLDER, ATLASES_RECORD_ID
    except ImportError as exc:
        raise ClinicalBackendError(f"this BrainLes version has no atlas store ({exc.name}); set {ATLAS_ENV} to the "
                                   f"SRI24 atlas file") from None
    candidates = sorted(Path(ATLASES_FOLDER).glob(f"{ATLASES_RECORD_ID}_v*"), key=_version, reverse=True)
    for folder in candidates:
        path = folder / Atlas.BRATS_SRI24.value
        if path.is_file():
            return path
    raise ClinicalBackendError(f"{ATLASES_FOLDER}: the SRI24 atlas of BrainLes is not installed; run "
                               f"`{FETCH_STEP}` once (downloads it), or set {ATLAS_ENV}")


def missing_hd_bet_weights() -> List[Path]:
    """HD-BET parameter files that are not installed yet."""
    try:
        from brainles_hd_bet.utils import get_params_fname
    except ImportError as exc:
        raise ClinicalBackendError(f"HD-BET (brainles_hd_bet) is not installed ({exc.name}): {INSTALL_CLINICAL}") \
            from None
    return [Path(get_params_fname(fold)) for fold in HD_BET_FOLDS if not Path(get_params_fname(fold)).is_file()]


def check_ready() -> Path:
    """Raise ClinicalBackendError (naming the install step) unless BrainLes, its atlas and HD-BET's weights are
    installed; returns the atlas path."""
    _brainles()
    atlas = atlas_path()
    missing = missing_hd_bet_weights()
    if missing:
        raise ClinicalBackendError(f"{missing[0]}: HD-BET brain-extraction weights are not installed "
                                   f"({len(missing)} of {len(HD_BET_FOLDS)} missing); run `{FETCH_STEP}` once")
    return atlas


def fetch_models(progress: Progress = None) -> Dict[str, str]:
    """Download the SRI24 atlases (Zenodo, through BrainLes) and HD-BET's weights; the one networked step."""
    say = progress or (lambda message: None)
    _brainles()
    from brainles_hd_bet.utils import get_params_fname, maybe_download_parameters
    from brainles_preprocessing.utils.zenodo import fetch_atlases

    say("fetching the BrainLes atlases (SRI24) from Zenodo")
    try:
        folder = fetch_atlases()
        for fold in HD_BET_FOLDS:
            say(f"fetching HD-BET weights {fold + 1}/{len(HD_BET_FOLDS)}")
            maybe_download_parameters(fold)
    except Exception as exc:  # network, disk: one line
        raise ClinicalBackendError(f"fetching the clinical models failed: {type(exc).__name__}: "
                                   f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    return {"atlases": str(folder), "hd_bet": str(Path(get_params_fname(0)).parent)}


def run_brainles(case: Case, detection: Detection, device: str = "auto", progress: Progress = None,
                 brain_extractor: Any = None) -> PreparedInput:
    """Co-register, register to SRI24 and skull-strip ``case`` with BrainLes (see the module docstring).

    brain_extractor: a BrainLes BrainExtractor to use instead of HD-BET (tests); then HD-BET weights are not needed.
    """
    say = progress or (lambda message: None)
    names = _brainles()
    atlas = atlas_path() if brain_extractor is not None else check_ready()
    reference = case.reference
    start = time.perf_counter()
    use_gpu = device != "cpu" and _cuda()
    with tempfile.TemporaryDirectory(prefix="glioma-clinical-") as tmp:
        tmp = Path(tmp)
        inputs = {}
        for modality in case.present:
            inputs[modality] = tmp / "input" / f"{modality}.nii.gz"
            inputs[modality].parent.mkdir(parents=True, exist_ok=True)
            sitk.WriteImage(case.originals.get(modality, case.images[modality]), str(inputs[modality]), True)
        atlas_dir = tmp / "atlas"
        center = names["CenterModality"](modality_name=reference, input_path=inputs[reference],
                                         raw_bet_output_path=atlas_dir / f"{reference}.nii.gz",
                                         bet_mask_output_path=atlas_dir / "brain_mask.nii.gz")
        moving = [names["Modality"](modality_name=m, input_path=inputs[m],
                                    raw_bet_output_path=atlas_dir / f"{m}.nii.gz")
                  for m in case.present if m != reference]
        say(f"clinical input: BrainLes: co-registration to {reference}, SRI24 atlas registration, "
            f"brain extraction ({'GPU' if use_gpu else 'CPU'}); this takes minutes on a CPU")
        try:
            with python_warnings.catch_warnings():
                python_warnings.simplefilter("ignore")
                pipeline = names["AtlasCentricPreprocessor"](
                    center_modality=center, moving_modalities=moving, atlas_image_path=atlas,
                    brain_extractor=brain_extractor or names["HDBetExtractor"](), temp_folder=tmp / "work",
                    use_gpu=use_gpu)
                pipeline.run(save_dir_coregistration=tmp / "coregistration",
                             save_dir_transformations=tmp / "transformations", log_file=tmp / "brainles.log")
        except GliomaAnalysisError:
            raise
        except Exception as exc:
            raise ClinicalBackendError(f"{case.sources.get(reference, reference)}: BrainLes preprocessing failed: "
                                       f"{type(exc).__name__}: {_first_line(exc)}") from None
        say("clinical input: BrainLes done; reading the atlas-space images")
        atlas_images = {m: sitk.ReadImage(str(atlas_dir / f"{m}.nii.gz"), sitk.sitkFloat32) for m in case.present}
        model_case = load_case(atlas_images, reference=reference, case_id=case.case_id)
        model_case.sources = dict(case.sources)
        registered = {reference: case.images[reference]}
        for modality in case.present:
            if modality != reference:
                path = tmp / "coregistration" / f"co__{reference}__{modality}.nii.gz"
                registered[modality] = same_grid(sitk.ReadImage(str(path), sitk.sitkFloat32), case.geometry)
        to_atlas = _center_transform(tmp / "transformations" / reference)
        series = {m: _coregistration_summary(tmp / "transformations" / m, case.geometry)
                  for m in case.present if m != reference}
    warnings = [w.replace("; resampled onto the", "; co-registered by BrainLes onto the") for w in case.warnings]
    if not detection.skull_stripped:
        warnings.append("skull-on input: brain extraction by HD-BET (BrainLes); check the brain mask if the "
                        "tumor touches the brain surface")
    report = {"steps": {
        "coregistration": {"method": "BrainLes / ANTs rigid", "reference": reference,
                           "series": series},
        "atlas_registration": f"BrainLes / ANTs rigid to {atlas.name}",
        "brain_extraction": "HD-BET (BrainLes)" if brain_extractor is None else type(brain_extractor).__name__},
        "backend_seconds": round(time.perf_counter() - start, 2)}
    return PreparedInput(model_case, case, registered, report, warnings, native_to_model=to_atlas)


def _center_transform(folder: Path) -> sitk.Transform:
    """The reference series' atlas registration as one SimpleITK transform mapping native points to atlas points.

    BrainLes saves the ANTs transforms of each step as ``<step>_<name>.mat`` (ITK format; each maps points of the
    step's fixed image (atlas) to its moving image (native)); the native -> atlas map is the inverse of their
    composition, in step order.
    """
    files = sorted(p for p in folder.iterdir() if p.suffix == ".mat") if folder.is_dir() else []
    if not files:
        raise ClinicalBackendError(f"{folder}: BrainLes saved no atlas transform for the reference series")
    composite = sitk.CompositeTransform(3)
    for path in files:  # atlas -> ... -> native: the last step's transform is applied first
        composite.AddTransform(sitk.ReadTransform(str(path)))
    composite.FlattenTransform()
    try:
        return composite.GetInverse()
    except RuntimeError as exc:
        raise ClinicalBackendError(f"{files[-1]}: the atlas transform cannot be inverted ({_first_line(exc)})") \
            from None


def _coregistration_summary(folder: Path, geometry) -> Dict[str, Any]:
    """Rotation and translation (at the centre of the reference grid) of a series' co-registration transform."""
    from .registration import motion_summary

    files = sorted(folder.glob("1_*.mat")) if folder.is_dir() else []  # step 1: co-registration
    if not files:
        return {}
    lo, hi = geometry.bounds()
    return {**motion_summary(sitk.ReadTransform(str(files[0])), (lo + hi) / 2), "file": files[0].name}


def _cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


def _version(folder: Path) -> tuple:
    try:
        return tuple(int(v) for v in folder.name.split("_v", 1)[1].split("."))
    except (IndexError, ValueError):
        return (0,)


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0][:200] if lines else ""
