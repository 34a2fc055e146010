"""5-fold cross-validation of the segmentation recipe over all real cases, resumable at every step.

    python -m training.segmentation.cross_validate --config training/configs/segmentation.yaml --run-dir runs/cv1
    python -m training.segmentation.cross_validate ... --folds 0,1     # some folds only (screening)
    python -m training.segmentation.cross_validate ... --report-only   # tables from what is predicted so far
    python -m training.segmentation.cross_validate ... --no-report     # train and predict only (a queue of folds)

For each fold (stratified by grade and source, ``training/common/folds.py``): train on the other folds
(``train_segmentation``, resumed from its checkpoint), store the fold model as a model card + weights, then analyse
each held-out case with ``GliomaAnalysisLib.analyze`` at default settings (``QUALITY_PASSES``, full resolution) without
post-processing and keep its probabilities (cropped to the brain, float16) as ``RUN/oof/<case>.npz``: every
post-processing choice is then scored on the same out-of-fold predictions. With all modalities, and with each
single modality missing (``--missing``, one fast pass). A run of models for cases without a modality
(``--absent-modalities flair``, usually warm-started with ``--init-weights``) is predicted and scored without it
only (its report's ``without``); ``compare_runs`` pairs it with another run's predictions without it.

The report (``RUN/cv_report.json`` and ``--table``, Markdown) holds the per-case Dice (WT, TC, ET) of each
post-processing variant, means, SDs, the chosen variant and the three worst cases with a picture of each. The
signal-gate variants (``ET_GATE_CHOICES``, ``ED_GATE_CHOICES``, each also with the small-ET floors
``MIN_ET_WITH_GATES`` after it) read each case's T1CE, T1 and FLAIR from the data roots as well.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Set, Tuple

import numpy as np
import SimpleITK as sitk

from GliomaAnalysisLib import MODALITIES, load_case
from GliomaAnalysisLib.io.labels import regions, to_contiguous
from GliomaAnalysisLib.pipeline.measures import dice
from GliomaAnalysisLib.pipeline.analysis import QUALITY_PASSES, argmax_uint8
from GliomaAnalysisLib.pipeline.signal_gates import SignalMaps, apply_gates, signal_maps
from GliomaAnalysisLib.pipeline.postprocess import (decode_regions, lesion_filter,
                                                    remove_small_components, suppress_small_enhancement,
                                                    widen_whole_tumor)

from ..common.config import parse_args
from ..common.datasets import CaseFolder, case_folders
from . import train_segmentation
from .pack_arrays import is_pack
from .published_report import load_published, published_missing, published_rows

MIN_ET_CHOICES = (0.0, 0.25, 0.5, 1.0, 2.0)
"""mL: candidate thresholds below which a predicted enhancement is relabelled NCR (scored in CV)."""
REGIONS = ("wt", "tc", "et")
REGION_THRESHOLDS = ((0.5, 0.5, 0.15), (0.5, 0.5, 0.2), (0.5, 0.5, 0.3), (0.5, 0.4, 0.2),
                     (0.6, 0.5, 0.2), (0.7, 0.5, 0.2), (0.6, 0.6, 0.2), (0.7, 0.6, 0.2))
"""(t_wt, t_tc, t_et) candidates of the nested-region decoding (``postprocess.decode_regions``), scored in CV with
the lesion filter and the chosen ET floor beside the argmax. The WT and TC thresholds above 0.5: the fold-0
predictions over-call edema and core in a 1-6 mm ring around most CBICA tumors (ninth session,
segmentation_screening.md)."""
REGION_MIN_ET = 0.5
ET_GATE_CHOICES = (0.25, 0.5, 0.75, 1.0)
"""SD: candidate ``min_enhancement_sd`` of the enhancement gate (``GliomaAnalysisLib.pipeline.signal_gates``):
predicted ET voxels less than this brighter on T1CE than on T1 become NCR. Scored after the argmax and the lesion
filter, when the cases' images are at hand (``report(..., folders)``)."""
ED_GATE_CHOICES = (0.25, 0.5)
"""SD: candidate ``min_flair_sd`` of the edema gate: predicted ED voxels whose FLAIR z-score is below it become
background. Scored on top of each enhancement gate. Not above 0.5 SD: on glioma_seg 0.3.1's out-of-fold predictions
0.75 and 1.0 SD scored higher over the 31 cases (WT +0.015 / +0.016 against +0.010 at 0.5), but all of that extra
came from the 13 CBICA cases, whose experts draw a tight edema; the 18 others lost WT on average at 1.0 SD (an LGG
-0.053, a BraTS 2013 case -0.091) and gained at 0.5 SD (segmentation_screening.md, twentieth session)."""
MIN_ET_WITH_GATES = (0.25, 0.5)
"""mL: the small-ET floors also scored after each gate variant (``...+min_et_0.25ml``; ``analyze`` applies the
gates first, then the floor). The gates keep a false 0.08 mL fragment of ET in an ET-free LGG, which the floor
removes; the floor alone keeps an over-called ET (2.25 mL for a true 0.22) that the gates trim to 0.36 mL (thirty-third
session, folds 0-1)."""
WT_THRESHOLD_CHOICES = (0.45, 0.4, 0.3)
"""P(WT) candidates of the argmax variants that add edema after the lesion filter where the argmax left background
(``lesion_filter+wt_0.4...``; ``postprocess.widen_whole_tumor``, then filtered again; the gates and floors after it):
the two-stage pair under-calls the whole tumor outside CBICA's tight edema (folds 0-2, thirty-sixth session)."""
CHOICE_TOLERANCE = 0.002
"""Summed mean Dice (WT + TC + ET) by which a variant must beat every variant listed before it (the simpler ones) to be
chosen: among the 100-odd variants a gate added for +0.0001 WT is noise (on folds 0-2 of the pair, an edema gate at
0.25 SD), and choosing it is how a search over many variants overfits its cases."""
MISSING_WT_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5)
"""t_WT candidates for a case without one modality (with the chosen t_TC, t_ET; the all-four t_WT is always one),
scored on the predictions without it: without FLAIR the networks under-call edema (P(WT) stays below 0.5 over much
of it)."""


def build_parser() -> argparse.ArgumentParser:
    parser = train_segmentation.build_parser()
    parser.description = __doc__
    parser.add_argument("--folds", default=None, help="comma-separated folds to run (default: all)")
    parser.add_argument("--report-only", action="store_true", help="no training or prediction: report only")
    parser.add_argument("--no-report", action="store_true",
                        help="train and predict only (the report over every variant takes minutes a fold: run it "
                             "once with --report-only when the folds are in)")
    parser.add_argument("--missing", action="store_true", help="also predict with each single modality missing")
    parser.add_argument("--table", default=None, help="write the Markdown report here as well")
    parser.add_argument("--published", default=None,
                        help="a published cv_report.json whose per-case rows stand in for the folds this run did not "
                             "predict (their predictions are gone with the machine that made them)")
    return parser


def fold_args(args: argparse.Namespace, fold: int) -> argparse.Namespace:
    """The train_segmentation arguments of one fold (its own run folder, resumed)."""
    values = dict(vars(args))
    values.update(run_dir=str(Path(args.run_dir) / f"fold{fold}"), fold=str(fold), resume=True)
    return argparse.Namespace(**values)


def fold_network(run: Path, fold: int):
    """(GliomaSegNet in eval mode with ``run/fold<fold>``'s final weights, the fold's config.json as a dict)."""
    from safetensors.torch import load_file

    from GliomaAnalysisLib.models.network import GliomaSegNet, NetworkConfig

    config = json.loads((run / f"fold{fold}" / "config.json").read_text())
    model = GliomaSegNet(NetworkConfig.from_dict(config["network"]))
    model.load_state_dict(load_file(str(run / f"fold{fold}" / "final.safetensors")))
    return model.eval(), config


def store_fold_model(run: Path, fold: int, folder: Optional[Path] = None, name: Optional[str] = None,
                     **card_fields) -> Path:
    """``folder``/``name``.{json,safetensors} (default fold{k}/model/glioma_seg_fold{k}) from the fold's final
    weights, the card completed with ``card_fields``; returns the folder. A stored model is kept."""
    from GliomaAnalysisLib.models.model_store import save_model

    folder = folder or run / f"fold{fold}" / "model"
    name = name or f"glioma_seg_fold{fold}"
    if (folder / f"{name}.json").is_file():
        return folder
    model, config = fold_network(run, fold)
    spacing = config["args"]["spacing"]
    card = {"version": f"cv-fold{fold}", "task": "glioma subregion segmentation (cross-validation fold model)",
            "preprocessing": {"spacing_mm": [spacing] * 3, "pad_multiple": 8},
            "validation_split": config["validation_cases"], "train_cases": config["train_cases"], **card_fields}
    save_model(model, card, folder, name)
    return folder


def predict_held_out(run: Path, fold: int, folders: Dict[str, CaseFolder], missing: bool,
                     model_dir: Optional[Path] = None, out: Optional[Path] = None, fast: bool = False) -> None:
    """Analyse every held-out case of ``fold`` (default settings, no post-processing; ``fast``: one network pass,
    which the predictions without a modality always are; a fine stage its card names runs in every mode) into
    ``out``/oof/ (default RUN): by the fold's model glioma_seg_fold{k}, from ``model_dir`` when given (else the fold's
    own)."""
    from GliomaAnalysisLib.models.model_store import load_model_cached
    from GliomaAnalysisLib.models.onnx_engine import load_parts
    from GliomaAnalysisLib.pipeline.analysis import analyze

    config = json.loads((run / f"fold{fold}" / "config.json").read_text())
    model_dir = model_dir or store_fold_model(run, fold)
    out_run = out or run
    load_model_cached.cache_clear()
    load_parts.cache_clear()
    absent = config["args"].get("absent_modalities")
    variants: List[Optional[str]] = [absent_modality(absent)] if absent else \
        [None] + (list(MODALITIES) if missing else [])
    for case_id in config["validation_cases"]:
        for drop in variants:
            target = out_run / "oof" / (f"{case_id}.npz" if drop is None else f"{case_id}-without_{drop}.npz")
            if target.is_file():
                continue
            found = folders[case_id]
            files = {m: p for m, p in found.files.items() if m != drop}
            case = load_case(files, segmentation=found.segmentation, case_id=case_id)
            started = time.perf_counter()
            result = analyze(case, model=f"glioma_seg_fold{fold}", model_dir=model_dir, classify=False,
                             postprocess=False, fast=fast or drop is not None, fine_stage=True)
            seconds = time.perf_counter() - started
            save_prediction(target, case, result, fold, seconds)
            print(f"fold {fold} {case_id} {drop or 'all'}: {seconds:.1f} s", file=sys.stderr, flush=True)


def absent_modality(text: str) -> str:
    """The one modality a run's ``--absent-modalities`` names (its models are for cases without it: they are only
    predicted without it); more than one is a one-line error."""
    names = [m for m, absent in zip(MODALITIES, train_segmentation.absent_modalities(text)) if absent]
    if len(names) != 1:
        raise SystemExit(f"error: --absent-modalities {text!r}: cross-validation predicts runs with one absent "
                         f"modality")
    return names[0]


def save_prediction(out: Path, case, result, fold: int, seconds: float = 0.0) -> None:
    """One out-of-fold prediction as ``out`` (.npz, written atomically): the NCR / ED / ET probabilities
    (float16), the truth and the uncertainty, cropped to the box around the tumor and the prediction, with the passes,
    engine and precision that made them (and the fine stage's model and passes, if one ran)."""
    truth = to_contiguous(sitk.GetArrayFromImage(case.segmentation), case.segmentation_convention)
    probabilities = np.stack([sitk.GetArrayFromImage(result.probabilities[k]) for k in ("ncr", "ed", "et")])
    uncertainty = sitk.GetArrayFromImage(result.uncertainty)
    box = _box(truth > 0, probabilities.sum(0) > 0.05)
    write_prediction(out, probabilities=probabilities[(slice(None),) + box].astype(np.float16),
                     truth=truth[box], uncertainty=uncertainty[box].astype(np.float16),
                     box=np.array([[s.start, s.stop] for s in box]), fold=fold,
                     spacing_zyx=np.array(list(reversed(case.geometry.spacing))), seconds=seconds,
                     passes=result.settings["passes"], engine=result.settings["engine"],
                     precision=result.settings["precision"],
                     fine_stage=(result.settings.get("fine_stage") or {}).get("model", ""),
                     fine_passes=(result.settings.get("fine_stage") or {}).get("passes", 0))


def write_prediction(out: Path, **fields) -> None:
    """A stored prediction's ``fields`` as ``out`` (compressed .npz), written atomically through ``<out>.tmp.npz``,
    its folder made if needed."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **fields)
    tmp.replace(out)


def _box(*masks: np.ndarray, margin: int = 30) -> tuple:
    """Bounding box (slices) of the union of ``masks`` grown by ``margin`` voxels (the whole array if empty)."""
    union = np.zeros(masks[0].shape, dtype=bool)
    for mask in masks:
        union |= mask
    if not union.any():
        return tuple(slice(0, n) for n in union.shape)
    coords = np.nonzero(union)
    return tuple(slice(max(0, int(c.min()) - margin), min(n, int(c.max()) + 1 + margin))
                 for c, n in zip(coords, union.shape))


def decode(probabilities: np.ndarray) -> np.ndarray:
    """(3, Z, Y, X) NCR, ED, ET probabilities -> contiguous labels, argmax with background = 1 - sum (as analyze)."""
    return argmax_uint8([1.0 - probabilities.sum(axis=0), *probabilities])


def signal_maps_of(path: Path, folders: Dict[str, CaseFolder]) -> SignalMaps:
    """The signal maps (``signal_gates.signal_maps``) of the case of one stored out-of-fold prediction, on its box,
    from the images that prediction saw (``<case>-without_<modality>.npz``: without that one)."""
    case_id, _, drop = path.stem.partition("-without_")
    if case_id not in folders:
        raise SystemExit(f"error: {path}: case {case_id} is not under the data roots given; its signals cannot be "
                         f"measured")
    found = folders[case_id]
    case = load_case({m: p for m, p in found.files.items() if m != drop}, case_id=case_id)
    box = tuple(slice(int(a), int(b)) for a, b in np.load(path)["box"])
    return signal_maps({m: sitk.GetArrayViewFromImage(case.images[m]) for m in case.present}, box)


def score_variants(path: Path, folders: Optional[Dict[str, CaseFolder]] = None) -> Dict[str, Dict[str, float]]:
    """Dice per region of each post-processing variant of one stored out-of-fold prediction; with the case
    ``folders`` (case id -> CaseFolder) also the signal-gate variants, which need the case's images."""
    data = np.load(path)
    probabilities = data["probabilities"].astype(np.float32)
    truth = data["truth"]
    spacing = tuple(float(s) for s in data["spacing_zyx"])
    voxel_ml = float(np.prod(spacing)) / 1000.0
    raw = decode(probabilities)
    filtered = remove_small_components(lesion_filter(raw, spacing), voxel_ml)
    variants = {"none": raw, "lesion_filter": filtered}
    for min_et in MIN_ET_CHOICES[1:]:
        variants[f"lesion_filter+min_et_{min_et:g}ml"] = suppress_small_enhancement(filtered, voxel_ml, min_et)
    bases = {"lesion_filter": filtered}
    for t_wt in WT_THRESHOLD_CHOICES:
        bases[widened_variant(t_wt)] = with_edema_added(filtered, probabilities, t_wt, spacing)
    variants.update(bases)
    if folders is not None:  # a gate without its modality leaves the labels as they are
        maps = signal_maps_of(path, folders)
        gated = {}
        for base, labels in bases.items():
            for et_gate in ET_GATE_CHOICES:
                for ed_gate in (None,) + ED_GATE_CHOICES:
                    gated[gate_variant(et_gate, ed_gate, base)] = apply_gates(labels, maps, et_gate, ed_gate)
        variants.update(gated)  # the gates alone first: a tie goes to the simpler variant
        for name, labels in gated.items():
            for min_et in MIN_ET_WITH_GATES:
                variants[f"{name}+min_et_{min_et:g}ml"] = suppress_small_enhancement(labels, voxel_ml, min_et)
    for thresholds in REGION_THRESHOLDS:
        variants[region_variant(thresholds)] = decode_region_variant(probabilities, thresholds, spacing)
    true_regions = regions(truth)
    scores = {}
    for name, labels in variants.items():
        predicted = regions(labels)
        scores[name] = {r: dice(predicted[r], true_regions[r]) for r in REGIONS}
        scores[name].update({f"{r}_ml_pred": float(predicted[r].sum() * voxel_ml) for r in REGIONS})
        scores[name].update({f"{r}_ml_true": float(true_regions[r].sum() * voxel_ml) for r in REGIONS})
    scores["uncertainty_in_tumor"] = float(data["uncertainty"][raw > 0].astype(np.float32).mean()) if (raw > 0).any() \
        else 0.0
    scores["fold"] = int(data["fold"])
    scores["passes"] = int(data["passes"]) if "passes" in data else 4  # predictions before the field: 4 passes
    scores["precision"] = str(data["precision"]) if "precision" in data else "unrecorded"  # bf16 | f32
    return scores


def decode_region_variant(probabilities: np.ndarray, thresholds: Sequence[float],
                          spacing: Sequence[float]) -> np.ndarray:
    """Labels (Z, Y, X) of a nested-region decoding variant: (t_WT, t_TC, t_ET) on probabilities (3, Z, Y, X), then
    the lesion filter, small components removed and the ``REGION_MIN_ET`` floor (spacing in mm, z-y-x)."""
    voxel_ml = float(np.prod(spacing)) / 1000.0
    decoded = remove_small_components(lesion_filter(decode_regions(*probabilities, thresholds), spacing), voxel_ml)
    return suppress_small_enhancement(decoded, voxel_ml, REGION_MIN_ET)


def gate_variant(et_gate: float, ed_gate: Optional[float] = None, base: str = "lesion_filter") -> str:
    """The report's name of a signal-gate variant, e.g. ``lesion_filter+et_gate_0.5sd+ed_gate_0.25sd`` (after
    ``base``, e.g. ``lesion_filter+wt_0.4``)."""
    return f"{base}+et_gate_{et_gate:g}sd" + ("" if ed_gate is None else f"+ed_gate_{ed_gate:g}sd")


def widened_variant(t_wt: float) -> str:
    """The report's name of the argmax variant with edema added where P(WT) >= ``t_wt``: ``lesion_filter+wt_0.4``."""
    return f"lesion_filter+wt_{t_wt:g}"


def wt_threshold_of(variant: str) -> Optional[float]:
    """The P(WT) threshold of a variant that adds edema after the lesion filter (``...+wt_0.4...``), else None."""
    match = re.search(r"\+wt_([0-9.]+)(?:\+|$)", variant)
    return float(match.group(1)) if match else None


def gate_thresholds_of(variant: str) -> Tuple[Optional[float], Optional[float]]:
    """(``min_enhancement_sd``, ``min_flair_sd``) of a variant name, None for a gate it does not name."""
    found = [re.search(rf"{gate}_gate_([0-9.]+)sd", variant) for gate in ("et", "ed")]
    return tuple(float(m.group(1)) if m else None for m in found)


def region_variant(thresholds: Sequence[float]) -> str:
    """The report's name of a nested-region decoding variant, e.g. ``regions_0.5_0.5_0.2+lesion_filter+min_et_0.5ml``."""
    return "regions_" + "_".join(f"{t:g}" for t in thresholds) + f"+lesion_filter+min_et_{REGION_MIN_ET:g}ml"


def first_of_near_best(names: Sequence[str], score: Callable[[str], float]) -> str:
    """The first of ``names`` (simplest first) whose ``score`` is within ``CHOICE_TOLERANCE`` of the best."""
    best = max(score(n) for n in names)
    return next(n for n in names if score(n) >= best - CHOICE_TOLERANCE)


def nested_choice(rows: Dict[str, Dict], variant_names: Sequence[str]) -> Dict:
    """The choice of post-processing validated honestly: for each fold, the variant with the best WT + TC + ET (within
    ``CHOICE_TOLERANCE``, the simplest) on the other folds' cases, scored on the fold's cases. Returns {choices: {fold:
    variant}, dice: summary}."""
    folds = sorted({row["fold"] for row in rows.values()})
    choices, scored = {}, {}
    for fold in folds:
        others = {c: r for c, r in rows.items() if r["fold"] != fold}
        if not others:
            continue
        means = {v: sum(summarise(others, v)[r]["mean"] for r in REGIONS) for v in variant_names}
        choices[fold] = first_of_near_best(variant_names, means.__getitem__)
        scored.update({c: {"nested": r[choices[fold]]} for c, r in rows.items() if r["fold"] == fold})
    return {"choices": choices, "dice": summarise(scored, "nested") if scored else None}


def summarise(rows: Dict[str, Dict], variant: str) -> Dict[str, Dict[str, float]]:
    values = {r: np.array([row[variant][r] for row in rows.values()]) for r in REGIONS}
    return {r: {"mean": round(float(v.mean()), 4), "sd": round(float(v.std(ddof=1)) if len(v) > 1 else 0.0, 4),
                "se": round(float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0, 4),
                "min": round(float(v.min()), 4)} for r, v in values.items()}


def report(run: Path, table: Optional[Path] = None, folders: Optional[Dict[str, CaseFolder]] = None,
           without: Optional[str] = None, published: Optional[Path] = None) -> Dict:
    """Score every stored out-of-fold prediction, choose the post-processing, write cv_report.json (+ table). With
    the cases' ``folders`` the signal-gate variants are scored (every case must then be under them) and the worst
    cases pictured. ``without``: a run of models for cases without that modality, scored on its predictions
    without it (``<case>-without_<modality>.npz``). ``published``: a report whose per-case rows stand in for the
    folds not predicted in ``run`` (``published_report``)."""
    suffix = f"-without_{without}" if without else ""
    files = sorted(p for p in (run / "oof").glob(f"*{suffix}.npz") if ("-without_" in p.name) == bool(without))
    if not files:
        raise SystemExit(f"error: {run / 'oof'}: no out-of-fold predictions yet")
    earlier = load_published(published, without) if published else None
    rows = {p.stem[:len(p.stem) - len(suffix)]: score_variants(p, folders) for p in files}
    scored = set(rows)  # the cases predicted in this run (the rest: the published report's)
    variant_names = [k for k, v in next(iter(rows.values())).items() if isinstance(v, dict)]
    if earlier:
        rows = dict(sorted({**rows, **published_rows(earlier, rows, variant_names, published)}.items()))
    summaries = {v: summarise(rows, v) for v in variant_names}
    chosen = first_of_near_best(variant_names, lambda v: sum(summaries[v][r]["mean"] for r in REGIONS))
    nested = nested_choice(rows, variant_names)
    if earlier and earlier["chosen"] != chosen:
        print(f"{published}: chose {earlier['chosen']}, this report {chosen}: the study without each modality "
              f"covers the folds predicted here only (its readings were of the other variant)", file=sys.stderr)
    gated = any(t is not None for t in gate_thresholds_of(chosen))
    predicted_folds = {rows[c]["fold"] for c in scored}
    missing, missing_rows, carried = (({}, {}, {}) if without else
                                      _missing_summary(run, rows, chosen, predicted_folds, folders if gated else None,
                                                       earlier))
    worst = sorted(rows, key=lambda c: rows[c][chosen]["wt"] + rows[c][chosen]["tc"] + rows[c][chosen]["et"])[:3]
    et_free = [c for c, row in rows.items() if row[chosen]["et_ml_true"] < 0.01]
    result = {"cases": len(rows), "without": without, "folds_done": sorted({row["fold"] for row in rows.values()}),
              "passes": sorted({row["passes"] for row in rows.values()}),
              "precisions": sorted({row["precision"] for row in rows.values()}),
              "published_folds": sorted({row["fold"] for c, row in rows.items() if c not in scored}),
              "variants": summaries, "chosen": chosen, "nested_choice": nested, "worst_cases": worst,
              "et_free_cases": {c: round(rows[c][chosen]["et_ml_pred"], 3) for c in et_free},
              "missing_modality": missing, "missing_per_case": missing_rows, "missing_published_means": carried,
              "per_case": rows,
              "uncertainty_vs_wt_dice_spearman": _spearman([rows[c]["uncertainty_in_tumor"] for c in rows],
                                                           [rows[c][chosen]["wt"] for c in rows])}
    (run / "cv_report.json").write_text(json.dumps(result, indent=2))
    if table:
        table.parent.mkdir(parents=True, exist_ok=True)
        pictures = _pictures(run, worst, scored, table.parent, folders, suffix, published) if folders else {}
        table.write_text(markdown(result, pictures))
    return result


def _missing_summary(run: Path, rows: Dict[str, Dict], chosen: str, predicted_folds: Set[int],
                     folders: Optional[Dict[str, CaseFolder]] = None, published: Optional[Dict] = None
                     ) -> Tuple[Dict[str, Dict], Dict[str, Dict], Dict[str, Dict]]:
    """Mean WT/TC/ET Dice without each modality against the same cases with all, on the cases where both exist, and
    the WT-threshold study (``threshold_study``) for the chosen decoding, with the per-case rows they come from
    ({modality: {case: {fold, chosen: {r: Dice}, readings: {reading: {r: Dice}}}}}) and the older published means
    they include ({modality: group}, carried into this report so that it can stand in for them in turn).
    ``predicted_folds``: the folds predicted in ``run``; ``folders``: the cases' images, for a chosen variant with
    signal gates; ``published``: a report standing in for the other folds."""
    summary, per_case, carried = {}, {}, {}
    for modality in MODALITIES:
        paths = sorted((run / "oof").glob(f"*-without_{modality}.npz"))
        cases, group = published_missing(published, modality, chosen, predicted_folds)
        readings = missing_threshold_rows(paths, chosen, folders)
        for path in paths:
            case_id = path.name.split("-without_")[0]
            scores = score_variants(path, folders)[chosen]
            cases[case_id] = {"fold": readings[case_id]["fold"], "chosen": {r: scores[r] for r in REGIONS},
                              "readings": {k: v for k, v in readings[case_id].items() if k != "fold"}}
        common = [c for c in cases if c in rows]
        if not common and group is None:
            continue
        per_case[modality] = {c: cases[c] for c in common}
        if group:
            carried[modality] = group
        groups = [case_group({"fold": cases[c]["fold"], **cases[c]["readings"]}) for c in common]
        old = group["summary"] if group else {"cases": 0}
        n = len(common) + old["cases"]
        summary[modality] = {"cases": n, **{r: round((sum(cases[c]["chosen"][r] for c in common)
                                                      + old["cases"] * old.get(r, 0.0)) / n, 4) for r in REGIONS},
                             **{f"{r}_with_all": round((sum(rows[c][chosen][r] for c in common)
                                                        + old["cases"] * old.get(f"{r}_with_all", 0.0)) / n, 4)
                                for r in REGIONS}}
        summary[modality]["wt_threshold"] = threshold_study(groups + ([group] if group else []), own_reading(chosen))
    return summary, per_case, carried


def region_thresholds_of(variant: str) -> Optional[List[float]]:
    """(t_WT, t_TC, t_ET) of a ``regions_...`` variant name, None for the argmax variants."""
    if not variant.startswith("regions_"):
        return None
    return [float(t) for t in variant.split("+")[0].split("_")[1:]]


def _threshold_text(t_wt: Optional[float]) -> str:
    """A study's best t_WT as the tables print it (None: the argmax alone)."""
    return "argmax" if t_wt is None else f"{t_wt:g}"


def with_edema_added(filtered: np.ndarray, probabilities: np.ndarray, t_wt: float,
                     spacing: Sequence[float]) -> np.ndarray:
    """Lesion-filtered labels (Z, Y, X) with edema where P(WT) >= ``t_wt`` (``widen_whole_tumor``; probabilities
    (3, Z, Y, X) NCR, ED, ET), filtered again, as ``analyze`` does (spacing in mm, z-y-x)."""
    voxel_ml = float(np.prod(spacing)) / 1000.0
    return remove_small_components(lesion_filter(widen_whole_tumor(filtered, *probabilities, t_wt), spacing), voxel_ml)


def own_threshold(variant: str) -> Optional[float]:
    """A chosen variant's own whole-tumor threshold: a regions variant's t_WT, an argmax variant's ``+wt_``, else
    None (the argmax alone)."""
    thresholds = region_thresholds_of(variant)
    return thresholds[0] if thresholds else wt_threshold_of(variant)


def own_reading(variant: str) -> str:
    """The name of a chosen variant's own whole-tumor reading in the missing-modality study (``own_threshold`` as the
    tables print it)."""
    return _threshold_text(own_threshold(variant))


def argmax_variant_labels(labels: np.ndarray, variant: str, spacing: Sequence[float],
                          maps: Optional[SignalMaps] = None, probabilities: Optional[np.ndarray] = None,
                          t_wt: Optional[float] = None) -> np.ndarray:
    """The post-processing of an argmax ``variant`` (``none``, ``lesion_filter``, ``...+et_gate_0.5sd``,
    ``...+min_et_0.25ml``) on ``labels`` (Z, Y, X), as ``score_variants`` scores it and ``analyze`` runs it;
    ``maps``: the case's signal maps, needed by a variant with gates (spacing in mm, z-y-x). With a P(WT) threshold,
    ``t_wt`` or else the variant's own (``+wt_0.4``), and the (3, Z, Y, X) ``probabilities``, edema is added after the
    lesion filter (``widen_whole_tumor``), filtered again, as ``analyze`` does for a card's ``wt_threshold`` and
    ``missing_wt_thresholds``."""
    if variant == "none":
        return labels
    voxel_ml = float(np.prod(spacing)) / 1000.0
    out = remove_small_components(lesion_filter(labels, spacing), voxel_ml)
    t_wt = t_wt if t_wt is not None else wt_threshold_of(variant)
    if t_wt is not None:
        out = with_edema_added(out, probabilities, t_wt, spacing)
    gates = gate_thresholds_of(variant)
    if any(g is not None for g in gates):
        if maps is None:
            raise ValueError(f"variant {variant} gates on the images: signal maps needed")
        out = apply_gates(out, maps, *gates)
    match = re.search(r"min_et_([0-9.]+)ml", variant)
    return suppress_small_enhancement(out, voxel_ml, float(match.group(1))) if match else out


def missing_threshold_rows(paths: Sequence[Path], chosen: str,
                           folders: Optional[Dict[str, CaseFolder]] = None) -> Dict[str, Dict]:
    """{case: {fold, reading: {wt, tc, et}}}: the Dice of each whole-tumor reading of the ``chosen`` decoding on
    predictions without one modality (``<case>-without_<modality>.npz``): each ``MISSING_WT_THRESHOLDS`` candidate and
    the chosen variant's own reading (a regions variant: its t_WT, with its t_TC, t_ET; an argmax variant: its ``+wt_``
    threshold or else ``argmax``, the candidates then adding edema after its lesion filter,
    ``argmax_variant_labels``). ``folders``: the cases' images, for a variant with signal gates."""
    thresholds = region_thresholds_of(chosen)
    t_own = own_threshold(chosen)
    candidates = sorted(set(MISSING_WT_THRESHOLDS) | ({t_own} if t_own is not None else set()))
    gated = any(g is not None for g in gate_thresholds_of(chosen))
    rows = {}
    for path in paths:
        data = np.load(path)
        probabilities = data["probabilities"].astype(np.float32)
        spacing = tuple(float(s) for s in data["spacing_zyx"])
        truth = regions(data["truth"])
        case_id = path.name.split("-without_")[0]
        rows[case_id] = {"fold": int(data["fold"])}
        if thresholds:
            readings = {f"{t:g}": decode_region_variant(probabilities, (t, *thresholds[1:]), spacing)
                        for t in candidates}
        else:
            maps = signal_maps_of(path, folders) if gated else None
            argmax = decode(probabilities)
            readings = {} if t_own is not None else {"argmax": argmax_variant_labels(argmax, chosen, spacing, maps)}
            readings.update({f"{t:g}": argmax_variant_labels(argmax, chosen, spacing, maps, probabilities, t)
                             for t in candidates})
        for name, labels in readings.items():
            predicted = regions(labels)
            rows[case_id][name] = {r: dice(predicted[r], truth[r]) for r in REGIONS}
    return rows


def case_group(row: Dict) -> Dict:
    """One case's row of readings as a group of ``threshold_study``: {folds: [fold], n: 1, dice: {reading: Dice}}."""
    return {"folds": [row["fold"]], "n": 1, "dice": {k: v for k, v in row.items() if k != "fold"}}


def weighted_means(groups: Sequence[Dict], name: str) -> Dict[str, float]:
    """Mean Dice per region of reading ``name`` over the cases of ``groups`` (each group's means weighted by its n)."""
    n = sum(g["n"] for g in groups)
    return {r: round(sum(g["n"] * g["dice"][name][r] for g in groups) / n, 4) for r in REGIONS}


def threshold_study(groups: Sequence[Dict], own: str) -> Dict:
    """Mean Dice of each whole-tumor reading over ``groups`` of cases ({folds, n, dice: {reading: {r: mean}}}; one
    case each, or a published report's folds with their ``nested`` means and ``nested_choices`` already made), the
    best over all cases (``best``, what a card ships; None: the argmax alone) and the nested choice (each fold's
    chosen on the other folds' cases, scored on its own: the honest estimate of ``best``). Readings are ranked
    ``own`` first, then by falling threshold: near-ties (``CHOICE_TOLERANCE``) go to the chosen variant's own
    reading, then to the higher threshold (the one that calls less)."""
    readings = set(groups[0]["dice"])
    names = [own] + sorted((t for t in readings if t != own), key=float, reverse=True)
    by_name = {name: weighted_means(groups, name) for name in names}
    best = first_of_near_best(names, lambda t: sum(by_name[t].values()))
    choices, parts = {}, []
    for group in groups:
        if group.get("nested") is not None:
            choices.update({int(f): (None if t is None else f"{t:g}") for f, t in group["nested_choices"].items()})
            parts.append((group["n"], group["nested"]))
    for fold in sorted({f for g in groups if g.get("nested") is None for f in g["folds"]}):
        others = [g for g in groups if fold not in g["folds"]]
        if not others:
            continue
        choices[fold] = first_of_near_best(names, lambda t: sum(weighted_means(others, t).values()))
        parts += [(g["n"], g["dice"][choices[fold]]) for g in groups if g.get("nested") is None and fold in g["folds"]]
    nested = ({r: round(sum(n * d[r] for n, d in parts) / sum(n for n, _ in parts), 4) for r in REGIONS}
              if parts else None)
    return {"dice": by_name, "own": own, "best": None if best == "argmax" else float(best),
            "nested_choices": {fold: (None if t in (None, "argmax") else float(t))
                               for fold, t in sorted(choices.items())},
            "nested": nested}


def _spearman(a: Sequence[float], b: Sequence[float]) -> Optional[float]:
    if len(a) < 3 or len(set(a)) < 2 or len(set(b)) < 2:  # no rank correlation of a constant
        return None
    from scipy.stats import spearmanr
    return round(float(spearmanr(a, b).statistic), 3)


def _pictures(run: Path, cases: Sequence[str], scored: Set[str], out_dir: Path, folders: Dict[str, CaseFolder],
              suffix: str = "", published: Optional[Path] = None) -> Dict[str, str]:
    """One PNG per case: the axial FLAIR slice with most tumor, truth (left) and prediction (right) overlaid, from
    ``<case><suffix>.npz`` for a case ``scored`` in ``run``; a case of the ``published`` report's folds: its picture
    there, copied (none if absent)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pictures = {}
    for case_id in cases:
        path = out_dir / f"cv_worst_{case_id}.png"
        if case_id not in scored:
            earlier = published.parent / path.name if published else None
            if earlier is not None and earlier.is_file():
                if earlier.resolve() != path.resolve():
                    shutil.copyfile(earlier, path)
                pictures[case_id] = path.name
            continue
        data = np.load(run / "oof" / f"{case_id}{suffix}.npz")
        box = tuple(slice(int(a), int(b)) for a, b in data["box"])
        case = load_case(folders[case_id].files, case_id=case_id)  # the reference grid of the stored arrays
        flair = sitk.GetArrayFromImage(case.images.get("flair", case.images[case.present[0]]))[box]
        truth = data["truth"]
        prediction = decode(data["probabilities"].astype(np.float32))
        z = int(np.argmax((truth > 0).sum(axis=(1, 2)) + (prediction > 0).sum(axis=(1, 2))))
        background = flair[z]
        fig, axes = plt.subplots(1, 2, figsize=(6, 3), dpi=80)
        for ax, labels, title in ((axes[0], truth, "truth"), (axes[1], prediction, "prediction")):
            ax.imshow(background, cmap="gray")
            ax.imshow(np.ma.masked_equal(labels[z], 0), cmap="brg", vmin=1, vmax=3, alpha=0.45)
            ax.set_title(f"{case_id} {title}", fontsize=7)
            ax.axis("off")
        fig.savefig(path, bbox_inches="tight")
        plt.close(fig)
        pictures[case_id] = path.name
    return pictures


def markdown(result: Dict, pictures: Dict[str, str]) -> str:
    chosen = result["chosen"]
    inputs = f", without {result['without'].upper()}" if result.get("without") else ""
    lines = [f"# Segmentation cross-validation ({result['cases']} real cases{inputs}, folds {result['folds_done']})",
             "",
             f"Out-of-fold predictions of `GliomaAnalysisLib.analyze` at default settings "
             f"({' and '.join(map(str, result.get('passes', [QUALITY_PASSES])))} network passes), full "
             "resolution, against the expert labels. Produced by `python -m training.segmentation.cross_validate "
             "--config training/configs/segmentation.yaml --run-dir RUN --table training/results/segmentation_cv.md`.",
             ""]
    if result.get("published_folds"):
        lines += [f"Folds {result['published_folds']}: each case's scores are read from the published report given "
                  "with `--published` (their predictions were made, and scored the same way, on an earlier machine); "
                  "the other folds are scored here.", ""]
    lines += ["| post-processing | WT mean (SD) | TC mean (SD) | ET mean (SD) | worst WT |",
              "| --- | --- | --- | --- | --- |"]
    for name, summary in result["variants"].items():
        mark = " **(chosen)**" if name == chosen else ""
        lines.append(f"| {name}{mark} | " + " | ".join(
            f"{summary[r]['mean']:.3f} ({summary[r]['sd']:.3f})" for r in REGIONS) + f" | {summary['wt']['min']:.3f} |")
    lines += ["", "Standard error of the mean (chosen): " + ", ".join(
        f"{r.upper()} {result['variants'][chosen][r]['se']:.3f}" for r in REGIONS), ""]
    nested = result.get("nested_choice") or {}
    if nested.get("dice"):
        lines += ["The chosen variant is the best of this table on these same cases, so its figures are a little "
                  "optimistic. Choosing it for each fold on the other folds only (nested) gives " + ", ".join(
                      f"{r.upper()} {nested['dice'][r]['mean']:.3f}" for r in REGIONS)
                  + " (choices per fold: " + ", ".join(f"{f}: {v}" for f, v in nested["choices"].items()) + ").", ""]
    if result["et_free_cases"]:
        lines += ["ET-free cases (true ET 0 mL): predicted ET " + ", ".join(
            f"{c} {v:.2f} mL" for c, v in result["et_free_cases"].items()), ""]
    if result["missing_modality"]:
        lines += ["| without | cases | WT | TC | ET | WT with all |", "| --- | --- | --- | --- | --- | --- |"]
        for modality, m in result["missing_modality"].items():
            lines.append(f"| {modality} | {m['cases']} | {m['wt']:.3f} | {m['tc']:.3f} | {m['et']:.3f} | "
                         f"{m['wt_with_all']:.3f} |")
        lines.append("")
        studies = {k: m["wt_threshold"] for k, m in result["missing_modality"].items() if m.get("wt_threshold")}
        if studies:
            names = list(next(iter(studies.values()))["dice"])
            lines += ["Whole-tumor threshold without each modality: mean WT Dice by t_WT (t_TC, t_ET as chosen; after "
                      "an argmax, background where P(WT) >= t_WT becomes edema); nested: t_WT "
                      "chosen for each fold on the other folds.", "",
                      "| without | " + " | ".join(t if t == "argmax" else f"t_WT {t}" for t in names)
                      + " | best | nested WT |",
                      "| --- |" + " --- |" * (len(names) + 2)]
            for modality, study in studies.items():
                nested_wt = f"{study['nested']['wt']:.3f}" if study["nested"] else "-"
                lines.append(f"| {modality} | " + " | ".join(f"{study['dice'][t]['wt']:.3f}" for t in names)
                             + f" | {_threshold_text(study['best'])} | {nested_wt} |")
            lines.append("")
    lines += ["| case | fold | WT | TC | ET | WT mL (true) | TC mL (true) | ET mL (true) |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for case_id, row in sorted(result["per_case"].items()):
        s = row[chosen]
        lines.append(f"| {case_id} | {row['fold']} | {s['wt']:.3f} | {s['tc']:.3f} | {s['et']:.3f} | "
                     + " | ".join(f"{s[f'{r}_ml_pred']:.1f} ({s[f'{r}_ml_true']:.1f})" for r in REGIONS) + " |")
    lines += ["", "## Worst cases", ""]
    for case_id in result["worst_cases"]:
        s = result["per_case"][case_id][chosen]
        lines.append(f"- {case_id}: WT {s['wt']:.3f}, TC {s['tc']:.3f}, ET {s['et']:.3f}")
        if case_id in pictures:
            lines.append(f"  ![{case_id}]({pictures[case_id]})")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = build_parser()
    args = parse_args(parser, argv)
    if args.report_only and args.no_report:
        parser.error("--report-only and --no-report exclude each other: give one")
    without = absent_modality(args.absent_modalities) if args.absent_modalities else None  # before any training
    if args.published:
        load_published(Path(args.published), without)
    run = Path(args.run_dir)
    packs = [root for root in args.data if is_pack(root)]
    if packs:
        print(f"error: {packs[0]} is a training pack; cross-validation predicts from the NIfTI files: give the data "
              f"roots (train folds from a pack with train_folds, then predict here)", file=sys.stderr)
        return 2
    folders = case_folders(args.data)
    if not folders:
        print(f"error: no labelled cases found under {', '.join(args.data)}", file=sys.stderr)
        return 2
    folds = range(args.n_folds) if args.folds is None else [int(f) for f in args.folds.split(",")]
    if not args.report_only:
        for fold in folds:
            if not (run / f"fold{fold}" / "final.safetensors").is_file():
                if train_segmentation.train(fold_args(args, fold)) is None:
                    return 2
            predict_held_out(run, fold, folders, args.missing)
    if args.no_report:
        return 0
    result = report(run, Path(args.table) if args.table else None, folders, without,
                    Path(args.published) if args.published else None)
    if without:
        print(f"{run}: models for cases without {without}, predicted and scored without it; paired with another "
              f"run's predictions without it by python -m training.segmentation.compare_runs {run} BASE_RUN",
              file=sys.stderr)
    print(json.dumps({"cases": result["cases"], "chosen": result["chosen"],
                      "mean": result["variants"][result["chosen"]]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
