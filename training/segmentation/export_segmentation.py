"""Turn a training run into shipped weights + model card, with validation metrics measured by the real pipeline.

    python -m training.segmentation.export_segmentation RUN_DIR [--out Resources/models] [--name glioma_seg]

Every validation case of the run's split is analysed with ``GliomaAnalysisLib.analyze`` (default settings) at
full resolution, with all modalities and with each one missing; the card records Dice and HD95 per region, the
split, the training set-up and the sha256 of the weights.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import SimpleITK as sitk
from safetensors.torch import load_file

from GliomaAnalysisLib import MODALITIES, load_case
from GliomaAnalysisLib.pipeline.analysis import QUALITY_PASSES, analyze
from GliomaAnalysisLib.io.labels import to_contiguous
from GliomaAnalysisLib.models.model_store import RESOURCES, load_model_cached, save_model
from GliomaAnalysisLib.models.network import GliomaSegNet, NetworkConfig

from ..common.datasets import BRATS18, discover_cases
from .evaluate import evaluate_pair
from ..common.run_record import git_commit

MODEL_VERSION = "0.1.0"


def training_seconds(log: List[Dict]) -> float:
    """Total training time from a log whose clock may restart at each resume."""
    total, last = 0.0, 0.0
    for record in log:
        if record["seconds"] < last:
            total += last
        last = record["seconds"]
    return total + last


def base_card(run_config: Dict, training_log: List[Dict]) -> Dict:
    args = run_config["args"]
    return {
        "version": MODEL_VERSION,
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
            "source": ", ".join(str(d) for d in args["data"]) if isinstance(args["data"], list) else args["data"],
        },
        "validation_split": run_config["validation_cases"],
        "training": {"steps": args["steps"], "batch": args["batch"], "crop_voxels": args["crop"],
                     "optimizer": "AdamW", "peak_lr": args["lr"], "schedule": "50-step warm-up, cosine",
                     "loss": f"soft-target cross-entropy + {args.get('dice_weight', 0.5)} x region Dice "
                             "(WT, TC, ET; ET scored only in crops with T1CE)",
                     "foreground_probability": args.get("foreground_probability"),
                     "modality_dropout": {"keep_all": args.get("keep_all_probability"), "drop_one": 0.3},
                     "augmentation": "rotation, scaling, flips; per-channel gamma, contrast, brightness, noise, "
                                     "blur, bias field; modality dropout (training/segmentation/augmentation.py)",
                     "fold": args.get("fold"),
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


def card_markdown(card: Dict) -> str:
    """A human-readable model card from the JSON card."""
    metrics = card["validation"]["metrics"]
    lines = [f"# Model card: {card['name']} {card['version']}", "",
             f"{card['task']}. {card['disclaimer']}", "",
             f"- Network: GMMAS-style CNN-transformer, {card['network']}",
             f"- Inputs: any subset of {', '.join(card['inputs']['modalities'])}; {card['inputs']['expects']}",
             f"- Preprocessing: {card['preprocessing']}",
             f"- Training data: {len(card['training_data']['real_cases'])} real BraTS 2018 cases + "
             f"{card['training_data']['synthetic_phantoms']} synthetic phantoms",
             f"- Training: {card['training']}",
             f"- Validation split ({card['validation']['cases']} real cases): {', '.join(card['validation_split'])}",
             f"- Evaluation: {card['validation']['how']}",
             f"- Weights: `{card['weights_file']}` ({card['weights_dtype']}), sha256 `{card['sha256']}`", "",
             "| inputs | Dice WT | Dice TC | Dice ET | Dice ED | HD95 WT (mm) | HD95 TC | HD95 ET |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for setting, values in metrics.items():
        m = values["mean"]
        lines.append(f"| {setting} | {m['dice_wt']:.3f} | {m['dice_tc']:.3f} | {m['dice_et']:.3f} | "
                     f"{m['dice_ed']:.3f} | {m['hd95_wt']:.1f} | {m['hd95_tc']:.1f} | {m['hd95_et']:.1f} |")
    lines += ["", f"Caveat: {card['validation']['caveat']}.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    parser.add_argument("--out", default=str(RESOURCES))
    parser.add_argument("--name", default="glioma_seg")
    parser.add_argument("--data", default=str(BRATS18),
                        help="data root holding the validation cases of the run")
    parser.add_argument("--weights", default=None, help="weights file (default RUN_DIR/final.safetensors)")
    parser.add_argument("--skip-missing", action="store_true", help="skip the missing-modality evaluation")
    args = parser.parse_args(argv)

    run = Path(args.run_dir)
    config = json.loads((run / "config.json").read_text())
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]
    model = GliomaSegNet(NetworkConfig.from_dict(config["network"]))
    model.load_state_dict(load_file(args.weights or str(run / "final.safetensors")))
    card = base_card(config, log)
    out = Path(args.out)
    save_model(model, card, out, args.name)

    start = time.perf_counter()
    load_model_cached.cache_clear()
    validation = {"all_modalities": evaluate_model(out, args.name, Path(args.data), config["validation_cases"])}
    if not args.skip_missing:
        for modality in MODALITIES:
            validation[f"without_{modality}"] = evaluate_model(out, args.name, Path(args.data),
                                                               config["validation_cases"], drop=modality)
    card["validation"] = {
        "cases": len(config["validation_cases"]),
        "how": f"GliomaAnalysisLib.analyze, default settings ({QUALITY_PASSES} passes: flip TTA + MC-dropout), full resolution",
        "metrics": validation,
        "caveat": "one fixed split of 24 cases (6 validation); expect lower and different figures on other data",
    }
    card["training_curve"] = [r for r in log if "val_dice" in r]
    card_path = save_model(model, card, out, args.name)
    card_path.with_suffix(".md").write_text(card_markdown(json.loads(card_path.read_text())))
    print(json.dumps({k: v["mean"] for k, v in validation.items()}, indent=2))
    print(f"exported {out / args.name}.safetensors + .json in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
