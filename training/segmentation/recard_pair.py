"""Put a new cross-validation of the shipped two-stage pair into both cards, the weights untouched.

    python -m training.segmentation.recard_pair --cv-report training/results/segmentation_two_stages/cv_report.json
        [--version 0.5.0] [--cv-caveat "..."] [--models Resources/models] [--primary glioma_seg]

The shipped weights were trained on every real case; more folds of the recipe's cross-validation change what their
cards say, not the weights. ``export_segmentation --fine-stage-of`` needs the training run folders, which stay on the
machine that trained them; this needs only the cards. The first stage's card takes the report's cross-validation and
post-processing (as ``export_segmentation.register_fine_stage`` writes them, with the fine stage's margin and passes as
they are), the fine stage's card the cross-validation; both take ``--version``. Where the post-processing changes
(another chosen variant, other thresholds without a modality), so do the pair's outputs: a new ``--version`` is
required. Every check runs before anything is written;
the weights must match their cards' sha256.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, Optional, Tuple

from GliomaAnalysisLib.models.model_store import RESOURCES, ModelError, load_verified_card, model_paths, write_card

from .export_segmentation import card_markdown, cross_validation_section, postprocessing_of, register_fine_stage

REPORT_KEYS = ("cases", "folds_done", "chosen", "variants", "per_case", "worst_cases", "et_free_cases",
               "missing_modality")
"""What ``cross_validation_section`` and ``postprocessing_of`` read from a ``cross_validate`` report."""


def read_report(path: Path) -> Dict:
    """The ``cross_validate`` report at ``path``; ValueError (naming the file and the problem) where it is not one."""
    try:
        report = json.loads(path.read_text())
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the cross-validation report ({exc.strerror or exc})") from None
    except ValueError:
        raise ValueError(f"{path}: not JSON, so not a cross_validate report") from None
    missing = [key for key in REPORT_KEYS if not isinstance(report, dict) or key not in report]
    if missing:
        raise ValueError(f"{path}: not a cross_validate report (no {', '.join(missing)})")
    if report["chosen"] not in report["variants"]:
        raise ValueError(f"{path}: its chosen post-processing {report['chosen']!r} has no scores in it")
    return report


def pair_cards(models: Path, primary: str) -> Tuple[Dict, Dict]:
    """The verified cards of ``primary`` and of the fine stage it names; ModelError where either is missing, its
    weights do not match it, or ``primary`` names no fine stage."""
    card = load_verified_card(primary, models)
    stage = card.get("fine_stage")
    if not isinstance(stage, dict) or not stage.get("model"):
        raise ModelError(f"{model_paths(primary, models)[1]}: {primary} names no fine stage, so it is not a pair")
    return card, load_verified_card(stage["model"], models)


def version_problem(card: Dict, report: Dict, version: Optional[str]) -> Optional[str]:
    """Why the pair's cards cannot take ``report`` under ``version`` (None: they can): new post-processing settings
    (another chosen variant, or other whole-tumor thresholds without a modality) change the pair's outputs, so they
    need a version other than the card's."""
    old = card.get("postprocessing") or {}
    new = postprocessing_of(report["chosen"], report.get("missing_modality"))
    if old != new and (version or card["version"]) == card["version"]:
        changed = ", ".join(f"{key} {old.get(key)} -> {new.get(key)}" for key in sorted(set(old) | set(new))
                            if old.get(key) != new.get(key))
        return (f"the post-processing changes ({changed}), so the pair's outputs do: give a new --version (the cards "
                f"hold {card['version']})")
    return None


def recard(models: Path, primary: str, report: Dict, version: Optional[str], caveat: Optional[str]) -> Dict:
    """Write ``report``'s cross-validation into the cards (and Markdown) of ``primary`` and its fine stage in
    ``models``; returns the first stage's new card."""
    card, fine = pair_cards(models, primary)
    fine["version"] = version or fine["version"]
    fine["cross_validation"] = cross_validation_section(report, caveat)
    fine_path = model_paths(fine["name"], models)[1]
    write_card(fine, fine_path)
    fine_path.with_suffix(".md").write_text(card_markdown(fine))
    stage = card["fine_stage"]
    path = register_fine_stage(models, primary, fine["name"], report, stage["margin_mm"], stage.get("passes"),
                               version, caveat)
    return json.loads(path.read_text())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cv-report", type=Path, required=True,
                        help="cv_report.json of the pair's cross-validation (or its folder)")
    parser.add_argument("--version", default=None, help="the pair's new version (default: the cards' own)")
    parser.add_argument("--cv-caveat", default=None, help="a sentence on how far the figures can be trusted, printed "
                        "under them in both cards (default: none, and the old caveat goes)")
    parser.add_argument("--models", type=Path, default=RESOURCES, help="folder of the two cards and weights")
    parser.add_argument("--primary", default="glioma_seg", help="the first stage, whose card names the fine one")
    args = parser.parse_args(argv)
    path = args.cv_report / "cv_report.json" if args.cv_report.is_dir() else args.cv_report
    try:
        report = read_report(path)
        card, _ = pair_cards(args.models, args.primary)
    except (ValueError, ModelError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    problem = version_problem(card, report, args.version)
    if problem:
        print(f"error: {path}: {problem}", file=sys.stderr)
        return 2
    new = recard(args.models, args.primary, report, args.version, args.cv_caveat)
    dice = new["cross_validation"]["dice"]
    print(f"{args.primary} + {card['fine_stage']['model']} {new['version']}: {report['cases']} cases, folds "
          f"{report['folds_done']}, {report['chosen']}: " + " / ".join(f"{r.upper()} {dice[r]['mean']:.3f}"
                                                                      for r in ("wt", "tc", "et")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
