"""``analyze``: the one analysis call behind the CLI, the Slicer module and batch use.

case -> preprocess (card's spacing, brain crop, z-score) -> the segmentation model for the modalities present
(pipeline/model_choice.py: the requested one, or one its card names for a missing modality or for --fast) ->
network (TTA / MC-dropout passes) -> the card's fine stage, if it names one (pipeline/fine_stage.py: a finer network
over the tumor region, whose maps replace the coarse ones there) -> probabilities back to the reference grid
(linear) -> labels there (argmax or the card's region thresholds) -> lesion filter + small-component removal (an argmax
card's whole-tumor threshold, or its threshold for a missing modality, may then add edema, filtered again) ->
volumes, ratios, uncertainty summary -> AnalysisResult. The classifiers read the coarse network's working-grid
labels and encoder maps (what they were trained on), the volumes the refined labels.
The classifiers (pipeline/classify.py) read the working-grid arrays and run in a worker thread while the
probabilities go back to the reference grid and are post-processed
(ONNX Runtime releases the GIL): ``timings_s`` then holds their own time (``classify``) and how long the result
waited for them after that (``classify_wait``). With ``wait=False`` the result comes back while they still run and
:meth:`AnalysisResult.finish` (called by the writers after the maps, before the report) fills in their fields: the
CLI and batch write the five maps meanwhile.
"""
from __future__ import annotations

import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Dict, List, Mapping, NamedTuple, Optional, Union

import numpy as np
import SimpleITK as sitk

from ..io.case import Case, load_case, require_analysable_extent
from ..io.geometry import resample_array_within
from ..io.modalities import MODALITIES
from .classify import CLASSIFIERS, Classification, EncoderMaps, classify_case, load_classifier
from ..preprocessing.clinical import prepare as prepare_clinical
from ..models.network_config import NetworkConfig
from ..models.onnx_engine import threads as engine_threads
from ..models.openvino_engine import check_engine_settings
from ..models.segment import load_segmentation_networks, resolve_device, segment, side_by_side_lanes
from .measures import ratios, uncertainty_summary, volumes_ml
from .memory import check_memory, side_by_side_fits
from .model_choice import choose_segmentation_model, fast_model_name
from ..models.model_store import DEFAULT_SEGMENTATION_MODEL, load_card, load_verified_card
from .fine_stage import FineStage, run_fine_stage
from .signal_gates import SignalMaps, apply_gates, signal_maps
from .postprocess import (decode_regions, lesion_filter, merge_enhancement_into_core, nonzero_box,
                          region_thresholds_for, remove_small_components, suppress_small_enhancement,
                          whole_tumor_threshold_for, widen_whole_tumor)
from ..preprocessing.prepared import PreparedInput
from ..preprocessing.preprocess import PreprocessedCase, preprocess
from .result import AnalysisResult

Progress = Optional[Callable[[str], None]]
PROBABILITY_DECIMALS = 3
PROBABILITY_FLOOR = 0.5 * 10 ** -PROBABILITY_DECIMALS
"""Values below this round to 0 at ``PROBABILITY_DECIMALS``."""
T1CE_CHANNEL = 1
"""Index of T1CE in MODALITIES order: without it enhancement is not assessable."""
QUALITY_PASSES = 2
"""Network passes in quality mode (flip TTA combined with MC-dropout); fast mode runs one plain pass. 2 instead of 4:
mean Dice over the 31 real cases WT +0.003, TC +0.002, ET +0.001 (benchmarks/compare_outputs.py --passes), half the time."""


def argmax_uint8(maps: List[np.ndarray]) -> np.ndarray:
    """Index of the largest of ``maps`` per voxel (first one on ties, as np.argmax), as uint8, without stacking."""
    labels = np.zeros(maps[0].shape, dtype=np.uint8)
    best = maps[0].copy()
    for index, values in enumerate(maps[1:], start=1):
        better = values > best
        labels[better] = index
        np.maximum(best, values, out=best)
    return labels


def _on_native(prepared: PreparedInput, pre: PreprocessedCase, array: np.ndarray) -> np.ndarray:
    """A probability or uncertainty map (Z, Y, X, >= 0) on the working grid, onto the native reference grid: float32
    (z, y, x) rounded to ``PROBABILITY_DECIMALS`` (plenty for a probability; the files compress ~10x better).
    On the usual path (the model ran on the native grid) only the region where the rounded map is non-zero is
    resampled (``PreprocessedCase.to_reference_array``): the same values at a fraction of the cost."""
    if prepared.is_native(pre.reference):
        return pre.to_reference_array(array, PROBABILITY_FLOOR, PROBABILITY_DECIMALS)
    out = sitk.GetArrayFromImage(prepared.to_native(pre.to_reference(array, "probability")))
    return np.round(out, PROBABILITY_DECIMALS, out=out)


def _argmax_labels(prepared: PreparedInput, pre: PreprocessedCase, background: np.ndarray,
                   tumor_maps: List[np.ndarray]) -> np.ndarray:
    """Labels (z, y, x) uint8 on the native grid: the argmax of the background (working grid, (Z, Y, X)) and the
    native NCR, ED and ET maps (``_on_native``). The background goes back only inside the box of the tumor maps'
    non-zero voxels: outside it all three are 0 and the background wins (as the first on ties), the same labels as
    resampling it everywhere at a fraction of the cost."""
    if not prepared.is_native(pre.reference):
        return argmax_uint8([_on_native(prepared, pre, background)] + tumor_maps)
    labels = np.zeros(tumor_maps[0].shape, dtype=np.uint8)
    box = nonzero_box(np.logical_or.reduce([m > 0 for m in tumor_maps]))
    if box is None:
        return labels
    native_background = pre.to_reference_box(background, box)
    np.round(native_background, PROBABILITY_DECIMALS, out=native_background)
    labels[box] = argmax_uint8([native_background] + [m[box] for m in tumor_maps])
    return labels


def _saw_registered_images(prepared: PreparedInput, model_case: Case) -> bool:
    """Whether the model's case holds exactly the report's images (the same objects, in the same order), so that
    the preprocessing's brain mask is theirs."""
    registered = prepared.registered
    return list(registered) == list(model_case.present) and all(
        registered[m] is model_case.images[m] for m in model_case.present)


def _signal_gates(labels: np.ndarray, prepared: PreparedInput, model_case: Case, brain: Optional[np.ndarray],
                  min_enhancement_sd: Optional[float], min_flair_sd: Optional[float]) -> np.ndarray:
    """``signal_gates.apply_gates`` on the native labels (Z, Y, X), inside the tumor's bounding box, with the signals
    of the images the model saw (``brain``: their brain mask, from the preprocessing). When the model ran on another
    grid (atlas space), the signal maps are computed there and brought back linearly."""
    box = nonzero_box(labels)
    if box is None:
        return labels
    images = {m: sitk.GetArrayViewFromImage(model_case.images[m]) for m in model_case.present}
    if prepared.is_native(model_case.geometry):
        maps = signal_maps(images, box, brain)
    else:
        whole = signal_maps(images, brain=brain)

        def on_native(signal: Optional[np.ndarray]) -> Optional[np.ndarray]:
            if signal is None:
                return None
            image = prepared.to_native(model_case.geometry.image_from_array(signal), "probability")
            return sitk.GetArrayFromImage(image)[box]

        maps = SignalMaps(on_native(whole.enhancement), on_native(whole.flair))
    crop = labels[box]
    gated = apply_gates(crop, maps, min_enhancement_sd, min_flair_sd)
    if gated is crop:
        return labels
    out = labels.copy()
    out[box] = gated
    return out


def _fine_on_native(prepared: PreparedInput, fine: FineStage, array: np.ndarray) -> np.ndarray:
    """A map on the fine stage's region (z, y, x) onto the native reference grid, as :func:`_on_native` of it on the
    whole fine grid; on the usual path from the region alone (``FineStage.padded``), the same values."""
    if not prepared.is_native(fine.pre.reference):
        return _on_native(prepared, fine.pre, fine.on_grid(array))
    padded, grid = fine.padded(array)
    return resample_array_within(padded, grid, fine.pre.reference, PROBABILITY_FLOOR, PROBABILITY_DECIMALS)


def _replace_in_region(prepared: PreparedInput, fine: FineStage, reference_probs: List[np.ndarray]) -> np.ndarray:
    """The fine stage's NCR, ED and ET maps in place of the coarse ones in ``reference_probs`` (native (z, y, x)),
    inside the part of the native grid its region covers (returned: bool (z, y, x), as the coarse-to-fine screen
    took it: where the region's indicator, mapped back linearly, is at least 0.999)."""
    inside = _fine_on_native(prepared, fine, np.ones(fine.uncertainty.shape, np.float32)) >= 0.999
    box = nonzero_box(inside)
    if box is None:
        return inside
    where = inside[box]
    for k, coarse in enumerate(reference_probs):
        coarse[box][where] = _fine_on_native(prepared, fine, fine.probabilities[k + 1])[box][where]
    return inside


def _relabel(labels: np.ndarray, reference_probs: List[np.ndarray], inside: np.ndarray) -> None:
    """Argmax labels (in place) inside ``inside`` of the NCR, ED and ET maps there, with background 1 - their sum
    (the coarse background map does not hold there)."""
    box = nonzero_box(inside)
    if box is None:
        return
    maps = [m[box] for m in reference_probs]
    refined = argmax_uint8([1.0 - maps[0] - maps[1] - maps[2]] + maps)
    labels[box] = np.where(inside[box], refined, labels[box])


def network_passes(fast: bool) -> int:
    """Segmentation network passes of a run: one in fast mode, else ``QUALITY_PASSES``."""
    return 1 if fast else QUALITY_PASSES


def _timed(function: Callable, *args):
    """(function(*args), seconds it took)."""
    start = time.perf_counter()
    return function(*args), time.perf_counter() - start


def analyze(case: Union[Case, str, "os.PathLike[str]", Mapping], model: str = DEFAULT_SEGMENTATION_MODEL,
            model_dir: Optional[Union[str, "os.PathLike[str]"]] = None, device: str = "auto", fast: bool = False,
            uncertainty: bool = True, postprocess: bool = True, progress: Progress = None,
            preprocessing: str = "auto", clinical_backend: str = "auto", classify: bool = True,
            single_model: bool = False, wait: bool = True, fine_stage: Optional[bool] = None) -> AnalysisResult:
    """Segment a case (a Case, a folder, or a modality -> path/image mapping) with a stored model.

    fast: one plain network pass, by the model's ``fast_model`` when its card names one, and without the card's fine
    stage. Otherwise ``QUALITY_PASSES`` passes with flip test-time augmentation, and with ``uncertainty`` MC-dropout
    on in every pass, then the fine stage. fine_stage: run the card's fine stage (None: unless ``fast``; True with
    ``fast``: one pass of each network, as the cross-validation of a pair without a modality runs it). Outputs lie
    exactly on the case's reference geometry.
    preprocessing: ``auto`` | ``none`` | ``brats``, clinical_backend: ``auto`` | ``brainles`` | ``simpleitk``
    (native-space, skull-on input; see :mod:`GliomaAnalysisLib.preprocessing.clinical`). single_model: ``model``
    segments every case, also one without a modality or a fast run for which its card names another model
    (:mod:`GliomaAnalysisLib.pipeline.model_choice`). wait: False returns before the classifiers are done; the
    result's :meth:`~AnalysisResult.finish` (also called by :meth:`~AnalysisResult.report`) waits for them.
    """
    model_folder = None if model_dir is None else str(model_dir)
    check_engine_settings()  # a misspelt $GLIOMA_ANALYSIS_ENGINE / _PRECISION stops the run here, whatever the device
    device_type, device_warnings = resolve_device(device)
    pool = ThreadPoolExecutor(max_workers=1)
    done = False
    try:
        # one worker: the segmentation network loads first, then its fine stage's (while the first one runs), the
        # classifiers after them; classify_case, submitted later, runs after all
        preloaded = fast_model_name(model, model_folder) if fast and not single_model else model
        passes = network_passes(fast)
        run_fine_stage_too = not fast if fine_stage is None else fine_stage
        segmentation_ready = pool.submit(_load_models, preloaded, model_folder, device_type, False, passes)
        fine_ready = pool.submit(_load_fine_stage, preloaded, model_folder, device_type) if run_fine_stage_too else None
        if classify:
            pool.submit(_load_models, None, model_folder, device_type, True)
        result = _analyze(case, model, model_folder, device_type, device_warnings, fast, uncertainty, postprocess,
                          progress, preprocessing, clinical_backend, classify, pool,
                          Preloading(preloaded, segmentation_ready, fine_ready), single_model, run_fine_stage_too)
        if wait:
            result.finish()
        done = True
        return result
    finally:
        pool.shutdown(wait=not done)  # a classifiers' task still running finishes on its own


class Preloading(NamedTuple):
    """The models ``analyze`` loads in its worker while it reads and preprocesses the case."""

    model: str
    """the segmentation model being loaded"""
    segmentation: Future
    fine_stage: Optional[Future]
    """its fine stage's network, where its card names one (None: the fine stage does not run)"""


def _load_fine_stage(model: str, model_folder: Optional[str], device_type: str) -> None:
    """Load (on first use: export) the network of the fine stage that ``model``'s card names, if any, for one pass
    on the CPU engine (a later call with more passes reuses it: a windowed stage runs them in turn). A failure is
    left to the main path, as in :func:`_load_models`."""
    if device_type != "cpu":
        return
    try:
        stage = load_card(model, model_folder).get("fine_stage")  # its weights: verified by the main path
        if isinstance(stage, dict) and stage.get("model"):
            load_segmentation_networks(str(stage["model"]), model_folder, 1)
    except Exception:  # noqa: BLE001 - reported by the main path
        pass


def _load_models(model: Optional[str], model_folder: Optional[str], device_type: str, classify: bool,
                 passes: int = 1) -> None:
    """Load (on first use: export) the segmentation network ``model`` (None: not) for ``passes`` passes
    (:func:`~GliomaAnalysisLib.models.segment.load_segmentation_networks`) and with ``classify`` the
    classifiers, in a thread beside reading and preprocessing the case. A model that fails to load is left to the
    main path, which reports it where it belongs (an error for the segmentation model, a warning for a
    classifier)."""
    loaders = [lambda: load_segmentation_networks(model, model_folder, passes)] if model and device_type == "cpu" \
        else []
    if classify:
        loaders += [lambda c=c: load_classifier(c, model_folder) for c in CLASSIFIERS]
    for load in loaders:
        try:
            load()
        except Exception:  # noqa: BLE001 - reported by the main path
            pass


def _analyze(case, model: str, model_folder: Optional[str], device_type: str, device_warnings: List[str],
             fast: bool, uncertainty: bool, postprocess: bool, progress: Progress, preprocessing: str,
             clinical_backend: str, classify: bool, pool: ThreadPoolExecutor, preloading: Preloading,
             single_model: bool = False, run_fine_stage_too: bool = True) -> AnalysisResult:
    """analyze() with the device resolved and the models loading in ``pool`` (``preloading``: the segmentation
    model being loaded and the futures of its network's and its fine stage's loads); ``run_fine_stage_too``: run the
    card's fine stage, if it names one."""
    timings: Dict[str, float] = {}
    log: List[str] = []
    clock = time.perf_counter()
    start = clock

    def say(message: str) -> None:
        log.append(f"{time.perf_counter() - start:7.2f} s  {message}")
        if progress:
            progress(message)

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = now - clock
        clock = now

    if not isinstance(case, Case):
        say(f"loading {case if not isinstance(case, Mapping) else 'images'}")
        case = load_case(case, ground_truth=False)  # the analysis never needs ground truth
    require_analysable_extent(case)
    say(f"case {case.case_id}: {', '.join(case.present)} present; reference grid {case.reference} "
        f"{'x'.join(map(str, case.geometry.size))} at {'x'.join(f'{s:g}' for s in case.geometry.spacing)} mm")
    lap("load")
    prepared = prepare_clinical(case, preprocessing, clinical_backend, device_type, progress=say)
    model_case = prepared.case  # co-registered (BrainLes: skull-stripped, atlas space); outputs go back to case
    lap("clinical_preprocessing")
    card = load_verified_card(model, model_folder)
    config = NetworkConfig.from_dict(card["network"])
    warnings = list(prepared.warnings) + device_warnings
    lap("model")

    say("preprocessing")
    pre = preprocess(model_case, spacing=card["preprocessing"]["spacing_mm"], divisible_by=config.divisor,
                     include_labels=False)
    unseen = [m for m, seen in zip(MODALITIES, pre.presence) if not seen]  # by the network
    if not single_model:
        model, card, choice_warnings = choose_segmentation_model(model, card, model_folder, unseen, fast)
        config = NetworkConfig.from_dict(card["network"])
        warnings += choice_warnings
    grids = (int(np.prod(case.geometry.size)), int(np.prod(pre.image.shape[1:])), config.widths[0])
    needed = check_memory(case.case_id, *grids)
    passes = network_passes(fast)
    lanes = side_by_side_lanes(passes) if device_type == "cpu" else 1
    side_by_side = lanes > 1 and side_by_side_fits(*grids, lanes)
    say(f"memory estimate {needed / 2 ** 30:.1f} GiB{'' if side_by_side or lanes == 1 else ' (passes in turn)'}")
    lap("preprocess")

    if model == preloading.model:  # else the preloaded network is not the one that runs: segment() loads the other
        preloading.segmentation.result()
    lap("model_wait")
    say(f"segmenting with '{model}' on {device_type} ({passes} pass{'es' if passes > 1 else ''})")
    segmentation = segment(model, model_folder, config, pre.image, pre.presence, device_type, passes,
                           mc_dropout=uncertainty and not fast, progress=say, side_by_side=side_by_side)
    probabilities, entropy = segmentation.probabilities, segmentation.uncertainty
    encoder_maps, engine, precision = segmentation.encoder_maps, segmentation.engine, segmentation.precision
    warnings += segmentation.warnings
    del segmentation
    et_assessable = bool(pre.presence[T1CE_CHANNEL])
    if not et_assessable:
        probabilities = merge_enhancement_into_core(probabilities)
        warnings.append("T1CE is missing: enhancing tumor is not assessable; the tumor core is reported as NCR "
                        "and no ET volume is measured")
    lap("network")
    fine = None
    if card.get("fine_stage") and run_fine_stage_too:
        fine = run_fine_stage(model_case, pre, probabilities, card["fine_stage"], model_folder, device_type, passes,
                              uncertainty and not fast, say,
                              network_ready=preloading.fine_stage.result
                              if model == preloading.model and preloading.fine_stage else None)
        if fine is not None:
            warnings += fine.warnings
            if not et_assessable:
                fine = fine._replace(probabilities=merge_enhancement_into_core(fine.probabilities))
    lap("fine_stage")

    # the classifiers (ONNX Runtime, which releases the GIL) run in ``pool`` while the maps go back to the input grid
    pending = None
    if classify:
        working_labels = np.argmax(probabilities, axis=0).astype(np.uint8)
        maps = EncoderMaps(card["sha256"], encoder_maps) if encoder_maps is not None else None
        pending = pool.submit(_timed, classify_case, pre.image, pre.presence, working_labels, model_folder,
                              uncertainty, say, maps)
        del maps
    encoder_maps = None  # the classifiers' task holds them (about 12 MB for a BraTS case) until it is done
    say("mapping results back to the input grid")
    # the uncertainty map (non-zero over most of the brain, so the largest to map back) goes back in a thread of its
    # own beside the probability maps, the labels and the post-processing (NumPy releases the GIL)
    mapping = ThreadPoolExecutor(max_workers=1)
    uncertainty_back = mapping.submit(_on_native, prepared, pre, entropy)
    mapping.shutdown(wait=False)
    thresholds = region_thresholds_for(card.get("postprocessing", {}), unseen) if postprocess else None
    # NCR, ED, ET; the background map is only read by the argmax, around the tumor
    reference_probs = [_on_native(prepared, pre, p) for p in probabilities[1:]]
    refined = _replace_in_region(prepared, fine, reference_probs) if fine is not None else None
    labels = (decode_regions(*reference_probs, thresholds) if thresholds
              else _argmax_labels(prepared, pre, probabilities[0], reference_probs))
    if refined is not None and not thresholds:
        _relabel(labels, reference_probs, refined)
    lap("resample")

    voxel_ml = case.geometry.voxel_volume_ml
    post_settings = card.get("postprocessing", {})
    widening = whole_tumor_threshold_for(post_settings, unseen) if postprocess and not thresholds else None
    enhancement_gate = (float(post_settings["min_enhancement_sd"]) if postprocess and et_assessable
                        and post_settings.get("min_enhancement_sd") is not None else None)
    edema_gate = (float(post_settings["min_flair_sd"]) if postprocess and "flair" in model_case.images
                  and post_settings.get("min_flair_sd") is not None else None)
    if postprocess:
        spacing_zyx = tuple(reversed(case.geometry.spacing))
        labels = remove_small_components(lesion_filter(labels, spacing_zyx), voxel_ml)
        if widening is not None:  # edema only, around the lesions kept: filtered again, so no removed core returns
            labels = remove_small_components(lesion_filter(widen_whole_tumor(labels, *reference_probs, widening),
                                                           spacing_zyx), voxel_ml)
        if enhancement_gate is not None or edema_gate is not None:
            labels = _signal_gates(labels, prepared, model_case, pre.input_brain_mask, enhancement_gate, edema_gate)
        labels = suppress_small_enhancement(labels, voxel_ml, float(post_settings.get("min_et_ml", 0.0)))
    volumes = volumes_ml(labels, voxel_ml)
    images = {name: case.geometry.image_from_array(reference_probs[k])
              for k, name in enumerate(("ncr", "ed", "et"))}
    uncertainty_map = uncertainty_back.result()
    if refined is not None:
        uncertainty_map[refined] = _fine_on_native(prepared, fine, fine.uncertainty)[refined]
    lap("postprocess")

    def finish(result: AnalysisResult) -> None:
        """Add the classifiers' fields (waiting for them: they ran beside the mapping back and the post-processing,
        and when the caller did not wait, beside what it did next), the grade from volumes and the log's end."""
        classification = Classification()
        if pending is not None:
            waited = time.perf_counter()
            classification, timings["classify"] = pending.result()
            timings["classify_wait"] = time.perf_counter() - waited
        result.warnings += classification.warnings + classification.apply_final_volumes(volumes, et_assessable)
        result.models += classification.models
        result.predictions = classification.predictions
        result.mgmt_late_fusion = classification.mgmt_late_fusion
        result.slice_grade = classification.slice_grade
        timings["total"] = time.perf_counter() - start
        say(f"done: WT {volumes['wt']:.1f} mL in {timings['total']:.1f} s")
        log.extend(f"warning: {w}" for w in result.warnings)

    return AnalysisResult(
        case_id=case.case_id,
        inputs={m: case.sources[m] for m in case.present},
        missing=case.missing,
        reference=case.reference,
        labels=case.geometry.image_from_array(labels),
        probabilities=images,
        uncertainty=case.geometry.image_from_array(uncertainty_map),
        volumes_ml=volumes,
        ratios=ratios(volumes),
        uncertainty_summary=uncertainty_summary(uncertainty_map, labels),
        models=[{"name": c["name"], "version": c["version"], "sha256": c["sha256"], "task": task}
                for c, task in [(card, "segmentation")] + ([(fine.card, "segmentation (fine stage)")] if fine else [])],
        settings={"device": device_type, "engine": engine, "precision": precision, "threads": engine_threads(),
                  "fast": fast, "passes": passes, "classify": classify,
                  "mc_dropout": bool(uncertainty and not fast), "postprocess": postprocess,
                  "et_assessable": et_assessable, "min_enhancement_sd": enhancement_gate, "min_flair_sd": edema_gate,
                  "wt_threshold": widening,
                  "fine_stage": None if fine is None else {"model": fine.card["name"], "engine": fine.engine,
                                                           "precision": fine.precision,
                                                           "working_spacing_mm": list(fine.pre.working.spacing),
                                                           "passes": fine.passes,
                                                           "region_voxels": [s.stop - s.start for s in fine.region]},
                  "working_spacing_mm": list(pre.working.spacing), "preprocessing": prepared.report},
        timings_s=timings,
        warnings=warnings,
        images=dict(prepared.registered),
        brain_mask=pre.input_brain_mask if _saw_registered_images(prepared, model_case) else None,
        dicom_sources=list(case.dicom_files.get(case.reference, [])),
        log=log,
        pending=finish,
    )
