"""Command-line front door: ``glioma-analysis {phantom,inspect,demo}``.

User mistakes end with a one-line ``glioma-analysis: error: ...`` on stderr and exit status 2, never a
traceback. Progress goes to stderr; results to files (and a short summary to stdout).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from . import __version__
from .errors import GliomaAnalysisError

DEMO_SEED = 2024  # an HGG phantom with necrosis, enhancing rim and edema
RESEARCH_USE = "Research use only; not a medical device. Results must not be used for clinical decisions."


def _progress(message: str) -> None:
    print(f"[glioma-analysis] {message}", file=sys.stderr, flush=True)


def _add_case_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("case_dir", nargs="?", help="folder holding the modality files (recognised by name)")
    for modality in ("t1", "t1ce", "t2", "flair"):
        parser.add_argument(f"--{modality}", metavar="FILE", help=f"{modality} image (overrides the folder's)")
    parser.add_argument("--reference", choices=("t1", "t1ce", "t2", "flair"),
                        help="modality whose grid the outputs use (default: t1ce, else t1, flair, t2)")


def _load_from_args(args: argparse.Namespace):
    from .case import load_case
    from .modalities import MODALITIES, SEGMENTATION

    explicit = {m: getattr(args, m) for m in MODALITIES if getattr(args, m)}
    if args.case_dir is None and not explicit:
        raise GliomaAnalysisError("no input: give a case folder or at least one of --t1/--t1ce/--t2/--flair")
    if args.case_dir is None:
        return load_case(explicit, reference=args.reference)
    if not explicit:
        return load_case(args.case_dir, reference=args.reference)
    found = _maybe_find(args.case_dir)
    inputs: Dict[str, object] = {m: found[m] for m in MODALITIES if m in found}
    inputs.update(explicit)
    return load_case(inputs, reference=args.reference, segmentation=found.get(SEGMENTATION),
                     case_id=Path(args.case_dir).resolve().name)


def _maybe_find(folder: str) -> Dict[str, Path]:
    from .case import find_modality_files
    from .errors import NoModalityError
    try:
        return find_modality_files(folder)
    except NoModalityError:
        return {}


def cmd_phantom(args: argparse.Namespace) -> int:
    from .phantom import write_cohort
    if args.n < 1:
        raise GliomaAnalysisError(f"--n must be at least 1, got {args.n}")
    start = time.perf_counter()
    write_cohort(args.out, args.n, args.seed, tuple(args.size), tuple(args.spacing),
                 progress=lambda i, n, case: _progress(f"phantom {i}/{n}: {case}"))
    _progress(f"wrote {args.n} phantom case(s) and labels.csv to {args.out} in {time.perf_counter() - start:.1f} s")
    return 0


def describe_case(case, spacing: Optional[Sequence[float]] = (2.0, 2.0, 2.0)) -> dict:
    """A JSON-ready summary of a loaded case and its preprocessed working grid."""
    from .preprocess import preprocess

    start = time.perf_counter()
    pre = preprocess(case, spacing=spacing, divisible_by=8)
    seconds = time.perf_counter() - start
    summary = {
        "case_id": case.case_id,
        "inputs": {m: case.sources[m] for m in case.present},
        "missing": case.missing,
        "reference": case.reference,
        "reference_geometry": {"size": case.geometry.size, "spacing_mm": case.geometry.spacing,
                               "origin_mm": case.geometry.origin, "direction": case.geometry.direction},
        "working_grid": {"shape_czyx": list(pre.image.shape), "spacing_mm": pre.working.spacing},
        "presence": pre.presence.tolist(),
        "brain_volume_ml": round(float(pre.brain_mask.sum()) * pre.working.voxel_volume_ml, 1),
        "preprocess_seconds": round(seconds, 2),
        "warnings": case.warnings,
    }
    if case.segmentation is not None:
        summary["ground_truth_volumes_ml"] = _label_volumes(case)
    return summary


def _label_volumes(case) -> Dict[str, float]:
    import SimpleITK as sitk
    from .labels import regions, to_contiguous

    labels = to_contiguous(sitk.GetArrayViewFromImage(case.segmentation), case.segmentation_convention)
    voxel_ml = case.geometry.voxel_volume_ml
    masks = regions(labels)
    masks["ncr"] = labels == 1
    return {name: round(float(masks[name].sum()) * voxel_ml, 2) for name in ("ncr", "ed", "et", "tc", "wt")}


def cmd_inspect(args: argparse.Namespace) -> int:
    case = _load_from_args(args)
    for warning in case.warnings:
        _progress(f"warning: {warning}")
    print(json.dumps(describe_case(case), indent=2))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Phantom -> load -> preprocess -> back to the reference grid; writes demo_summary.json into --out."""
    import SimpleITK as sitk
    from .case import load_case
    from .labels import to_contiguous
    from .phantom import write_cohort
    from .preprocess import preprocess

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".demo-", dir=out))
    try:
        _progress("generating the embedded phantom case (synthetic, not real data)")
        write_cohort(staging / "input", 1, seed=DEMO_SEED)
        case_dir = next(p for p in (staging / "input").iterdir() if p.is_dir())
        _progress(f"loading {case_dir.name}")
        case = load_case(case_dir)
        _progress("preprocessing (brain crop, 2 mm grid, z-score)")
        summary = describe_case(case)
        pre = preprocess(case, spacing=(2.0, 2.0, 2.0), divisible_by=8)
        back = sitk.GetArrayFromImage(pre.to_reference(pre.labels, "label"))  # contiguous labels
        truth = to_contiguous(sitk.GetArrayFromImage(case.segmentation))
        summary["round_trip_dice_2mm"] = {
            name: round(_dice(truth == k, back == k), 4) for k, name in ((1, "ncr"), (2, "ed"), (3, "et"))}
        summary["note"] = ("Segmentation and classification models are not part of this build yet; this demo runs "
                           "the phantom, loading and preprocessing path. " + RESEARCH_USE)
        summary["inputs"] = {m: str(Path("input") / case_dir.name / Path(p).name) for m, p in summary["inputs"].items()}
        with open(staging / "demo_summary.json", "w") as handle:
            json.dump(summary, handle, indent=2)
        for item in staging.iterdir():
            target = out / item.name
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(item, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(json.dumps(summary, indent=2))
    _progress(f"wrote {out / 'demo_summary.json'} and the phantom case under {out / 'input'}")
    return 0


def _dice(a, b) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="glioma-analysis", description=f"Glioma analysis from multimodal MRI. "
                                     f"{RESEARCH_USE}")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    phantom = sub.add_parser("phantom", help="write synthetic glioma phantoms (BraTS 2021 layout + labels.csv)")
    phantom.add_argument("--out", required=True, help="output folder")
    phantom.add_argument("--n", type=int, default=1, help="number of cases (default 1)")
    phantom.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    phantom.add_argument("--size", type=int, nargs=3, default=(240, 240, 155), metavar=("X", "Y", "Z"),
                         help="voxels (default 240 240 155, as BraTS)")
    phantom.add_argument("--spacing", type=float, nargs=3, default=(1.0, 1.0, 1.0), metavar=("SX", "SY", "SZ"),
                         help="voxel spacing in mm (default 1 1 1)")
    phantom.set_defaults(func=cmd_phantom)

    inspect = sub.add_parser("inspect", help="load a case and print what was found, its geometry and warnings")
    _add_case_arguments(inspect)
    inspect.set_defaults(func=cmd_inspect)

    demo = sub.add_parser("demo", help="run the main job on an embedded phantom case")
    demo.add_argument("--out", default="glioma-demo", help="output folder (default ./glioma-demo)")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except GliomaAnalysisError as exc:
        print(f"glioma-analysis: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("glioma-analysis: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        print(f"glioma-analysis: error: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
