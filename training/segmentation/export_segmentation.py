"""Turn a training run into shipped weights + model card, with metrics measured by the real pipeline.

    python -m training.segmentation.export_segmentation RUN_DIR [--out Resources/models] [--name glioma_seg]
        [--cv-report CV_RUN/cv_report.json] [--version 0.2.0] [--for-cases-without flair --primary glioma_seg]
        [--fast-model-of glioma_seg] [--fine-stage-of glioma_seg --window-max 80 --fine-passes 1]

The card leads with the recipe's cross-validation (``--cv-report``: every real case scored once, out of fold, by
``training/segmentation/cross_validate.py``): mean, SD and SE per region, the per-case table, the worst cases,
the ET-free cases and each single modality missing. A run trained on all cases (``--fold all``) has no validation
split; a run with one is also scored on it with ``GliomaAnalysisLib.analyze`` (default settings, full resolution,
with all modalities and with each one missing; Dice and HD95). The card also records the training set-up and the
sha256 of the weights.

``--for-cases-without M --primary P`` exports a model meant for cases without modality M (e.g. one trained with M
dropped far more often): the primary model P in ``--out`` names it in its card's ``missing_modality_models``
(``GliomaAnalysisLib/pipeline/model_choice.py``), so ``analyze`` segments such cases with it; P's weights are not
touched, its Markdown card is written again.

``--fast-model-of P`` exports a lighter model for ``analyze --fast``: P's card names it as its ``fast_model``, the
same way.

``--fine-stage-of P`` exports a finer model as P's second stage (``GliomaAnalysisLib/pipeline/fine_stage.py``): its
card gets its window (the run's crop, ``--window-max``), P's card names it as its ``fine_stage`` (with
``--margin-mm`` and ``--fine-passes``) and takes the post-processing and the cross-validation of ``--cv-report``,
which must be the two stages' (``training/segmentation/screen_fine_stage.py``); P's own cross-validation stays in
its card as ``cross_validation_without_fine_stage``, and P's card takes ``--version`` when given (the pair's outputs
are new; P's weights are not touched; without it P keeps its version, not the default's).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import SimpleITK as sitk
from safetensors.torch import load_file

from GliomaAnalysisLib import MODALITIES, load_case
from GliomaAnalysisLib.pipeline.analysis import QUALITY_PASSES, analyze
from GliomaAnalysisLib.io.labels import to_contiguous
from GliomaAnalysisLib.models.model_store import (RESOURCES, ModelError, load_model_cached, model_paths,
                                                 save_model, write_card)
from GliomaAnalysisLib.models.network import GliomaSegNet, NetworkConfig
from GliomaAnalysisLib.models.onnx_engine import load_parts
from GliomaAnalysisLib.pipeline.fine_stage import MARGIN_MM
from GliomaAnalysisLib.pipeline.model_choice import working_grid

from ..common.datasets import BRATS18, discover_cases
from .cross_validate import CHOICE_TOLERANCE, gate_thresholds_of, own_reading, region_thresholds_of, wt_threshold_of
from .evaluate import evaluate_pair
from ..common.run_record import git_commit

MODEL_VERSION = "0.1.0"
"""The version of an export without ``--version``."""


def training_seconds(log: List[Dict]) -> float:
    """Total training time from a log whose clock may restart at each resume."""
    total, last = 0.0, 0.0
    for record in log:
        if record["seconds"] < last:
            total += last
        last = record["seconds"]
    return total + last


def _loss(dice_weight: float, regions: Sequence[str] = ("wt", "tc", "et")) -> str:
    if not dice_weight:
        return "soft-target cross-entropy (NCR and ET merged in crops without T1CE)"
    return (f"soft-target cross-entropy + {dice_weight} x region Dice ({', '.join(r.upper() for r in regions)}; ET "
            f"scored only in crops with T1CE)")


def base_card(run_config: Dict, training_log: List[Dict], version: str = MODEL_VERSION) -> Dict:
    args = run_config["args"]
    return {
        "version": version,
        "task": "glioma subregion segmentation",
        "disclaimer": "Research use only; not a medical device.",
        "inputs": {"modalities": list(MODALITIES), "any_subset": True,
                   "expects": "skull-stripped, co-registered MRI (BraTS-style preprocessing)"},
        "label_map": {"0": "background", "1": "NCR (necrotic / non-enhancing core)", "2": "ED (edema)",
                      "3": "ET (enhancing tumor)"},
        "label_map_note": "contiguous inside the model; files use BraTS 2021 (ET=4) or BraTS 2023 (ET=3)",
        "preprocessing": {"orientation": "nearest LPS axis order", "crop": "brain bounding box + 10 mm",
                          "spacing_mm": [args["spacing"]] * 3, "normalisation": "z-score over brain voxels",
                          "pad_multiple": 8},
        "training_data": {
            "real_cases": [c for c in run_config["train_cases"] if not c.startswith("Phantom")],
            "synthetic_phantoms": len([c for c in run_config["train_cases"] if c.startswith("Phantom")]),
            "source": ", ".join(data_source(d) for d in (args["data"] if isinstance(args["data"], list)
                                                           else [args["data"]])),
        },
        "validation_split": run_config["validation_cases"],
        "training": {"steps": args["steps"], "batch": args["batch"], "crop_voxels": args["crop"],
                     "optimizer": "AdamW", "peak_lr": args["lr"], "schedule": "50-step warm-up, cosine",
                     "loss": _loss(args.get("dice_weight", 0.5), args.get("dice_regions") or ("wt", "tc", "et")),
                     "foreground_probability": args.get("foreground_probability"),
                     "modality_dropout": {"keep_all": args.get("keep_all_probability"), "drop_one": 0.3,
                                          "drop_one_weights_t1_t1ce_t2_flair": args.get("drop_one_weights", "1,1,1,1"),
                                          "never_shown": args.get("absent_modalities")},
                     "augmentation": "rotation, scaling, flips; per-channel gamma, contrast, brightness, noise, "
                                     "blur, bias field; modality dropout (training/segmentation/augmentation.py)",
                     "fold": args.get("fold"), "warm_restart_from": args.get("init_weights"),
                     "git_commit_at_start": run_config["git_commit"], "git_commit_at_export": git_commit(),
                     "wall_time_minutes": round(training_seconds(training_log) / 60, 1)},
    }


def evaluate_model(model_dir: Path, name: str, gt_root: Path, cases: List[str],
                   drop: Optional[str] = None) -> Dict:
    """Mean and per-case Dice/HD95 of the stored model on ``cases`` (``drop``: a modality left out)."""
    rows = []
    for found in discover_cases(gt_root):
        if found.case_id not in cases:
            continue
        files = {m: p for m, p in found.files.items() if m != drop}
        case = load_case(files, segmentation=found.segmentation, case_id=found.case_id)
        result = analyze(case, model=name, model_dir=model_dir)
        truth = to_contiguous(sitk.GetArrayFromImage(case.segmentation), case.segmentation_convention)
        metrics = evaluate_pair(sitk.GetArrayFromImage(result.labels), truth, tuple(reversed(case.geometry.spacing)))
        rows.append({"case": found.case_id, "seconds": round(result.timings_s["total"], 2),
                     **{k: round(v, 4) for k, v in metrics.items()}})
        print(f"  {drop or 'all'} {found.case_id}: " + " ".join(
            f"{k}={v:.3f}" for k, v in metrics.items() if k.startswith("dice")), file=sys.stderr, flush=True)
    keys = [k for k in rows[0] if k != "case"]
    return {"mean": {k: round(float(np.mean([r[k] for r in rows])), 4) for k in keys}, "cases": rows}


def cross_validation_section(report: Dict, caveat: Optional[str] = None) -> Dict:
    """The card's ``cross_validation`` entry from a ``cross_validate`` report (cv_report.json), with ``caveat`` (a
    sentence on how far its figures can be trusted) where one is given."""
    chosen = report["chosen"]
    rows = [{"case": case, "fold": row["fold"], **{r: round(row[chosen][r], 4) for r in ("wt", "tc", "et")},
             **{f"{r}_ml": round(row[chosen][f"{r}_ml_pred"], 2) for r in ("wt", "tc", "et")},
             **{f"{r}_ml_true": round(row[chosen][f"{r}_ml_true"], 2) for r in ("wt", "tc", "et")}}
            for case, row in sorted(report["per_case"].items())]
    return {"cases": report["cases"], "without": report.get("without"), "folds": report["folds_done"],
            "network_passes": report.get("passes"),
            "post_processing": chosen, "dice": report["variants"][chosen],
            "dice_nested": (report.get("nested_choice") or {}).get("dice"), "worst_cases": report["worst_cases"],
            "et_free_cases_predicted_et_ml": report["et_free_cases"],
            "missing_modality": report["missing_modality"], "per_case": rows,
            "how": "out-of-fold predictions of GliomaAnalysisLib.analyze (default settings, full resolution) "
                   "of the fold models of this recipe, folds stratified by grade and source "
                   "(training/segmentation/cross_validate.py)",
            **({"caveat": caveat} if caveat else {})}


def postprocessing_of(variant: str, missing_modality: Optional[Dict] = None) -> Dict:
    """The card's ``postprocessing`` settings read by ``analyze`` for a variant chosen in cross-validation
    (``lesion_filter+min_et_0.5ml`` -> ``{"min_et_ml": 0.5}``; ``regions_0.5_0.5_0.2+...`` adds
    ``region_thresholds``; ``...+et_gate_0.5sd+ed_gate_0.25sd`` -> ``min_enhancement_sd`` 0.5, ``min_flair_sd``
    0.25; the lesion filter always runs), with ``missing_region_thresholds`` from the report's ``missing_modality``
    studies (``missing_region_thresholds``)."""
    match = re.search(r"min_et_([0-9.]+)ml", variant)
    settings = {"min_et_ml": float(match.group(1)) if match else 0.0, "chosen_in_cross_validation": variant}
    for key, threshold in zip(("min_enhancement_sd", "min_flair_sd"), gate_thresholds_of(variant)):
        if threshold is not None:
            settings[key] = threshold
    thresholds = region_thresholds_of(variant)
    if thresholds:
        settings["region_thresholds"] = thresholds
    t_wt = wt_threshold_of(variant)
    if t_wt is not None:
        settings["wt_threshold"] = t_wt
    by_missing = missing_wt_thresholds(missing_modality or {}, own_reading(variant))
    if by_missing and thresholds:
        settings["missing_region_thresholds"] = {m: [t, *(float(x) for x in thresholds[1:])]
                                                 for m, t in by_missing.items()}
    elif by_missing:
        settings["missing_wt_thresholds"] = by_missing
    return settings


def missing_wt_thresholds(missing_modality: Dict, own: str) -> Dict[str, float]:
    """{modality: t_WT} for cases without a modality whose whole-tumor threshold study
    (``cross_validate.threshold_study``) pays: its best t_WT, kept only when choosing t_WT in cross-validation
    (nested) beats the chosen decoding's ``own`` reading (its t_WT, or ``argmax``) on the same cases by more than a
    near tie (WT + TC + ET, ``CHOICE_TOLERANCE``, the margin the variant choice itself ignores)."""
    out = {}
    for modality, summary in missing_modality.items():
        study = summary.get("wt_threshold") or {}
        fixed = study.get("dice", {}).get(own)
        if not study.get("nested") or fixed is None or study.get("best") is None or f"{study['best']:g}" == own:
            continue
        if sum(study["nested"].values()) > sum(fixed.values()) + CHOICE_TOLERANCE:
            out[modality] = float(study["best"])
    return out


def substitute_problem(args: argparse.Namespace, run_config: Dict) -> Optional[str]:
    """Why the ``--for-cases-without`` / ``--primary`` / ``--fast-model-of`` options of an export cannot work (None:
    they can): the first two both or neither, not with the third; another model than the export, a primary card in
    ``--out`` on the same working grid (spacing and divisor, which ``analyze`` needs to hand a case over), and a
    ``--cv-report`` (the thresholds without M; the accuracy a --fast user trades)."""
    fast_of = getattr(args, "fast_model_of", None)
    fine_of = getattr(args, "fine_stage_of", None)
    if fine_of:
        return fine_stage_problem(args, run_config)
    if not args.for_cases_without and not args.primary and not fast_of:
        return None
    if fast_of and (args.for_cases_without or args.primary):
        return "--fast-model-of does not go with --for-cases-without / --primary: one role per model"
    if not fast_of and not (args.for_cases_without and args.primary):
        return "--for-cases-without and --primary go together"
    option, primary = ("--fast-model-of", fast_of) if fast_of else ("--primary", args.primary)
    if primary == args.name:
        return f"{option} must name another model than --name"
    if not args.cv_report:
        return (f"{option} needs --cv-report: " + ("the card must say what --fast trades for its speed" if fast_of
                else "the model's thresholds without that modality come from it"))
    try:
        _, primary_path = model_paths(primary, args.out)
        primary_grid = working_grid(json.loads(primary_path.read_text()))
    except (ModelError, OSError, KeyError, TypeError, ValueError) as exc:
        return f"{option} {primary}: no usable card in {args.out} ({exc})"
    grid = working_grid({"preprocessing": {"spacing_mm": [run_config["args"]["spacing"]] * 3},
                         "network": run_config["network"]})
    if grid != primary_grid:
        return (f"{option} {primary} works on spacing {primary_grid[0]} mm, divisor {primary_grid[1]}; this run "
                f"on {grid[0]} mm, divisor {grid[1]}: analyze could not hand it a case")
    return None


def fine_stage_problem(args: argparse.Namespace, run_config: Dict) -> Optional[str]:
    """Why ``--fine-stage-of P`` cannot work (None: it can): alone of the model roles, another model than the export,
    with the two stages' ``--cv-report``, P's card in ``--out`` on a coarser grid than this run's, and a longest
    window the network can run."""
    primary = args.fine_stage_of
    if args.margin_mm is not None and args.margin_mm < 0:
        return f"--margin-mm must be 0 or more, not {args.margin_mm:g}"
    if args.for_cases_without or args.primary or getattr(args, "fast_model_of", None):
        return "--fine-stage-of does not go with --for-cases-without / --primary / --fast-model-of: one role per model"
    if primary == args.name:
        return "--fine-stage-of must name another model than --name"
    if not args.cv_report:
        return (f"--fine-stage-of needs --cv-report: the two stages' cross-validation, from which {primary}'s card "
                f"takes its post-processing")
    try:
        _, primary_path = model_paths(primary, args.out)
        primary_spacing = min(json.loads(primary_path.read_text())["preprocessing"]["spacing_mm"])
    except (ModelError, OSError, KeyError, TypeError, ValueError) as exc:
        return f"--fine-stage-of {primary}: no usable card in {args.out} ({exc})"
    if run_config["args"]["spacing"] >= primary_spacing:
        return (f"--fine-stage-of {primary}: this run works at {run_config['args']['spacing']} mm, no finer than "
                f"{primary}'s {primary_spacing} mm")
    crop, divisor = int(run_config["args"]["crop"]), NetworkConfig.from_dict(run_config["network"]).divisor
    longest = args.window_max or crop
    if longest < crop or longest % divisor:
        return f"--window-max must be a multiple of {divisor} no smaller than the run's crop ({crop}), not {longest}"
    if args.fine_passes is not None and args.fine_passes < 1:
        return f"--fine-passes must be a positive integer, not {args.fine_passes}"
    return None


def link_problem(out: Path, name: str, fine_stage_of: Optional[str]) -> Optional[str]:
    """Why a new export of ``name`` into ``out`` would break a coarse-to-fine pair (None: it would not): a fine
    stage exported again without ``--fine-stage-of`` would lose the window its first stage needs."""
    first = _stored_card(out, name).get("fine_stage_of")
    if first and not fine_stage_of:
        return (f"{model_paths(name, out)[1]}: {name} is the fine stage of {first}: export it with --fine-stage-of "
                f"{first} and the pair's --cv-report")
    return None


def _stored_card(out: Path, name: str) -> Dict:
    """The card of ``name`` already in ``out`` ({} where there is none or it cannot be read)."""
    _, card_path = model_paths(name, out)
    try:
        card = json.loads(card_path.read_text()) if card_path.is_file() else {}
    except (OSError, ValueError):
        return {}
    return card if isinstance(card, dict) else {}


def dropped_fine_stage(out: Path, name: str) -> Optional[str]:
    """The fine stage the card of ``name`` in ``out`` names, which a new export of ``name`` drops: the pair with new
    weights is not the one cross-validated."""
    stage = _stored_card(out, name).get("fine_stage")
    return stage.get("model") if isinstance(stage, dict) else None


def register_fine_stage(out: Path, primary: str, name: str, report: Dict, margin_mm: float,
                        passes: Optional[int], version: Optional[str], caveat: Optional[str] = None) -> Path:
    """Name model ``name`` (in ``out``) as the ``fine_stage`` of ``primary``'s card, which takes the post-processing
    and the cross-validation of the two stages' ``report`` (with its ``caveat``; its own cross-validation kept as
    ``cross_validation_without_fine_stage``) and the pair's ``version`` when given (its outputs change; its weights
    and their sha256 do not); write that card and its Markdown again and return the card's path."""
    _, card_path = model_paths(primary, out)
    if not card_path.is_file():
        raise SystemExit(f"{card_path}: no card of the model '{primary}' to register its fine stage '{name}' in")
    card = json.loads(card_path.read_text())
    card["version"] = version or card["version"]
    card["fine_stage"] = {"model": name, "margin_mm": margin_mm, **({"passes": passes} if passes else {})}
    if card.get("cross_validation") and "cross_validation_without_fine_stage" not in card:
        card["cross_validation_without_fine_stage"] = card["cross_validation"]
    card["cross_validation"] = cross_validation_section(report, caveat)
    card["postprocessing"] = postprocessing_of(report["chosen"], report.get("missing_modality"))
    write_card(card, card_path)
    card_path.with_suffix(".md").write_text(card_markdown(card))
    return card_path


MODEL_LINKS = ("missing_modality_models", "fast_model")
"""Card entries that name other models (exported on their own), which a new export of the naming model keeps."""


def kept_model_links(out: Path, name: str) -> Dict:
    """The entries of ``MODEL_LINKS`` in the card of ``name`` already in ``out`` that name a model still there (a
    removed model's card goes first, then a new export of ``name`` drops the link), which a new export keeps."""
    _, card_path = model_paths(name, out)
    if not card_path.is_file():
        return {}

    def present(model: str) -> bool:
        return model_paths(model, out)[1].is_file()

    try:
        card = json.loads(card_path.read_text())
        by_modality = {m: n for m, n in (card.get("missing_modality_models") or {}).items() if present(n)}
        fast = card.get("fast_model")
        links = {"missing_modality_models": by_modality, "fast_model": fast if fast and present(fast) else None}
        return {key: value for key, value in links.items() if value}
    except (OSError, ValueError, AttributeError, TypeError):
        return {}


def register_in_primary(out: Path, primary: str, name: str, modality: Optional[str] = None) -> Path:
    """Name model ``name`` in the card of ``primary`` (in ``out``): as the model for cases without ``modality``
    (``missing_modality_models``), or without one as its ``fast_model``; write that card and its Markdown again and
    return the card's path."""
    _, card_path = model_paths(primary, out)
    if not card_path.is_file():
        raise SystemExit(f"{card_path}: no card of the primary model '{primary}' to register '{name}' in")
    card = json.loads(card_path.read_text())
    if modality:
        card["missing_modality_models"] = dict(card.get("missing_modality_models") or {}, **{modality: name})
    else:
        card["fast_model"] = name
    write_card(card, card_path)
    card_path.with_suffix(".md").write_text(card_markdown(card))
    return card_path


def data_source(root: str) -> str:
    """A training data root as the card names it: a training pack (``pack_arrays``) with the roots it packed."""
    try:
        sources = json.loads((Path(root) / "pack.json").read_text()).get("sources")
    except (OSError, ValueError, AttributeError):
        sources = None
    return f"{root}: a training pack of {', '.join(sources)}" if sources else str(root)


def postprocessing_text(settings: Dict) -> str:
    """One sentence for the card: how labels are read and cleaned."""
    decoding = ("labels read from the nested regions (WT where P(WT) > {}, TC inside it where P(TC) > {}, ET inside "
                "TC where P(ET) > {})".format(*settings["region_thresholds"]) if settings.get("region_thresholds")
                else "labels by argmax")
    decoding += "".join(f"; without {m.upper()} WT where P(WT) > {t[0]:g}"
                        for m, t in (settings.get("missing_region_thresholds") or {}).items())
    small_et = (f"; a total enhancing volume under {settings['min_et_ml']:g} mL relabelled NCR"
                if settings.get("min_et_ml") else "")
    gate = (f"; enhancing voxels less than {settings['min_enhancement_sd']:g} SD brighter on T1CE than on T1 (T1CE "
            f"z-score without T1) relabelled NCR" if settings.get("min_enhancement_sd") is not None else "")
    gate += (f"; edema voxels below {settings['min_flair_sd']:g} SD on FLAIR relabelled background (not without FLAIR)"
             if settings.get("min_flair_sd") is not None else "")
    widening = (f"; edema where P(WT) >= {settings['wt_threshold']:g} (filtered again)"
                if settings.get("wt_threshold") is not None else "")
    widening += "".join(f"; without {m.upper()} edema where P(WT) >= {t:g} (filtered again)"
                        for m, t in (settings.get("missing_wt_thresholds") or {}).items())
    return f"{decoding}; lesion filter{widening}{gate}{small_et}"


def _cross_validation_lines(cv: Dict) -> List[str]:
    dice = cv["dice"]
    inputs = f" without {cv['without'].upper()}" if cv.get("without") else ""
    lines = [f"## Cross-validation: {cv['cases']} real cases{inputs}, folds {cv['folds']} ({cv['how']})", "",
             "| region | mean Dice | SD | SE | worst |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {r.upper()} | {dice[r]['mean']:.3f} | {dice[r]['sd']:.3f} | {dice[r]['se']:.3f} | "
              f"{dice[r]['min']:.3f} |" for r in ("wt", "tc", "et")]
    if cv.get("dice_nested"):
        lines += ["", "The post-processing was chosen on these same out-of-fold predictions; chosen for each fold on "
                  "the other folds only (nested), the means are " + ", ".join(
                      f"{r.upper()} {cv['dice_nested'][r]['mean']:.3f}" for r in ("wt", "tc", "et")) + "."]
    if cv.get("caveat"):
        lines += ["", f"**Caveat:** {cv['caveat']}"]
    lines += ["", f"Worst cases: {', '.join(cv['worst_cases'])}. ET-free cases, predicted ET: "
              + (", ".join(f"{c} {v:.2f} mL" for c, v in cv["et_free_cases_predicted_et_ml"].items()) or "none"),
              ""]
    lines += _missing_modality_lines(cv["missing_modality"]) if cv["missing_modality"] else []
    lines += ["", "| case | fold | WT | TC | ET | WT mL (true) | ET mL (true) |", "| --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['case']} | {r['fold']} | {r['wt']:.3f} | {r['tc']:.3f} | {r['et']:.3f} | {r['wt_ml']:.1f} "
              f"({r['wt_ml_true']:.1f}) | {r['et_ml']:.1f} ({r['et_ml_true']:.1f}) |" for r in cv["per_case"]]
    return lines + [""]


def _missing_modality_lines(missing_modality: Dict) -> List[str]:
    """The table of Dice without each modality; with a whole-tumor threshold study, its nested WT and best t_WT."""
    studied = any((v.get("wt_threshold") or {}).get("nested") for v in missing_modality.values())
    lines = ["| without | WT | TC | ET |" + (" WT, t_WT chosen nested (best t_WT) |" if studied else ""),
             "| --- | --- | --- | --- |" + (" --- |" if studied else "")]
    for modality, v in missing_modality.items():
        study = v.get("wt_threshold") or {}
        best = "argmax" if study.get("best") is None else f"{study['best']:g}"
        extra = (f" {study['nested']['wt']:.3f} ({best}) |" if study.get("nested") else " - |") \
            if studied else ""
        lines.append(f"| {modality} | {v['wt']:.3f} | {v['tc']:.3f} | {v['et']:.3f} |" + extra)
    return lines


def card_markdown(card: Dict) -> str:
    """A human-readable model card from the JSON card: the cross-validation first, when the card has it."""
    lines = [f"# Model card: {card['name']} {card['version']}", "",
             f"{card['task']}. {card['disclaimer']}", ""]
    if card.get("cross_validation"):
        lines += _cross_validation_lines(card["cross_validation"])
    lines += [f"- Network: GMMAS-style CNN-transformer, {card['network']}",
             f"- Inputs: any subset of {', '.join(card['inputs']['modalities'])}; {card['inputs']['expects']}",
             f"- Preprocessing: {card['preprocessing']}",
             f"- Training data: {len(card['training_data']['real_cases'])} real cases "
             f"({card['training_data']['source']}) + {card['training_data']['synthetic_phantoms']} synthetic "
             f"phantoms",
             f"- Training: {card['training']}",
             *([f"- Post-processing (chosen in cross-validation): {postprocessing_text(card['postprocessing'])}"]
               if card.get("postprocessing") else []),
             *[f"- Cases without {m.upper()} are segmented by `{n}` (its own card: trained and cross-validated for "
               f"them)" for m, n in (card.get("missing_modality_models") or {}).items()],
             *([f"- Meant for cases without {card['for_cases_without'].upper()}: `{card['primary_model']}` hands "
                f"them to this model; read its figures without {card['for_cases_without'].upper()}"]
               if card.get("for_cases_without") else []),
             *([f"- `analyze --fast` segments with `{card['fast_model']}` (a lighter network; its own card: "
                f"cross-validated)"] if card.get("fast_model") else []),
             *([f"- Meant for `analyze --fast`: `{card['fast_model_of']}` hands its fast runs to this lighter model"]
               if card.get("fast_model_of") else []),
             *_fine_stage_lines(card),
             f"- Weights: `{card['weights_file']}` ({card['weights_dtype']}), sha256 `{card['sha256']}`", ""]
    validation = card.get("validation")
    if validation:
        lines += [f"## Validation split ({validation['cases']} real cases): {', '.join(card['validation_split'])}",
                  "", f"{validation['how']}", "",
                  "| inputs | Dice WT | Dice TC | Dice ET | Dice ED | HD95 WT (mm) | HD95 TC | HD95 ET |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for setting, values in validation["metrics"].items():
            m = values["mean"]
            lines.append(f"| {setting} | {m['dice_wt']:.3f} | {m['dice_tc']:.3f} | {m['dice_et']:.3f} | "
                         f"{m['dice_ed']:.3f} | {m['hd95_wt']:.1f} | {m['hd95_tc']:.1f} | {m['hd95_et']:.1f} |")
        lines += ["", f"Caveat: {validation['caveat']}.", ""]
    return "\n".join(lines)


def _fine_stage_lines(card: Dict) -> List[str]:
    """The card's lines on a coarse-to-fine pair, from either side."""
    stage = card.get("fine_stage")
    if stage:
        alone = (card.get("cross_validation_without_fine_stage") or {}).get("dice")
        passes = f" ({stage['passes']} pass{'es' if stage['passes'] > 1 else ''})" if stage.get("passes") else ""
        alone_text = (", this network alone: " + ", ".join(f"{r.upper()} {alone[r]['mean']:.3f}"
                                                           for r in ("wt", "tc", "et"))) if alone else ""
        return [f"- Second stage: `{stage['model']}` re-segments the tumor's box + {stage['margin_mm']:g} mm at its "
                f"finer spacing{passes}; `analyze --fast` runs this network alone; the cross-validation above is of "
                f"the two stages together{alone_text}"]
    if card.get("fine_stage_of"):
        return [f"- Second stage of `{card['fine_stage_of']}`: runs over the region around the tumor it found, by "
                f"windows of {card['window_voxels']} voxels (an axis up to {card['window_max_voxels']} in one); the "
                f"cross-validation above is of the two stages together"]
    return []


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    parser.add_argument("--out", default=str(RESOURCES))
    parser.add_argument("--name", default="glioma_seg")
    parser.add_argument("--data", default=str(BRATS18),
                        help="data root holding the validation cases of the run")
    parser.add_argument("--weights", default=None, help="weights file (default RUN_DIR/final.safetensors)")
    parser.add_argument("--skip-missing", action="store_true", help="skip the missing-modality evaluation")
    parser.add_argument("--cv-report", help="cv_report.json of the recipe's cross-validation (leads the card)")
    parser.add_argument("--cv-caveat", default=None, help="with --cv-report: a sentence on how far its figures can "
                        "be trusted (e.g. what a second draw of the recipe scored), printed under them in the card")
    parser.add_argument("--version", help=f"the model's version (default {MODEL_VERSION}); with --fine-stage-of "
                        "also the first stage's (the pair's outputs are new), which keeps its own without it")
    parser.add_argument("--for-cases-without", choices=MODALITIES, default=None,
                        help="export a model for cases without this modality and name it in --primary's card")
    parser.add_argument("--primary", default=None, help="with --for-cases-without: the model (in --out) that "
                        "hands such cases to this one, e.g. glioma_seg")
    parser.add_argument("--fast-model-of", default=None, help="export a lighter model for analyze --fast and name it "
                        "in this model's card (in --out), e.g. glioma_seg")
    parser.add_argument("--fine-stage-of", default=None, help="export a finer model as this model's second stage "
                        "(in --out), e.g. glioma_seg; --cv-report: the two stages' cross-validation")
    parser.add_argument("--window-max", type=int, default=None, help="with --fine-stage-of: an axis of the region "
                        "up to this many voxels runs in one window (default: the run's crop)")
    parser.add_argument("--fine-passes", type=int, default=None, help="with --fine-stage-of: its passes at most "
                        "(default: as many as the first stage)")
    parser.add_argument("--margin-mm", type=float, default=None, help="with --fine-stage-of: mm around the "
                        f"first stage's tumor box (default {MARGIN_MM:g})")
    args = parser.parse_args(argv)
    if args.cv_caveat and not args.cv_report:
        parser.error("--cv-caveat goes with --cv-report: it is printed under that cross-validation")
    stage_options = [o for o, v in (("--window-max", args.window_max), ("--fine-passes", args.fine_passes),
                                    ("--margin-mm", args.margin_mm)) if v is not None]
    if stage_options and not args.fine_stage_of:
        parser.error(f"{stage_options[0]} goes with --fine-stage-of")
    problem = link_problem(Path(args.out), args.name, args.fine_stage_of)
    if problem:
        parser.error(problem)

    run = Path(args.run_dir)
    config = json.loads((run / "config.json").read_text())
    problem = substitute_problem(args, config)
    if problem:
        parser.error(problem)
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]
    model = GliomaSegNet(NetworkConfig.from_dict(config["network"]))
    model.load_state_dict(load_file(args.weights or str(run / "final.safetensors")))
    card = base_card(config, log, args.version or MODEL_VERSION)
    if args.cv_report:
        report = json.loads(Path(args.cv_report).read_text())
        card["cross_validation"] = cross_validation_section(report, args.cv_caveat)
        card["postprocessing"] = postprocessing_of(report["chosen"], report.get("missing_modality"))
    if args.for_cases_without:
        card.update(for_cases_without=args.for_cases_without, primary_model=args.primary)
    if args.fast_model_of:
        card["fast_model_of"] = args.fast_model_of
    if args.fine_stage_of:
        crop = int(config["args"]["crop"])
        card.update(fine_stage_of=args.fine_stage_of, window_voxels=crop, window_max_voxels=args.window_max or crop)
        card.pop("postprocessing", None)  # the first stage's card holds the pair's
    out = Path(args.out)
    dropped = dropped_fine_stage(out, args.name)
    if dropped:
        print(f"{args.name}: its fine stage {dropped} is not kept (the pair with these weights is not "
              f"cross-validated): export {dropped} again with --fine-stage-of {args.name} and the pair's "
              f"--cv-report", file=sys.stderr)
    kept = kept_model_links(out, args.name)
    if kept:
        card.update(kept)
        print(f"{args.name}: keeps naming the models of its card: {kept}", file=sys.stderr)
    save_model(model, card, out, args.name)

    start = time.perf_counter()
    load_model_cached.cache_clear()
    load_parts.cache_clear()
    validation = {}
    if config["validation_cases"]:
        validation["all_modalities"] = evaluate_model(out, args.name, Path(args.data), config["validation_cases"])
        if not args.skip_missing:
            for modality in MODALITIES:
                validation[f"without_{modality}"] = evaluate_model(out, args.name, Path(args.data),
                                                                   config["validation_cases"], drop=modality)
        card["validation"] = {
            "cases": len(config["validation_cases"]),
            "how": f"GliomaAnalysisLib.analyze, default settings ({QUALITY_PASSES} passes: flip TTA + MC-dropout), "
                   f"full resolution",
            "metrics": validation,
            "caveat": f"one fixed split of {len(config['validation_cases'])} validation cases; the cross-validation "
                      f"(when present) is the figure to read",
        }
    card["training_curve"] = [r for r in log if "val_dice" in r]
    card_path = save_model(model, card, out, args.name)
    card_path.with_suffix(".md").write_text(card_markdown(json.loads(card_path.read_text())))
    if args.for_cases_without:
        register_in_primary(out, args.primary, args.name, args.for_cases_without)
    if args.fast_model_of:
        register_in_primary(out, args.fast_model_of, args.name)
    if args.fine_stage_of:
        register_fine_stage(out, args.fine_stage_of, args.name, json.loads(Path(args.cv_report).read_text()),
                            MARGIN_MM if args.margin_mm is None else args.margin_mm, args.fine_passes, args.version,
                            args.cv_caveat)
    print(json.dumps({k: v["mean"] for k, v in validation.items()}, indent=2))
    print(f"exported {out / args.name}.safetensors + .json in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
