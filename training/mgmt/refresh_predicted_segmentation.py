"""Re-measure a stored MGMT late-fusion model on its test phantoms with the slices chosen by the current shipped
segmentation network, and rewrite that part of its cards; the weights are not touched.

    python -m training.mgmt.refresh_predicted_segmentation [--model-dir Resources/models] [--seg-model glioma_seg]

``analyze`` feeds the ensemble the slices of the predicted tumor, so the card's "slices chosen by the shipped
segmentation network" rows go stale whenever the segmentation model changes. Training measures them once; this
command measures them again on the same test phantoms (the card's cohort seed and size, regenerated into ``--cache``
when missing) with the card's own temperatures and fusion weights, records which segmentation model chose the
slices, and writes the JSON card (atomically) and the Markdown card. About a minute on the CPU.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, Optional, Sequence

from GliomaAnalysisLib.models.mgmt_fusion import DEFAULT_MODEL_NAME, load_mgmt_fusion
from GliomaAnalysisLib.models.model_store import ModelError, model_paths, write_card

from ..common.classification_data import ClassificationSample, phantom_split
from ..common.datasets import DEFAULT_CACHE
from .train_mgmt import markdown_card, predicted_segmentation_cases, predicted_segmentation_report


def refresh(model_dir: Optional[str], cache: Path, seg_model: str = "glioma_seg", name: str = DEFAULT_MODEL_NAME,
            test: Optional[Sequence[ClassificationSample]] = None) -> Dict:
    """The card of stored model ``name`` in ``model_dir`` with ``metrics.test_phantoms_predicted_segmentation``
    measured again (slices from ``seg_model``) and ``metrics.predicted_segmentation_model`` set; both cards
    rewritten. ``test`` replaces the card's test phantoms (tests). Returns the new card."""
    ensemble, card = load_mgmt_fusion(model_dir, name)
    if test is None:
        training = card["training"]
        _, _, test = phantom_split(cache, int(training["n_phantoms"]), int(training["phantom_seed"]))
    cases, seg_label = predicted_segmentation_cases(test, ensemble.config, seg_model)
    if not cases:
        raise ModelError(f"{name}: none of its test phantoms carries an MGMT label; nothing to measure")
    fusion = card["fusion"]
    metrics = dict(card["metrics"], test_phantoms_predicted_segmentation=predicted_segmentation_report(
        ensemble, cases, fusion["temperatures"], fusion["weights"]), predicted_segmentation_model=seg_label)
    card = dict(card, metrics=metrics)
    _, card_path = model_paths(name, model_dir)
    write_card(card, card_path)
    card_path.with_suffix(".md").write_text(markdown_card(card))
    return card


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.mgmt.refresh_predicted_segmentation",
                                     description="Re-measure an MGMT late-fusion card's rows with slices chosen by "
                                                 "the current segmentation model (weights untouched).")
    parser.add_argument("--model-dir", default=None, help="folder of the MGMT model (default: the shipped models)")
    parser.add_argument("--name", default=DEFAULT_MODEL_NAME)
    parser.add_argument("--seg-model", default="glioma_seg", help="segmentation model that chooses the slices")
    parser.add_argument("--cache", default=DEFAULT_CACHE, help="where the phantom cohort is kept")
    args = parser.parse_args(argv)
    try:
        card = refresh(args.model_dir, Path(args.cache), args.seg_model, args.name)
    except ModelError as exc:
        sys.exit(f"error: {exc}")
    fused = card["metrics"]["test_phantoms_predicted_segmentation"]["fused"]
    print(f"{args.name}: fused test AUC {fused['auc']:.3f} with slices from "
          f"{card['metrics']['predicted_segmentation_model']}; cards rewritten", flush=True)


if __name__ == "__main__":
    main()
